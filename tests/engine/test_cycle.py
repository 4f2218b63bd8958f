"""Cull cycles against a fake hub: what gets stopped, and what does not when the hub misbehaves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from factories import CullerFactory
from fakehub import API, FakeHub, iso
from process_support import wait_for

from culler.core.events import Event, StopEnded
from culler.core.lifecycle import Phase
from culler.engine.cycle import Culler
from culler.policy.model import Policy


def stops_ended(culler: Culler) -> list[StopEnded]:
    """Every stop outcome the culler publishes from now on."""
    seen: list[StopEnded] = []

    class Recorder:
        def observe(self, event: Event) -> None:
            if isinstance(event, StopEnded):
                seen.append(event)

    culler.events.subscribe(Recorder())
    return seen


NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
USERS = API + "/users"
POLICY = Policy.model_validate({"version": 1, "defaults": {"idle": "1h"}})


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


def not_first_page(request: Any) -> bool:
    return int(request.query.get("offset", 0)) > 0


pytestmark = pytest.mark.fake_hub(date=lambda: NOW)  # the hub's clock agrees with the culler's frozen one


@pytest.fixture
def make_culler(culler_factory: CullerFactory) -> CullerFactory:
    def factory(*, concurrency: int = 10, page_size: int = 0, request_timeout: float = 5.0, **options: Any) -> Culler:
        client = {"concurrency": concurrency, "page_size": page_size, "request_timeout": request_timeout}
        return culler_factory(client={**client, "now": lambda: NOW}, culler={"clock": lambda: NOW}, **options)

    return factory


def idle_users(fake: FakeHub, count: int, *, hours: float = 2, prefix: str = "idle") -> list[str]:
    names = [f"{prefix}{i:02d}" for i in range(count)]
    for name in names:
        fake.add_server(name, last_activity=ago(hours=hours))
    return names


async def test_idle_servers_stop_and_active_ones_stay(fake: FakeHub, make_culler: CullerFactory) -> None:
    fake.add_server("alice", last_activity=ago(hours=2))
    fake.add_server("alice", "lab", last_activity=ago(hours=3))
    fake.add_server("bob", last_activity=ago(minutes=10))
    fake.add_server("carol", last_activity=None, started=ago(hours=5))  # never reported: counts from start
    fake.add_server("dave", last_activity=NOW + timedelta(hours=1))  # clock skew: active now
    report = await make_culler().run(POLICY)
    assert report.ok
    assert report.results == {"alice/": Phase.STOPPED, "alice/lab": Phase.STOPPED, "carol/": Phase.STOPPED}
    assert sorted(fake.deleted_servers()) == [("alice", ""), ("alice", "lab"), ("carol", "")]
    assert fake.running("bob") and fake.running("dave")


async def test_pending_servers_are_not_touched(fake: FakeHub, make_culler: CullerFactory) -> None:
    fake.add_server("spawning", last_activity=ago(hours=5), pending="spawn", ready=False)
    report = await make_culler().run(POLICY)
    assert report.results == {}
    assert fake.deletes == []


async def test_a_page_failing_mid_listing_means_no_stops(fake: FakeHub, make_culler: CullerFactory) -> None:
    idle_users(fake, 5)
    fake.fail("GET", USERS, status=500, times=-1, when=not_first_page)
    report = await make_culler(page_size=2).run(POLICY)
    assert report.error is not None and "listing users failed" in report.error
    assert report.results == {}
    assert fake.deletes == []
    assert len(fake.calls("GET", USERS)) == 1 + 3  # first page, then the second page tried 3 times


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 500},
        {"status": 503, "headers": {"Retry-After": "0"}},
        {"status": None, "delay": 0.6},  # longer than the client's timeout
        {"status": 200, "body": "<html>Bad gateway</html>"},
        {"status": 200, "json": {"unexpected": "shape"}},
        {"status": None, "drop": True},
    ],
    ids=["500", "503", "timeout", "garbage", "wrong-shape", "dropped"],
)
async def test_listing_failures_mean_no_stops_until_the_hub_recovers(
    fake: FakeHub, make_culler: CullerFactory, fault: dict[str, Any]
) -> None:
    names = idle_users(fake, 3)
    fake.fail("GET", USERS, times=-1, **fault)
    culler = make_culler(request_timeout=0.3)
    report = await culler.run(POLICY)
    assert not report.ok
    assert report.results == {}
    assert fake.deletes == []

    fake.faults.clear()  # the hub recovers
    report = await culler.run(POLICY)
    assert report.ok
    assert report.results == {f"{name}/": Phase.STOPPED for name in names}


async def test_a_malformed_user_model_skips_only_that_user(fake: FakeHub, make_culler: CullerFactory) -> None:
    names = idle_users(fake, 3)
    fake.add_server("broken-time", last_activity=ago(hours=5))
    fake.users["broken-time"]["servers"][""]["last_activity"] = "last tuesday"
    fake.add_user("no-servers-map", last_activity=ago(hours=5))
    fake.add_server("no-servers-map", last_activity=ago(hours=5))
    fake.users["no-servers-map"]["servers"] = ["not", "a", "map"]
    report = await make_culler().run(POLICY)
    assert report.ok
    assert report.skipped_users == 2
    assert sorted(report.results) == [f"{name}/" for name in names]
    assert ("broken-time", "") not in fake.deleted_servers()


async def test_a_malformed_user_in_the_listing_body_skips_only_that_user(
    fake: FakeHub, make_culler: CullerFactory
) -> None:
    names = idle_users(fake, 2)
    good = [fake.users[name] for name in names]
    items = [*good, "not a user", {"name": "x", "servers": {"": "not a server"}}, {"servers": {}}]
    page = {"items": items, "_pagination": {"offset": 0, "limit": 50, "total": len(items), "next": None}}
    fake.fail("GET", USERS, status=200, json=page)
    report = await make_culler().run(POLICY)
    assert report.ok
    assert report.skipped_users == 3
    assert sorted(fake.deleted_servers()) == [(name, "") for name in names]


async def test_202_followed_up_until_stopped(fake: FakeHub, make_culler: CullerFactory) -> None:
    fake.add_server("slow", last_activity=ago(hours=2))
    fake.slow_stops[("slow", "")] = 0.3
    culler = make_culler(follow_up_interval=0.05, follow_up_timeout=5.0)
    report = await culler.run(POLICY)
    assert report.results == {"slow/": Phase.STOPPING}  # the cycle does not wait for the hub
    assert await culler.follow_ups_done() == {"slow/": Phase.STOPPED}
    assert len(fake.calls("GET", USERS + "/slow")) >= 2  # it asked until the hub said stopped
    assert not fake.running("slow")


async def test_202_that_never_completes_is_slow(fake: FakeHub, make_culler: CullerFactory) -> None:
    fake.add_server("stuck", last_activity=ago(hours=2))
    fake.slow_stops[("stuck", "")] = float("inf")
    culler = make_culler(follow_up_interval=0.05, follow_up_timeout=0.3)
    report = await culler.run(POLICY)
    assert report.results == {"stuck/": Phase.STOPPING}
    assert await culler.follow_ups_done() == {"stuck/": Phase.SLOW}
    assert fake.users["stuck"]["servers"][""]["pending"] == "stop"
    assert len(fake.deletes) == 1


@pytest.mark.parametrize("status", [400, 404])
async def test_already_gone_servers(fake: FakeHub, make_culler: CullerFactory, status: int) -> None:
    fake.add_server("gone", last_activity=ago(hours=2))
    fake.fail("DELETE", USERS + "/gone/server", status=status)
    report = await make_culler().run(POLICY)
    assert report.results == {"gone/": Phase.GONE}
    assert len(fake.deletes) == 1


async def test_one_failing_stop_fails_only_that_server(fake: FakeHub, make_culler: CullerFactory) -> None:
    names = idle_users(fake, 4)
    fake.fail("DELETE", USERS + f"/{names[1]}/server", status=500, times=-1)
    report = await make_culler().run(POLICY)
    assert report.ok
    assert report.results == {f"{name}/": Phase.FAILED if name == names[1] else Phase.STOPPED for name in names}
    assert fake.running(names[1])
    assert not any(fake.running(name) for name in names if name != names[1])


async def test_stops_across_users_run_concurrently(fake: FakeHub, make_culler: CullerFactory) -> None:
    names = idle_users(fake, 10)
    fake.stop_delay = 0.5
    report = await make_culler(concurrency=10).run(POLICY)
    assert report.counts() == {Phase.STOPPED: 10}
    assert fake.max_in_flight["DELETE"] >= 5
    assert not any(fake.running(name) for name in names)


async def test_concurrency_cap_is_respected(fake: FakeHub, make_culler: CullerFactory) -> None:
    idle_users(fake, 12)
    fake.stop_delay = 0.1
    report = await make_culler(concurrency=3).run(POLICY)
    assert report.counts() == {Phase.STOPPED: 12}
    assert 2 <= fake.max_in_flight["DELETE"] <= 3


async def test_mass_stop_guard_stops_only_the_longest_idle(fake: FakeHub, make_culler: CullerFactory) -> None:
    for i in range(30):
        fake.add_server(f"due{i:02d}", last_activity=ago(hours=2 + i))  # due29 is the longest idle
    for i in range(10):
        fake.add_server(f"busy{i:02d}", last_activity=ago(minutes=5))
    report = await make_culler(max_stops=5, max_stop_fraction=0.5).run(POLICY)
    assert report.guard is not None and report.guard.tripped
    assert len(fake.deletes) == 5
    assert sorted(user for user, _ in fake.deleted_servers()) == [f"due{i}" for i in range(25, 30)]
    counts = report.counts()
    assert counts == {Phase.STOPPED: 5, Phase.HELD: 25}
    assert all(report.results[f"due{i:02d}/"] is Phase.HELD for i in range(25))


async def test_dry_run_stops_nothing(fake: FakeHub, make_culler: CullerFactory) -> None:
    names = idle_users(fake, 3)
    fake.add_server("active", last_activity=ago(minutes=1))
    report = await make_culler(dry_run=True).run(POLICY)
    assert report.results == {f"{name}/": Phase.WOULD_STOP for name in names}
    assert fake.deletes == []


async def test_dry_run_deletes_no_users(fake: FakeHub, make_culler: CullerFactory) -> None:
    fake.add_user("ancient", last_activity=ago(days=90))
    policy = Policy.model_validate({"version": 1, "users": {"delete_inactive_after": "30d"}})
    report = await make_culler(dry_run=True).run(policy)
    assert report.users_deleted == []
    assert fake.deletes == []


async def test_named_servers_removed_when_the_policy_says(fake: FakeHub, make_culler: CullerFactory) -> None:
    fake.add_server("alice", "lab", last_activity=ago(hours=2))
    fake.add_server("alice", last_activity=ago(hours=2))
    policy = Policy.model_validate({"version": 1, "defaults": {"idle": "1h", "remove_named_servers": True}})
    await make_culler().run(policy)
    assert fake.removed == [("alice", "lab")]
    assert {r.path: r.body for r in fake.deletes} == {
        USERS + "/alice/servers/lab": {"remove": True},
        USERS + "/alice/server": None,
    }


async def test_user_deletion_deletes_only_eligible_inactive_users(fake: FakeHub, make_culler: CullerFactory) -> None:
    fake.add_user("ancient", last_activity=ago(days=90))
    fake.add_user("recent", last_activity=ago(days=3))
    fake.add_user("ancient-admin", admin=True, last_activity=ago(days=90))
    fake.add_user("never-seen", last_activity=None, created=ago(days=60))
    fake.add_user("protected", groups=["staff"], last_activity=ago(days=90))
    fake.add_server("running", last_activity=ago(minutes=1))
    fake.users["running"]["last_activity"] = "2020-01-01T00:00:00Z"
    policy = Policy.model_validate(
        {
            "version": 1,
            "users": {"delete_inactive_after": "30d"},
            "rules": [{"id": "staff", "match": {"groups": ["staff"]}, "exempt": True}],
        }
    )
    report = await make_culler().run(policy)
    assert sorted(report.users_deleted) == ["ancient", "never-seen"]
    assert sorted(r.path for r in fake.deletes) == [USERS + "/ancient", USERS + "/never-seen"]
    assert {"recent", "ancient-admin", "protected", "running"} <= set(fake.users)
    assert [r.query["state"] for r in fake.calls("GET", USERS)] == ["ready", "inactive"]


async def test_a_user_whose_idle_server_is_stopped_is_deleted_in_the_same_cycle(
    fake: FakeHub, make_culler: CullerFactory
) -> None:
    """The hub counts the stop as the user's activity: the user is judged on what was listed before it."""
    fake.touch_on_stop = NOW  # as JupyterHub's ``User.stop`` does
    fake.add_server("gone-for-days", last_activity=ago(days=2))
    fake.add_server("back-soon", last_activity=ago(hours=2))  # stopped, but inactive for less than a day
    policy = Policy.model_validate({"version": 1, "defaults": {"idle": "1h"}, "users": {"delete_inactive_after": "1d"}})
    report = await make_culler().run(policy)
    assert report.results == {"gone-for-days/": Phase.STOPPED, "back-soon/": Phase.STOPPED}
    assert fake.users["back-soon"]["last_activity"] == iso(NOW)  # the hub did touch the users
    assert report.users_deleted == ["gone-for-days"]
    assert [r.path for r in fake.deletes][-1] == USERS + "/gone-for-days"
    assert "gone-for-days" not in fake.users and "back-soon" in fake.users


async def test_a_recently_active_user_is_kept_when_max_age_stops_the_server(
    fake: FakeHub, make_culler: CullerFactory
) -> None:
    fake.touch_on_stop = NOW
    fake.add_server("long-runner", last_activity=ago(minutes=1), started=ago(days=2))
    policy = Policy.model_validate(
        {"version": 1, "defaults": {"idle": "1h", "max_age": "1d"}, "users": {"delete_inactive_after": "1h"}}
    )
    report = await make_culler().run(policy)
    assert report.results == {"long-runner/": Phase.STOPPED}
    assert report.users_deleted == []
    assert [r.path for r in fake.deletes] == [USERS + "/long-runner/server"]
    assert "long-runner" in fake.users
    assert [r.query["state"] for r in fake.calls("GET", USERS)] == ["ready", "inactive"]  # it was a candidate


async def test_activity_older_than_our_stops_is_real_and_keeps_the_user(
    fake: FakeHub, make_culler: CullerFactory
) -> None:
    """Only a touch that can be our own stop's is discounted: the user logged in again five minutes ago."""
    fake.touch_on_stop = ago(minutes=5)  # at the stop the hub shows the user's other use of the account
    fake.add_server("came-back", last_activity=ago(days=2))
    policy = Policy.model_validate({"version": 1, "defaults": {"idle": "1h"}, "users": {"delete_inactive_after": "1d"}})
    report = await make_culler().run(policy)
    assert report.results == {"came-back/": Phase.STOPPED}
    assert report.users_deleted == []
    assert "came-back" in fake.users


async def test_dry_run_shows_the_deletions_that_follow_its_stops(
    fake: FakeHub, make_culler: CullerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add_server("gone-for-days", last_activity=ago(days=2))
    fake.add_server("half-gone", last_activity=ago(days=2))
    fake.add_server("half-gone", "lab", last_activity=ago(minutes=5))  # kept: the user stays
    fake.add_server("recent", last_activity=ago(hours=2))  # would stop, but active within the day
    policy = Policy.model_validate({"version": 1, "defaults": {"idle": "1h"}, "users": {"delete_inactive_after": "1d"}})
    with caplog.at_level(logging.INFO, logger="culler.cycle"):
        report = await make_culler(dry_run=True).run(policy)
    assert report.counts() == {Phase.WOULD_STOP: 3}
    would_delete = [r.culler_fields["user"] for r in caplog.records if r.getMessage() == "would delete user (dry run)"]
    assert would_delete == ["gone-for-days"]
    assert fake.deletes == []


async def test_no_user_deletion_without_a_users_section(fake: FakeHub, make_culler: CullerFactory) -> None:
    fake.add_user("ancient", last_activity=ago(days=900))
    await make_culler().run(POLICY)
    assert fake.deletes == []
    assert [r.query["state"] for r in fake.calls("GET", USERS)] == ["ready"]


async def test_stopping_set_before_the_cycle_sends_nothing(fake: FakeHub, make_culler: CullerFactory) -> None:
    idle_users(fake, 3)
    fake.add_user("ancient", last_activity=ago(days=90))
    culler = make_culler()
    culler.stopping.set()
    policy = Policy.model_validate({"version": 1, "defaults": {"idle": "1h"}, "users": {"delete_inactive_after": "1d"}})
    report = await culler.run(policy)
    assert report.counts() == {Phase.INTERRUPTED: 3}
    assert fake.deletes == []


async def first_delete(fake: FakeHub, timeout: float = 5.0) -> None:
    await wait_for(lambda: fake.deletes, timeout, "a DELETE", interval=0.01)


async def test_stopping_mid_cycle_sends_no_new_deletes(fake: FakeHub, make_culler: CullerFactory) -> None:
    names = idle_users(fake, 6)
    fake.stop_delay = 0.3
    culler = make_culler(concurrency=1)
    task = asyncio.create_task(culler.run(POLICY))
    await first_delete(fake)
    culler.stopping.set()
    report = await asyncio.wait_for(task, 5)
    assert len(fake.deletes) == 1  # the one in flight; the five queued behind the limit were never sent
    assert report.counts() == {Phase.STOPPED: 1, Phase.INTERRUPTED: 5}
    assert sum(fake.running(name) for name in names) == 5


async def test_stopping_ends_follow_ups(fake: FakeHub, make_culler: CullerFactory) -> None:
    fake.add_server("stuck", last_activity=ago(hours=2))
    fake.slow_stops[("stuck", "")] = float("inf")
    culler = make_culler(follow_up_interval=0.05, follow_up_timeout=60)
    task = asyncio.create_task(culler.run(POLICY))
    await first_delete(fake)
    culler.stopping.set()
    report = await asyncio.wait_for(task, 5)
    assert report.results == {"stuck/": Phase.STOPPING}
    assert await asyncio.wait_for(culler.follow_ups_done(), 5) == {"stuck/": Phase.SLOW}


async def test_a_slow_stop_holds_up_nothing(fake: FakeHub, make_culler: CullerFactory) -> None:
    fake.add_server("stuck", last_activity=ago(hours=2))
    fake.add_server("quick", last_activity=ago(hours=2))
    fake.slow_stops[("stuck", "")] = float("inf")
    culler = make_culler(follow_up_interval=0.05, follow_up_timeout=60)
    first = await asyncio.wait_for(culler.run(POLICY), 5)  # returns while the follow-up goes on
    assert first.results == {"stuck/": Phase.STOPPING, "quick/": Phase.STOPPED}
    second = await asyncio.wait_for(culler.run(POLICY), 5)
    assert second.results == {}  # stopping servers are pending: never sent a second DELETE
    assert len(fake.deletes) == 2
    culler.stopping.set()
    assert await asyncio.wait_for(culler.follow_ups_done(), 5) == {"stuck/": Phase.SLOW}


# -- the settle gate: due servers wait for a quiet home (tree-scan probe on tmp_path homes) ---------

SETTLE = {"probes": ["tree-scan"], "window": 0.2, "max_deferral": 30}
SETTLE_POLICY = Policy.model_validate(
    {
        "version": 1,
        "defaults": {"idle": "1h", "settle": SETTLE},
        "rules": [{"id": "scratch", "match": {"servers": ["scratch"]}, "settle": {"probes": []}}],
    }
)


@pytest.fixture
def make_settling_culler(culler_factory: CullerFactory, tmp_path: Any) -> CullerFactory:
    from culler.adapters.probes.treescan import TreeScanProbe

    def factory(**options: Any) -> Culler:
        probe = TreeScanProbe(str(tmp_path / "{username}"), budget=1.0)
        culler = {"clock": lambda: NOW, "probes": {"tree-scan": probe}}
        return culler_factory(client={"retries": 0, "now": lambda: NOW}, culler=culler, **options)

    return factory


def home(tmp_path: Any, user: str) -> Any:
    root = tmp_path / user
    (root / "work").mkdir(parents=True)
    for index in range(20):
        (root / "work" / f"notebook{index}.ipynb").write_text("{}")
    return root


async def settle_polls(culler: Culler, done: Callable[[], bool], deadline: float = 5.0) -> int:
    """Run settle polls until ``done()`` (failing at the deadline); the number of polls."""
    polls = 0

    async def polled() -> bool:
        nonlocal polls
        if done():
            return True
        await culler.settler.poll()
        polls += 1
        return done()

    await wait_for(polled, deadline, "the settle polls to get there", interval=0.02)
    return polls


async def test_a_due_server_settles_then_stops(fake: FakeHub, make_settling_culler: CullerFactory, tmp_path) -> None:
    home(tmp_path, "alice")
    fake.add_server("alice", last_activity=ago(hours=2))
    culler = make_settling_culler()
    ended = stops_ended(culler)
    admitted = asyncio.get_running_loop().time()
    first = await culler.run(SETTLE_POLICY)
    assert first.results == {"alice/": Phase.SETTLING}
    assert fake.deletes == []
    second = await culler.run(SETTLE_POLICY)  # still due: neither admitted twice nor stopped directly
    assert second.results == {} and fake.deletes == []
    assert list(culler.settler.settling) == ["alice/"]
    await settle_polls(culler, lambda: bool(fake.deletes))
    assert asyncio.get_running_loop().time() - admitted >= 0.2  # not before the window
    assert fake.deleted_servers() == [("alice", "")]
    assert culler.settler.settling == {} and len(culler.ledger) == 0
    assert [(e.decision.server.key, e.result, e.settle) for e in ended] == [("alice/", Phase.STOPPED, "verified")]
    third = await culler.run(SETTLE_POLICY)
    assert third.results == {} and len(fake.deletes) == 1


async def test_new_activity_cancels_settling(fake: FakeHub, make_settling_culler: CullerFactory, tmp_path) -> None:
    home(tmp_path, "alice")
    model = fake.add_server("alice", last_activity=ago(hours=2))
    culler = make_settling_culler()
    assert (await culler.run(SETTLE_POLICY)).results == {"alice/": Phase.SETTLING}
    await culler.settler.poll()
    model["last_activity"] = iso(ago(minutes=5))  # the user came back through the browser
    report = await culler.run(SETTLE_POLICY)
    assert report.results == {} and culler.settler.settling == {}
    loop = asyncio.get_running_loop()
    end = loop.time() + 1.0  # five windows: a quiet home would have been stopped by now
    while loop.time() < end:
        await culler.settler.poll()
        await asyncio.sleep(0.02)
    assert fake.deletes == []


async def test_newer_activity_that_leaves_it_due_keeps_settling(
    fake: FakeHub, make_settling_culler: CullerFactory, tmp_path
) -> None:
    """Activity that does not undo "due" (older than the limit, or a server past its max age) neither
    ends settling nor restarts its clock, so the deferral cap still comes."""
    home(tmp_path, "alice")
    model = fake.add_server("alice", last_activity=ago(hours=3))
    culler = make_settling_culler()
    await culler.run(SETTLE_POLICY)
    before = culler.settler.settling["alice/"]
    model["last_activity"] = iso(ago(hours=2))  # newer, still idle past the limit
    report = await culler.run(SETTLE_POLICY)
    assert report.results == {}  # not admitted again
    assert culler.settler.settling["alice/"] is before
    await settle_polls(culler, lambda: bool(fake.deletes))
    assert fake.deleted_servers() == [("alice", "")]


async def test_settling_never_holds_up_other_stops(
    fake: FakeHub, make_settling_culler: CullerFactory, tmp_path
) -> None:
    home(tmp_path, "alice")
    fake.add_server("alice", last_activity=ago(hours=2))
    fake.add_server("bob", "scratch", last_activity=ago(hours=2))  # rule "scratch": no probes -> stop at once
    fake.add_server("carol", last_activity=ago(minutes=10))
    culler = make_settling_culler()
    report = await culler.run(SETTLE_POLICY)
    assert report.results == {"alice/": Phase.SETTLING, "bob/scratch": Phase.STOPPED}
    assert fake.deleted_servers() == [("bob", "scratch")]
    await settle_polls(culler, lambda: len(fake.deletes) == 2)
    assert fake.deleted_servers() == [("bob", "scratch"), ("alice", "")]
    assert fake.running("carol")


async def test_a_home_being_written_to_defers_the_stop(
    fake: FakeHub, make_settling_culler: CullerFactory, tmp_path
) -> None:
    root = home(tmp_path, "alice")
    fake.add_server("alice", last_activity=ago(hours=2))
    culler = make_settling_culler()
    ended = stops_ended(culler)
    await culler.run(SETTLE_POLICY)
    loop = asyncio.get_running_loop()
    end = loop.time() + 1.0
    with open(root / "work" / "train.log", "a") as log_file:
        while loop.time() < end:  # a job still writing: five windows long
            log_file.write("epoch done\n")
            log_file.flush()
            await culler.settler.poll()
            await asyncio.sleep(0.02)
    assert fake.deletes == []
    [info] = culler.settler.describe()
    assert info["server"] == "alice" and "tree-scan" in info["probes"]  # type: ignore[operator]
    stopped_writing = loop.time()
    await settle_polls(culler, lambda: bool(fake.deletes))
    assert loop.time() - stopped_writing >= 0.2
    assert [e.settle for e in ended] == ["verified"]


async def test_an_unreadable_home_is_stopped_at_the_cap(fake: FakeHub, make_settling_culler: CullerFactory) -> None:
    fake.add_server("nohome", last_activity=ago(hours=2))  # no directory under tmp_path
    policy = Policy.model_validate(
        {"version": 1, "defaults": {"idle": "1h", "settle": {**SETTLE, "window": 0.1, "max_deferral": 0.4}}}
    )
    culler = make_settling_culler()
    ended = stops_ended(culler)
    assert (await culler.run(policy)).results == {"nohome/": Phase.SETTLING}
    await culler.settler.poll()
    assert fake.deletes == []
    await settle_polls(culler, lambda: bool(fake.deletes))
    assert [(e.result, e.settle) for e in ended] == [(Phase.STOPPED, "unverified")]


async def test_dry_run_settles_but_stops_nothing(fake: FakeHub, make_settling_culler: CullerFactory, tmp_path) -> None:
    home(tmp_path, "alice")
    fake.add_server("alice", last_activity=ago(hours=2))
    culler = make_settling_culler(dry_run=True)
    assert (await culler.run(SETTLE_POLICY)).results == {"alice/": Phase.SETTLING}
    await settle_polls(culler, lambda: not culler.settler.settling)  # "would stop" once settled
    assert fake.deletes == []


async def test_settling_counts_against_the_mass_stop_guard(
    fake: FakeHub, make_settling_culler: CullerFactory, tmp_path
) -> None:
    """Settling servers are stops on their way: cycles cannot admit more than the cap in total."""
    names = [f"user{index:02d}" for index in range(12)]
    for index, name in enumerate(names):
        home(tmp_path, name)
        fake.add_server(name, last_activity=ago(hours=2 + index))
    culler = make_settling_culler(max_stops=3)
    for _ in range(4):
        await culler.run(SETTLE_POLICY)
        assert len(culler.settler.settling) <= 3
    await settle_polls(culler, lambda: len(fake.deletes) >= 3)
    assert len(fake.deletes) == 3  # one poll stops the three admitted, never twelve
    assert sorted(fake.deleted_servers()) == [(name, "") for name in names[-3:]]  # the longest idle


async def test_a_settled_stop_is_confirmed_with_fresh_hub_data(
    fake: FakeHub, make_settling_culler: CullerFactory, tmp_path
) -> None:
    """Cycles failing (no reconcile) must not let a stale decision through: the user came back."""
    home(tmp_path, "alice")
    fake.add_server("alice", last_activity=ago(hours=2))
    culler = make_settling_culler()
    assert (await culler.run(SETTLE_POLICY)).results == {"alice/": Phase.SETTLING}
    fake.fail("GET", USERS, status=500, times=-1)  # the listing is down from now on
    fake.users["alice"]["servers"][""]["last_activity"] = ago(seconds=1).isoformat()  # the user is back
    failed = await culler.run(SETTLE_POLICY)
    assert not failed.ok
    await settle_polls(culler, lambda: "alice/" not in culler.settler.settling)
    assert fake.deletes == []


async def test_a_settled_stop_waits_while_the_hub_cannot_confirm(
    fake: FakeHub, make_settling_culler: CullerFactory, tmp_path
) -> None:
    home(tmp_path, "alice")
    fake.add_server("alice", last_activity=ago(hours=2))
    culler = make_settling_culler()
    await culler.run(SETTLE_POLICY)
    fake.fail("GET", USERS + "/alice", status=503, times=-1)
    loop = asyncio.get_running_loop()
    end = loop.time() + 1.5  # well past the 0.2 s window: several quiet verdicts, none confirmed
    states = set()
    while loop.time() < end:
        await culler.settler.poll()
        states.add(culler.settler.describe()[0]["state"])
        await asyncio.sleep(0.05)
    assert fake.deletes == [] and "alice/" in culler.settler.settling
    assert any("could not confirm" in state for state in states), states
    fake.faults.clear()
    await settle_polls(culler, lambda: bool(fake.deletes))
    assert fake.deleted_servers() == [("alice", "")]
