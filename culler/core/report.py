"""What one cull cycle found and did (pure data): what observers and ``--once`` read."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from culler.core.decide import Decision
from culler.core.guard import GuardResult
from culler.core.lifecycle import Phase


@dataclass
class CycleReport:
    started: datetime
    decisions: list[Decision] = field(default_factory=list)
    results: dict[str, Phase] = field(default_factory=dict)  # server key -> the phase this cycle left it in
    guard: GuardResult | None = None
    users_deleted: list[str] = field(default_factory=list)
    error: str | None = None
    skipped_users: int = 0
    duration: float = 0.0  # seconds, by the monotonic clock
    cpu_seconds: float = 0.0  # this process's CPU time while the cycle ran (other tasks included)
    stops_began: datetime | None = None  # when this cycle sent its first stop
    listing_seconds: float = 0.0  # how long listing the hub took, first request to last answer
    listing_failure: str | None = None  # the bound a listing broke (a culler.listing reason), or "error"
    duplicates: int = 0  # servers listed more than once (offset paging while users come and go)
    settling: frozenset[str] = frozenset()  # keys of the servers settling when the cycle ended

    @property
    def ok(self) -> bool:
        return self.error is None

    def counts(self) -> Counter[str]:
        return Counter(self.results.values())
