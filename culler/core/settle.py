"""Settling, the pure part: what probes report, and whether a due server may be stopped now.

A probe answers with an ``Observation``: the home is being written to (active), it has been quiet
for N seconds, or the probe cannot tell (scanning not finished, an error). A due server is stopped
only when **every** probe vouches for at least the settle window of quiet; at ``max_deferral`` the
policy's ``at_cap`` says whether to stop anyway (counted unverified) or to keep deferring.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from culler.policy.durations import format_duration
from culler.policy.model import Settle


class Seen(StrEnum):
    ACTIVE = "active"
    QUIET = "quiet"
    UNKNOWN = "unknown"  # cannot tell: counts as "not settled"


@dataclass(frozen=True)
class Observation:
    seen: Seen
    quiet_for: float = 0.0  # seconds of quiet the probe vouches for (only with QUIET)
    detail: str = ""
    error: bool = False  # UNKNOWN because something failed (logged once per server), not just "not yet"

    def vouches(self, window: float) -> bool:
        """Whether this probe vouches for ``window`` seconds of quiet."""
        return self.seen is Seen.QUIET and self.quiet_for >= window

    def __str__(self) -> str:
        if self.seen is Seen.QUIET:
            return f"quiet for {format_duration(self.quiet_for)}" + (f" ({self.detail})" if self.detail else "")
        return f"{self.seen}" + (f": {self.detail}" if self.detail else "")


def active(detail: str) -> Observation:
    return Observation(Seen.ACTIVE, detail=detail)


def quiet(seconds: float, detail: str = "") -> Observation:
    return Observation(Seen.QUIET, quiet_for=max(0.0, seconds), detail=detail)


def unknown(detail: str, *, error: bool = False) -> Observation:
    return Observation(Seen.UNKNOWN, detail=detail, error=error)


class SettleVerdict(StrEnum):
    WAIT = "wait"
    STOP = "stop"  # every probe vouches for the window
    STOP_UNVERIFIED = "stop-unverified"  # the cap was reached and the policy says stop anyway
    HOLD = "hold"  # the cap was reached and the policy says skip: keep deferring, reported


def judge(observations: Mapping[str, Observation], settle: Settle, waited: float) -> tuple[SettleVerdict, str]:
    """The verdict for one settling server, with its reason."""
    settled = bool(observations) and all(o.vouches(settle.window) for o in observations.values())
    summary = "; ".join(f"{name}: {observation}" for name, observation in sorted(observations.items()))
    if settled:
        return SettleVerdict.STOP, f"home quiet for at least {format_duration(settle.window)} ({summary})"
    if waited < settle.max_deferral:
        return SettleVerdict.WAIT, f"waiting for quiet ({summary or 'no observation yet'})"
    capped = f"not quiet after {format_duration(waited)} (max deferral {format_duration(settle.max_deferral)})"
    if settle.at_cap == "stop":
        return SettleVerdict.STOP_UNVERIFIED, f"{capped}; stopping unverified ({summary})"
    return SettleVerdict.HOLD, f"{capped}; kept as the policy says at_cap: skip ({summary})"


DEFERRAL_REASONS = ("active", "unknown", "window", "cap")


def deferrals(observations: Mapping[str, Observation], window: float, verdict: SettleVerdict) -> list[tuple[str, str]]:
    """(reason, probe) for each probe whose answer deferred the stop in one poll: at the cap, or not
    vouching for the window (active, cannot tell, or quiet but not long enough)."""
    found = []
    for name, observation in sorted(observations.items()):
        if verdict is SettleVerdict.HOLD:
            found.append(("cap", name))
        elif verdict is SettleVerdict.WAIT and not observation.vouches(window):
            why = "window" if observation.seen is Seen.QUIET else str(observation.seen)  # active, unknown
            found.append((why, name))
    return found
