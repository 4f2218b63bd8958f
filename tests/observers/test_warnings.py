"""The stop-warning webhook: when it warns, how often, retries, secrecy, and the example receiver."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from culler.core.decide import Action, Decision
from culler.core.events import Event, NoticeSent, PhaseChanged, StopEnded
from culler.core.lifecycle import Phase
from culler.core.report import CycleReport
from culler.core.snapshot import ServerSnapshot
from culler.core.text import in_words
from culler.observers.notices import WarningSender, server_url_path

NOW = datetime(2026, 11, 26, 11, 0, tzinfo=timezone.utc)
DAY = 86400.0
SECRET = "Bearer s3cret-webhook-token-xyz"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Receiver:
    """A local webhook endpoint: records every POST, answers from a queue of statuses (then 200)."""

    statuses: list[int] = field(default_factory=list)
    always: int | None = None
    posts: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.posts.append(await request.json())
        self.headers.append(dict(request.headers))
        status = self.always or (self.statuses.pop(0) if self.statuses else 200)
        return web.Response(status=status)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [p for p in self.posts if p["event"] == kind]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    server = await aiohttp_server(app)
    rec.url = str(server.make_url("/hook"))
    return rec


@pytest.fixture
def clock() -> Clock:
    return Clock()


SenderFactory = Callable[..., WarningSender]


class Tally:
    """What a sender published about its deliveries (``NoticeSent``), counted by kind."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    def __call__(self, event: Event) -> None:
        if isinstance(event, NoticeSent):
            (self.sent if event.ok else self.failed)[event.kind] += 1


_TALLIES: dict[int, Tally] = {}


def counted(**options: Any) -> WarningSender:
    """A sender whose published delivery outcomes are tallied (read them with ``tally(sender)``)."""
    counts = Tally()
    sender = WarningSender(**options, publish=counts)
    _TALLIES[id(sender)] = counts
    return sender


def tally(sender: WarningSender) -> Tally:
    return _TALLIES[id(sender)]


@pytest.fixture
async def make_sender(receiver: Receiver, clock: Clock) -> AsyncIterator[SenderFactory]:
    senders: list[WarningSender] = []

    def factory(**kwargs: Any) -> WarningSender:
        options: dict[str, Any] = {
            "url": receiver.url,
            "warn_before": DAY,
            "clock": clock,
            "backoff": 0.01,
            "max_backoff": 0.02,
            "service_url": "https://hub.example.org/services/culler/",
        }
        sender = counted(**{**options, **kwargs})
        senders.append(sender)
        return sender

    yield factory
    for sender in senders:
        await sender.drain(5)
        await sender.close()


def server(user: str = "alice", name: str = "", activity: datetime | None = None) -> ServerSnapshot:
    activity = activity or NOW - timedelta(days=6)
    return ServerSnapshot(user, name, False, (), activity, activity - timedelta(hours=1), None, True)


def keep(snap: ServerSnapshot, stop_at: datetime | None, action: Action = Action.KEEP) -> Decision:
    idle = (NOW - snap.activity_time).total_seconds() if snap.activity_time else None
    return Decision(snap, action, "default", f"idle for a while (rule default); stops at {stop_at}", idle, stop_at)


def stop(snap: ServerSnapshot) -> Decision:
    return Decision(snap, Action.STOP, "default", "no activity for 7d (limit 7d, rule default)", 7 * DAY, NOW)


def report(*decisions: Decision, error: str | None = None) -> CycleReport:
    return CycleReport(started=NOW, decisions=list(decisions), error=error)


async def test_warns_once_within_the_window(make_sender: SenderFactory, receiver: Receiver) -> None:
    sender = make_sender()
    alice = server()
    decision = keep(alice, NOW + timedelta(hours=23))
    sender.cycle_done(report(decision))
    assert await sender.drain(5)
    sender.cycle_done(report(decision))  # the next cycle: same idle period
    assert await sender.drain(5)
    assert len(receiver.posts) == 1
    assert tally(sender).sent == {"warning": 1} and not tally(sender).failed
    assert receiver.posts[0] == {
        "event": "warning",
        "user": "alice",
        "server": "",
        "server_url_path": "/user/alice/",
        "rule": "default",
        "reason": decision.reason,
        "idle_seconds": 6 * 86400,
        "last_activity": "2026-11-20T11:00:00Z",
        "stop_at": "2026-11-27T10:00:00Z",
        "stopped_at": None,
        "kept_until": None,
        "activity_page": "https://hub.example.org/services/culler/",
        "message": "Your server alice will be stopped on 2026-11-27 10:00 UTC (in 23 hours) unless you use it.",
    }


async def test_a_keep_is_told_and_warned_again_before_the_kept_deadline(
    make_sender: SenderFactory, receiver: Receiver
) -> None:
    sender = make_sender()
    alice = server()
    sender.cycle_done(report(keep(alice, NOW + timedelta(hours=23))))
    assert await sender.drain(5)
    kept_until = NOW + timedelta(hours=20)  # kept; later a cycle finds the kept deadline within the window
    kept = dataclasses.replace(keep(alice, kept_until), kept_until=kept_until)
    sender.cycle_done(report(kept))
    sender.cycle_done(report(kept))  # once per kept deadline
    assert await sender.drain(5)
    assert len(receiver.posts) == 2
    assert receiver.posts[1]["kept_until"] == "2026-11-27T07:00:00Z"
    assert receiver.posts[1]["message"] == (
        "Your server alice was kept until 2026-11-27 07:00 UTC and will be stopped on 2026-11-27 07:00 UTC "
        "(in 20 hours) unless you use it."
    )


async def test_not_warned_outside_the_window(make_sender: SenderFactory, receiver: Receiver) -> None:
    sender = make_sender()
    sender.cycle_done(
        report(
            keep(server("far"), NOW + timedelta(days=2)),
            keep(server("never"), None),
            keep(server("past"), NOW - timedelta(minutes=1)),
            keep(server("now"), NOW),
        )
    )
    assert await sender.drain(5)
    assert receiver.posts == [] and sender.pending == 0


async def test_exempt_skip_stop_and_failed_cycles_never_warn(make_sender: SenderFactory, receiver: Receiver) -> None:
    sender = make_sender()
    soon = NOW + timedelta(hours=1)
    sender.cycle_done(
        report(
            keep(server("ex"), soon, Action.EXEMPT),
            keep(server("sk"), soon, Action.SKIP),
            keep(server("st"), soon, Action.STOP),
        )
    )
    sender.cycle_done(report(keep(server("bob"), soon), error="listing users failed"))
    assert await sender.drain(5)
    assert receiver.posts == []


async def test_warned_again_in_a_new_idle_period(make_sender: SenderFactory, receiver: Receiver, clock: Clock) -> None:
    sender = make_sender()
    sender.cycle_done(report(keep(server(), NOW + timedelta(hours=23))))
    await sender.drain(5)
    # Alice comes back: a new activity time, far from its stop; then idle again until the window.
    clock.now = NOW + timedelta(hours=2)
    used = server(activity=clock.now)
    sender.cycle_done(report(keep(used, clock.now + timedelta(days=7))))
    clock.now += timedelta(days=6, hours=12)
    sender.cycle_done(report(keep(used, used.activity_time + timedelta(days=7))))
    await sender.drain(5)
    warnings = receiver.events("warning")
    assert [w["last_activity"] for w in warnings] == ["2026-11-20T11:00:00Z", "2026-11-26T13:00:00Z"]
    assert "(in 12 hours)" in warnings[1]["message"]


async def test_named_server_path_and_memory_pruned(make_sender: SenderFactory, receiver: Receiver) -> None:
    sender = make_sender()
    lab = server("a b", "lab")
    sender.cycle_done(report(keep(lab, NOW + timedelta(hours=3))))
    await sender.drain(5)
    assert receiver.posts[0]["server_url_path"] == "/user/a%20b/lab/"
    assert receiver.posts[0]["message"].startswith("Your server a b/lab will be stopped")
    sender.cycle_done(report())  # the server is gone: forgotten
    assert not sender._warned
    assert server_url_path("bob", "") == "/user/bob/"


async def test_stopped_notice_once_after_202_follow_up(make_sender: SenderFactory, receiver: Receiver) -> None:
    sender = make_sender()
    decision = stop(server())
    sender.observe(PhaseChanged(decision, Phase.SENDING, Phase.STOPPING))  # the hub answered 202
    sender.observe(StopEnded(decision, Phase.STOPPED, None))  # the follow-up saw it stopped
    sender.observe(StopEnded(decision, Phase.STOPPED, None))
    sender.observe(StopEnded(stop(server("bob")), Phase.FAILED, None))
    sender.observe(StopEnded(stop(server("carol")), Phase.WOULD_STOP, None))
    sender.cycle_done(report(decision))  # still listed this cycle: remembered
    sender.observe(StopEnded(decision, Phase.STOPPED, "quiet"))
    await sender.drain(5)
    assert len(receiver.posts) == 1
    notice = receiver.posts[0]
    assert notice["event"] == "stopped" and notice["reason"] == decision.reason
    assert notice["stopped_at"] == "2026-11-26T11:00:00Z" and notice["stop_at"] is None
    assert notice["message"] == (
        "Your server alice was stopped on 2026-11-26 11:00 UTC: no activity for 7d (limit 7d, rule default)."
    )
    assert tally(sender).sent == {"stopped": 1}


async def test_retries_5xx_then_delivers(make_sender: SenderFactory, receiver: Receiver) -> None:
    receiver.statuses = [500, 503, 200]
    sender = make_sender()
    sender.cycle_done(report(keep(server(), NOW + timedelta(hours=1))))
    assert await sender.drain(5)
    assert len(receiver.posts) == 3
    assert tally(sender).sent == {"warning": 1} and not tally(sender).failed


async def test_4xx_is_not_retried(make_sender: SenderFactory, receiver: Receiver) -> None:
    receiver.always = 400
    sender = make_sender()
    sender.observe(StopEnded(stop(server()), Phase.STOPPED, None))
    await sender.drain(5)
    assert len(receiver.posts) == 1 and tally(sender).failed == {"stopped": 1}


async def test_always_500_counts_failed_and_never_blocks(
    make_sender: SenderFactory, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.always = 500
    sender = make_sender(backoff=0.2, max_backoff=0.4)  # 0.2 + 0.4 + 0.4 s of retrying
    decision = keep(server(), NOW + timedelta(hours=1))
    started = time.monotonic()
    sender.cycle_done(report(decision))
    assert time.monotonic() - started < 0.05
    assert sender.pending == 1
    with caplog.at_level(logging.INFO, logger="culler.warnings"):
        assert await sender.drain(5)
    assert len(receiver.posts) == 4  # 1 + 3 retries
    assert tally(sender).failed == {"warning": 1} and not tally(sender).sent
    failures = [r for r in caplog.records if r.getMessage() == "webhook failed"]
    assert len(failures) == 1  # once per delivery, not per attempt
    # A retryable failure: tried again next cycle while still in the window.
    receiver.always = None
    sender.cycle_done(report(decision))
    await sender.drain(5)
    assert tally(sender).sent == {"warning": 1} and len(receiver.posts) == 5


async def test_unreachable_receiver_counts_failed(make_sender: SenderFactory, caplog: pytest.LogCaptureFixture) -> None:
    sender = make_sender(url="http://127.0.0.1:9/hook?token=abc", retries=1)
    with caplog.at_level(logging.INFO, logger="culler.warnings"):
        sender.observe(StopEnded(stop(server()), Phase.STOPPED, None))
        assert await sender.drain(5)
    assert tally(sender).failed == {"stopped": 1}
    assert "webhook failed" in caplog.text and "token=abc" not in repr([r.__dict__ for r in caplog.records])


async def test_drain_timeout_abandons_sends(make_sender: SenderFactory, receiver: Receiver) -> None:
    receiver.always = 503
    sender = make_sender(backoff=5, max_backoff=5)
    sender.observe(StopEnded(stop(server()), Phase.STOPPED, None))
    assert not await sender.drain(0.2)
    assert tally(sender).failed == {"stopped": 1} and sender.pending == 0


async def test_secret_header_sent_and_never_logged(
    make_sender: SenderFactory, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [500]
    sender = make_sender(secret_header=("Authorization", SECRET))
    with caplog.at_level(logging.DEBUG):
        sender.cycle_done(report(keep(server(), NOW + timedelta(hours=1))))
        sender.observe(StopEnded(stop(server("bob")), Phase.STOPPED, None))
        await sender.drain(5)
        await sender.close()
    assert len(receiver.posts) == 3
    assert all(h["Authorization"] == SECRET for h in receiver.headers)
    assert "webhook sent" in caplog.text
    assert "s3cret" not in caplog.text
    for record in caplog.records:
        assert "s3cret" not in repr(record.__dict__)


def test_in_words() -> None:
    assert in_words(23 * 3600 + 1200) == "23 hours"
    assert in_words(3 * DAY) == "3 days"
    assert in_words(90 * 60) == "90 minutes"
    assert in_words(50) == "1 minute"
    assert in_words(10) == "less than a minute"


# --- the example receiver (deploy/warnings/receiver.py) ------------------------------------------


def load_receiver() -> Any:
    spec = importlib.util.spec_from_file_location("warning_receiver", ROOT / "deploy" / "warnings" / "receiver.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


PAYLOAD = {
    "event": "warning",
    "user": "alice",
    "server": "",
    "reason": "idle 6d of 7d",
    "message": "Your server alice will be stopped on 2026-11-27 10:00 UTC (in 23 hours) unless you use it.",
    "activity_page": "https://hub.example.org/services/culler/",
}


async def test_receiver_dry_run_prints_mail(aiohttp_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    mod = load_receiver()
    config = mod.Config.from_env({"RECEIVER_SECRET": SECRET, "MAIL_TO": "{user}@uni.example"}, dry_run=True)
    client = await aiohttp_client(mod.make_app(config))
    answer = await client.post("/", json=PAYLOAD, headers={"Authorization": SECRET})
    assert answer.status == 204
    out = capsys.readouterr().out
    assert "To: alice@uni.example" in out and "will be stopped" in out and "Subject: Your Jupyter server" in out
    assert (await client.post("/", json=PAYLOAD, headers={"Authorization": "Bearer wrong"})).status == 401
    assert (await client.post("/", json=PAYLOAD)).status == 401
    bad = await client.post("/", json={"event": "other"}, headers={"Authorization": SECRET})
    assert bad.status == 400


async def test_receiver_sends_mail_and_reports_relay_failure(aiohttp_client: Any) -> None:
    mod = load_receiver()
    sent: list[Any] = []
    client = await aiohttp_client(mod.make_app(mod.Config(), send=lambda config, mail: sent.append(mail)))
    assert (await client.post("/", json={**PAYLOAD, "event": "stopped"})).status == 204
    assert sent[0]["To"] == "alice@example.org" and sent[0]["Subject"] == "Your Jupyter server was stopped"

    def broken(config: Any, mail: Any) -> None:
        raise ConnectionRefusedError("relay down")

    client = await aiohttp_client(mod.make_app(mod.Config(), send=broken))
    assert (await client.post("/", json=PAYLOAD)).status == 502  # a 5xx: the culler retries


async def test_sender_to_receiver_end_to_end(aiohttp_server: Any, clock: Clock) -> None:
    mod = load_receiver()
    sent: list[Any] = []
    config = mod.Config(secret=SECRET)
    app_server = await aiohttp_server(mod.make_app(config, send=lambda c, mail: sent.append(mail)))
    url = str(app_server.make_url("/"))
    sender = counted(url=url, warn_before=DAY, secret_header=("Authorization", SECRET), clock=clock)
    wrong = counted(url=url, warn_before=DAY, secret_header=("Authorization", "nope"), clock=clock)
    try:
        sender.cycle_done(report(keep(server(), NOW + timedelta(hours=5))))
        wrong.cycle_done(report(keep(server(), NOW + timedelta(hours=5))))
        await sender.drain(5)
        await wrong.drain(5)
    finally:
        await sender.close()
        await wrong.close()
    assert tally(sender).sent == {"warning": 1} and tally(wrong).failed == {"warning": 1}  # 401: not retried
    assert "(in 5 hours)" in sent[0].get_content()
