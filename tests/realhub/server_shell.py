"""Run a command inside a real single-user server, as its user would: in one of its terminals (terminado).

The command then belongs to what a stop kills (the server's process tree). The test reaches the server at
its proxy route's target with the user's own token, so the proxy records no browser activity; the terminal
itself is activity for the server, so start commands before the server is meant to go idle.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from pathlib import Path

import aiohttp

from devtools.devhub import LocalHub

WRITER = """\
import sys, time
path, seconds, pause, done = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
end = time.monotonic() + seconds
out = open(path, "a")
while time.monotonic() < end:
    out.write("x" * 64 + "\\n")
    out.flush()
    last = time.time()
    if pause >= 1:  # a burst writer: open, append, close, so no file stays open between writes
        out.close()
        time.sleep(pause)
        out = open(path, "a")
    else:
        time.sleep(pause)
out.close()
open(done, "w").write(repr(last))
"""


async def server_base(hub: LocalHub, user: str) -> str:
    routes = await hub.proxy_routes()
    return str(routes[f"/user/{user}"]["target"]).rstrip("/") + f"/user/{user}/"


async def run_in_terminal(hub: LocalHub, user: str, command: str, timeout: float = 20.0) -> None:
    """Type ``command`` into a new terminal of ``user``'s server and wait for the shell to echo it."""
    base = await server_base(hub, user)
    headers = {"Authorization": f"token {await hub.user_token(user, note='terminal')}"}
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(base + "api/terminals") as response:
            assert response.status == 200, await response.text()
            name = (await response.json())["name"]
        ws_url = base.replace("http://", "ws://") + f"terminals/websocket/{name}"
        async with session.ws_connect(ws_url) as socket:
            marker = f"started-{time.monotonic_ns()}"
            await socket.send_str(json.dumps(["stdin", f"{command}\r"]))
            await socket.send_str(json.dumps(["stdin", f": {marker}\r"]))
            seen = ""
            while marker not in seen:  # the shell echoes the line back once it has read it
                left = deadline - time.monotonic()
                assert left > 0, f"the terminal never echoed the command; saw {seen[-200:]!r}"
                message = await socket.receive(timeout=left)
                if message.type != aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"the terminal closed: {message!r}")
                kind, *payload = json.loads(message.data)
                if kind == "stdout":
                    seen += str(payload[0])


async def start_writer(
    hub: LocalHub, user: str, path: Path, seconds: float, pause: float = 0.2, *, scratch: Path
) -> Path:
    """Start, in a terminal of ``user``'s server, a process appending a line to ``path`` every ``pause``
    seconds for ``seconds`` (a pause of 1 s or more closes the file between writes). It writes the time of
    its last write to the returned file (under ``scratch``, outside every root) as it ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    script = scratch / "writer.py"
    script.write_text(WRITER)
    done = scratch / f"done-{path.name}-{time.monotonic_ns()}"
    args = [sys.executable, str(script), str(path), f"{seconds:g}", f"{pause:g}", str(done)]
    await run_in_terminal(hub, user, shlex.join(args) + " &")
    return done


async def ended(done: Path, timeout: float) -> float:
    """Wait for a writer's end; the wall-clock time of its last write."""
    deadline = time.monotonic() + timeout
    while not done.exists() or not done.read_text():
        assert time.monotonic() < deadline, f"the writer never ended ({done.name})"
        await asyncio.sleep(0.1)
    return float(done.read_text())
