"""The service against a real JupyterHub 6 + configurable-http-proxy, registered by the shipped snippet.

One hub for the module; every test uses its own user names and the policy below, which gives each
group of names its own rule. Idle limits are seconds: a real hub's activity cannot be backdated.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import aiohttp
import pytest
from realhub_support import SERVICE, CullerHub, start_culler_hub, wait_for

pytestmark = pytest.mark.realhub

REAL_IDLE = 10  # seconds; a real server's start takes 3-5 s and must not count against it

POLICY = f"""\
version: 1
defaults:
  idle: 1h
rules:
  - id: vip
    match: {{groups: [vip]}}
    exempt: true
  - id: gpu
    match: {{user_options: {{gpu_type: "*"}}}}
    idle: 3s
  - id: scratch
    match: {{servers: ["scratch-*"]}}
    idle: 3s
    remove_named_servers: true
  - id: short
    match: {{users: ["idle-*", "grp-*", "slow-*", "scope-*"]}}
    idle: 4s
  - id: real
    match: {{users: ["real-*"]}}
    idle: {REAL_IDLE}s
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CullerHub]:
    yield from start_culler_hub(
        tmp_path_factory.mktemp("culling"), POLICY, dry_run=False, cull_every=2, last_activity_interval=2
    )


@pytest.fixture(autouse=True)
async def policy_in_force(hub: CullerHub) -> None:
    await hub.wait_policy(POLICY)


async def test_idle_server_is_stopped_and_logged(hub: CullerHub) -> None:
    ready = await hub.start_servers(("idle-1", "", None))
    event = await hub.wait_event("server stopped", timeout=30, user="idle-1")
    stopped = time.monotonic()

    assert event["server"] == ""
    assert event["rule"] == "short"
    assert "no activity for" in event["reason"] and "limit 4s" in event["reason"]
    assert stopped - ready >= 3.5, "stopped before its idle limit"
    await hub.wait_server("idle-1", ready=False, timeout=10)


async def test_proxy_traffic_keeps_a_real_server_alive(hub: CullerHub) -> None:
    await hub.start_servers(("real-busy", "", None), ("real-idle", "", None))
    token = await hub.user_token("real-busy")
    status_url = f"{hub.url}/user/real-busy/api/status"

    # A browser-like client: a request through the proxy every second, for twice the idle limit.
    traffic_end = time.monotonic() + 2 * REAL_IDLE
    async with aiohttp.ClientSession(headers={"Authorization": f"token {token}"}) as session:
        while time.monotonic() < traffic_end:
            async with session.get(status_url, allow_redirects=False) as response:
                assert response.status == 200, f"GET {status_url} through the proxy: {response.status}"
                body = await response.json()
                assert "started" in body
            last_request = time.monotonic()
            await asyncio.sleep(1)

    assert await hub.is_running("real-busy"), "a server with browser traffic through the proxy was stopped"
    assert not hub.events("server stopped", user="real-busy")
    # the twin without traffic went meanwhile (or goes soon), under the same rule
    idle_twin = await hub.wait_event("server stopped", timeout=30, user="real-idle")
    assert idle_twin["rule"] == "real", "the idle real server was not stopped by its rule"
    assert not await hub.is_running("real-idle")

    event = await hub.wait_event("server stopped", timeout=REAL_IDLE + 20, user="real-busy")
    assert event["rule"] == "real"
    assert time.monotonic() - last_request >= REAL_IDLE - 1, "stopped before the idle limit after the last request"
    await hub.wait_server("real-busy", ready=False, timeout=10)


async def test_exempt_group_member_kept_while_non_member_stopped(hub: CullerHub) -> None:
    await hub.create_users(["grp-member", "grp-other"])
    await hub.add_to_group("vip", ["grp-member"])
    ready = await hub.start_servers(("grp-member", "", None), ("grp-other", "", None))

    await hub.wait_event("server stopped", timeout=30, user="grp-other", rule="short")
    after = hub.log_offset()
    await hub.wait_cycles(2, since=after)

    assert time.monotonic() - ready > 4, "the member's idle time did not reach the limit"
    assert await hub.is_running("grp-member"), "the vip group member was stopped"
    assert not hub.events("server stopped", user="grp-member")
    assert not hub.events("keeping server", server="grp-member/"), "group membership was unknown to the service"


async def test_gpu_profile_stopped_cpu_kept(hub: CullerHub) -> None:
    ready = await hub.start_servers(("gpu-user", "", {"gpu_type": "a100"}), ("cpu-user", "", None))

    event = await hub.wait_event("server stopped", timeout=30, user="gpu-user")
    assert event["rule"] == "gpu"
    after = hub.log_offset()
    await hub.wait_cycles(2, since=after)

    assert time.monotonic() - ready > 3
    assert await hub.is_running("cpu-user"), "the CPU server (default idle 1h) was stopped"
    assert not hub.events("server stopped", user="cpu-user")


async def test_named_scratch_server_stopped_and_removed(hub: CullerHub) -> None:
    await hub.start_servers(("named-user", "", None), ("named-user", "scratch-1", None))

    event = await hub.wait_event("server stopped", timeout=30, user="named-user", server="scratch-1")
    assert event["rule"] == "scratch"

    async def removed() -> bool:
        model = await hub.api("GET", "users/named-user?include_stopped_servers=1")
        return "scratch-1" not in (model.get("servers") or {})

    await wait_for(removed, 10, "scratch-1 to be removed from the user's servers")
    assert await hub.is_running("named-user"), "the default server was stopped"
    assert not hub.events("server stopped", user="named-user", server="")


async def test_slow_stop_is_followed_up(hub: CullerHub) -> None:
    """The cheap spawner takes 18 s to stop; the hub answers 202 after its 10 s slow_stop_timeout. The
    service follows the stop up outside its cycles, which go on meanwhile."""
    await hub.start_servers(("slow-1", "", {"stop_delay": 18}))

    await hub.wait_event("server stopping (hub answered 202); following up", timeout=45, user="slow-1")
    following = hub.log_offset()
    event = await hub.wait_event("server stopped", timeout=45, user="slow-1")
    assert len(hub.events("cycle done", following)) >= 2, "cycles waited for the slow stop"
    assert event["rule"] == "short"
    assert not hub.events("server slow-stopping", user="slow-1")
    assert not hub.events("stop failed", user="slow-1")
    assert re.search(r"\b202 DELETE /hub/api/users/slow-1/server \(activity-culler@", hub.log_text()), (
        "the hub did not answer 202: the slow path was not exercised"
    )
    assert not await hub.is_running("slow-1")


async def test_snippet_role_scopes_suffice(hub: CullerHub) -> None:
    """The service holds only the snippet's role, and none of its requests in this module (this test
    runs last) was refused; its own small scenario needs listing, groups and stopping."""
    service = await hub.api("GET", f"services/{SERVICE}")
    assert service["roles"] == [f"{SERVICE}-service"], "the service must hold only the snippet's role"
    await hub.create_users(["scope-vip", "scope-other"])
    await hub.add_to_group("vip", ["scope-vip"])
    await hub.start_servers(("scope-vip", "", None), ("scope-other", "", None))
    await hub.wait_event("server stopped", timeout=30, user="scope-other", rule="short")

    log = hub.log_text()
    service_requests = re.findall(rf"^.*\b(\d{{3}}) (\w+) (\S+) \({SERVICE}@127\.0\.0\.1\).*$", log, re.MULTILINE)
    assert any(method == "GET" and path.startswith("/hub/api/users") for _, method, path in service_requests)
    assert any(method == "DELETE" for _, method, _ in service_requests), "the service stopped nothing"
    refused = [entry for entry in service_requests if entry[0] in ("401", "403")]
    assert not refused, f"the hub refused the service: {refused}"
    for name in ("cycle failed", "stop failed", "keeping server"):
        assert not hub.events(name), f"unexpected {name!r} events: {hub.events(name)}"
    # group exemption needs read:users:groups: the service saw vip membership and kept the member
    await hub.wait_cycles(1, since=hub.log_offset())
    assert await hub.is_running("scope-vip")
    assert not hub.events("server stopped", user="scope-vip")
