"""Data the service must not act on: runaway or shifting listings, slow pages, skewed clocks, users listed
twice, Retry-After. Every case asserts that no server in use is stopped, and that requests stay bounded.

These run against the fake hub on real time (its ``Date`` header is real, or skewed on purpose), with a
real HubClient and Culler: no frozen clock, so the per-page and per-source arithmetic is what decides.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from factories import CullerFactory
from fakehub import API, FakeHub, format_http_date, iso

from culler.adapters.hub import HubClient
from culler.core.clock import ClockWatch
from culler.core.lifecycle import Phase
from culler.core.text import utcnow
from culler.engine.cycle import Culler
from culler.observers.metrics import Metrics
from culler.policy.model import Policy

USERS = API + "/users"
HOUR_POLICY = Policy.model_validate({"version": 1, "defaults": {"idle": "1h"}})


def policy(idle: str) -> Policy:
    return Policy.model_validate({"version": 1, "defaults": {"idle": idle}})


@pytest.fixture
def make_culler(culler_factory: CullerFactory) -> CullerFactory:
    def factory(*, client: dict[str, Any] | None = None, **options: Any) -> Culler:
        return culler_factory(client=client, **{"interval": 60.0, **options})

    return factory


def users(fake: FakeHub, count: int, *, idle: timedelta, prefix: str, hub_now: datetime | None = None) -> list[str]:
    now = hub_now or utcnow()
    names = [f"{prefix}{i:03d}" for i in range(count)]
    for name in names:
        fake.add_server(name, last_activity=now - idle)
    return names


# -- 1. bounded listings -------------------------------------------------------------------------------


async def test_a_next_that_keeps_moving_forward_fails_the_cycle_with_bounded_requests(
    fake: FakeHub, make_culler: CullerFactory
) -> None:
    users(fake, 30, idle=timedelta(hours=2), prefix="idle")
    fake.runaway_next = True  # empty pages past the total, each with a 'next' further on
    metrics = Metrics()
    culler = make_culler(client={"page_size": 10})
    culler.events.subscribe(metrics)
    report = await culler.run(HOUR_POLICY)
    assert not report.ok and report.listing_failure == "empty-page"
    assert "empty page" in (report.error or "")
    assert fake.deletes == []
    assert len(fake.calls("GET", USERS)) == 4  # three real pages and the first empty one
    assert metrics.registry.get_sample_value("activity_culler_listing_failures_total", {"reason": "empty-page"}) == 1.0


async def test_pages_past_the_bound_fail_the_cycle(fake: FakeHub, make_culler: CullerFactory) -> None:
    """A hub that keeps answering full pages (the same users again and again) is cut off at the page bound."""
    users(fake, 10, idle=timedelta(hours=2), prefix="idle")

    def page(offset: int) -> dict[str, Any]:
        items = list(fake.users.values())
        nxt = {"offset": offset + 10, "limit": 10, "url": ""}
        return {"items": items, "_pagination": {"offset": offset, "limit": 10, "total": 20, "next": nxt}}

    for offset in range(0, 400, 10):
        fake.fail("GET", USERS, status=200, json=page(offset), when=lambda r, o=offset: r.query["offset"] == str(o))
    report = await make_culler(client={"page_size": 10}).run(HOUR_POLICY)
    assert report.listing_failure == "too-many-pages" and fake.deletes == []
    # 2 pages expected for a total of 20: ceil(2 * 1.25) + 2 = 5 allowed, the 6th fails
    assert len(fake.calls("GET", USERS)) == 6


async def test_a_total_that_changes_wildly_fails_the_cycle(fake: FakeHub, make_culler: CullerFactory) -> None:
    users(fake, 30, idle=timedelta(hours=2), prefix="idle")
    nxt = {"offset": 10, "limit": 10, "url": ""}
    first = {"items": [fake.users["idle000"]], "_pagination": {"offset": 0, "limit": 10, "total": 30, "next": nxt}}
    shrunk = {"items": [fake.users["idle010"]], "_pagination": {"offset": 10, "limit": 10, "total": 1000}}
    fake.fail("GET", USERS, status=200, json=first, when=lambda r: r.query["offset"] == "0")
    fake.fail("GET", USERS, status=200, json=shrunk, when=lambda r: r.query["offset"] == "10")
    report = await make_culler(client={"page_size": 10}).run(HOUR_POLICY)
    assert report.listing_failure == "total-changed" and fake.deletes == []


async def test_a_listing_past_its_deadline_fails_the_cycle(fake: FakeHub, make_culler: CullerFactory) -> None:
    users(fake, 40, idle=timedelta(hours=2), prefix="idle")
    fake.fail("GET", USERS, status=None, delay=0.4, times=-1)
    report = await make_culler(client={"page_size": 10}, listing_deadline=1.0).run(HOUR_POLICY)
    assert report.listing_failure == "deadline" and fake.deletes == []
    assert len(fake.calls("GET", USERS)) <= 4


def test_the_derived_deadline_grows_with_the_hub_and_is_capped_by_the_interval() -> None:
    from culler.core.listing import ListingBounds, PageInfo

    def bounds(total: int, cap: float) -> ListingBounds:
        return ListingBounds.from_first(PageInfo([{}], 0, 200, total, None), 500, 60.0, cap)

    small, large = bounds(100, 1e9), bounds(100_000, 1e9)
    assert small.deadline < large.deadline  # not a fixed number: large hubs get longer
    assert large.max_pages == 627 and bounds(100_000, 300).deadline == 300


async def test_a_user_listed_twice_is_judged_once_on_its_freshest_copy(
    fake: FakeHub, make_culler: CullerFactory
) -> None:
    """Offset paging while users come and go can list one user on two pages."""
    now = utcnow()
    fake.add_server("twice", last_activity=now - timedelta(hours=2))
    fake.add_server("idle", last_activity=now - timedelta(hours=2))
    stale = {**fake.users["twice"], "servers": {"": {**fake.users["twice"]["servers"][""]}}}
    fresh = {**stale, "servers": {"": {**stale["servers"][""], "last_activity": iso(now - timedelta(minutes=1))}}}
    page = {"items": [stale, fake.users["idle"], fresh], "_pagination": {"offset": 0, "limit": 50, "total": 2}}
    fake.fail("GET", USERS, status=200, json=page)
    report = await make_culler().run(HOUR_POLICY)
    assert report.ok and report.duplicates == 1
    assert fake.deleted_servers() == [("idle", "")]  # "twice" was in use by its newer copy
    assert [d.server.key for d in report.decisions].count("twice/") == 1


async def test_requests_never_go_faster_than_the_rate_bound(fake: FakeHub, make_culler: CullerFactory) -> None:
    users(fake, 21, idle=timedelta(hours=2), prefix="idle")
    report = await make_culler(client={"max_rate": 20.0}).run(HOUR_POLICY)
    assert report.ok and len(fake.deletes) == 21
    arrivals = [r.at for r in fake.requests]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) >= 0.04, min(gaps)  # 50 ms apart when sent; arrival may jitter a little
    assert arrivals[-1] - arrivals[0] >= 21 * 0.05 * 0.95


# -- 2. the source's clock, taken per page ---------------------------------------------------------------


async def test_slow_pages_judge_each_server_when_its_page_was_answered(
    fake: FakeHub, make_culler: CullerFactory
) -> None:
    """Active servers on every page (their activity is reported up to the moment each page is served),
    pages that take 0.6 s each, a 1.5 s idle limit: none is stopped; the truly idle ones are."""
    active = users(fake, 40, idle=timedelta(0), prefix="active")
    idle = users(fake, 5, idle=timedelta(hours=1), prefix="zidle")

    def report_activity(offset: int) -> None:
        for name in active:
            fake.users[name]["servers"][""]["last_activity"] = iso(utcnow())

    fake.on_list = report_activity
    fake.fail("GET", USERS, status=None, delay=0.6, times=-1)
    # no re-reads here (they would save these servers too): the per-page judgment alone must
    report = await make_culler(client={"page_size": 10}, recheck_fraction=1e9).run(policy("2s"))
    assert report.ok and report.listing_seconds > 2.5
    assert [r for r in fake.calls("GET") if r.path != USERS] == []
    assert sorted(u for u, _ in fake.deleted_servers()) == idle


@pytest.mark.parametrize("hub_ahead", [timedelta(hours=1), timedelta(hours=-1)], ids=["hub-ahead", "hub-behind"])
async def test_idle_time_is_the_hubs_own_whatever_our_clock_says(
    fake: FakeHub, make_culler: CullerFactory, hub_ahead: timedelta
) -> None:
    fake.date = lambda: utcnow() + hub_ahead
    hub_now = utcnow() + hub_ahead
    users(fake, 3, idle=timedelta(minutes=30), prefix="recent", hub_now=hub_now)  # by ours: -30 min or 90 min
    due = users(fake, 2, idle=timedelta(minutes=90), prefix="stale", hub_now=hub_now)  # by ours: 30 or 150 min
    culler = make_culler()
    report = await culler.run(HOUR_POLICY)
    assert report.ok
    assert sorted(u for u, _ in fake.deleted_servers()) == due
    assert abs(culler.hub.clock.skew_seconds - hub_ahead.total_seconds()) < 3
    kept = next(d for d in report.decisions if d.server.user == "recent000")
    assert kept.stop_at is not None  # the planned stop, on our clock: 30 minutes from now
    assert abs((kept.stop_at - utcnow()).total_seconds() - 1800) < 5


async def test_a_hub_without_a_date_header_is_judged_by_our_clock_and_counted(
    fake: FakeHub, make_culler: CullerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake.date = lambda: None
    due = users(fake, 2, idle=timedelta(hours=2), prefix="idle")
    users(fake, 2, idle=timedelta(minutes=1), prefix="active")
    culler = make_culler()
    assert (await culler.run(HOUR_POLICY)).ok
    assert (await culler.run(HOUR_POLICY)).ok
    assert sorted(u for u, _ in fake.deleted_servers()) == due
    assert culler.hub.clock.undated >= 2
    assert sum("sent no Date header" in r.getMessage() for r in caplog.records) == 1  # logged once


async def test_a_clock_beyond_trust_stops_nothing(fake: FakeHub, make_culler: CullerFactory) -> None:
    fake.date = lambda: utcnow() + timedelta(days=3)
    users(fake, 2, idle=timedelta(days=3, hours=2), prefix="idle")
    report = await make_culler().run(HOUR_POLICY)
    assert not report.ok and "clock" in (report.error or "") and fake.deletes == []


def test_a_large_skew_is_warned_once_until_it_recovers() -> None:
    from culler.core.clock import Reading

    watch = ClockWatch("hub", warn_at=60)
    now = datetime(2026, 12, 1, tzinfo=timezone.utc)
    ahead = Reading(now, now + timedelta(minutes=5))
    assert len(watch.admit(ahead)[1]) == 1 and watch.admit(ahead)[1] == []
    assert watch.admit(Reading(now, now))[1] == []
    assert len(watch.admit(ahead)[1]) == 1  # warned again after it recovered


# -- 3. stale data is re-read before the stop ---------------------------------------------------------------


async def test_a_slow_listing_rereads_each_due_server_and_keeps_those_used_since(
    fake: FakeHub, make_culler: CullerFactory
) -> None:
    """A server idle when the first page was answered, used while the rest of the listing ran: re-read
    before its stop, it is kept. The others on that page are stopped after their re-read."""
    names = users(fake, 6, idle=timedelta(seconds=30), prefix="u")

    def visit_after_first_page(offset: int) -> None:
        if offset > 0:
            fake.users["u000"]["servers"][""]["last_activity"] = iso(utcnow())

    fake.on_list = visit_after_first_page
    fake.fail("GET", USERS, status=None, delay=0.3, when=lambda r: r.query["offset"] != "0", times=-1)
    report = await make_culler(client={"page_size": 3}, recheck_fraction=0.01).run(policy("20s"))
    assert report.ok and report.results["u000/"] is Phase.RECHECKED
    assert sorted(u for u, _ in fake.deleted_servers()) == names[1:]
    rereads = [r.path for r in fake.calls("GET") if r.path.startswith(USERS + "/")]
    assert sorted(rereads) == sorted(f"{USERS}/{n}" for n in names)


async def test_a_fast_listing_does_not_reread(fake: FakeHub, make_culler: CullerFactory) -> None:
    users(fake, 3, idle=timedelta(hours=2), prefix="idle")
    report = await make_culler().run(HOUR_POLICY)
    assert report.ok and len(fake.deletes) == 3
    assert [r for r in fake.calls("GET") if r.path != USERS] == []


async def test_a_reread_the_hub_cannot_answer_keeps_the_server(fake: FakeHub, make_culler: CullerFactory) -> None:
    users(fake, 2, idle=timedelta(hours=2), prefix="idle")
    fake.fail("GET", USERS + "/idle000", status=500, times=-1)
    report = await make_culler(recheck_fraction=0.0).run(HOUR_POLICY)  # 0: always re-read
    assert report.results == {"idle000/": Phase.RECHECKED, "idle001/": Phase.STOPPED}
    assert fake.deleted_servers() == [("idle001", "")]


# -- 4. Retry-After survives cycles ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_retry_after_holds_the_next_cycle_too(fake: FakeHub, make_culler: CullerFactory, form: str) -> None:
    users(fake, 2, idle=timedelta(hours=2), prefix="idle")
    value = "120" if form == "seconds" else format_http_date(utcnow() + timedelta(seconds=120))
    fake.fail("GET", USERS, status=429, headers={"Retry-After": value})
    metrics = Metrics()
    culler = make_culler()
    culler.events.subscribe(metrics)
    first = await culler.run(HOUR_POLICY)
    assert not first.ok and "Retry-After" in (first.error or "")
    second = await culler.run(HOUR_POLICY)  # the next cycle: nothing is sent, and it counts as failed
    assert not second.ok
    assert len(fake.calls("GET", USERS)) == 1 and fake.deletes == []
    assert metrics.registry.get_sample_value("activity_culler_cycles_total", {"result": "failed"}) == 2.0
    assert 100 < culler.hub.not_before - time.monotonic() <= 121


async def test_a_short_retry_after_is_waited_for_within_the_cycle(fake: FakeHub, make_culler: CullerFactory) -> None:
    users(fake, 1, idle=timedelta(hours=2), prefix="idle")
    fake.fail("GET", USERS, status=503, headers={"Retry-After": "1"})
    report = await make_culler().run(HOUR_POLICY)
    assert report.ok and fake.deleted_servers() == [("idle000", "")]
    first, second = fake.calls("GET", USERS)[:2]
    assert second.at - first.at >= 0.95


def test_retry_after_is_capped() -> None:
    from culler.adapters.hub import MAX_RETRY_AFTER, Answer
    from culler.core.clock import Reading

    now = utcnow()
    answer = Answer(429, b"", Reading(now, now), retry_after=str(10 * 86400))
    assert HubClient._retry_after(answer) == MAX_RETRY_AFTER
    assert HubClient._retry_after(Answer(429, b"", Reading(now, now), retry_after="soon")) is None


async def test_an_unchanged_timestamp_stays_put_on_our_clock_across_reads(
    fake: FakeHub, make_culler: CullerFactory
) -> None:
    """A Date has one-second resolution: without a steady offset, the same hub timestamp would land on a
    slightly different local time at each read, and look like new activity (warnings sent again, settling
    cancelled). The soak benchmark found this."""
    users(fake, 3, idle=timedelta(minutes=5), prefix="u")
    culler = make_culler()
    seen = []
    for _ in range(4):
        report = await culler.run(HOUR_POLICY)
        seen.append(sorted((d.server.key, d.server.activity_time) for d in report.decisions))
        await asyncio.sleep(0.35)  # let the sub-second part of our clock move against the Date's
    assert all(times == seen[0] for times in seen)


def test_the_steady_offset_follows_a_real_clock_step() -> None:
    from culler.core.clock import Reading

    watch = ClockWatch("hub")
    now = datetime(2026, 12, 1, tzinfo=timezone.utc)
    first, _ = watch.admit(Reading(now, now + timedelta(seconds=0.2)))
    jitter, _ = watch.admit(Reading(now, now + timedelta(seconds=1.1)))
    assert first.offset == jitter.offset == timedelta(seconds=0.2)
    step, _ = watch.admit(Reading(now, now + timedelta(seconds=30)))
    assert step.offset == timedelta(seconds=30)


def test_health_says_at_once_that_the_latest_cycle_failed() -> None:
    from culler.engine.health import Health

    health = Health(interval=300)
    now = utcnow()
    health.record(now, None)
    health.record(now + timedelta(seconds=300), "listing users failed, no stops this cycle: GET users: an empty page")
    ok, body = health.status(now + timedelta(seconds=301), None, True)
    assert ok and body["last_cycle"] == "failed" and "empty page" in str(body["last_error"])
    ok, body = health.status(now + timedelta(seconds=1000), None, True)  # three intervals without success
    assert not ok and "empty page" in str(body["reason"])
