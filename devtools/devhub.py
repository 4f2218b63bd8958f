"""A real JupyterHub with configurable-http-proxy on loopback, for the demo and the integration tests.

Runs ``python -m jupyterhub`` in a subprocess with a generated config in a temporary directory. Users
whose names start with ``real-`` get real ``jupyterhub-singleuser`` servers; everyone else gets a cheap
stand-in server (one tiny HTTP responder shared by all) so hundreds of servers cost nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
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
from urllib.parse import quote

import aiohttp

from culler.adapters.hub import server_path, user_path

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


_handed_out: set[int] = set()


def free_port() -> int:
    """A free loopback port, never one this process handed out before (two hubs must not share one)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port found")


def _children(pid: int) -> list[tuple[int, str]]:
    """Direct children of ``pid`` as (pid, start time) pairs; empty where /proc is missing."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append((int(stat.parent.name), fields[19]))
    return found


def _kill_if_same(pid: int, started: str) -> None:
    """SIGKILL ``pid`` if it is still the process that started at ``started`` (no pid reuse accidents)."""
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19] == started:
            os.kill(pid, signal.SIGKILL)


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
    """A hub on free loopback ports. ``extra_config`` is appended to the generated jupyterhub_config.py.

    ``env`` is laid over this process's environment for the hub; a ``None`` value removes a variable.
    ``python`` is the interpreter of the hub's environment (its JupyterHub, spawner and this service).
    """

    extra_config: str = ""
    python: str = sys.executable
    last_activity_interval: int = 5
    activity_report_interval: int = 5
    stop_delay: float = 0.0
    env: dict[str, str | None] = field(default_factory=dict)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="devhub-")))
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    port: int = field(default_factory=free_port)
    hub_port: int = field(default_factory=free_port)
    proxy_api_port: int = field(default_factory=free_port)
    proxy_token: str = field(default_factory=lambda: secrets.token_hex(16))
    process: subprocess.Popen[bytes] | None = None
    service_port: int | None = None  # the activity-culler service's port, when started by ``with_culler``
    _log_file: Any = field(default=None, init=False, repr=False)

    @classmethod
    def with_culler(
        cls,
        policy: Path | str,
        *,
        dry_run: bool | None = False,
        cull_every: float = 2,
        policy_poll: float = 1,
        env: dict[str, str | None] | None = None,
        **kwargs: Any,
    ) -> LocalHub:
        """A hub that registers the activity-culler service through the shipped snippet.

        CULLER_* variables of this process are not inherited (only ``env`` and the arguments count);
        ``dry_run=None`` leaves CULLER_DRY_RUN unset, so the snippet's default applies.
        """
        port = free_port()
        culler_env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("CULLER_")}
        culler_env.update(
            {
                "CULLER_POLICY": str(policy),
                "CULLER_CULL_EVERY": f"{cull_every:g}",
                "CULLER_POLICY_POLL": f"{policy_poll:g}",
                "CULLER_SERVICE_PORT": str(port),
            }
        )
        if dry_run is not None:
            culler_env["CULLER_DRY_RUN"] = "true" if dry_run else "false"
        culler_env.update(env or {})
        extra = f"load_subconfig({str(SNIPPET)!r})\n" + kwargs.pop("extra_config", "")
        return cls(extra_config=extra, env=culler_env, service_port=port, **kwargs)

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
        singleuser = str(Path(self.python).with_name("jupyterhub-singleuser"))
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
               "read:services", "read:roles", "access:servers"],
    "services": ["devhub-admin"],
}}]
{self.extra_config}
"""

    async def start(self, timeout: float = 60.0) -> LocalHub:
        (self.workdir / "home").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "jupyterhub_config.py"
        config.write_text(self.config())
        env = {k: v for k, v in {**os.environ, **self.env}.items() if v is not None}
        env.pop("JUPYTERHUB_API_TOKEN", None)
        self._log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [self.python, "-m", "jupyterhub", "-f", str(config)],
            cwd=self.workdir,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            await self.wait_healthy(timeout)
        except BaseException:
            await asyncio.to_thread(self.stop)
            raise
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
        """SIGTERM the hub (it stops its servers, services and proxy); whatever it leaves behind is killed."""
        try:
            if self.process is None or self.process.poll() is not None:
                return
            # services, the proxy and single-user servers run in their own sessions: remember them
            children = _children(self.process.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
            deadline = time.monotonic() + 5
            while children and time.monotonic() < deadline:
                children = [(pid, started) for pid, started in children if Path(f"/proc/{pid}").exists()]
                time.sleep(0.1)
            for pid, started in children:
                _kill_if_same(pid, started)
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def log_text(self, since: int = 0) -> str:
        """The hub's log (its services and servers write there too), from byte offset ``since``."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace")

    def log_offset(self) -> int:
        """The log's current end: pass it as ``since`` to look only at what comes later."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    async def wait_log(self, pattern: str | re.Pattern[str], timeout: float = 30.0, since: int = 0) -> re.Match[str]:
        """Wait for a log line matching ``pattern`` (a regex) after byte offset ``since``."""
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.log_text(since))
            if found:
                return found
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the hub exited with {self.process.returncode}; log: {self.log_path}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no log line matching {regex.pattern!r} in {timeout:.0f}s; log: {self.log_path}")
            await asyncio.sleep(0.2)

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

    async def get(self, url: str, token: str | None = None) -> tuple[int, Any]:
        """GET any URL (through the proxy: ``hub.url + "/..."``): status and JSON (or text) body."""
        headers = {"Authorization": f"token {token}"} if token else {}
        async with aiohttp.ClientSession(headers=headers) as session, session.get(url) as response:
            text = await response.text()
            try:
                return response.status, await response.json(content_type=None)
            except ValueError:
                return response.status, text

    def service_url(self, name: str = "activity-culler") -> str:
        """A hub-managed service's prefix, reached through the proxy."""
        return f"{self.url}/services/{name}/"

    async def service_health(self, name: str = "activity-culler") -> tuple[int, Any]:
        """The activity-culler service's ``health`` endpoint through the proxy (status, body)."""
        return await self.get(self.service_url(name) + "health")

    async def wait_service(self, name: str = "activity-culler", timeout: float = 30.0) -> tuple[int, Any]:
        """Wait until the service answers ``health`` itself (200 or 503), not the proxy for it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, body = await self.service_health(name)
                if status in (200, 503) and isinstance(body, dict) and "status" in body:
                    return status, body
            except aiohttp.ClientError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"service {name} did not answer in {timeout:.0f}s; log: {self.log_path}")
            await asyncio.sleep(0.2)

    async def user_token(self, user: str, note: str = "devhub") -> str:
        """A new API token for ``user`` (the user's own scopes)."""
        model = await self.api("POST", f"{user_path(user)}/tokens", {"note": note}, ok=(200, 201))
        return str(model["token"])

    async def create_users(self, names: list[str], concurrency: int = 20) -> None:
        limit = asyncio.Semaphore(concurrency)

        async def one(name: str) -> None:
            async with limit:
                await self.api("POST", user_path(name), ok=(201, 409))

        await asyncio.gather(*(one(n) for n in names))

    async def add_to_group(self, group: str, users: list[str]) -> None:
        """Create ``group`` if needed and add ``users`` (who must exist) to it."""
        await self.api("POST", f"groups/{quote(group, safe='')}", ok=(201, 409))
        await self.api("POST", f"groups/{quote(group, safe='')}/users", {"users": users}, ok=(200,))

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

    # -- homes and the proxy's API (helpers of the settle and proxy-activity tests) -----------------

    @property
    def home_template(self) -> str:
        """Where the spawner puts a user's home: the tree-scan probe's template (this spawner uses the
        hub's name as it is, unlike KubeSpawner)."""
        return str(self.workdir / "home" / "{unescaped_username}")

    def home(self, user: str) -> Path:
        """A user's home under this hub (real servers get it created; cheap ones do not)."""
        return self.workdir / "home" / user

    @property
    def proxy_api_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_api_port}"

    async def proxy_routes(self) -> dict[str, Any]:
        """configurable-http-proxy's routes (``GET /api/routes`` with the proxy token): path -> route data."""
        headers = {"Authorization": f"token {self.proxy_token}"}
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.get(f"{self.proxy_api_url}/api/routes") as response,
        ):
            if response.status != 200:
                raise RuntimeError(f"GET {self.proxy_api_url}/api/routes: {response.status}")
            routes: dict[str, Any] = await response.json(content_type=None)
            return routes

    def kill_leftovers(self) -> list[int]:
        """SIGKILL processes still running in this hub's workdir (its proxy, services, servers), for when
        the hub exited on its own (e.g. a managed service failed at start-up): ``stop`` finds them only
        as children of a live hub, and the proxy runs in its own session, so it would outlive the test."""
        root = str(self.workdir.resolve())
        killed = []
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError, ValueError):
                cwd = os.readlink(proc / "cwd").removesuffix(" (deleted)")
                pid = int(proc.name)
                if pid != os.getpid() and (cwd == root or cwd.startswith(root + os.sep)):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        return killed
