"""The Settler with scripted probes and a recording stop: when due servers are stopped, and when not."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from aiohttp import web
from process_support import wait_for

from culler.adapters.probes.prometheus import PrometheusProbe
from culler.core.decide import Action, Decision
from culler.core.events import Event, StopEnded
from culler.core.lifecycle import Ledger, Phase, Record
from culler.core.settle import Observation, Seen, active, quiet, unknown
from culler.core.snapshot import ServerSnapshot
from culler.core.text import utcnow
from culler.engine.settler import Settler
from culler.policy.model import Settle

T0 = datetime(2025, 6, 1, 10, 0, tzinfo=timezone.utc)
DEADLINE = 5.0
A, B = "tree-scan", "prometheus"  # policies only name these; the fakes take their places

Script = Callable[[int], Observation | Awaitable[Observation]]


def server(user: str = "alice", name: str = "", activity: datetime = T0, **overrides: Any) -> ServerSnapshot:
    fields: dict[str, Any] = {
        "user": user,
        "name": name,
        "admin": False,
        "groups": (),
        "last_activity": activity,
        "started": T0 - timedelta(days=1),
        "pending": None,
        "ready": True,
    }
    return ServerSnapshot(**{**fields, **overrides})


def settle(*probes: str, window: float = 10, max_deferral: float = 3600, at_cap: str = "stop") -> Settle:
    return Settle(probes=list(probes or [A]), window=window, max_deferral=max_deferral, at_cap=at_cap)


def due(snapshot: ServerSnapshot | None = None, how: Settle | None = None, rule: str = "r1") -> Decision:
    snapshot = snapshot or server()
    return Decision(snapshot, Action.STOP, rule, "no activity for 2h", 7200.0, T0, False, settle=how or settle())


def keep(snapshot: ServerSnapshot) -> Decision:
    return Decision(snapshot, Action.KEEP, "r1", "idle 1m of 1h", 60.0)


class FakeProbe:
    """A probe answering from a script: a fixed observation, or a function of the call number."""

    def __init__(self, name: str, script: Observation | Script) -> None:
        self.name = name
        self.script = script
        self.calls: list[str] = []
        self.running = 0
        self.max_running = 0
        self.cancelled = 0
        self.forgotten: list[str] = []

    async def observe(self, snapshot: ServerSnapshot, window: float = 0.0) -> Observation:
        self.calls.append(snapshot.key)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if isinstance(self.script, Observation):
                return self.script
            answer = self.script(len(self.calls))
            if isinstance(answer, Observation):
                return answer
            return await answer
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1

    def forget(self, key: str) -> None:
        self.forgotten.append(key)


class Stops:
    """Records each stop and, as the stopper does, moves the record through sending to stopped."""

    def __init__(self, ledger: Ledger | None = None) -> None:
        self.calls: list[tuple[str, str, float]] = []  # server key, note, monotonic time
        self.gate: asyncio.Event | None = None
        self.ledger = ledger

    async def __call__(self, record: Record, note: str) -> Phase:
        self.calls.append((record.key, note, time.monotonic()))
        assert self.ledger is not None
        self.ledger.move(record, Phase.SENDING, note)
        if self.gate is not None:
            await self.gate.wait()
        self.ledger.move(record, Phase.STOPPED)
        return Phase.STOPPED

    @property
    def keys(self) -> list[str]:
        return [key for key, _, _ in self.calls]


def make(
    *probes: FakeProbe, probe_timeout: float = 1.0, publish: Any = None, clock: Callable[[], datetime] = utcnow
) -> tuple[Settler, Stops]:
    ledger = Ledger(publish, clock)
    stops = Stops(ledger)
    return Settler({p.name: p for p in probes}, stops, probe_timeout=probe_timeout, ledger=ledger), stops


async def poll_until(settler: Settler, done: Callable[[], bool], deadline: float = DEADLINE) -> int:
    """Poll until ``done()``; the number of polls it took. Fails at the deadline."""
    polls = 0

    async def polled() -> bool:
        nonlocal polls
        if done():
            return True
        await settler.poll()
        polls += 1
        return done()

    await wait_for(polled, deadline, "the settle polls to get there", interval=0.01)
    return polls


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "culler.settle" and r.getMessage() == text]


# -- the verdict ------------------------------------------------------------------------------------


async def test_stops_only_when_every_probe_vouches_for_the_window() -> None:
    answers = {A: quiet(100), B: quiet(5)}
    a = FakeProbe(A, lambda _: answers[A])
    b = FakeProbe(B, lambda _: answers[B])
    events: list[Event] = []
    settler, stops = make(a, b, publish=events.append)
    settler.admit(due(how=settle(A, B, window=10)))
    assert "alice/" in settler.settling
    await settler.poll()
    assert stops.calls == []
    answers[B] = active("file grew")
    await settler.poll()
    assert stops.calls == []
    answers[B] = unknown("scanning")
    await settler.poll()
    assert stops.calls == []
    answers[B] = quiet(10)
    await settler.poll()
    assert [(key, note) for key, note, _ in stops.calls] == [("alice/", "verified")]
    assert "alice/" not in settler.settling and settler.describe() == []
    assert a.forgotten == ["alice/"] and b.forgotten == ["alice/"]
    assert [(e.result, e.settle) for e in events if isinstance(e, StopEnded)] == [(Phase.STOPPED, "verified")]
    await settler.poll()  # nothing left: no second stop
    assert len(stops.calls) == 1


async def test_each_server_is_judged_on_its_own() -> None:
    probe = FakeProbe(A, lambda n: quiet(100))
    noisy = FakeProbe(B, lambda n: active("busy"))
    settler, stops = make(probe, noisy)
    settler.admit(due(server("alice"), settle(A)))
    settler.admit(due(server("bob"), settle(A, B)))
    await settler.poll()
    assert stops.keys == ["alice/"]
    assert [d["server"] for d in settler.describe()] == ["bob"]


async def test_probe_answers_cannot_cancel_settling() -> None:
    probe = FakeProbe(A, active("writing"))
    settler, stops = make(probe)
    decision = due()
    settler.admit(decision)
    for _ in range(5):
        await settler.poll()
        settler.reconcile([decision])  # the same activity: still due
    assert "alice/" in settler.settling and stops.calls == []
    assert probe.forgotten == []


@pytest.mark.parametrize(
    "later",
    [
        pytest.param(lambda s: [keep(replace(s, last_activity=T0 + timedelta(seconds=1)))], id="new-activity"),
        pytest.param(lambda s: [], id="gone"),
        pytest.param(lambda s: [keep(s)], id="no-longer-due"),  # a policy edit, or a doubt: never stop then
        pytest.param(
            lambda s: [Decision(replace(s, pending="stop", ready=False), Action.SKIP, "-", "pending stop")],
            id="pending",
        ),
    ],
)
async def test_reconcile_ends_settling(later: Callable[[ServerSnapshot], list[Decision]], caplog) -> None:
    caplog.set_level(logging.INFO, "culler.settle")
    probe = FakeProbe(A, quiet(1000))
    settler, stops = make(probe)
    decision = due()
    settler.admit(decision)
    settler.reconcile(later(decision.server))
    assert "alice/" not in settler.settling
    assert probe.forgotten == ["alice/"]
    await settler.poll()
    assert stops.calls == [] and probe.calls == []
    ended = [r.getMessage() for r in caplog.records if "settling" in r.getMessage() and "before" not in r.getMessage()]
    assert len(ended) == 1


async def test_activity_that_leaves_it_due_does_not_end_settling() -> None:
    settler, _ = make(FakeProbe(A, active("x")))
    decision = due()
    settler.admit(decision)
    settling = settler.settling["alice/"]
    settler.reconcile([due(replace(decision.server, last_activity=T0 - timedelta(hours=1)))])
    settler.reconcile([due(decision.server)])
    settler.reconcile([due(replace(decision.server, last_activity=T0 + timedelta(minutes=5)))])  # max age, say
    assert settler.settling["alice/"] is settling


# -- the deferral cap ---------------------------------------------------------------------------------


async def test_never_ending_writer_is_stopped_unverified_at_the_cap(caplog) -> None:
    caplog.set_level(logging.INFO, "culler.settle")
    probe = FakeProbe(A, active("still writing"))
    events: list[Event] = []
    settler, stops = make(probe, publish=events.append)
    admitted = time.monotonic()
    settler.admit(due(how=settle(window=0.1, max_deferral=0.3)))
    polls = await poll_until(settler, lambda: bool(stops.calls))
    assert polls > 1
    [(key, note, at)] = stops.calls
    assert (key, note) == ("alice/", "unverified")
    assert at - admitted >= 0.3
    assert [(e.result, e.settle) for e in events if isinstance(e, StopEnded)] == [(Phase.STOPPED, "unverified")]
    assert len(messages(caplog, "settle cap reached; stopping unverified")) == 1
    assert "alice/" not in settler.settling


async def test_at_cap_skip_keeps_the_server_and_says_so_once(caplog) -> None:
    caplog.set_level(logging.INFO, "culler.settle")
    answer = {"now": active("still writing")}
    probe = FakeProbe(A, lambda _: answer["now"])
    events: list[Event] = []
    settler, stops = make(probe, publish=events.append)
    settler.admit(due(how=settle(window=0.1, max_deferral=0.3, at_cap="skip")))
    await poll_until(settler, lambda: settler.describe()[0]["cap_in"] == "reached")
    for _ in range(10):
        await settler.poll()
    assert stops.calls == []
    assert len(messages(caplog, "settle cap reached; keeping the server")) == 1
    [info] = settler.describe()
    assert info["at_cap"] == "skip" and "at_cap: skip" in str(info["state"])
    assert not any(isinstance(e, StopEnded) for e in events)
    answer["now"] = quiet(1.0)  # the writer finally stops: a verified stop
    await settler.poll()
    assert [(key, note) for key, note, _ in stops.calls] == [("alice/", "verified")]


# -- probes that fail ---------------------------------------------------------------------------------


def boom(_: int) -> Observation:
    raise RuntimeError("disk on fire")


async def hang(_: int) -> Observation:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


@pytest.mark.parametrize("script", [boom, hang], ids=["raises", "hangs"])
async def test_a_failing_probe_defers_until_the_cap_and_is_logged_once(script: Script, caplog) -> None:
    caplog.set_level(logging.INFO, "culler.settle")
    probe = FakeProbe(A, script)
    fine = FakeProbe(B, quiet(1000))
    settler, stops = make(probe, fine, probe_timeout=0.05)
    settler.admit(due(how=settle(A, B, window=0.1, max_deferral=0.5)))
    settler.admit(due(server("bob"), settle(A, B, window=0.1, max_deferral=0.5)))
    await settler.poll()
    [info, _] = settler.describe()
    assert str(info["probes"][A]).startswith("unknown: ")  # type: ignore[index]
    assert stops.calls == []
    polls = await poll_until(settler, lambda: len(stops.calls) == 2)
    assert polls >= 3
    assert sorted((key, note) for key, note, _ in stops.calls) == [("alice/", "unverified"), ("bob/", "unverified")]
    logged = messages(caplog, "settle probe cannot tell; deferring the stop")
    assert len(logged) == 2  # once per server, not once per poll
    fields = [r.culler_fields for r in logged]  # type: ignore[attr-defined]
    assert {f["user"] for f in fields} == {"alice", "bob"} and {f["probe"] for f in fields} == {A}
    if script is hang:
        assert "no answer within 0.05s" in fields[0]["error"]
        assert len(probe.calls) == 2  # one call per server, reused while it hung: never doubled
        await wait_for(lambda: probe.running == 0, DEADLINE, "the hung probe calls to end", interval=0.01)
        assert probe.cancelled == 2  # and cancelled once the server left settling
    else:
        assert "RuntimeError: disk on fire" in fields[0]["error"]


async def test_a_slow_probe_is_not_called_twice_concurrently() -> None:
    release = asyncio.Event()

    async def slow(n: int) -> Observation:
        if n == 1:
            await release.wait()
            return active("first answer, late")
        return quiet(100)

    probe = FakeProbe(A, slow)
    settler, stops = make(probe, probe_timeout=0.02)
    settler.admit(due(how=settle(window=10)))
    for _ in range(4):
        await settler.poll()
        assert settler.describe()[0]["probes"] == {A: "unknown: no answer within 0.02s"}
    assert len(probe.calls) == 1 and probe.max_running == 1
    release.set()
    await wait_for(lambda: probe.running == 0, DEADLINE, "the late answer", interval=0.01)
    await settler.poll()  # the late answer is not taken as current: a fresh call is made
    assert len(probe.calls) == 2 and probe.max_running == 1
    assert [(key, note) for key, note, _ in stops.calls] == [("alice/", "verified")]


async def test_a_probe_that_is_not_configured_cannot_tell() -> None:
    settler, stops = make(FakeProbe(A, quiet(100)))
    settler.admit(due(how=settle(A, B, window=1)))
    await settler.poll()
    assert stops.calls == []
    assert "not configured" in settler.describe()[0]["probes"][B]  # type: ignore[index]


async def test_a_probe_that_fails_before_its_coroutine_starts_cannot_tell() -> None:
    class Broken:
        name = A

        def observe(self, snapshot: ServerSnapshot, window: float = 0.0) -> Awaitable[Observation]:
            raise KeyError("username")  # e.g. a bad path template, raised eagerly

        def forget(self, key: str) -> None:
            raise OSError("cannot forget")

    ledger = Ledger()
    stops = Stops(ledger)
    settler = Settler({A: Broken()}, stops, ledger=ledger)  # type: ignore[dict-item]
    settler.admit(due(how=settle(window=0.1, max_deferral=0.2)))
    await settler.poll()
    assert settler.describe()[0]["probes"] == {A: "unknown: KeyError: 'username'"}
    await poll_until(settler, lambda: bool(stops.calls))  # forget raising does not lose the stop
    assert stops.calls[0][1] == "unverified" and "alice/" not in settler.settling


async def test_one_servers_failing_stop_does_not_end_the_others_poll(caplog) -> None:
    caplog.set_level(logging.INFO, "culler.settle")
    stopped: list[str] = []

    async def stop(record: Record, note: str) -> None:
        if record.key == "alice/":
            raise RuntimeError("surprise")
        stopped.append(record.key)
        settler.ledger.move(record, Phase.SENDING)
        settler.ledger.move(record, Phase.STOPPED)

    settler = Settler({A: FakeProbe(A, quiet(100))}, stop)
    settler.admit(due(server("alice")))
    settler.admit(due(server("bob")))
    await settler.poll()
    assert stopped == ["bob/"]
    assert settler.describe() == []
    assert any(r.getMessage() == "settle poll failed" for r in caplog.records)


# -- races with the cycle -----------------------------------------------------------------------------


async def test_a_verdict_for_a_settling_that_ended_meanwhile_is_dropped() -> None:
    """Reconciled away and admitted anew while the probes ran: the old poll must not stop the new one."""
    release = asyncio.Event()

    async def late_quiet(n: int) -> Observation:
        if n == 1:
            await release.wait()
            return quiet(1000)
        return active("writing")

    probe = FakeProbe(A, late_quiet)
    settler, stops = make(probe, probe_timeout=5)
    first = due()
    settler.admit(first)
    polling = asyncio.ensure_future(settler.poll())
    await wait_for(lambda: probe.calls, DEADLINE, "the probe call", interval=0.01)
    newer = replace(first.server, last_activity=T0 + timedelta(hours=3))
    settler.reconcile([keep(newer)])  # the user came back
    settler.admit(due(newer))  # ...and is due again (say, a policy change)
    release.set()
    await polling
    assert stops.calls == []
    assert "alice/" in settler.settling
    assert settler.settling["alice/"].decision.server.last_activity == newer.last_activity


async def test_a_server_being_stopped_stays_busy_until_the_stop_returns() -> None:
    probe = FakeProbe(A, quiet(100))
    settler, stops = make(probe)
    stops.gate = asyncio.Event()
    decision = due()
    settler.admit(decision)
    polling = asyncio.ensure_future(settler.poll())
    await wait_for(lambda: stops.calls, DEADLINE, "the stop", interval=0.01)
    assert "alice/" in settler.settling  # a cycle now must not find it due and admit it again
    settler.reconcile([])  # the hub already lists it as gone: nothing to drop, the stop is on its way
    await settler.poll()  # nor poll it again
    assert len(stops.calls) == 1 and len(probe.calls) == 1
    stops.gate.set()
    await polling
    assert "alice/" not in settler.settling


async def test_probe_calls_still_running_when_settling_ends_are_cancelled() -> None:
    """A probe call that outlives its settling must not write per-server state back after forget()."""

    release = asyncio.Event()

    async def answer_once_released(_: int) -> Observation:
        await release.wait()
        return quiet(1000)

    class Remembering(FakeProbe):
        def __init__(self) -> None:
            super().__init__(A, answer_once_released)
            self.state: dict[str, float] = {}

        async def observe(self, snapshot: ServerSnapshot, window: float = 0.0) -> Observation:
            observation = await super().observe(snapshot)
            self.state.setdefault(snapshot.key, time.monotonic())  # like the Prometheus probe's quiet_since
            return observation

        def forget(self, key: str) -> None:
            super().forget(key)
            self.state.pop(key, None)

    probe = Remembering()
    settler, _ = make(probe, probe_timeout=0.01)
    decision = due()
    settler.admit(decision)
    await settler.poll()
    assert probe.running == 1  # outlived its timeout: still running
    settler.reconcile([keep(replace(decision.server, last_activity=T0 + timedelta(minutes=1)))])
    release.set()  # an uncancelled call would now answer and write its state back
    await wait_for(lambda: probe.running == 0, DEADLINE, "the probe call to end", interval=0.01)
    assert probe.cancelled == 1
    assert probe.state == {}  # nothing written back after forget()
    assert probe.forgotten == ["alice/"]


# -- describe -----------------------------------------------------------------------------------------


async def test_describe_lists_the_settling_servers() -> None:
    settler, _ = make(
        FakeProbe(A, quiet(30, "2 passes of 10 entries")),
        FakeProbe(B, active("value 3 > 0")),
        clock=lambda: datetime(2025, 6, 1, 12, 0, 5, tzinfo=timezone.utc),
    )
    settler.admit(due(server("bob", "lab"), settle(A, B, window=60, max_deferral=7200), rule="gpu"))
    settler.admit(due(server("alice"), settle(A, window=60, max_deferral=7200)))
    [before, _] = settler.describe()
    assert before["probes"] == {} and before["state"] == "no observation yet"
    await settler.poll()
    alice, bob = settler.describe()
    assert alice["server"] == "alice" and bob["server"] == "bob/lab"
    assert bob == {
        "server": "bob/lab",
        "rule": "gpu",
        "since": "2025-06-01T12:00:05Z",
        "waited": "0s",
        "window": "1m",
        "cap_in": "1h59m",
        "at_cap": "stop",
        "probes": {A: "quiet for 30s (2 passes of 10 entries)", B: "active: value 3 > 0"},
        "state": bob["state"],
    }
    assert "waiting for quiet" in str(bob["state"]) and "prometheus: active" in str(bob["state"])


# -- the Prometheus probe (a fake Prometheus on loopback) --------------------------------------------


class FakePrometheus:
    def __init__(self) -> None:
        self.answers: list[tuple[int, Any]] = []
        self.queries: list[str] = []
        self.delay = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        self.queries.append(request.query["query"])
        if self.delay:
            await asyncio.sleep(self.delay)
        status, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(body, bytes):
            return web.Response(status=status, body=body)
        return web.json_response(body, status=status)


def vector(*values: str) -> dict[str, Any]:
    result = [{"metric": {"pod": f"p{i}"}, "value": [1700000000.0, v]} for i, v in enumerate(values)]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


@pytest.fixture
async def prometheus(aiohttp_server: Any) -> Any:
    fake = FakePrometheus()
    app = web.Application()
    app.router.add_get("/api/v1/query", fake.handle)
    running = await aiohttp_server(app)
    fake.url = str(running.make_url("/"))  # type: ignore[attr-defined]
    return fake


@pytest.mark.parametrize(
    ("answer", "seen", "error"),
    [
        ((200, vector("0")), Seen.QUIET, False),
        ((200, vector("0", "0.5")), Seen.QUIET, False),
        ((200, vector("0", "3")), Seen.ACTIVE, False),
        ((200, vector("NaN")), Seen.UNKNOWN, True),
        ((200, vector("3", "NaN")), Seen.ACTIVE, False),
        ((200, vector("NaN", "3")), Seen.ACTIVE, False),
        ((200, vector("0", "NaN")), Seen.UNKNOWN, True),
        ((200, vector("NaN", "0")), Seen.UNKNOWN, True),
        ((200, vector("+Inf")), Seen.ACTIVE, False),
        ((200, vector()), Seen.UNKNOWN, True),
        ((200, {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "0"]}}), Seen.QUIET, False),
        ((200, {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "NaN"]}}), Seen.UNKNOWN, True),
        ((400, {"status": "error", "error": "parse error"}), Seen.UNKNOWN, True),
        ((502, b"<html>bad gateway</html>"), Seen.UNKNOWN, True),
        ((200, ["not", "an", "object"]), Seen.UNKNOWN, True),
        ((200, {"status": "success", "data": {"resultType": "vector", "result": [{"value": []}]}}), Seen.UNKNOWN, True),
    ],
)
async def test_prometheus_answers(prometheus: Any, answer: tuple[int, Any], seen: Seen, error: bool) -> None:
    prometheus.answers = [answer]
    probe = PrometheusProbe(prometheus.url, 'rate(x{user="{unescaped_username}"}[2m])', threshold=1.0, timeout=2)
    try:
        observation = await probe.observe(server('o"neil'))
    finally:
        await probe.close()
    assert (observation.seen, observation.error) == (seen, error), observation
    assert prometheus.queries == ['rate(x{user="o\\"neil"}[2m])']  # a raw name, quoted for PromQL


async def test_prometheus_quiet_counts_from_the_first_quiet_answer(prometheus: Any) -> None:
    prometheus.answers = [(200, vector("0")), (200, vector("0")), (200, vector("5")), (200, vector("0"))]
    probe = PrometheusProbe(prometheus.url, "q", timeout=2)
    try:
        first = await probe.observe(server())
        await asyncio.sleep(0.05)
        second = await probe.observe(server())
        assert first.seen is Seen.QUIET and first.quiet_for < 0.05
        assert second.quiet_for >= 0.05
        assert (await probe.observe(server())).seen is Seen.ACTIVE
        assert (await probe.observe(server())).quiet_for < 0.05  # from scratch after activity
    finally:
        await probe.close()


async def test_prometheus_timeout_cannot_tell(prometheus: Any) -> None:
    prometheus.answers = [(200, vector("0"))]
    prometheus.delay = 1.0
    probe = PrometheusProbe(prometheus.url, "q", timeout=0.1)
    try:
        observation = await probe.observe(server())
    finally:
        await probe.close()
    assert observation.seen is Seen.UNKNOWN and observation.error and "Timeout" in observation.detail


async def test_prometheus_state_does_not_outlive_a_settling_that_ended_mid_query(prometheus: Any) -> None:
    """The query answers after the server left settling: no quiet_since may be left behind, or the
    next settling of this server would inherit hours of "quiet" and stop at once."""
    prometheus.answers = [(200, vector("0"))]
    prometheus.delay = 0.2
    probe = PrometheusProbe(prometheus.url, "q", timeout=2)
    ledger = Ledger()
    settler = Settler({"prometheus": probe}, Stops(ledger), probe_timeout=0.05, ledger=ledger)
    try:
        decision = due(how=settle(B, window=1))
        settler.admit(decision)
        await settler.poll()  # the query is still running
        settler.reconcile([keep(replace(decision.server, last_activity=T0 + timedelta(minutes=1)))])
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # well past the fake's answer
            await asyncio.sleep(0.05)
            assert probe._quiet_since == {}
    finally:
        await probe.close()


def test_nan_is_never_a_number_below_the_threshold() -> None:
    assert not (math.nan > 0)  # the trap the probe guards against
