"""What the engine tells observers (metrics, warnings, stop history, the page's latest decisions).

Typed events on one bus are the one seam: an observer matches on the event types it cares about and
ignores the rest; nothing in the engine keeps counters for observers. An observer that raises is logged
and never breaks a cycle or a stop.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from culler.core.decide import Decision
    from culler.core.keeps import Kept
    from culler.core.lifecycle import Phase
    from culler.core.report import CycleReport
    from culler.core.settle import Observation, SettleVerdict

log = logging.getLogger("culler.events")


@dataclass(frozen=True)
class CycleDecided:
    """A cycle ended (listed and decided, or failed: ``report.error``)."""

    report: CycleReport


@dataclass(frozen=True)
class PhaseChanged:
    """A due server's record moved (``was`` None: just admitted). See culler.lifecycle."""

    decision: Decision
    was: Phase | None
    now: Phase


@dataclass(frozen=True)
class StopEnded:
    """A stop decision came to its outcome (stopped, gone, slow, failed, would-stop, kept-on-recheck):
    told once per decision, after any 202 follow-up."""

    decision: Decision
    result: Phase
    settle: str | None  # "verified" / "unverified" after settling; None without


@dataclass(frozen=True)
class SettleObserved:
    """One settle poll of one server: what each probe saw and what the poll made of it."""

    decision: Decision
    observations: Mapping[str, Observation]
    verdict: SettleVerdict


@dataclass(frozen=True)
class NoticeSent:
    """One webhook delivery ended: ``kind`` warning/stopped, ``ok`` delivered or failed."""

    kind: str
    ok: bool


@dataclass(frozen=True)
class PolicyRead:
    """The policy file was read anew: ``result`` loaded or rejected."""

    result: str


@dataclass(frozen=True)
class ServerKept:
    """A keep was stored: ``kept`` (who, until when) under rule ``rule``."""

    kept: Kept
    rule: str


Event = CycleDecided | PhaseChanged | StopEnded | SettleObserved | NoticeSent | PolicyRead | ServerKept


class Observer(Protocol):
    """Must return quickly: work that waits (a webhook) goes to a task of its own."""

    def observe(self, event: Event) -> None: ...


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
