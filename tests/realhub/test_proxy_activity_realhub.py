"""The ``proxy`` activity source against a real configurable-http-proxy: only traffic through the proxy
(the browser's path) keeps a server; the server's own activity reports to the hub do not.

The service reads CHP's routes API with the proxy's token, passed as CULLER_PROXY_API_TOKEN in the
hub's environment (the snippet passes CULLER_* variables on).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime

import aiohttp
import pytest
from realhub_support import SERVICE, CullerHub, start_culler_hub_with

from culler.core.text import parse_time
from devtools.devhub import LocalHub

pytestmark = pytest.mark.realhub

IDLE = 6  # seconds without traffic through the proxy
REPORT_EVERY = 2  # the single-user servers' activity reports to the hub (JUPYTERHUB_ACTIVITY_INTERVAL)

POLICY = f"""\
version: 1
defaults:
  idle: 1h
rules:
  - id: real
    match: {{users: ["real-*"]}}
    idle: {IDLE}s
"""


def proxy_env(hub: LocalHub) -> dict[str, str | None]:
    return {
        "CULLER_ACTIVITY_SOURCE": "proxy",
        "CULLER_PROXY_API_URL": hub.proxy_api_url,
        "CULLER_PROXY_API_TOKEN": hub.proxy_token,
    }


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CullerHub]:
    yield from start_culler_hub_with(
        tmp_path_factory.mktemp("proxy-activity"),
        POLICY,
        proxy_env,
        dry_run=False,
        cull_every=2,
        last_activity_interval=2,
        activity_report_interval=REPORT_EVERY,
    )


def hub_activity(model: dict[str, object] | None) -> datetime | None:
    return parse_time(model.get("last_activity")) if model else None  # type: ignore[arg-type]


async def used_directly(session: aiohttp.ClientSession, url: str, token: str) -> bool:
    """A tracked API request straight to a server's port; False when the server is not answering."""
    try:
        async with session.get(url, headers={"Authorization": f"token {token}"}, allow_redirects=False) as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def test_only_proxy_traffic_keeps_a_server(hub: CullerHub) -> None:
    """Three real servers: one browsed through the proxy (kept while browsed), one untouched (stopped
    after the idle limit) and one used straight on its port with a tracked API call every second:
    its own reports keep the hub's last_activity fresh, yet the proxy source stops it."""
    await hub.wait_policy(POLICY)
    started = [line for line in hub.log_text().splitlines() if "starting jupyterhub-activity-culler" in line]
    assert started and "'activity_source': 'proxy'" in started[-1]
    assert "'proxy_api_token': '[secret]'" in started[-1] and hub.proxy_token not in started[-1]

    browsed, untouched, direct = "real-browsed", "real-untouched", "real-direct"
    since = hub.log_offset()
    ready = await hub.start_servers((browsed, "", None), (untouched, "", None), (direct, "", None))
    browsed_token, direct_token = await hub.user_token(browsed), await hub.user_token(direct)
    routes = await hub.proxy_routes()
    target = routes[f"/user/{direct}"]["target"]
    through_proxy = f"{hub.url}/user/{browsed}/api/status"
    straight = f"{target}/user/{direct}/api/contents"  # tracked by jupyter-server, not seen by the proxy

    direct_stopped_at: float | None = None
    direct_hub_activity: datetime | None = None
    # Browse until the other two are stopped and the browsed one is well past its idle limit.
    kept_past, deadline = ready + IDLE + 3, ready + IDLE + 25
    async with aiohttp.ClientSession() as session:
        while True:
            headers = {"Authorization": f"token {browsed_token}"}
            async with session.get(through_proxy, headers=headers, allow_redirects=False) as response:
                assert response.status == 200, f"GET {through_proxy}: {response.status}"
            last_request = time.monotonic()
            if direct_stopped_at is None:
                model = await hub.server_model(direct)
                direct_hub_activity = hub_activity(model) or direct_hub_activity
                answered = await used_directly(session, straight, direct_token)
                if not answered and model and model.get("ready"):
                    # refused although the hub said ready a moment ago: only a stop explains it
                    await hub.wait_event("server stopped", timeout=5, since=since, user=direct)
                if hub.events("server stopped", since, user=direct):
                    direct_stopped_at = time.time()
            others_stopped = direct_stopped_at is not None and hub.events("server stopped", since, user=untouched)
            if others_stopped and time.monotonic() >= kept_past:
                break
            assert time.monotonic() < deadline, "the servers without browser traffic were not stopped"
            await asyncio.sleep(1)

    assert await hub.is_running(browsed), "a server browsed through the proxy was stopped"
    assert not hub.events("server stopped", since, user=browsed)
    for user in (untouched, direct):
        stopped = hub.events("server stopped", since, user=user)
        assert stopped and stopped[0]["rule"] == "real", f"{user} was not stopped by the idle rule"
        assert not await hub.is_running(user)
    # the hub saw the direct server's own activity within the idle limit when the service stopped it
    assert direct_stopped_at is not None and direct_hub_activity is not None
    hub_idle = direct_stopped_at - direct_hub_activity.timestamp()
    print(f"\nreal-direct stopped while the hub's last_activity was {hub_idle:.1f}s old (idle limit {IDLE}s)")
    assert hub_idle < IDLE, "the hub's activity was stale anyway: the hub source would have stopped it too"

    event = await hub.wait_event("server stopped", timeout=IDLE + 15, since=since, user=browsed)
    quiet_for = time.monotonic() - last_request
    print(f"real-browsed: last request through the proxy -> 'server stopped' seen: {quiet_for:.1f}s")
    assert event["rule"] == "real"
    assert quiet_for >= IDLE - 0.5, "stopped before the idle limit after the last request"
    await hub.wait_server(browsed, ready=False, timeout=10)
    assert not hub.events("cycle failed", since)


async def test_configproxy_auth_token_reaches_the_service(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The token set the usual way (CONFIGPROXY_AUTH_TOKEN in the hub's environment, as Zero to JupyterHub
    does) must reach the service through the snippet."""
    workdir = tmp_path_factory.mktemp("chp-token")
    policy = workdir / "policy.yaml"
    policy.write_text(POLICY)
    hub = LocalHub.with_culler(policy, workdir=workdir / "hub", dry_run=True)
    hub.env.update({**proxy_env(hub), "CULLER_PROXY_API_TOKEN": None, "CONFIGPROXY_AUTH_TOKEN": hub.proxy_token})
    try:
        await hub.start()
        status, body = await hub.wait_service(SERVICE)
        assert status == 200, body
    finally:
        await asyncio.to_thread(hub.stop)
        hub.kill_leftovers()  # a hub that exited at start-up leaves its proxy running
