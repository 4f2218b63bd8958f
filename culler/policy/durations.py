"""Human durations: ``90s``, ``30m``, ``36h``, ``7d``, ``2w``, ``1d12h``, plain seconds, ``never``."""

from __future__ import annotations

import math
import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# ASCII digits only: str.isdigit() and a unicode \d also accept "²" or "٣".
_PART = re.compile(r"([0-9]+)([smhdw])")
_WHOLE = re.compile(r"(?:[0-9]+[smhdw])+")
_SECONDS = re.compile(r"[0-9]+")

NEVER = "never"


def parse_duration(value: object) -> float | None:
    """Seconds for a duration, ``None`` for ``never``; ``ValueError`` for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        if math.isnan(value) or value < 0:
            raise ValueError(f"duration must not be negative: {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"not a duration: {value!r}")
    text = value.strip().lower()
    if text == NEVER:
        return None
    if _SECONDS.fullmatch(text):
        return float(text)
    if not _WHOLE.fullmatch(text):
        raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 30m, 36h, 7d, 2w, 1d12h or never)")
    return float(sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(text)))


def format_duration(seconds: float | None) -> str:
    """Short, readable form: ``3d4h``, ``12m5s``, ``0s``; ``never`` for ``None``."""
    if seconds is None or math.isinf(seconds):
        return NEVER
    remaining = int(max(0, seconds))
    if remaining == 0:
        return "0s"
    parts = []
    for unit in ("w", "d", "h", "m", "s"):
        count, remaining = divmod(remaining, _UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts[:2])
