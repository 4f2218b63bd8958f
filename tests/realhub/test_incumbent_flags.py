"""Drop-in on a real hub: this service registered the way Zero-to-JupyterHub registers jupyterhub-idle-culler
(service "jupyterhub-idle-culler", no policy file, the incumbent's flags, the chart's role) culls a real
JupyterHub 6 + configurable-http-proxy.

The command line is the chart's with seconds instead of an hour: ``--url=http://127.0.0.1:<hub port>/hub/api
--timeout=8 --cull-every=1 --concurrency=10 --cull-users --remove-named-servers``. The only addition is
CULLER_BIND_URL in the service's environment, so that its health port is free on a shared machine.
Times are checked from both sides: a server is stopped, and it was seen running until shortly before
its timeout (so it was not stopped early). A user whose last server is stopped is deleted in the cycle of
that stop, like the incumbent, although the hub sets the user's last_activity to the stop's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest
from realhub_support import CullerHub, run_hub

from devtools.devhub import LocalHub, free_port

pytestmark = pytest.mark.realhub

NAME = "jupyterhub-idle-culler"  # the chart's service and role name
TIMEOUT = 8  # seconds; the hub refreshes activity from the proxy every second here
SLACK = 2.0  # seconds of polling and timestamp granularity allowed when checking "not before its timeout"
# Zero-to-JupyterHub's role for the culler, with admin:users as the chart adds it for cull.users
SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers", "admin:users"]


def command_line(hub: LocalHub) -> list[str]:
    return [
        sys.executable,
        "-m",
        "culler",
        f"--url=http://127.0.0.1:{hub.hub_port}/hub/api",
        f"--timeout={TIMEOUT}",
        "--cull-every=1",
        "--concurrency=10",
        "--cull-users",
        "--remove-named-servers",
    ]


def service_config(hub: LocalHub) -> str:
    service = {
        "name": NAME,
        "command": command_line(hub),
        "environment": {"CULLER_BIND_URL": f"http://127.0.0.1:{free_port()}"},
    }
    role = {"name": NAME, "scopes": SCOPES, "services": [NAME]}
    return f"c.JupyterHub.services.append({service!r})\nc.JupyterHub.load_roles.append({role!r})\n"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CullerHub]:
    workdir = tmp_path_factory.mktemp("incumbent-flags")

    def make(attempt: int) -> CullerHub:
        local = LocalHub(workdir=workdir / f"hub-{attempt}", last_activity_interval=1)
        local.extra_config = service_config(local)
        return CullerHub(local, None)  # no policy file: only the log helpers are used

    async def first_cycle(hub: CullerHub) -> None:
        await hub.wait_cycles(1, since=0, timeout=60)

    yield from run_hub(make, first_cycle, retry_on=(RuntimeError, TimeoutError, AssertionError))


class Watch:
    """Polls conditions together; remembers when each was last seen true and first seen false."""

    def __init__(self, checks: dict[str, Callable[[], Awaitable[bool]]]) -> None:
        self.checks = checks
        self.last_seen: dict[str, float] = {}
        self.gone_at: dict[str, float] = {}

    async def until_all_gone(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.gone_at) < len(self.checks):
            for name, check in self.checks.items():
                if name in self.gone_at:
                    continue
                present = await check()
                now = time.monotonic()
                if present:
                    self.last_seen[name] = now
                else:
                    self.gone_at[name] = now
            if time.monotonic() > deadline:
                missing = sorted(set(self.checks) - set(self.gone_at))
                raise AssertionError(f"still there after {timeout:.0f}s: {missing}")
            await asyncio.sleep(0.2)


async def user_exists(hub: CullerHub, user: str) -> bool:
    model = await hub.api("GET", f"users/{user}", ok=(200, 404))
    return model is not None and model.get("name") == user


async def server_listed(hub: CullerHub, user: str, name: str) -> bool:
    """Whether the hub still knows the server, running or stopped (a removed named server is gone)."""
    model = await hub.api("GET", f"users/{user}?include_stopped_servers=1", ok=(200, 404))
    return model is not None and name in (model.get("servers") or {})


@contextlib.asynccontextmanager
async def browsing(hub: CullerHub, user: str) -> AsyncIterator[list[float]]:
    """Requests through the proxy to ``user``'s default server twice a second (the browser's path);
    yields a one-item list holding the monotonic time of the latest answered request."""
    last = [time.monotonic()]
    url = f"{hub.url}/user/{user}/"

    async def loop() -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                async with session.get(url, allow_redirects=False) as response:
                    assert response.status == 200, f"GET {url} through the proxy: {response.status}"
                    await response.read()
                last[0] = time.monotonic()
                await asyncio.sleep(0.5)

    task = asyncio.create_task(loop())
    try:
        yield last
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # re-raises what failed in the loop


def cycles_of_stop_and_deletion(hub: CullerHub, user: str, since: int) -> tuple[int | None, int | None]:
    """The number of the service's cycle (counted from ``since``) in which it last stopped a server of
    ``user``, and the one in which it deleted ``user``; None for what it did not do."""
    cycle, stopped, deleted = 0, None, None
    for event in hub.events(since=since):
        if event["event"] == "cycle done":
            cycle += 1
        elif event["event"] == "server stopped" and event.get("user") == user:
            stopped = cycle
        elif event["event"] == "user deleted" and event.get("user") == user:
            deleted = cycle
    return stopped, deleted


def hub_requests(hub: CullerHub, since: int) -> list[tuple[str, str, str]]:
    """(status, method, path) of the service's requests in the hub's log after ``since``."""
    pattern = rf"\b(\d{{3}}) (\w+) (\S+) \({NAME}@127\.0\.0\.1\)"
    return re.findall(pattern, hub.log_text(since))


async def test_incumbent_command_line_culls_a_real_hub(hub: CullerHub) -> None:
    since = hub.log_offset()
    started = [line for line in hub.log_text().splitlines() if "starting jupyterhub-activity-culler" in line]
    assert started and f"'timeout': '{TIMEOUT:.1f}'" in started[-1] and "'cull_users': 'True'" in started[-1]
    assert "'remove_named_servers': 'True'" in started[-1] and "'policy'" not in started[-1]

    # inc-idle: an idle default server; inc-mixed: a browsed default server and an idle named one;
    # inc-nobody: a user without servers
    before = time.monotonic()
    await hub.create_users(["inc-idle", "inc-mixed", "inc-nobody"])
    await asyncio.gather(
        hub.start_server("inc-idle"), hub.start_server("inc-mixed"), hub.start_server("inc-mixed", "scratch")
    )

    async with browsing(hub, "inc-mixed") as last_request:
        watch = Watch(
            {
                "inc-idle server": lambda: hub.is_running("inc-idle", user_may_be_gone=True),
                "inc-mixed/scratch listed": lambda: server_listed(hub, "inc-mixed", "scratch"),
                "inc-idle user": lambda: user_exists(hub, "inc-idle"),
                "inc-nobody user": lambda: user_exists(hub, "inc-nobody"),
            }
        )
        await watch.until_all_gone(timeout=90)
        for name in watch.checks:  # none went before its timeout (the users' clocks start at creation)
            assert watch.last_seen.get(name, 0) >= before + TIMEOUT - SLACK, (name, watch.last_seen, before)
        # inc-idle's user goes with its server, not a timeout after the stop (which the hub counts as activity)
        stopped, deleted = cycles_of_stop_and_deletion(hub, "inc-idle", since)
        assert stopped is not None and deleted == stopped, f"stopped in cycle {stopped}, deleted in {deleted}"
        gap = watch.gone_at["inc-idle user"] - watch.gone_at["inc-idle server"]
        assert gap < TIMEOUT - SLACK, f"inc-idle's user went {gap:.1f}s after its server"

        # the browsed server outlives its timeout counted from its start, over further cycles
        await hub.wait_cycles(3, since=hub.log_offset(), timeout=30)
        assert time.monotonic() - before >= TIMEOUT + SLACK
        assert await hub.is_running("inc-mixed"), "the browsed server was stopped"
        assert await user_exists(hub, "inc-mixed")
        browsed_until = last_request[0]
    assert time.monotonic() - browsed_until < 5, "the browsing stalled: the check above proves nothing"

    # without traffic it goes after its timeout, and then its user (it has no server left)
    after = Watch(
        {
            "inc-mixed server": lambda: hub.is_running("inc-mixed", user_may_be_gone=True),
            "inc-mixed user": lambda: user_exists(hub, "inc-mixed"),
        }
    )
    await after.until_all_gone(timeout=60)
    assert after.last_seen.get("inc-mixed server", 0) >= browsed_until + TIMEOUT - SLACK, "stopped before its timeout"
    stopped, deleted = cycles_of_stop_and_deletion(hub, "inc-mixed", since)
    assert stopped is not None and deleted == stopped, f"stopped in cycle {stopped}, deleted in {deleted}"

    requests = hub_requests(hub, since)
    deletes = {(method, path) for status, method, path in requests if method == "DELETE" and status in ("202", "204")}
    assert deletes == {
        ("DELETE", "/hub/api/users/inc-idle/server"),
        ("DELETE", "/hub/api/users/inc-mixed/servers/scratch"),
        ("DELETE", "/hub/api/users/inc-mixed/server"),
        ("DELETE", "/hub/api/users/inc-idle"),
        ("DELETE", "/hub/api/users/inc-nobody"),
        ("DELETE", "/hub/api/users/inc-mixed"),
    }
    refused = [r for r in requests if r[0] in ("401", "403")]
    assert not refused, f"the chart's role lacks a scope the service used: {refused}"
    stopped = {(e["user"], e["server"]): e for e in hub.events("server stopped", since)}
    assert set(stopped) == {("inc-idle", ""), ("inc-mixed", "scratch"), ("inc-mixed", "")}
    assert all(f"limit {TIMEOUT}s, rule default" in e["reason"] for e in stopped.values()), stopped
    assert {e["user"] for e in hub.events("user deleted", since)} == {"inc-idle", "inc-nobody", "inc-mixed"}
    for name in ("cycle failed", "stop failed", "user deletion failed", "keeping server", "user skipped"):
        assert not hub.events(name, since), f"unexpected {name!r}: {hub.events(name, since)}"
