"""A real JupyterHub with configurable-http-proxy on loopback, for the demo and the integration tests.

Runs ``python -m jupyterhub`` in a subprocess with a generated config in a temporary directory. Users
whose names start with ``real-`` get real ``jupyterhub-singleuser`` servers; everyone else gets a cheap
stand-in server (one tiny HTTP responder shared by all) so hundreds of servers cost nothing.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from culler.hub import server_path, user_path

REPO = Path(__file__).resolve().parent.parent
SNIPPET = REPO / "deploy" / "jupyterhub" / "culler_service.py"

_SPAWNER = '''
import asyncio, os
from jupyterhub.spawner import SimpleLocalProcessSpawner
from traitlets import Float

_cheap = {}

async def _cheap_url():
    if "url" not in _cheap:
        async def answer(reader, writer):
            try:
                await reader.readuntil(b"\\r\\n\\r\\n")
                writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok")
                await writer.drain()
            except Exception:
                pass
            finally:
                writer.close()
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        _cheap["server"] = server
        _cheap["url"] = "http://127.0.0.1:%d" % server.sockets[0].getsockname()[1]
    return _cheap["url"]


class DevSpawner(SimpleLocalProcessSpawner):
    """Real single-user servers for users named real-*, a shared stand-in for everyone else."""
    stop_delay = Float(0.0, config=True)
    cheap_running = False

    @property
    def real(self):
        return self.user.name.startswith("real-")

    def _delay(self):
        return float((self.user_options or {}).get("stop_delay", self.stop_delay))

    async def start(self):
        if self.real:
            return await super().start()
        self.cheap_running = True
        return await _cheap_url()

    async def poll(self):
        if self.real:
            return await super().poll()
        return None if self.cheap_running else 0

    async def stop(self, now=False):
        if self.real:
            return await super().stop(now=now)
        if self._delay():
            await asyncio.sleep(self._delay())
        self.cheap_running = False

    def get_state(self):
        state = super().get_state()
        if self.cheap_running:
            state["cheap_running"] = True
        return state

    def load_state(self, state):
        super().load_state(state)
        self.cheap_running = bool(state.get("cheap_running"))

    def clear_state(self):
        super().clear_state()
        self.cheap_running = False
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_proxy() -> str:
    """configurable-http-proxy: $CHP_COMMAND, the repo's node_modules, or PATH."""
    candidates = [os.environ.get("CHP_COMMAND", ""), str(REPO / "node_modules" / ".bin" / "configurable-http-proxy")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    found = shutil.which("configurable-http-proxy")
    if found:
        return found
    raise RuntimeError("configurable-http-proxy not found: run `npm install` in the repository (see README)")


@dataclass
class LocalHub:
    """A hub on free loopback ports. ``extra_config`` is appended to the generated jupyterhub_config.py."""

    extra_config: str = ""
    last_activity_interval: int = 5
    activity_report_interval: int = 5
    stop_delay: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="devhub-")))
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    port: int = field(default_factory=free_port)
    hub_port: int = field(default_factory=free_port)
    proxy_api_port: int = field(default_factory=free_port)
    proxy_token: str = field(default_factory=lambda: secrets.token_hex(16))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/hub/api"

    @property
    def log_path(self) -> Path:
        return self.workdir / "hub.log"

    def config(self) -> str:
        singleuser = str(Path(sys.executable).with_name("jupyterhub-singleuser"))
        args = ["--allow-root"] if os.geteuid() == 0 else []
        return f"""
c = get_config()
{_SPAWNER}
c.JupyterHub.bind_url = "{self.url}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{self.hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{find_proxy()!r}]
c.ConfigurableHTTPProxy.auth_token = {self.proxy_token!r}
c.JupyterHub.db_url = "sqlite:///{self.workdir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{self.workdir}/cookie_secret"
c.JupyterHub.pid_file = "{self.workdir}/jupyterhub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.allow_named_servers = True
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.last_activity_interval = {self.last_activity_interval}
c.JupyterHub.cleanup_servers = True
c.JupyterHub.spawner_class = DevSpawner
c.DevSpawner.stop_delay = {self.stop_delay}
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.args = {args!r}
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
c.Spawner.environment = {{"JUPYTERHUB_ACTIVITY_INTERVAL": "{self.activity_report_interval}"}}
c.SimpleLocalProcessSpawner.home_dir_template = "{self.workdir}/home/{{username}}"
c.JupyterHub.services = [{{"name": "devhub-admin", "api_token": {self.admin_token!r}}}]
c.JupyterHub.load_roles = [{{
    "name": "devhub-admin",
    "scopes": ["admin:users", "admin:servers", "admin:groups", "tokens", "read:metrics", "list:services",
               "read:services", "access:servers"],
    "services": ["devhub-admin"],
}}]
{self.extra_config}
"""

    async def start(self, timeout: float = 60.0) -> LocalHub:
        (self.workdir / "home").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "jupyterhub_config.py"
        config.write_text(self.config())
        env = {**os.environ, **self.env}
        env.pop("JUPYTERHUB_API_TOKEN", None)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            cwd=self.workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        await self.wait_healthy(timeout)
        return self

    async def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"the hub exited with {self.process.returncode}; log: {self.log_path}")
                try:
                    async with session.get(f"{self.url}/hub/health") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError(f"the hub did not become healthy in {timeout:.0f}s; log: {self.log_path}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- admin API helpers ---------------------------------------------------------------------

    async def api(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201, 202, 204)) -> Any:
        headers = {"Authorization": f"token {self.admin_token}"}
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.request(method, f"{self.api_url}/{path}", json=body) as response,
        ):
            text = await response.text()
            if response.status not in ok:
                raise RuntimeError(f"{method} {path}: {response.status} {text[:300]}")
            return await response.json() if text and response.content_type == "application/json" else None

    async def create_users(self, names: list[str], concurrency: int = 20) -> None:
        limit = asyncio.Semaphore(concurrency)

        async def one(name: str) -> None:
            async with limit:
                await self.api("POST", user_path(name), ok=(201, 409))

        await asyncio.gather(*(one(n) for n in names))

    async def start_server(
        self, user: str, name: str = "", options: dict[str, Any] | None = None, timeout: float = 60.0
    ) -> None:
        await self.api("POST", server_path(user, name), options or {})
        await self.wait_server(user, name, ready=True, timeout=timeout)

    async def server_model(self, user: str, name: str = "") -> dict[str, Any] | None:
        model = await self.api("GET", user_path(user))
        return (model.get("servers") or {}).get(name)

    async def wait_server(self, user: str, name: str = "", *, ready: bool, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = await self.server_model(user, name)
            is_ready = bool(server and server.get("ready"))
            if is_ready == ready and not (server or {}).get("pending"):
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{user}/{name} did not become {'ready' if ready else 'stopped'} in {timeout:.0f}s")

    async def __aenter__(self) -> LocalHub:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)
