"""Points in time as ``docker events --since`` and ``docker logs --since`` take them.

Three spellings: a Go duration before now (``10m``, ``1h30m``, ``90s``, ``1.5h``),
an RFC 3339 time (``2026-12-04T10:00:00Z``, an offset, or none: UTC), or Unix
seconds (``1796378400``, fractions allowed).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from fleetd.errors import InvalidRequest

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+")
_UNIX = re.compile(r"\d+(?:\.\d+)?")
TIME_FORMS = "a duration before now (10m, 1h30m), an RFC 3339 time (2026-12-04T10:00:00Z) or Unix seconds"


def parse_time(text: str, what: str = "time", now: datetime | None = None) -> datetime:
    """``text`` as an aware UTC datetime; ``InvalidRequest`` (one line) when it is none of the three forms."""
    value = text.strip()
    now = now or datetime.now(UTC)
    if _DURATION.fullmatch(value):
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(value))
        return now - timedelta(seconds=seconds)
    if _UNIX.fullmatch(value):
        try:
            return datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidRequest(f"{what}: {text!r} is out of range") from None
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z")) if "T" in value or "-" in value else None
    except ValueError:
        moment = None
    if moment is None:
        raise InvalidRequest(f"{what}: expected {TIME_FORMS}, got {text!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
