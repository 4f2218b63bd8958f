"""The in-server probe (extension/) in a real jupyterhub-singleuser: who may ask, what it sees, and that
asking is never activity. The test reaches the server at its proxy route's target, as the service will."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from server_shell import ended, start_writer

from devtools.devhub import LocalHub

pytest.importorskip("activity_culler_probe")  # installed into the test environment by ./dev from extension/
pytestmark = pytest.mark.realhub

USER = "real-alice"
PROBE_TOKEN = secrets.token_hex(16)
PROBE_CONFIG = f"""
c.JupyterHub.custom_scopes = {{"custom:activity-culler:probe": {{"description": "ask a server's culler probe"}}}}
c.JupyterHub.services.append({{"name": "activity-culler-probe", "api_token": {PROBE_TOKEN!r}}})
c.JupyterHub.load_roles.append({{
    "name": "activity-culler-probe",
    "scopes": ["custom:activity-culler:probe"],
    "services": ["activity-culler-probe"],
}})
# processes=tree: local servers on a shared host (in a container, auto would take every process)
c.Spawner.args.extend(["--ActivityCullerProbe.interval=0.5", "--ActivityCullerProbe.processes=tree"])
"""


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[LocalHub]:
    local = LocalHub(workdir=tmp_path, extra_config=PROBE_CONFIG, activity_report_interval=1, last_activity_interval=2)
    async with local:
        await local.create_users([USER])
        await local.start_server(USER)
        yield local


async def probe_url(hub: LocalHub) -> str:
    routes = await hub.proxy_routes()
    return str(routes[f"/user/{USER}"]["target"]).rstrip("/") + f"/user/{USER}/api/activity-culler/probe"


async def ask(url: str, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"token {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def until_state(url: str, state: str, deadline: float = 20.0) -> dict[str, Any]:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        status, body = await ask(url, PROBE_TOKEN)
        assert status == 200, body
        if body["state"] == state:
            return dict(body)
        await asyncio.sleep(0.2)
    raise AssertionError(f"the probe never said {state}; last: {body}")


async def test_only_a_token_holding_the_probe_scope_is_answered(hub: LocalHub) -> None:
    url = await probe_url(hub)
    user_token = await hub.user_token(USER)
    assert (await ask(url, None))[0] == 401
    for token in (user_token, hub.admin_token, "not-a-token-at-all"):  # the user's, another service's, garbage
        status, body = await ask(url, token)
        assert status == 403, (token[:6], body)
    status, body = await ask(url, PROBE_TOKEN)
    assert status == 200 and body["state"] in ("unknown", "quiet", "active")
    text = str(body)
    assert str(hub.home(USER)) not in text and "/home" not in text  # no paths in the answer


async def test_writes_inside_the_server_under_the_home_are_active_then_quiet(hub: LocalHub, tmp_path: Path) -> None:
    url = await probe_url(hub)
    await until_state(url, "quiet")  # sampling started by the first ask; nothing writes yet
    done = await start_writer(hub, USER, hub.home(USER) / "train.log", 3, scratch=tmp_path)  # a job in a terminal
    seen_active = False
    while not done.exists():
        status, body = await ask(url, PROBE_TOKEN)
        assert status == 200, body
        seen_active = seen_active or body["state"] == "active"
        await asyncio.sleep(0.2)
    assert seen_active
    last_write = await ended(done, 10)
    quiet = await until_state(url, "quiet")
    assert quiet["scope"] == "tree"
    assert quiet["quiet_for"] <= time.time() - last_write + 0.5  # never more quiet than there was


async def test_writes_the_stop_would_not_kill_and_writes_outside_the_roots_do_not_count(hub: LocalHub) -> None:
    url = await probe_url(hub)
    await until_state(url, "quiet")
    began = time.monotonic()
    # This test's own process is outside the server's tree (as another pod on a shared volume would be);
    # the second file is outside the server's roots.
    for target in (hub.home(USER) / "from-elsewhere.log", hub.workdir / "outside.bin"):
        for _ in range(5):
            with target.open("a") as out:
                out.write(secrets.token_hex(32))
            await asyncio.sleep(0.3)
    status, body = await ask(url, PROBE_TOKEN)
    assert status == 200 and body["state"] == "quiet", body
    assert body["quiet_for"] >= time.monotonic() - began - 0.6  # quiet all along: none of it counted


async def test_asking_is_never_activity_and_the_check_can_tell(hub: LocalHub) -> None:
    url = await probe_url(hub)
    await asyncio.sleep(3)  # past the start's own activity and a couple of activity reports

    async def activity() -> tuple[Any, Any]:
        server = await hub.server_model(USER)
        route = (await hub.proxy_routes())[f"/user/{USER}"]
        return (server or {}).get("last_activity"), route.get("last_activity")

    before = await activity()
    for _ in range(50):
        assert (await ask(url, PROBE_TOKEN))[0] == 200
    await asyncio.sleep(3)  # more than two activity reports and a hub activity update
    assert await activity() == before
    # The control: a tracked request to the same server (directly, not through the proxy) moves the hub's
    # last_activity once the server reports it, so the comparison above could have failed.
    base = url.removesuffix("activity-culler/probe")
    user_token = await hub.user_token(USER)
    headers = {"Authorization": f"token {user_token}"}
    async with aiohttp.ClientSession() as session, session.get(base + "kernels", headers=headers) as response:
        assert response.status == 200
    end = time.monotonic() + 15
    while (await activity())[0] == before[0]:
        assert time.monotonic() < end, "a tracked request never moved last_activity: the check proves nothing"
        await asyncio.sleep(0.5)
