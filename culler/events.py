"""What the engine tells observers (metrics, warnings, stop history, the page's latest decisions).

Typed events on one bus replace calls by method name: an observer matches on the event types it cares
about and ignores the rest. An observer that raises is logged and never breaks a cycle or a stop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from culler.cycle import CycleReport, Result
    from culler.decide import Decision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CycleDecided:
    """A cycle ended (listed and decided, or failed: ``report.error``)."""

    report: CycleReport


@dataclass(frozen=True)
class StopEnded:
    """A stop decision came to a result (stopped, gone, failed, held, a 202 being followed, ...)."""

    decision: Decision
    result: Result
    settle: str | None  # "verified" / "unverified" after settling; None without


Event = CycleDecided | StopEnded


class Observer(Protocol):
    """Must return quickly: work that waits (a webhook) goes to a task of its own."""

    def observe(self, event: Event) -> None: ...


class CycleAndStopObserver:
    """Base of observers that handle both events, each with its own method."""

    def observe(self, event: Event) -> None:
        match event:
            case CycleDecided(report=report):
                self.cycle_done(report)
            case StopEnded(decision=decision, result=result, settle=settle):
                self.server_stopped(decision, result, settle)

    def cycle_done(self, report: CycleReport) -> None:
        return None

    def server_stopped(self, decision: Decision, result: Result, settle: str | None) -> None:
        return None


class Bus:
    def __init__(self) -> None:
        self.observers: list[Observer] = []

    def subscribe(self, *observers: Observer) -> None:
        self.observers.extend(observers)

    def publish(self, event: Event) -> None:
        for observer in self.observers:
            try:
                observer.observe(event)
            except Exception:  # an observer's bug must not cost a stop or a cycle
                log.exception("observer %s failed on %s", type(observer).__name__, type(event).__name__)
