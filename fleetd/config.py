"""The daemon's configuration: parsed and validated here, used everywhere else.

The file is TOML; every key is optional::

    instance = "prod"
    max_ttl = "1d"             # the longest --ttl or extend a user may ask for
    log_retention = "1h"       # how long an exited agent's container (and logs) is kept
    max_exited = 100           # at most this many exited containers are kept
    drain_on_exit = false      # stop every agent when the daemon stops
    spare_namespaces = 2       # agents' network namespaces made ahead of spawns (0: each spawn makes its own)

    [retention]                # removed agents' records, with their transitions and events, kept this long
    records = "7d"             # after their end
    events = "30d"             # any event

    [defaults]                 # spawn limits when no flag gives one
    memory = "512m"
    cpus = 0.5
    pids_limit = 256
    ttl = "1h"                 # durations: seconds (3600) or "1h", "90m", "1h30m", "30s", "2d"
    grace = "30s"
    disk = "1g"                # the agent's writable space: /tmp and /fleetd/checkpoint, half each

    [roles.researcher]         # per-role overrides of [defaults] (and of [budget], see fleetd.policy)
    memory = "1g"
    ttl = "2h"
    egress = ["@pypi", "docs.python.org"]   # hosts its agents may reach through zone 2 (fleetd.egress)
    egress_max_bytes = "1g"    # per agent and UTC day, in and out (the default)

Budgets, the circuit breaker, retries and prices: see :mod:`fleetd.policy`.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetd import __version__
from fleetd.egress import EGRESS_KEYS
from fleetd.errors import InvalidRequest
from fleetd.listen import parse_listen
from fleetd.paths import default_config, default_socket, default_state_dir
from fleetd.policy import BUDGET_KEYS, Policy, load_policy, overlay
from fleetd.units import NAME_PATTERN, parse_disk, parse_heartbeat_interval, parse_memory, parse_whole_seconds


@dataclass(frozen=True)
class Limits:
    """Spawn limits; ``None`` means "not set here, fall through"."""

    memory: int | None = None
    memory_reservation: int | None = None
    disk: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    ttl: int | None = None
    grace: int | None = None
    heartbeat_interval: float | None = None
    restart: str | None = None
    startup_probe: str | None = None
    readiness_probe: str | None = None
    liveness_probe: str | None = None

    def over(self, base: Limits) -> Limits:
        """These limits, with ``base`` filling what is unset."""
        return overlay(self, base)


MAX_SPARE_NAMESPACES = 256
# Top-level keys that are durations (seconds, or "1h", "90m", "2d"), and their least values.
DURATION_KEYS = {"max_ttl": 1, "max_grace": 0, "log_retention": 0}
BUILTIN_DEFAULTS = Limits(memory=512 << 20, disk=1 << 30, cpus=1.0, pids_limit=256, ttl=3600, grace=30)


@dataclass(frozen=True)
class Config:
    """Everything the daemon needs to know before it starts."""

    instance: str = "default"
    state_dir: Path = field(default_factory=default_state_dir)
    socket: Path = field(default_factory=default_socket)
    defaults: Limits = BUILTIN_DEFAULTS
    roles: dict[str, Limits] = field(default_factory=dict)
    max_ttl: int = 86400
    max_grace: int = 3600
    log_retention: int = 3600
    max_exited: int = 100
    drain_on_exit: bool = False
    zone2_image: str = f"fleetd/zone2:{__version__}"
    policy: Policy = field(default_factory=Policy)
    metrics: str | None = None  # HOST:PORT of the opt-in Prometheus listener
    spare_namespaces: int = 2  # namespace holders started ahead of spawns (fleetd.spare_netns)
    # [retention]: records of removed agents (their transitions and events) are kept this long after their end;
    # any event this long. Ledger rows are never deleted.
    retention_records: int = 7 * 86400
    retention_events: int = 30 * 86400

    def limits_for(self, role: str | None, defined: frozenset[str] = frozenset()) -> Limits:
        """The spawn defaults for a role (the instance defaults when none).

        A role exists when the config file gives it limits or ``fleetd role set`` made it (``defined``).
        """
        if role is None or role == "default":
            return self.defaults
        if role in self.roles:
            return self.roles[role].over(self.defaults)
        if role in defined:
            return self.defaults
        known = ", ".join(sorted(set(self.roles) | defined)) or "none defined"
        raise InvalidRequest(f"unknown role {role!r} (known roles: {known})")


def _limits(table: dict[str, Any], where: str) -> Limits:
    known = {f.name for f in dataclasses.fields(Limits)}
    unknown = set(table) - known
    if unknown:
        raise InvalidRequest(f"{where}: unknown keys {sorted(unknown)}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in ("memory", "memory_reservation"):
            values[key] = parse_memory(value, f"{where}.{key}")
        elif key == "disk":
            values[key] = parse_disk(value, f"{where}.disk")
        elif key in ("restart", "startup_probe", "readiness_probe", "liveness_probe"):
            if not isinstance(value, str):
                raise InvalidRequest(f"{where}.{key}: must be a string like the spawn flag's value")
            values[key] = value
        elif key == "heartbeat_interval":
            values[key] = parse_heartbeat_interval(value, f"{where}.heartbeat_interval")
        elif key in ("ttl", "grace"):
            values[key] = parse_whole_seconds(value, f"{where}.{key}", 1 if key == "ttl" else 0)
        elif key == "cpus":
            if not isinstance(value, (int, float)) or value <= 0:
                raise InvalidRequest(f"{where}.cpus: must be a number above 0")
            values[key] = float(value)
        else:
            if not isinstance(value, int) or value < 0:
                raise InvalidRequest(f"{where}.{key}: must be a whole number >= 0")
            values[key] = value
    return Limits(**values)


def retention_seconds(value: object, where: str) -> int:
    """A retention period: whole seconds (or a duration like "7d"), at least a minute."""
    return parse_whole_seconds(value, where, 60)


def load_config(path: Path | None = None, **overrides: Any) -> Config:
    """Read the config file (the default one only if it exists) and apply overrides.

    ``overrides`` are the daemon's command-line flags; ``None`` values are ignored.
    """
    data: dict[str, Any] = {}
    source = path or (default_config() if default_config().exists() else None)
    if source is not None:
        try:
            data = tomllib.loads(Path(source).read_text())
        except OSError as exc:
            raise InvalidRequest(f"cannot read config {source}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidRequest(f"config {source}: {exc}") from None
    kwargs: dict[str, Any] = {}
    for key in ("instance", "max_exited", "drain_on_exit", "zone2_image",
                "metrics", "spare_namespaces"):
        if key in data:
            kwargs[key] = data.pop(key)
    for key, low in DURATION_KEYS.items():
        if key in data:
            kwargs[key] = parse_whole_seconds(data.pop(key), key, low)
    retention = data.pop("retention", {})
    if not isinstance(retention, dict) or set(retention) - {"records", "events"}:
        raise InvalidRequest("retention: expected a table with records and events (seconds or durations)")
    for key in ("records", "events"):
        if key in retention:
            kwargs[f"retention_{key}"] = retention_seconds(retention[key], f"retention.{key}")
    for key in ("state_dir", "socket"):
        if key in data:
            kwargs[key] = Path(data.pop(key))
    if "defaults" in data:
        kwargs["defaults"] = _limits(data.pop("defaults"), "defaults").over(BUILTIN_DEFAULTS)
    role_tables: dict[str, dict[str, Any]] = data.pop("roles", {})
    if not isinstance(role_tables, dict) or not all(isinstance(t, dict) for t in role_tables.values()):
        raise InvalidRequest("roles: expected tables like [roles.NAME]")
    policy_keys = {*BUDGET_KEYS, *EGRESS_KEYS}  # the rest of a role's table is its spawn limits
    kwargs["roles"] = {name: _limits({k: v for k, v in t.items() if k not in policy_keys}, f"roles.{name}")
                       for name, t in role_tables.items()}
    kwargs["policy"] = load_policy(data, {name: {k: v for k, v in t.items() if k in policy_keys}
                                          for name, t in role_tables.items()})
    if data:
        raise InvalidRequest(f"config {source}: unknown keys {sorted(data)}")
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    config = Config(**kwargs)
    if config.metrics is not None:
        try:
            parse_listen(config.metrics)
        except ValueError as exc:
            raise InvalidRequest(f"--metrics: {exc}") from None
    if type(config.spare_namespaces) is not int or not 0 <= config.spare_namespaces <= MAX_SPARE_NAMESPACES:
        raise InvalidRequest(f"spare_namespaces: expected a whole number from 0 to {MAX_SPARE_NAMESPACES}")
    if not NAME_PATTERN.fullmatch(config.instance):
        raise InvalidRequest(f"invalid instance name {config.instance!r}: use letters, digits, _ . -")
    return config
