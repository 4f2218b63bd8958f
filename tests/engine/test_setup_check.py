"""The service's check of its own setup: its token's scopes (from the hub), and the tree scan's mount."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from fakehub import API, FakeHub

from culler.adapters.hub import HubClient
from culler.adapters.probes.treescan import TreeScanProbe
from culler.core.names import Template
from culler.core.scopes import held, missing, needs
from culler.core.text import utcnow
from culler.engine.health import Health
from culler.engine.setup_check import SetupCheck
from culler.policy.model import Policy, parse_policy

PLAIN = parse_policy("version: 1\n", "p.yaml")
GROUPS = parse_policy("version: 1\nrules:\n  - match: {groups: [vip]}\n    exempt: true\n", "p.yaml")
USERS = parse_policy("version: 1\nusers: {delete_inactive_after: 30d}\n", "p.yaml")
EVERYTHING = ["list:users", "read:users:activity", "read:users:groups", "read:servers", "delete:servers"]

Check = Callable[..., SetupCheck]


@pytest.fixture
async def checks(aiohttp_server: Any) -> AsyncIterator[tuple[FakeHub, Check]]:
    fake = FakeHub()
    server = await aiohttp_server(fake.make_app())
    clients: list[HubClient] = []

    def make(dry_run: bool = False, probes: dict[str, Any] | None = None) -> SetupCheck:
        client = HubClient(str(server.make_url(API)), fake.token, retries=1, backoff=0.01)
        clients.append(client)
        return SetupCheck(client, Health(60), probes or {}, dry_run)

    yield fake, make
    for client in clients:
        await client.close()


def whoami_calls(fake: FakeHub) -> int:
    return len(fake.calls("GET", API + "/user"))


async def test_a_full_role_raises_nothing_and_is_read_once(checks: tuple[FakeHub, Check]) -> None:
    fake, make = checks
    fake.scopes = EVERYTHING
    check = make()
    for _ in range(3):
        assert await check.before_cycle(PLAIN, "h1") is PLAIN
    assert check.health.conditions == {} and whoami_calls(fake) == 1
    await check.before_cycle(GROUPS, "h2")  # a new policy may need more
    assert whoami_calls(fake) == 2


async def test_a_scope_every_cycle_needs_blocks_and_is_named(checks: tuple[FakeHub, Check], caplog: Any) -> None:
    fake, make = checks
    fake.scopes = [s for s in EVERYTHING if s != "delete:servers"]
    check = make()
    with caplog.at_level(logging.WARNING, "culler.setup_check"):
        for _ in range(3):
            await check.before_cycle(PLAIN, "h")
    assert check.health.blocker() == "the token lacks delete:servers (to stop servers)"
    ok, body = check.health.status(utcnow(), None, True)
    assert not ok and body["reason"] == "the token lacks delete:servers (to stop servers)"
    assert [r.getMessage() for r in caplog.records].count("the token lacks delete:servers (to stop servers)") == 1
    assert whoami_calls(fake) == 3  # blocked: asked again every cycle, so a fixed role is seen at once
    fake.scopes = EVERYTHING
    await check.before_cycle(PLAIN, "h")
    assert check.health.blocker() is None
    assert make(dry_run=True).dry_run and not missing(fake.scopes[:-1], needs(PLAIN, dry_run=True))


async def test_group_rules_without_the_groups_scope_degrade(checks: tuple[FakeHub, Check]) -> None:
    fake, make = checks
    fake.scopes = [s for s in EVERYTHING if s != "read:users:groups"]
    check = make()
    assert await check.before_cycle(GROUPS, "g") is GROUPS  # decide keeps servers a group rule could match
    assert check.health.blocker() is None
    assert check.health.conditions["scopes-degraded"][1].startswith("the token lacks read:users:groups")
    _, body = check.health.status(utcnow(), None, True)
    assert body["degraded"]["scopes-degraded"].startswith("the token lacks read:users:groups")
    await check.before_cycle(PLAIN, "p")  # no group rule: nothing lacks
    assert check.health.conditions == {}


async def test_without_admin_users_no_user_is_deleted(checks: tuple[FakeHub, Check]) -> None:
    fake, make = checks
    fake.scopes = EVERYTHING
    culled_under: Policy = await make().before_cycle(USERS, "u")
    assert culled_under.users is None
    fake.scopes = [*EVERYTHING, "admin:users"]
    assert (await make().before_cycle(USERS, "u")).users is not None


def test_a_filtered_scope_counts_for_what_it_covers() -> None:
    assert held(["read:servers!group=lab"], "read:servers")
    assert not held(["read:servers_x"], "read:servers") and not held(["read"], "read:servers")


async def test_a_refused_token_blocks_until_it_is_accepted(checks: tuple[FakeHub, Check]) -> None:
    fake, make = checks
    check = make()
    real = fake.token
    fake.token = "another"
    await check.before_cycle(PLAIN, "h")
    assert "refuses the service's token" in (check.health.blocker() or "")
    fake.token = real
    await check.before_cycle(PLAIN, "h")
    assert check.health.blocker() is None


async def test_a_403_makes_the_next_cycle_ask_again(checks: tuple[FakeHub, Check]) -> None:
    fake, make = checks
    check = make()
    await check.before_cycle(PLAIN, "h")
    fake.fail("GET", API + "/users/nobody", status=403)
    with pytest.raises(Exception, match="403"):
        await check.hub.read_user("nobody")  # any request the hub refuses
    await check.before_cycle(PLAIN, "h")
    assert whoami_calls(fake) == 2


async def test_a_missing_tree_scan_root_is_said(checks: tuple[FakeHub, Check], tmp_path: Path) -> None:
    _, make = checks
    probe = TreeScanProbe(Template(str(tmp_path / "homes" / "{username}")))
    check = make(probes={"tree-scan": probe})
    await check.before_cycle(PLAIN, "h")
    message = check.health.conditions["tree-scan"][1]
    assert message == f"the tree-scan root {tmp_path}/homes/ does not exist: settling servers wait for their cap"
    (tmp_path / "homes").mkdir()
    await check.before_cycle(PLAIN, "h")
    assert "tree-scan" not in check.health.conditions


def test_template_roots() -> None:
    assert Template("/mnt/homes/{username}").root() == "/mnt/homes/"
    assert Template("/mnt/home-{username}/x").root() == "/mnt/"
    assert Template("/data").root() == "/"
    assert Template("{username}").root() == "./"
