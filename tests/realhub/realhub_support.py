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
import subprocess
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from culler.devhub import LocalHub, find_proxy
from culler.policy import policy_hash

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


async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


def write_atomically(path: Path, text: str) -> None:
    """Replace a file the way an editor or a ConfigMap update does: write aside, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class CullerHub:
    """A ``LocalHub`` running the activity-culler service, with its policy file and log helpers."""

    def __init__(self, hub: LocalHub, policy: Path) -> None:
        self.hub = hub
        self.policy = policy

    def __getattr__(self, name: str) -> Any:
        return getattr(self.hub, name)

    # -- policy ------------------------------------------------------------------------------------

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

    # -- servers -------------------------------------------------------------------------------------

    async def is_running(self, user: str, name: str = "") -> bool:
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


def culler_env(**extra: str) -> dict[str, str]:
    """This process's environment without CULLER_* and hub variables, plus ``extra``: for CLI runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CULLER_", "JUPYTERHUB_"))}
    env.update(extra)
    return env


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
    try:
        find_proxy()
    except RuntimeError as error:
        pytest.skip(str(error))
    policy = workdir / "policy.yaml"
    policy.write_text(policy_text)
    for attempt in (1, 2):
        # free ports are picked before the hub binds them; another process may take one meanwhile
        hub = LocalHub.with_culler(policy, workdir=workdir / f"hub-{attempt}", **kwargs)
        hub.env.update(env_for(hub))
        try:
            asyncio.run(hub.start())
            asyncio.run(hub.wait_service(SERVICE))
            break
        except (RuntimeError, TimeoutError):
            hub.stop()
            hub.kill_leftovers()  # a hub that exited by itself leaves its proxy running
            if attempt == 2:
                raise
    try:
        yield CullerHub(hub, policy)
    finally:
        hub.stop()


def start_process(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A helper process of a test (writer, Prometheus...) in its own session, output to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate a process this test started (by its own handle), kill it if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
