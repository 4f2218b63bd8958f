"""The decisions of the latest cycle that listed the hub, for the users' page (an observer of cycles and stops)."""

from __future__ import annotations

from datetime import datetime

from culler.core.decide import Decision
from culler.core.events import CycleDecided, Event, StopEnded
from culler.core.lifecycle import Phase


class LatestDecisions:
    """An observer keeping the decisions of the latest cycle that listed the hub."""

    def __init__(self) -> None:
        self.decisions: list[Decision] = []
        self.at: datetime | None = None

    def observe(self, event: Event) -> None:
        match event:
            case CycleDecided(report=report) if report.decisions or report.error is None:
                self.decisions = list(report.decisions)  # a failed listing keeps what was known
                self.at = report.started
            case StopEnded(decision=decision, result=Phase.STOPPED | Phase.GONE):
                self.decisions = [d for d in self.decisions if d.server.key != decision.server.key]
