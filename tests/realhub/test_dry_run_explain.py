"""Shadow mode and ``explain`` on a real hub: the service runs with the snippet's default (dry run)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from realhub_support import CullerHub, culler_env, start_culler_hub

pytestmark = pytest.mark.realhub

POLICY = """\
version: 1
defaults:
  idle: 1h
rules:
  - id: vip
    match: {groups: [vip]}
    exempt: true
  - id: quick
    match: {users: ["dry-*", "ex-idle"]}
    idle: 2s
"""

# the candidate only gives the quick rule a long limit: only its servers' decisions change
CANDIDATE = POLICY.replace("idle: 2s", "idle: 2h")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CullerHub]:
    # dry_run=None: CULLER_DRY_RUN is not set at all, so the snippet's default applies
    yield from start_culler_hub(tmp_path_factory.mktemp("dryrun"), POLICY, dry_run=None, cull_every=2)


@pytest.fixture(autouse=True)
async def policy_in_force(hub: CullerHub) -> None:
    await hub.wait_policy(POLICY)


async def test_dry_run_is_the_default_and_stops_nothing(hub: CullerHub) -> None:
    assert "CULLER_DRY_RUN" not in {k for k, v in hub.env.items() if v is not None}
    await hub.start_servers(("dry-1", "", None))

    event = await hub.wait_event("would stop (dry run)", timeout=30, user="dry-1")
    assert event["rule"] == "quick" and "limit 2s" in event["reason"]
    await hub.wait_cycles(2, since=hub.log_offset())

    assert await hub.is_running("dry-1"), "dry run stopped a server"
    assert not hub.events("server stopped")
    assert hub.events("cycle done", dry_run="True"), "cycle summaries do not say dry run"
    status, body = await hub.health()
    assert status == 200 and body["dry_run"] is True, body
    assert not re.search(r"\bDELETE /hub/api/users", hub.log_text()), "something sent a stop to the hub"


def run_explain(hub: CullerHub, *args: str) -> subprocess.CompletedProcess[str]:
    env = culler_env(JUPYTERHUB_API_TOKEN=hub.admin_token, CULLER_POLICY=str(hub.policy))
    command = [sys.executable, "-m", "culler", "explain", "--url", hub.api_url, *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"explain {args} failed: {result.stderr}"
    return result


async def explain(hub: CullerHub, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_explain, hub, *args)


def rows_of(output: str) -> dict[str, dict[str, str]]:
    rows = [json.loads(line) for line in output.splitlines() if line.strip()]
    return {row["server"]: row for row in rows}


async def test_explain_against_the_live_hub(hub: CullerHub, tmp_path: Path) -> None:
    await hub.create_users(["ex-vip"])
    await hub.add_to_group("vip", ["ex-vip"])
    await hub.start_servers(("ex-idle", "", None), ("ex-keep", "", None), ("ex-vip", "", None))
    await hub.wait_event("would stop (dry run)", timeout=30, user="ex-idle")  # idle past 2 s by now

    # every ready server, with its rule and decision
    rows = rows_of((await explain(hub, "--json")).stdout)
    assert {"ex-idle", "ex-keep", "ex-vip"} <= rows.keys()
    assert (rows["ex-idle"]["rule"], rows["ex-idle"]["decision"]) == ("quick", "stop now")
    assert rows["ex-keep"]["rule"] == "default"
    assert rows["ex-keep"]["decision"].startswith("keep, stop at "), rows["ex-keep"]
    assert (rows["ex-vip"]["rule"], rows["ex-vip"]["decision"]) == ("vip", "exempt")

    table = (await explain(hub)).stdout
    assert table.splitlines()[0].split()[:3] == ["SERVER", "ACTIVITY", "IDLE"], table
    lines = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert "stop now" in lines["ex-idle"] and "exempt" in lines["ex-vip"]
    assert re.search(r"keep, stop at \S+ \(in (59m|1h)", lines["ex-keep"]), lines["ex-keep"]

    # one user only
    one = (await explain(hub, "ex-keep")).stdout.splitlines()
    assert len(one) == 2 and one[1].startswith("ex-keep "), one

    # a candidate policy: only the servers whose decision would change
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(CANDIDATE)
    changes = (await explain(hub, "--policy", str(candidate))).stdout
    listed = {line.split()[0] for line in changes.splitlines()[1:-1]}
    assert "ex-idle" in listed and not listed & {"ex-keep", "ex-vip"}, changes
    assert "stop now [quick]" in changes and "keep, stop at" in changes
    assert re.search(r"^\d+ of \d+ server\(s\) would change$", changes.splitlines()[-1]), changes
    same = (await explain(hub, "--policy", str(hub.policy))).stdout
    assert "ex-idle" in same  # the in-force file as candidate: the plain listing

    # explain stopped nothing (and the dry-run service neither)
    for user in ("ex-idle", "ex-keep", "ex-vip"):
        assert await hub.is_running(user), f"{user} was stopped"
    assert not re.search(r"\bDELETE /hub/api/users", hub.log_text())
