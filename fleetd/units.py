"""Parsing of the user-facing units: memory sizes, CPUs, env and label pairs.

The syntax follows ``docker run``: memory ``512m`` is 512 MiB (binary units),
``--cpus 0.25`` is a quarter of one CPU, ``-e KEY=VALUE``.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from fleetd.durations import seconds
from fleetd.errors import InvalidRequest

# Docker's RAMInBytes: a number, an optional unit, an optional "i" and "b".
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$", re.IGNORECASE)
_UNIT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
# Docker refuses a memory limit below 6 MiB.
MIN_MEMORY = 6 * 1024 * 1024
# Two ext4 filesystems of half each (/tmp, the checkpoint); below 8 MiB ext4 keeps most of it for itself.
MIN_DISK = 16 << 20
MAX_DISK = 1 << 40
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]{0,62}$")


def parse_size(value: str | int, flag: str) -> int:
    """Return a size in bytes, as Docker reads ``512m`` (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _MEMORY.match(str(value).strip())
    if not match:
        raise InvalidRequest(f"{flag}: invalid size {value!r}: use a number with an optional unit, e.g. 512m or 1g")
    return int(float(match.group(1)) * _UNIT[(match.group(2) or "").lower()])


def parse_memory(value: str | int, flag: str = "--memory") -> int:
    """Return a memory size in bytes, as Docker reads ``512m``."""
    size = parse_size(value, flag)
    if size < MIN_MEMORY:
        raise InvalidRequest(f"{flag}: {value!r} is below Docker's minimum of 6 MiB (6m)")
    return size


def parse_disk(value: str | int, flag: str = "--disk") -> int:
    """Return an agent's writable space in bytes: at least 16m, at most 1t."""
    size = parse_size(value, flag)
    if not MIN_DISK <= size <= MAX_DISK:
        raise InvalidRequest(f"{flag}: {value!r} must be between 16m and 1t")
    return size


def parse_cpus(value: str | float, host_cpus: int) -> int:
    """Return NanoCpus for ``--cpus``; it must be above 0 and at most the host's CPUs."""
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"--cpus: invalid number {value!r}") from None
    if not cpus > 0:
        raise InvalidRequest(f"--cpus: must be greater than 0, got {value!r}")
    if cpus > host_cpus:
        raise InvalidRequest(f"--cpus: {value!r} is more than the {host_cpus} CPUs this host has")
    return round(cpus * 1e9)


def parse_pair(item: str, what: str) -> tuple[str, str]:
    """Split ``KEY=VALUE``; the key must be a valid name."""
    key, sep, value = item.partition("=")
    pattern = _ENV_KEY if what == "env" else _LABEL_KEY
    if not sep or not pattern.fullmatch(key):
        raise InvalidRequest(f"invalid {what} {item!r}: expected KEY=VALUE")
    return key, value


def parse_pairs(items: object, what: str) -> dict[str, str]:
    """Parse a list of ``KEY=VALUE`` strings into a dict."""
    if items is None:
        return {}
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise InvalidRequest(f"{what}: expected a list of KEY=VALUE strings")
    return dict(parse_pair(p, what) for p in items)


def format_bytes(size: int | None) -> str:
    """Show a byte count in Docker's units (``512MiB``)."""
    if size is None:
        return "-"
    for unit in ("GiB", "MiB", "KiB"):
        scale = {"GiB": 1 << 30, "MiB": 1 << 20, "KiB": 1 << 10}[unit]
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


def format_usd(value: float | None) -> str:
    """Money as every command and message shows it: dollars to the hundredth of a cent (``$1,234.5678``), so that
    one call's cost, a day's spend and a cap read alike; below that, ``<$0.0001``."""
    if value is None:
        return "-"
    if 0 < value < 0.00005:
        return "<$0.0001"
    return f"${value:,.4f}"


def format_seconds(seconds: float) -> str:
    """Show a duration like ``59m58s`` (what ``ps`` prints for time left)."""
    total = int(max(0, seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def parse_usd(value: object, flag: str = "--usd") -> Decimal:
    """An amount of US dollars >= 0, exact (a Decimal): ``12``, ``0.5``, ``"$3.25"``."""
    text = str(value).strip().removeprefix("$") if not isinstance(value, bool) else ""
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise InvalidRequest(f"{flag}: expected an amount in US dollars like 12.50, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise InvalidRequest(f"{flag}: must be a finite amount >= 0, got {value!r}")
    if amount > Decimal(10) ** 9:
        raise InvalidRequest(f"{flag}: at most 1000000000 dollars, got {value!r}")
    return Decimal(format(amount.normalize(), "f"))  # 50, not 5E+1


def parse_heartbeat_interval(value: object, flag: str = "--heartbeat-interval") -> float:
    """Seconds between an agent's heartbeats: 0 (none expected), or 0.5 to 86400."""
    interval = parse_duration(value, flag)
    if not interval <= 86400:
        raise InvalidRequest(f"{flag}: must be between 0 (off) and 86400 seconds, got {value!r}")
    if 0 < interval < 0.5:
        raise InvalidRequest(f"{flag}: at least 0.5 seconds (or 0 for none)")
    return interval


DURATION_HINT = "use seconds or a duration like 90s, 10m, 1h30m, 1.5h or 2d"


def parse_duration(value: object, flag: str, low: float = 0) -> float:
    """Seconds >= ``low`` from a number (seconds) or a duration string (``fleetd.durations``)."""
    found = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        found = float(value)
    elif isinstance(value, str):
        found = seconds(value)
    if found is None or found != found or found in (float("inf"), float("-inf")):
        raise InvalidRequest(f"{flag}: invalid duration {value!r}: {DURATION_HINT}")
    if found < low:
        raise InvalidRequest(f"{flag}: must be at least {low:g}, got {value!r}")
    return found


def parse_whole_seconds(value: object, flag: str, low: int, high: int | None = None) -> int:
    """A duration of whole seconds within [low, high] (a TTL, a grace period, a timeout)."""
    found = parse_duration(value, flag, low)
    if not found.is_integer():
        raise InvalidRequest(f"{flag}: must be a whole number of seconds, got {value!r}")
    if high is not None and found > high:
        raise InvalidRequest(f"{flag}: must be at most {high}, got {value!r}")
    return int(found)
