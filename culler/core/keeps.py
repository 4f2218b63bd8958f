"""Keeps: a user's "not yet" for one server, an input to the decision (pure, no I/O).

A keep moves the server's idle deadline to ``until``; the deadline in force is the later of the normal
one (last activity + idle) and the kept one, and the kept one never reaches past the normal one by more
than the rule's ``keep.max``, nor past its max_age. A keep belongs to one run of the server (its start
time): a server started again is judged afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from culler.core.snapshot import ServerSnapshot
from culler.core.text import isoformat
from culler.policy.durations import format_duration
from culler.policy.model import Keep

# A start time seen through two clock readings may differ a little (culler.clock): the same run.
SAME_RUN = timedelta(minutes=5)


@dataclass(frozen=True)
class Kept:
    user: str
    server: str
    until: datetime
    by: str  # who kept it (a user, or an admin for someone else)
    at: datetime
    started: datetime | None  # the run it belongs to

    @property
    def key(self) -> str:
        return f"{self.user}/{self.server}"


class KeepView(Protocol):
    """What the decision reads: the keeps in force, or why they cannot be read."""

    @property
    def problem(self) -> str | None: ...

    def kept(self, user: str, server: str) -> Kept | None: ...


class NoKeeps:
    problem: str | None = None

    def kept(self, user: str, server: str) -> Kept | None:
        return None


NO_KEEPS = NoKeeps()


def same_run(kept: Kept, server: ServerSnapshot) -> bool:
    if kept.started is None or server.started is None:
        return kept.started is server.started
    return abs(kept.started - server.started) <= SAME_RUN


def kept_deadline(keep: Keep, normal: datetime, kept: Kept | None, server: ServerSnapshot) -> datetime | None:
    """The kept deadline in force (later than ``normal``), or None."""
    if kept is None or not same_run(kept, server):
        return None
    until = min(kept.until, normal + timedelta(seconds=keep.max))  # an admin may have lowered max since
    return until if until > normal else None


class KeepRefused(Exception):
    """A keep the policy does not allow; the message says the limit."""


def next_until(
    keep: Keep | None, normal: datetime | None, age_due: datetime | None, current: datetime | None, now: datetime
) -> datetime:
    """The new kept deadline for one more keep: ``step`` past the deadline in force (or past now, if that
    is later), at most ``max`` past the normal deadline and never past max_age. ``KeepRefused`` otherwise."""
    if keep is None:
        raise KeepRefused("this server's rule does not allow keeping (no keep: in the policy)")
    if normal is None:
        raise KeepRefused("this server has no idle deadline to move")
    limit = normal + timedelta(seconds=keep.max)
    if age_due is not None and age_due < limit:
        limit = age_due
    base = max(now, normal, current or normal)
    if base >= limit:
        raise KeepRefused(
            f"already kept to the limit: {isoformat(limit)} (at most {format_duration(keep.max)} past the "
            f"deadline without a visit, {isoformat(normal)}, and never past max_age)"
        )
    return min(base + timedelta(seconds=keep.step), limit)
