"""``fleetd ps --filter KEY=VALUE`` (``GET /v1/agents?filter=KEY=VALUE``), as ``docker ps --filter``.

Keys: ``state=S`` (or docker's ``status=S``), ``role=R``, ``name=N`` (part of the name), ``id=PREFIX``,
``label=K`` (the label is set) and ``label=K=V``. Several filters of one key
match an agent when any of them does; filters of different keys, when all do.
"""

from __future__ import annotations

from collections.abc import Iterable

from fleetd.errors import InvalidRequest
from fleetd.models import State

FILTER_KEYS = ("label", "state", "role", "name", "id")
ALIASES = {"status": "state"}  # docker ps --filter status=exited


def parse_filters(raw: Iterable[str]) -> dict[str, list[str]]:
    """``["state=running", "label=team=a"]`` -> ``{"state": ["running"], "label": ["team=a"]}``."""
    filters: dict[str, list[str]] = {}
    for item in raw:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        key = ALIASES.get(key, key)
        if not eq or key not in FILTER_KEYS:
            raise InvalidRequest(f"bad filter {item!r}: expected KEY=VALUE with KEY one of {', '.join(FILTER_KEYS)}")
        if not value or (key == "label" and value.startswith("=")):
            raise InvalidRequest(f"bad filter {item!r}: the value is empty")
        if key == "state" and value not in {s.value for s in State}:
            raise InvalidRequest(f"bad filter {item!r}: states are {', '.join(s.value for s in State)}")
        filters.setdefault(key, []).append(value)
    return filters
