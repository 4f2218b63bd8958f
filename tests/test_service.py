"""The real service process (``python -m culler``) against a fake hub served from the test."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakehub import API, FakeHub, free_port
from process_support import culler_env
from process_support import wait_for as poll

from culler.adapters.policy_store import PolicyStore
from culler.engine.cycle import Culler
from culler.settings import Settings
from culler.web.app import make_app
from culler.wiring import Service as AppService
from culler.wiring import build_service, cycle_options, make_hub

TOKEN = "svc-tok-9f3c1e7a5b2d4c6e8f0a"  # distinctive: grep-able in output
USERS = API + "/users"
GOOD_POLICY = "version: 1\ndefaults:\n  idle: 1h\n"
BAD_POLICY = "version: 1\ndefaults:\n  idle: whenever\n"


def ago(**delta: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(**delta)


async def wait_for(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll ``check`` (plain or async) until it returns something truthy; fail with ``what`` at the deadline."""
    return await poll(check, timeout, what, interval=0.1)


class Service:
    """One ``python -m culler`` process; output goes to files so no pipe can fill up."""

    def __init__(
        self, tmp_path: Path, hub_url: str, *args: str, token: str = TOKEN, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.stdout_path = tmp_path / f"stdout-{self.port}.log"
        self.stderr_path = tmp_path / f"stderr-{self.port}.log"
        env = culler_env(JUPYTERHUB_API_URL=hub_url, JUPYTERHUB_API_TOKEN=token, PYTHONUNBUFFERED="1", **(env or {}))
        command = [sys.executable, "-m", "culler", f"--bind-url={self.base}", "--cull-every=1", *args]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=err, cwd=tmp_path)

    @property
    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")

    async def get(self, path: str) -> tuple[int, dict[str, Any]] | None:
        """Status and JSON body, or None while nothing answers."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
                session.get(self.base + path) as response,
            ):
                return response.status, json.loads(await response.read())
        except (aiohttp.ClientError, TimeoutError):
            assert self.proc.poll() is None, f"the service exited ({self.proc.returncode}):\n{self.output}"
            return None

    async def health_is(self, status: int, predicate: Callable[[dict[str, Any]], bool] = lambda body: True) -> Any:
        async def check() -> dict[str, Any] | None:
            answer = await self.get("/health")
            if answer is not None and answer[0] == status and predicate(answer[1]):
                return answer[1]
            return None

        return await wait_for(check, f"health {status}")

    async def assert_live(self) -> None:
        answer = await self.get("/live")
        assert answer is not None and answer[0] == 200, answer

    async def wait_exit(self, timeout: float) -> int:
        await wait_for(lambda: self.proc.poll() is not None, "the process to exit", timeout)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
async def fake() -> AsyncIterator[FakeHub]:
    hub = FakeHub(token=TOKEN)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.close()


@pytest.fixture
def start(tmp_path: Path) -> Any:
    services: list[Service] = []

    def starter(hub_url: str, *args: str, token: str = TOKEN, env: dict[str, str] | None = None) -> Service:
        service = Service(tmp_path, hub_url, *args, token=token, env=env)
        services.append(service)
        return service

    yield starter
    for service in services:
        service.kill()


def idle_and_active(fake: FakeHub) -> None:
    fake.add_server("idle-user", last_activity=ago(hours=3))
    fake.add_server("active-user", last_activity=ago(minutes=1))


async def stopped(fake: FakeHub, user: str) -> bool:
    return (user, "") in fake.deleted_servers()


def listings(fake: FakeHub) -> int:
    return len(fake.calls("GET", USERS))


async def test_health_follows_the_hub(fake: FakeHub, start: Any) -> None:
    idle_and_active(fake)
    service = start(fake.url, "--timeout=3600")
    body = await service.health_is(200, lambda b: b.get("status") == "ok")
    assert body["cycles"] >= 1
    await wait_for(lambda: stopped(fake, "idle-user"), "the idle server to be stopped")
    assert fake.running("active-user")
    await service.assert_live()

    fake.fail("GET", USERS, status=500, times=-1)
    body = await service.health_is(503, lambda b: "listing users failed" in b.get("reason", ""))
    assert "500" in body["reason"]
    await service.assert_live()

    fake.faults.clear()
    await service.health_is(200, lambda b: b.get("status") == "ok" and b.get("last_error") is None)


KEEP_POLICY = """\
version: 1
defaults: {idle: 1h, keep: {step: 1d, max: 3d}}
rules:
  - {id: no-keep, match: {users: [quick-*]}, keep: null}
"""


@pytest.mark.parametrize("fault", ["corrupt", "newer schema"])
async def test_a_database_that_cannot_be_read_stops_nothing_that_could_be_kept(
    fake: FakeHub, start: Any, tmp_path: Path, fault: str
) -> None:
    database = tmp_path / "culler.sqlite"
    if fault == "corrupt":
        database.write_bytes(b"not a database at all " * 200)
    else:
        with sqlite3.connect(database) as raw:
            raw.execute("PRAGMA user_version = 99")
    before = database.read_bytes()
    policy = tmp_path / "keep.yaml"
    policy.write_text(KEEP_POLICY)
    fake.add_server("idle-keepable", last_activity=ago(hours=3))
    fake.add_server("quick-idle", last_activity=ago(hours=3))
    service = start(fake.url, f"--policy={policy}", env={"CULLER_DATABASE": str(database)})
    body = await service.health_is(200, lambda b: b.get("status") == "ok" and b.get("cycles", 0) >= 3)
    assert "keeps cannot be read" in body["degraded"]["keeps"] and str(database) in body["degraded"]["keeps"]
    assert await stopped(fake, "quick-idle"), "a server whose rule allows no keep is judged as before"
    assert fake.running("idle-keepable"), "stopped although a keep the service cannot read may hold it"
    assert database.read_bytes() == before, "the unreadable database was changed"
    assert service.output.count("cannot open the database") == 1


async def test_health_while_the_hub_is_down(fake: FakeHub, start: Any) -> None:
    idle_and_active(fake)
    port = int(fake.url.split(":")[2].split("/")[0])
    service = start(fake.url, "--timeout=3600")
    await service.health_is(200, lambda b: b.get("status") == "ok")

    await fake.close()
    await service.health_is(503, lambda b: "cannot reach the hub" in b.get("reason", ""))
    await service.assert_live()

    await fake.start(port)
    await service.health_is(200, lambda b: b.get("status") == "ok")


async def test_invalid_policy_at_start_then_fixed(fake: FakeHub, start: Any, tmp_path: Path) -> None:
    idle_and_active(fake)
    policy = tmp_path / "policy.yaml"
    policy.write_text(BAD_POLICY)
    service = start(fake.url, f"--policy={policy}", "--policy-poll=0.5")

    body = await service.health_is(503, lambda b: b.get("cycles", 0) >= 2)
    assert "policy" in body["reason"] and "whenever" in body["reason"]
    await service.assert_live()
    assert fake.deletes == []
    assert service.proc.poll() is None

    policy.write_text(GOOD_POLICY)
    await service.health_is(200, lambda b: b.get("status") == "ok")
    await wait_for(lambda: stopped(fake, "idle-user"), "the idle server to be stopped")
    assert fake.running("active-user")


async def test_once_succeeds(fake: FakeHub, start: Any) -> None:
    idle_and_active(fake)
    service = start(fake.url, "--timeout=3600", "--once")
    assert await service.wait_exit(30) == 0, service.output
    assert fake.deleted_servers() == [("idle-user", "")]
    assert listings(fake) == 1


async def test_once_fails_when_the_hub_is_down(start: Any) -> None:
    service = start(f"http://127.0.0.1:{free_port()}{API}", "--timeout=3600", "--once")
    code = await service.wait_exit(30)
    assert code != 0
    assert "cannot reach the hub" in service.output


async def test_once_fails_on_an_invalid_policy(fake: FakeHub, start: Any, tmp_path: Path) -> None:
    idle_and_active(fake)
    policy = tmp_path / "policy.yaml"
    policy.write_text(BAD_POLICY)
    service = start(fake.url, f"--policy={policy}", "--once")
    assert await service.wait_exit(30) != 0
    assert fake.deletes == []


async def test_sigterm_stops_the_process(fake: FakeHub, start: Any) -> None:
    idle_and_active(fake)
    service = start(fake.url, "--timeout=3600")
    await service.health_is(200, lambda b: b.get("status") == "ok")
    service.proc.send_signal(signal.SIGTERM)
    assert await service.wait_exit(10) == 0
    assert "culler.app: stopped" in service.output


async def test_sigterm_while_the_hub_is_failing(fake: FakeHub, start: Any) -> None:
    fake.fail("GET", USERS, status=503, times=-1)
    service = start(fake.url, "--timeout=3600")
    await wait_for(lambda: listings(fake) >= 2, "the service to retry the listing")
    service.proc.send_signal(signal.SIGTERM)
    assert await service.wait_exit(10) == 0
    assert "culler.app: stopped" in service.output


async def test_sigterm_lets_an_in_flight_stop_finish(fake: FakeHub, start: Any) -> None:
    idle_and_active(fake)
    fake.stop_delay = 2.0  # within the shutdown timeout (5 s)
    service = start(fake.url, "--timeout=3600")
    await wait_for(lambda: fake.deletes, "the DELETE to arrive")
    service.proc.send_signal(signal.SIGTERM)
    assert await service.wait_exit(15) == 0
    output = service.output
    assert "server stopped" in output and "user=idle-user" in output
    assert "interrupted" not in output
    assert not fake.running("idle-user")


async def test_sigterm_cuts_a_stop_that_takes_too_long(fake: FakeHub, start: Any) -> None:
    idle_and_active(fake)
    fake.stop_delay = 60.0  # the hub never answers the DELETE in time
    service = start(fake.url, "--timeout=3600")
    await wait_for(lambda: fake.deletes, "the DELETE to arrive")
    service.proc.send_signal(signal.SIGTERM)
    assert await service.wait_exit(15) == 0  # shutdown_timeout (5 s) for the in-flight stop, then cancelled
    output = service.output
    assert "stop interrupted by shutdown" in output
    assert "cycle cancelled at shutdown" in output
    assert "raised an exception" not in output
    assert "culler.app: stopped" in output
    assert len(fake.deletes) == 1


async def test_the_token_never_appears_in_output(fake: FakeHub, start: Any) -> None:
    idle_and_active(fake)
    fake.token = "the-hub-expects-another-token"  # the service's token is rejected: 401
    service = start(fake.url, "--timeout=3600", "--log-level=DEBUG")
    body = await service.health_is(503, lambda b: b.get("cycles", 0) >= 2)
    assert "401" in body["reason"] and "token" in body["reason"] and TOKEN not in json.dumps(body)

    # A broken proxy echoing the request headers back in its error pages.
    fake.token = TOKEN
    fake.fail("GET", USERS, status=500, times=-1, body=f"upstream error; request had Authorization: token {TOKEN}")
    before = listings(fake)
    await wait_for(lambda: listings(fake) >= before + 4, "more failing listings")
    service.proc.send_signal(signal.SIGTERM)
    assert await service.wait_exit(10) == 0
    output = service.output
    assert "401" in output and "500" in output  # the errors were logged...
    assert "upstream error" in output
    assert TOKEN not in output  # ...without the token
    assert TOKEN[:10] not in output


async def test_the_token_never_appears_in_once_output(fake: FakeHub, start: Any) -> None:
    fake.fail("GET", USERS, status=401, times=-1, body=f"bad token {TOKEN}")
    service = start(fake.url, "--timeout=3600", "--once")
    assert await service.wait_exit(30) != 0
    assert "401" in service.output
    assert TOKEN[:10] not in service.output


# -- in-process: the web endpoints and a crashing cycle --------------------------------------------------


def make_service(tmp_path: Path, hub_url: str = "http://127.0.0.1:9/hub/api") -> AppService:
    policy = tmp_path / "policy.yaml"
    policy.write_text(GOOD_POLICY)
    settings = Settings(url=hub_url, api_token=TOKEN, policy=policy, cull_every=1)
    return build_service(settings, PolicyStore(path=policy), {}, {})


async def test_endpoints_live_under_the_service_prefix(aiohttp_client: Any, tmp_path: Path) -> None:
    service = make_service(tmp_path)
    client = await aiohttp_client(make_app("/services/activity-culler/", service.health_status))
    unread = await client.get("/services/activity-culler/health")
    assert unread.status == 503
    assert (await unread.json())["reason"] == "no valid policy: not read yet"
    await service.refresh_policy()
    health = await client.get("/services/activity-culler/health")
    assert health.status == 200
    body = await health.json()
    assert body["status"] == "starting" and body["cycles"] == 0
    assert (await client.get("/services/activity-culler/live")).status == 200
    assert (await client.get("/services/activity-culler/")).status == 200
    assert (await client.get("/health")).status == 404
    await service.culler.hub.close()


async def test_a_crashing_cycle_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    service = make_service(tmp_path)

    async def explode(policy: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(service.culler, "run", explode)
    try:
        assert await service.cycle() is None
        ok, body = service.health_status()
    finally:
        await service.culler.hub.close()
    assert not ok
    assert "cycle crashed" in str(body["reason"]) and "boom" in str(body["reason"])


async def test_a_taken_port_does_not_end_the_service(fake: FakeHub, start: Any) -> None:
    """Exiting would make the hub restart the service in a tight loop: keep culling, retry the bind."""
    import socket

    idle_and_active(fake)
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        port = free_port()
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        # A later --bind-url wins over the one the helper passes.
        service = start(fake.url, "--timeout=3600", f"--bind-url=http://127.0.0.1:{port}")
        await wait_for(lambda: stopped(fake, "idle-user"), "the idle server to be stopped without a listener")
        await wait_for(lambda: "cannot listen" in service.output, "the bind failure to be logged")
        assert service.proc.poll() is None, service.output
        assert service.output.count("cannot listen") == 1
    finally:
        blocker.close()


async def test_the_open_metrics_listener_needs_no_token(fake: FakeHub, start: Any) -> None:
    idle_and_active(fake)
    port = free_port()
    service = start(fake.url, "--timeout=3600", f"--metrics-bind-url=http://127.0.0.1:{port}")
    await service.health_is(200, lambda b: b.get("status") == "ok")

    async def scraped() -> str | None:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/metrics") as answer,
            ):
                return await answer.text() if answer.status == 200 else None
        except aiohttp.ClientError:
            return None

    text = await wait_for(scraped, "the open metrics port to answer")
    assert 'activity_culler_cycles_total{result="ok"}' in text
    assert TOKEN not in text
    answer = await service.get("/metrics")  # under the prefix, a token is still required
    assert answer is not None and answer[0] == 401


def test_the_probe_timeout_setting_reaches_the_settler() -> None:
    settings = Settings(api_token="t", probe_timeout=7)
    culler = Culler(make_hub(settings), cycle_options(settings))
    assert culler.settler.probe_timeout == 7


async def test_a_token_without_a_scope_every_cycle_needs_is_not_ready_and_stops_nothing(
    fake: FakeHub, start: Any
) -> None:
    idle_and_active(fake)
    fake.scopes = ["list:users", "read:servers", "read:users:activity"]  # no delete:servers
    service = start(fake.url, "--timeout=3600")
    body = await service.health_is(503, lambda b: b.get("cycles", 0) >= 3)
    assert body["reason"] == "the token lacks delete:servers (to stop servers)", body
    assert not fake.deletes and not fake.calls("GET", USERS)  # nothing listed, nothing stopped
    fake.scopes.append("delete:servers")  # the admin fixes the role: the next cycle sees it
    await service.health_is(200, lambda b: b.get("status") == "ok")
    await wait_for(lambda: fake.deleted_servers() == [("idle-user", "")], "the idle server's stop")
