"""Policy files on a real hub: a broken file at start, hot reload, and broken edits while running.

Each test has its own hub: one starts with a broken policy file, the other is edited while running.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from realhub_support import SERVICE, CullerHub, start_culler_hub, wait_for

pytestmark = pytest.mark.realhub

BROKEN_AT_START = """\
version: 1
defaults:
  idle: 3 seconds
"""

FIXED = """\
version: 1
defaults:
  idle: 1h
rules:
  - id: fixed
    match: {users: ["inv-*"]}
    idle: 3s
"""

LONG = """\
version: 1
defaults:
  idle: 1h
rules:
  - id: reload
    match: {users: ["reload-*"]}
    idle: 1h
"""

SHORT = LONG.replace("    idle: 1h\n", "    idle: 3s\n")
BAD_DURATION = LONG.replace("    idle: 1h\n", "    idle: 1 hour\n")  # a broken edit back to a long limit
BAD_YAML = LONG + "  - id: [unclosed\n"


@pytest.fixture
def broken_hub(tmp_path: Path) -> Iterator[CullerHub]:
    yield from start_culler_hub(tmp_path, BROKEN_AT_START, dry_run=False, cull_every=2)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[CullerHub]:
    yield from start_culler_hub(tmp_path, LONG, dry_run=False, cull_every=2)


async def test_invalid_policy_at_start(broken_hub: CullerHub) -> None:
    hub = broken_hub
    # the hub is up and the service registered, though its policy is unusable
    status, _ = await hub.get(f"{hub.url}/hub/health")
    assert status == 200
    service = await hub.api("GET", f"services/{SERVICE}")
    assert service["pid"], "the service is not running"
    status, body = await hub.wait_service()
    assert status == 503
    assert body["status"] == "unavailable"
    assert "no valid policy" in body["reason"] and "policy.yaml" in body["reason"], body
    assert "defaults.idle" in body["policy_error"], body
    assert hub.events("policy rejected"), "the broken policy was not reported in the log"

    await hub.start_servers(("inv-1", "", None))
    first = (await hub.health())[1]["cycles"]

    async def cycles_later() -> bool:
        status, body = await hub.health()
        assert status == 503, body
        return body["cycles"] >= first + 3

    await wait_for(cycles_later, 30, "three cycles under the broken policy")
    assert await hub.is_running("inv-1"), "a server was stopped without a valid policy"
    assert not hub.events("server stopped")
    assert (await hub.get(f"{hub.url}/hub/health"))[0] == 200
    assert hub.process.poll() is None

    since = hub.log_offset()
    hub.write_policy(FIXED)
    body = await hub.wait_policy(FIXED)
    assert body["status"] in ("ok", "starting") and "policy_error" not in body
    event = await hub.wait_event("server stopped", timeout=30, since=since, user="inv-1")
    assert event["rule"] == "fixed"
    assert hub.events("policy loaded", since=since), "the fixed file was not reported as loaded"


async def test_hot_reload_and_broken_edits(hub: CullerHub) -> None:
    await hub.wait_policy(LONG)
    await hub.start_servers(("reload-a", "", None))
    await hub.wait_cycles(3, since=hub.log_offset())
    assert await hub.is_running("reload-a"), "stopped under the long idle limit"

    # an atomic replace with a short limit: reloaded, and the same server now goes
    since = hub.log_offset()
    short_hash = hub.write_policy(SHORT)
    reloaded = await hub.wait_event("policy reloaded", timeout=15, since=since)
    assert reloaded["hash"] == short_hash
    event = await hub.wait_event("server stopped", timeout=20, since=since, user="reload-a")
    assert event["rule"] == "reload" and "limit 3s" in event["reason"]

    # broken edits are rejected, the short policy stays in force and the service stays healthy
    for broken, problem in ((BAD_DURATION, "not a duration"), (BAD_YAML, "not valid YAML")):
        since = hub.log_offset()
        hub.write_policy(broken)
        rejected = await hub.wait_event("policy rejected", timeout=15, since=since)
        assert problem in rejected["error"], rejected
        assert rejected["action"] == f"keeping policy {short_hash}"
        status, body = await hub.health()
        assert status == 200, body
        assert body["policy_hash"] == short_hash and problem in body["policy_error"]

    # a new server is treated by the short policy still in force (the broken edit meant 1h)
    since = hub.log_offset()
    await hub.start_servers(("reload-b", "", None))
    event = await hub.wait_event("server stopped", timeout=20, since=since, user="reload-b")
    assert event["rule"] == "reload" and "limit 3s" in event["reason"]
    status, body = await hub.health()
    assert status == 200 and body["policy_hash"] == short_hash, body
    assert not hub.events("policy reloaded", since=since)
