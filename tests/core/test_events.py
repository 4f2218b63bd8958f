"""The event bus: observers match on event types; one that raises is logged and never breaks the others."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from culler.core.decide import Action, Decision
from culler.core.events import Bus, CycleDecided, Event, StopEnded
from culler.core.lifecycle import Phase
from culler.core.report import CycleReport
from culler.core.snapshot import ServerSnapshot
from culler.observers.history import StopHistory

NOW = datetime(2026, 12, 1, tzinfo=UTC)


class Broken:
    def observe(self, event: Event) -> None:
        raise RuntimeError("observer bug")


class Seen:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def observe(self, event: Event) -> None:
        self.events.append(event)


def a_stop() -> StopEnded:
    server = ServerSnapshot("alice", "", False, (), NOW, NOW, None, True)
    return StopEnded(Decision(server, Action.STOP, "default", "idle"), Phase.STOPPED, None)


def test_an_observer_that_raises_is_logged_and_the_others_still_see_the_event(caplog) -> None:
    bus, seen = Bus(), Seen()
    bus.subscribe(Broken(), seen)
    with caplog.at_level(logging.ERROR, "culler.events"):
        bus.publish(CycleDecided(CycleReport(started=NOW)))
        bus.publish(a_stop())
    assert [type(e) for e in seen.events] == [CycleDecided, StopEnded]
    assert [r.getMessage() for r in caplog.records] == [
        "observer Broken failed on CycleDecided",
        "observer Broken failed on StopEnded",
    ]


def test_an_observer_ignores_the_events_it_does_not_match(tmp_path) -> None:
    history = StopHistory(None, 10, clock=lambda: NOW)
    history.observe(CycleDecided(CycleReport(started=NOW)))  # not a stop: nothing recorded, nothing raised
    assert history.last_stop("alice", "") is None
    history.observe(a_stop())
    assert (history.last_stop("alice", "") or {})["result"] == "stopped"
