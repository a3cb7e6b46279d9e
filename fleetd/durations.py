"""The one grammar of durations: ``90`` (seconds), ``90s``, ``10m``, ``1h30m``, ``1.5h``, ``2d``, ``500ms``.

What Go's time.ParseDuration (kubectl, docker) and systemd accept: numbers with
units, summed; a plain number is seconds. Nothing is imported here: the CLI's
spawn fast path (cli.entry) reads ``--ttl 1h`` with it at no start-up cost.
``fleetd.units.parse_duration`` wraps it with the API's errors and bounds.
"""

from __future__ import annotations

_UNITS = {
    "ms": 0.001, "msec": 0.001,
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}
_DIGITS = "0123456789"


def seconds(text: str) -> float | None:
    """The seconds ``text`` names (``-`` before it: negative), or None when it is not a duration."""
    t = text.strip().lower()
    if t[:1] in ("-", "+"):
        rest = seconds(t[1:]) if t[1:2] not in ("-", "+") else None
        return None if rest is None else (-rest if t[0] == "-" else rest)
    if not t:
        return None
    if all(c in _DIGITS or c == "." for c in t):
        return _number(t)
    total = 0.0
    i = 0
    while i < len(t):
        while i < len(t) and t[i] == " ":  # systemd's "1h 30min"
            i += 1
        start = i
        while i < len(t) and (t[i] in _DIGITS or t[i] == "."):
            i += 1
        number = _number(t[start:i])
        while i < len(t) and t[i] == " ":  # "2 days"
            i += 1
        begin = i
        while i < len(t) and "a" <= t[i] <= "z":
            i += 1
        unit = _UNITS.get(t[begin:i])
        if number is None or unit is None:
            return None
        total += number * unit
    return total


def _number(text: str) -> float | None:
    if not text or text == "." or text.count(".") > 1:
        return None
    return float(text)
