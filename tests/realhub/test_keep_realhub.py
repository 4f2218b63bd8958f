"""Keeping a server through the service's API, against a real hub with real tokens and real single-user
servers: who may keep whose server, the policy's bounds, the stop moved to the kept deadline, and keeps
that outlive a restart of the service (the database on a real file)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from realhub_support import CullerHub, culler_env, start_culler_hub_with

from culler.core.text import parse_time

pytestmark = pytest.mark.realhub

IDLE, STEP, MAX = 10, 10, 20
POLICY = f"""\
version: 1
defaults: {{idle: 1h, keep: {{step: 1h, max: 2h}}}}
rules:
  - id: short
    match: {{users: ["real-short-*"]}}
    idle: {IDLE}s
    keep: {{step: {STEP}s, max: {MAX}s}}
  - id: no-keep
    match: {{users: ["real-nokeep-*"]}}
    keep: null
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CullerHub]:
    workdir = tmp_path_factory.mktemp("keep")
    yield from start_culler_hub_with(
        workdir,
        POLICY,
        lambda hub: {"CULLER_DATABASE": str(hub.workdir / "culler.sqlite")},
        dry_run=False,
        cull_every=2,
        last_activity_interval=1,
    )


async def keep(hub: CullerHub, token: str, user: str, server: str = "") -> tuple[int, dict[str, Any]]:
    url = hub.service_url() + "api/keep"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"user": user, "server": server}, headers={"Authorization": f"token {token}"}) as r,
    ):
        return r.status, await r.json(content_type=None)


async def keeps_now(hub: CullerHub) -> dict[str, Any]:
    status, body = await hub.get(hub.service_url() + "api/keeps", token=hub.admin_token)
    assert status == 200, body
    return dict(body)


def until(body: dict[str, Any]) -> datetime:
    parsed = parse_time(body["until"])
    assert parsed is not None
    return parsed


async def test_users_keep_their_own_servers_and_only_admins_keep_others(hub: CullerHub) -> None:
    await hub.wait_policy(POLICY)
    await hub.start_servers(("real-alice", "", None), ("real-bob", "", None))
    alice, bob = await hub.user_token("real-alice"), await hub.user_token("real-bob")
    since = hub.log_offset()
    status, kept = await keep(hub, alice, "real-alice")
    assert status == 200, kept
    assert kept["by"] == "real-alice" and kept["rule"] == "default"
    status, again = await keep(hub, alice, "real-alice")  # a second step stacks: an hour later
    assert status == 200 and (until(again) - until(kept)).total_seconds() == pytest.approx(3600, abs=1)
    status, refused = await keep(hub, alice, "real-bob")
    assert status == 403 and "only real-bob or a hub admin" in refused["error"]
    status, by_admin = await keep(hub, hub.admin_token, "real-bob")  # a service with admin:servers
    assert status == 200 and by_admin["by"] == "devhub-admin"
    assert (await keep(hub, bob, "real-bob"))[0] == 200
    assert (await keep(hub, "not-a-token", "real-bob"))[0] == 403
    assert (await keep(hub, alice, "real-nobody"))[0] == 403  # who may ask comes first: nothing is revealed
    assert (await keep(hub, hub.admin_token, "real-nobody"))[0] == 404
    audited = hub.events("server kept", since)
    assert [(e["user"], e["by"]) for e in audited] == [
        ("real-alice", "real-alice"),
        ("real-alice", "real-alice"),
        ("real-bob", "devhub-admin"),
        ("real-bob", "real-bob"),
    ]
    listed = {(k["user"], k["by"]) for k in (await keeps_now(hub))["keeps"]}
    assert {("real-alice", "real-alice"), ("real-bob", "real-bob")} <= listed
    explained = await explain(hub, "real-alice")  # explain reads the keeps through the service's API
    # within a second or two: each reading maps the hub's times onto our clock anew (culler.clock), and a keep at
    # the limit is capped by the deadline as that reading sees it
    shown = parse_time(explained["kept_until"])
    assert shown is not None and abs((shown - until(again)).total_seconds()) < 2
    assert f"kept until {explained['kept_until']}" in explained["reason"]
    assert explained["decision"].startswith("keep")


async def explain(hub: CullerHub, target: str) -> dict[str, Any]:
    env = culler_env(JUPYTERHUB_API_TOKEN=hub.admin_token, CULLER_POLICY=str(hub.policy))
    command = [sys.executable, "-m", "culler", "explain", target, "--url", hub.api_url, "--json"]
    done = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (row,) = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return dict(row)


async def test_the_policy_bounds_refuse_with_the_limit(hub: CullerHub) -> None:
    await hub.wait_policy(POLICY)
    await hub.start_servers(("real-carol", "", None), ("real-nokeep-dan", "", None))
    carol = await hub.user_token("real-carol")
    for _ in range(2):  # 1h steps up to 2h past the deadline
        assert (await keep(hub, carol, "real-carol"))[0] == 200
    status, refused = await keep(hub, carol, "real-carol")
    assert status == 409 and "already kept to the limit" in refused["error"] and "at most 2h past" in refused["error"]
    dan = await hub.user_token("real-nokeep-dan")
    status, refused = await keep(hub, dan, "real-nokeep-dan")
    assert status == 409 and "does not allow keeping" in refused["error"]


async def test_a_kept_server_outlives_its_deadline_and_a_restart_then_stops_after_the_kept_one(
    hub: CullerHub,
) -> None:
    await hub.wait_policy(POLICY)
    user = "real-short-erin"
    since = hub.log_offset()
    await hub.start_servers((user, "", None))
    token = await hub.user_token(user)
    status, first = await keep(hub, token, user)
    assert status == 200, first
    status, second = await keep(hub, token, user)
    assert status == 200, second
    kept_until = until(second)
    status, refused = await keep(hub, token, user)  # the limit: MAX past the normal deadline
    assert status == 409, refused
    normal = kept_until.timestamp() - MAX

    await hub.restart_service()  # the keep must come back from the database

    while time.time() < normal + 2 * 2 + 1:  # past the normal deadline and two cycles
        assert await hub.is_running(user), "stopped at the normal deadline despite the keep"
        await asyncio.sleep(0.5)
    assert any(k["user"] == user for k in (await keeps_now(hub))["keeps"]), "the keep did not survive the restart"
    stopped = await hub.wait_event("server stopped", timeout=MAX + 30, since=since, user=user)
    assert time.time() >= kept_until.timestamp(), "stopped before the kept deadline"
    assert stopped["rule"] == "short"  # the keep expired at its deadline: the normal rule stopped it
    assert not any(k["user"] == user for k in (await keeps_now(hub))["keeps"])
