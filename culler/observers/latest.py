"""The decisions of the latest cycle that listed the hub, for the users' page (an observer of cycles and stops)."""

from __future__ import annotations

from datetime import datetime

from culler.core.decide import Decision
from culler.core.events import CycleDecided, Event, StopEnded
from culler.core.lifecycle import Phase
from culler.core.report import CycleReport


class LatestDecisions:
    """An observer keeping the decisions of the latest cycle that listed the hub."""

    def __init__(self) -> None:
        self.decisions: list[Decision] = []
        self.at: datetime | None = None

    def observe(self, event: Event) -> None:
        match event:
            case CycleDecided(report=report):
                self.cycle_done(report)
            case StopEnded(decision=decision, result=result):
                self.server_stopped(decision, result)

    def cycle_done(self, report: CycleReport) -> None:
        if report.decisions or report.error is None:
            self.decisions = list(report.decisions)
            self.at = report.started

    def server_stopped(self, decision: Decision, result: Phase) -> None:
        if result in (Phase.STOPPED, Phase.GONE):
            self.decisions = [d for d in self.decisions if d.server.key != decision.server.key]
