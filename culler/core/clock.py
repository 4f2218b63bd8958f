"""Whose clock a timestamp is on (pure, no I/O).

The hub stamps its models with its own clock, the proxy its routes with its own; both send a ``Date``
header with every answer (Tornado sets it when the request starts, before the data is read, so it errs
towards "less idle"). A ``Reading`` pairs that header with our clock when the request was sent, so a
source's timestamps can be put on our clock: ``idle = reading.sent - reading.local(stamp)`` is exactly
``Date - stamp``, the idle time by the source's own clock when it answered, whatever our clock says.
Countdowns compare such local times with our ``utcnow()``, which only needs our clock to tick at the
right rate, not to agree with the source's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

# Beyond this the source's or our clock is broken: data judged with either cannot be trusted.
DEFAULT_MAX_SKEW = 86400.0
DEFAULT_SKEW_WARNING = 60.0
# A Date has one-second resolution and a request takes a while, so each answer's offset jitters by a
# second or so. The offset used to put timestamps on our clock moves only when a reading leaves this band:
# otherwise an unchanged timestamp would land on a slightly different local time at every read (and look
# like new activity to whoever compares them).
STEADY_BAND = 2.0


def parse_http_date(value: str | None) -> datetime | None:
    """An HTTP-date (``Tue, 01 Dec 2026 20:53:46 GMT``) as an aware UTC datetime; ``None`` if absent or garbage."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


@dataclass(frozen=True)
class Reading:
    """One answer of a source: our clock when the request went out, and the source's ``Date`` (if any)."""

    sent: datetime
    source: datetime | None = None

    @property
    def offset(self) -> timedelta:
        """The source's clock minus ours (zero without a ``Date``: then ours decides)."""
        return self.source - self.sent if self.source is not None else timedelta(0)

    def local(self, stamp: datetime | None) -> datetime | None:
        """A timestamp of the source's, on our clock."""
        return None if stamp is None else stamp - self.offset


class ClockUntrusted(ValueError):
    """The skew is beyond trust: one of the clocks is broken, so the data is not judged at all."""


@dataclass
class ClockWatch:
    """What one source's clock looks like from here: the latest skew, and whether it can be trusted."""

    source: str
    warn_at: float = DEFAULT_SKEW_WARNING
    max_skew: float = DEFAULT_MAX_SKEW
    skew_seconds: float = 0.0
    undated: int = 0  # answers without a usable Date (our clock was used for them)
    _said: set[str] = field(default_factory=set)
    _offset: timedelta | None = None  # the steady offset (see STEADY_BAND)

    def admit(self, reading: Reading) -> tuple[Reading, list[str]]:
        """The reading to judge an answer's timestamps by (with the steady offset), and the lines worth
        logging once each (a missing ``Date`` the first time, a skew crossing the warning level).
        Raises ``ClockUntrusted`` beyond ``max_skew``."""
        lines = self._observe(reading)
        if reading.source is None:
            return reading, lines
        if abs(reading.offset.total_seconds()) > self.max_skew:
            raise ClockUntrusted(
                f"the {self.source}'s clock is {self.skew_seconds:+.0f}s from ours (over {self.max_skew:g}s): not "
                "judging its data until the clocks agree (check NTP on both)"
            )
        return self._steady(reading), lines

    def _observe(self, reading: Reading) -> list[str]:
        if reading.source is None:
            self.undated += 1
            return self._once("undated", f"the {self.source} sent no Date header: judging its data by our clock")
        self.skew_seconds = reading.offset.total_seconds()
        if abs(self.skew_seconds) <= self.warn_at:
            self._said.discard("skew")
            return []
        return self._once("skew", f"the {self.source}'s clock is {self.skew_seconds:+.0f}s from ours (check NTP)")

    def _steady(self, reading: Reading) -> Reading:
        """The same source time maps to the same local time from one answer to the next, while a real
        clock step (beyond the band) is followed at once."""
        offset = reading.offset
        if self._offset is None or abs((offset - self._offset).total_seconds()) > STEADY_BAND:
            self._offset = offset
        return Reading(reading.sent, reading.sent + self._offset)

    def _once(self, key: str, line: str) -> list[str]:
        if key in self._said:
            return []
        self._said.add(key)
        return [line]
