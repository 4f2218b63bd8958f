"""Times and durations as text (pure): ISO 8601 for machines, words for people; one ``utcnow`` to patch in tests.

The compact duration syntax admins write in policies (``3d4h``) is culler.policy.durations."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def parse_time(value: object) -> datetime | None:
    """Parse a hub timestamp; naive times are UTC. ``None`` stays ``None``; garbage raises ``ValueError``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {value!r}")
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def isoformat(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def utc_minutes(value: datetime) -> str:
    """``2026-11-27 10:00 UTC``: a time for people, to the minute."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


_UNITS = (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def humanize(seconds: float) -> str:
    """``3 days 4 hours``: the two largest units, in words."""
    remaining = int(max(0, seconds))
    if remaining == 0:
        return "less than a second"
    parts = []
    for unit, size in _UNITS:
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count} {unit}{'' if count == 1 else 's'}")
    return " ".join(parts[:2])


def in_words(seconds: float) -> str:
    """A rough, friendly span: ``3 days``, ``23 hours``, ``45 minutes``, ``less than a minute``."""
    if seconds >= 2 * 86400:
        count, unit = round(seconds / 86400), "day"
    elif seconds >= 2 * 3600:
        count, unit = round(seconds / 3600), "hour"
    elif seconds >= 30:
        count, unit = max(1, round(seconds / 60)), "minute"
    else:
        return "less than a minute"
    return f"{count} {unit}{'s' if count != 1 else ''}"
