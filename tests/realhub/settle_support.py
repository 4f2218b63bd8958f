"""Helpers of the settle tests: writer processes appending to a home, and reading the service's settling state."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from realhub_support import CullerHub, start_process, wait_for

from culler.policy.durations import parse_duration

WRITER = """\
import sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + seconds
with open(path, "a") as out:
    while time.monotonic() < end:
        out.write("x" * 64 + "\\n")
        out.flush()
        time.sleep(0.2)
"""

Writer = Callable[[Path, float], "subprocess.Popen[bytes]"]


def writer_process(path: Path, seconds: float, log: Path) -> subprocess.Popen[bytes]:
    """A process appending to ``path`` every 0.2 s for ``seconds``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return start_process([sys.executable, "-c", WRITER, str(path), f"{seconds:g}"], log)


async def exited(process: subprocess.Popen[bytes], timeout: float) -> float:
    """Wait for a process to end; the monotonic time it was seen ended."""

    async def ended() -> bool:
        return process.poll() is not None

    await wait_for(ended, timeout, f"process {process.pid} to end", interval=0.1)
    return time.monotonic()


async def seen_at(
    hub: CullerHub, name: str, timeout: float, since: int, **fields: str
) -> tuple[dict[str, object], float]:
    """Wait for a log event, looking often; the event and the wall-clock time it was first seen."""

    async def logged() -> dict[str, object] | None:
        events = hub.events(name, since, **fields)
        return events[0] if events else None

    event = await wait_for(logged, timeout, f"log event {name!r} with {fields}", interval=0.05)
    return event, time.time()


def assert_no_restart(hub: CullerHub, since: int, *users: str) -> None:
    """Settling was never cancelled by "new activity" (none happened: no traffic reached these servers)."""
    for user in users:
        restarts = hub.events("new activity; settling cancelled, the server stays", since, user=user)
        assert not restarts, f"{user}: settling restarted on a spurious activity change: {restarts}"


async def settling_state(hub: CullerHub, user: str) -> dict[str, object] | None:
    """The service's settling entry for ``user``'s default server (its ``api/settling``), if any."""
    status, body = await hub.get(hub.service_url() + "api/settling", token=hub.admin_token)
    assert status == 200, f"api/settling: {status} {body}"
    return next((entry for entry in body["settling"] if entry["server"] == user), None)


def waited(event: dict[str, str]) -> float:
    seconds = parse_duration(event["waited"])
    assert seconds is not None
    return seconds
