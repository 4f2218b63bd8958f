"""Helpers of the real-hub tests: a hub with the culler registered by the shipped snippet, and
helpers to rewrite its policy, read the service's structured log lines and wait for conditions.
(A module rather than conftest.py so that test modules can import it under a unique name.)

Hubs are started by synchronous module-scoped fixtures (``asyncio.run``), so every test keeps its own
event loop; ``LocalHub`` holds no loop-bound state between calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest

# the generic process helpers, re-exported for the real-hub tests
from process_support import culler_env as culler_env
from process_support import start_process as start_process
from process_support import stop_process as stop_process
from process_support import wait_for as wait_for

from culler.policy.model import policy_hash
from devtools.devhub import LocalHub, find_proxy

SERVICE = "activity-culler"
REPO = Path(__file__).resolve().parents[2]
PLUGIN_SRC = REPO / "tests" / "plugin_pkg"

# A service line in the text format: "2025-01-01 12:00:00,123 INFO    culler.cycle: server stopped user=a ..."
_LINE = re.compile(r"^\d{4}-\d\d-\d\d \S+ (?P<level>[A-Z]+)\s+(?P<logger>culler[\w.]*): (?P<rest>.*)$")
_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_event(line: str) -> dict[str, Any] | None:
    """One service log line as ``{"event": name, "level": ..., field: value, ...}``; None for other lines."""
    found = _LINE.match(line)
    if not found:
        return None
    parts = re.split(r" (?=\w+=)", found["rest"], maxsplit=1)
    name = parts[0]
    fields = parts[1] if len(parts) > 1 else ""
    event: dict[str, Any] = {"event": name, "level": found["level"], "logger": found["logger"]}
    for key, value in _FIELD.findall(fields):
        event[key] = json.loads(value) if value.startswith('"') else value
    return event


def write_atomically(path: Path, text: str) -> None:
    """Replace a file the way an editor or a ConfigMap update does: write aside, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class CullerHub:
    """A ``LocalHub`` running the activity-culler service, with its policy file and log helpers.

    ``policy`` None: the service runs without a policy file (flags only); the policy helpers then fail.
    """

    def __init__(self, hub: LocalHub, policy: Path | None) -> None:
        self.hub = hub
        self._policy = policy

    def __getattr__(self, name: str) -> Any:
        return getattr(self.hub, name)

    # -- policy ------------------------------------------------------------------------------------

    @property
    def policy(self) -> Path:
        """The service's policy file; an error for a hub whose service runs without one."""
        if self._policy is None:
            raise AssertionError("this hub's service runs without a policy file")
        return self._policy

    def write_policy(self, text: str) -> str:
        """Atomically replace the policy file; returns the content hash the service will report."""
        write_atomically(self.policy, text)
        return policy_hash(text)

    async def health(self) -> tuple[int, Any]:
        return await self.hub.service_health(SERVICE)

    async def wait_policy(self, text: str, timeout: float = 20.0) -> dict[str, Any]:
        """Wait until the service reports ``text`` as the policy in force and is healthy."""
        digest = policy_hash(text)

        async def in_force() -> dict[str, Any] | None:
            status, body = await self.health()
            ok = status == 200 and isinstance(body, dict) and body.get("policy_hash") == digest
            return body if ok else None

        return await wait_for(in_force, timeout, f"policy {digest} in force with health 200")

    # -- log -----------------------------------------------------------------------------------------

    def events(self, name: str | None = None, since: int = 0, **fields: str) -> list[dict[str, Any]]:
        """The service's log events after byte offset ``since``, optionally filtered by name and fields."""
        text = self.hub.log_text(since)
        lines = text.split("\n")[:-1]  # the last piece is an unfinished line (or empty)
        found = []
        for line in lines:
            event = parse_event(line)
            if event is None or (name is not None and event["event"] != name):
                continue
            if all(event.get(key) == value for key, value in fields.items()):
                found.append(event)
        return found

    async def wait_event(self, name: str, timeout: float = 30.0, since: int = 0, **fields: str) -> dict[str, Any]:
        async def seen() -> dict[str, Any] | None:
            self._check_alive()
            events = self.events(name, since, **fields)
            return events[0] if events else None

        return await wait_for(seen, timeout, f"log event {name!r} with {fields} (log: {self.hub.log_path})")

    async def wait_cycles(self, count: int, since: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` cycles finished after byte offset ``since``."""

        async def done() -> bool:
            self._check_alive()
            return len(self.events("cycle done", since)) >= count

        await wait_for(done, timeout, f"{count} completed cycles")

    def _check_alive(self) -> None:
        process = self.hub.process
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the hub exited with {process.returncode}; log: {self.hub.log_path}")

    def service_process(self) -> tuple[int, dict[str, str]] | None:
        """The managed service's process (``python -m culler`` serving this hub's service port): its pid
        and environment, as the hub started it; None while it is not running."""
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                command = (environ.parent / "cmdline").read_bytes().split(b"\0")
                if b"culler" not in command or b"-m" not in command:
                    continue
                variables = dict(v.split("=", 1) for v in environ.read_text().split("\0") if "=" in v)
            except OSError:
                continue
            if variables.get("JUPYTERHUB_SERVICE_URL", "").rstrip("/").endswith(f":{self.hub.service_port}"):
                return int(environ.parent.name), variables
        return None

    async def restart_service(self, timeout: float = 30.0) -> None:
        """Stop the service's process (SIGTERM); the hub starts a managed service again when it exits.
        Returns once a new process answers the hub's health check."""
        found = self.service_process()
        assert found is not None, "the service's process was not found"
        os.kill(found[0], signal.SIGTERM)

        async def started_again() -> bool:
            again = self.service_process()
            return again is not None and again[0] != found[0]

        await wait_for(started_again, timeout, "the hub to start the service again")
        await self.hub.wait_service()

    def service_token(self) -> str:
        """The main token the hub gave the managed service (read from the service's environment)."""
        found = self.service_process()
        assert found is not None, "the service's process was not found"
        return found[1]["JUPYTERHUB_API_TOKEN"]

    # -- servers -------------------------------------------------------------------------------------

    async def is_running(self, user: str, name: str = "", *, user_may_be_gone: bool = False) -> bool:
        """Whether ``user``'s server ``name`` is ready. A user the hub does not know is an error, unless
        ``user_may_be_gone`` (the service deletes users): then the user has no server running."""
        if user_may_be_gone:
            model = await self.hub.api("GET", f"users/{quote(user, safe='')}", ok=(200, 404))
            server = ((model or {}).get("servers") or {}).get(name)
        else:
            server = await self.hub.server_model(user, name)
        return bool(server and server.get("ready"))

    async def start_servers(self, *specs: tuple[str, str, dict[str, Any] | None]) -> float:
        """Create the users and start (user, server name, user_options) concurrently; returns the
        monotonic time when the last one was ready."""
        await self.hub.create_users(sorted({user for user, _, _ in specs}))
        await asyncio.gather(*(self.hub.start_server(user, name, options) for user, name, options in specs))
        return time.monotonic()


def start_culler_hub(workdir: Path, policy_text: str, **kwargs: Any) -> Iterator[CullerHub]:
    """Generator body for module fixtures: a hub with the culler under ``policy_text``, always stopped."""
    yield from start_culler_hub_with(workdir, policy_text, lambda hub: {}, **kwargs)


def install_plugin_package(target: Path) -> str:
    """Install tests/plugin_pkg into ``target`` (a directory for PYTHONPATH); returns how.

    pip builds it offline when setuptools can make wheels here; otherwise (setuptools without the
    ``wheel`` package, no network) the same layout is written by hand from its pyproject.toml: the
    module and a ``.dist-info`` with METADATA and entry_points.txt, which is all importlib.metadata reads.
    """
    source = target.parent / "plugin_src"
    shutil.copytree(PLUGIN_SRC, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    result = subprocess.run([*command, "--target", str(target), str(source)], capture_output=True, text=True)
    if result.returncode == 0:
        return "pip"
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "culler_test_plugins", target / "culler_test_plugins", dirs_exist_ok=True)
    dist = target / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{key} = {value}" for key, value in entries.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    (dist / "INSTALLER").write_text("culler-tests\n")
    errors = [line.strip() for line in result.stderr.splitlines() if "error:" in line] or ["pip failed"]
    return f"a hand-written dist-info (pip could not build offline: {errors[0]})"


def start_culler_hub_with(
    workdir: Path, policy_text: str, env_for: Callable[[LocalHub], dict[str, str | None]], **kwargs: Any
) -> Iterator[CullerHub]:
    """Like ``start_culler_hub``, with service settings that depend on the hub being started: ``env_for``
    gets each attempt's ``LocalHub`` (its workdir, proxy port and token) and returns CULLER_* variables
    to add to the hub's environment (the snippet passes them on to the service)."""
    policy = workdir / "policy.yaml"
    policy.write_text(policy_text)

    def make(attempt: int) -> CullerHub:
        hub = LocalHub.with_culler(policy, workdir=workdir / f"hub-{attempt}", **kwargs)
        hub.env.update(env_for(hub))
        return CullerHub(hub, policy)

    yield from run_hub(make)


HubT = TypeVar("HubT", bound=CullerHub)


async def service_up(hub: CullerHub) -> None:
    """The service answers its health check through the hub (the default readiness of ``run_hub``)."""
    await hub.hub.wait_service(SERVICE)


def run_hub(
    make: Callable[[int], HubT],
    ready: Callable[[HubT], Awaitable[object]] = service_up,
    retry_on: tuple[type[Exception], ...] = (RuntimeError, TimeoutError),
) -> Iterator[HubT]:
    """Generator body for module fixtures: start the hub ``make(attempt)`` builds and wait until
    ``ready``, at most twice (a failure of ``retry_on`` on the first attempt tries a new hub); yields it
    and always stops it. Skips when configurable-http-proxy is missing."""
    try:
        find_proxy()
    except RuntimeError as error:
        pytest.skip(str(error))
    for attempt in (1, 2):
        # free ports are picked before the hub binds them; another process may take one meanwhile
        hub = make(attempt)
        try:
            asyncio.run(hub.hub.start())
            asyncio.run(ready(hub))
            break
        except retry_on:
            hub.hub.stop()
            hub.hub.kill_leftovers()  # a hub that exited by itself leaves its proxy running
            if attempt == 2:
                raise
    try:
        yield hub
    finally:
        hub.hub.stop()
