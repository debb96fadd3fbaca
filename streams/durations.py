"""Durations as operators write them (`500ms`, `30s`, `5m`, `1h`, `7d`) and back.

Tier topic names are made from the formatted delay, so `format_duration(parse_duration(x))`
must be stable: it always picks the largest unit that divides the value exactly.
"""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: str | int | float) -> float:
    """Seconds in `value`; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(value)
        if not match:
            raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError("a duration must be greater than zero")
    return seconds


def format_duration(seconds: float) -> str:
    millis = round(seconds * 1000)
    for unit in ("d", "h", "m", "s"):
        size = round(_UNITS[unit] * 1000)
        if millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"


def format_age(seconds: float, sep: str = " ") -> str:
    """A rough age for people, at most two units: `42s`, `3m 05s`, `2h 10m`, `4d 01h`."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{sep}{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{sep}{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{sep}{seconds % 86400 // 3600:02d}h"
