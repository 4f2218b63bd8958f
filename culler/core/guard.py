"""The mass-stop guard: how many of the due servers one cycle may stop (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from culler.core.decide import Decision

# Below this, the fraction cap does not apply: a hub with 3 ready servers may stop all 3.
FRACTION_FLOOR = 10


@dataclass(frozen=True)
class GuardResult:
    allowed: list[Decision]
    held: list[Decision]
    limit: int

    @property
    def tripped(self) -> bool:
        return bool(self.held)


def stop_limit(ready: int, max_stops: int, max_fraction: float) -> int:
    """The number of stops one cycle may make; ``max_stops`` 0 means no absolute cap."""
    # round first: 0.1 * 300 is 30.000000000000004 in floating point, and its ceiling would be 31
    share = math.ceil(round(max_fraction * ready, 6))
    by_fraction = max(FRACTION_FLOOR, share) if max_fraction < 1 else ready
    return min(by_fraction, max_stops) if max_stops > 0 else by_fraction


def apply_guard(
    due: Sequence[Decision], ready: int, max_stops: int, max_fraction: float, pending: int = 0
) -> GuardResult:
    """Keep the longest-idle servers up to the cap; the rest wait for a later cycle. ``pending`` stops
    already on their way (settling servers) count against the cap, so settling cannot bypass it."""
    limit = stop_limit(ready, max_stops, max_fraction)
    room = max(0, limit - pending)
    ordered = sorted(due, key=lambda decision: decision.sort_key)
    return GuardResult(allowed=ordered[:room], held=ordered[room:], limit=limit)
