"""Turn a spawn request into an ``AgentSpec``: every check, no I/O."""

from __future__ import annotations

import re
from typing import Any

from fleetd.config import Config
from fleetd.egress import egress_settings
from fleetd.errors import InvalidRequest
from fleetd.health import ProbeSpec, RestartPolicy
from fleetd.models import AgentSpec
from fleetd.units import (
    NAME_PATTERN,
    parse_cpus,
    parse_disk,
    parse_heartbeat_interval,
    parse_memory,
    parse_pairs,
    parse_usd,
    parse_whole_seconds,
)

SPAWN_FIELDS = {
    "image", "command", "name", "role", "env", "labels", "memory",
    "memory_reservation", "disk", "cpus", "pids_limit", "ttl", "grace",
    "daily_usd", "monthly_usd", "max_llm_calls",
    "heartbeat_interval", "restart", "startup_probe", "readiness_probe", "liveness_probe",
    "egress", "egress_max_bytes",
}
PROBES = ("startup", "readiness", "liveness")
# Names the daemon sets itself; a user may not override them.
RESERVED_ENV_PREFIX = "FLEETD_"
RESERVED_LABEL_PREFIX = "fleetd."


def whole_number(value: Any, flag: str, low: int, high: int | None = None) -> int:
    """An int within [low, high], or a clear error naming the flag."""
    if isinstance(value, bool) or not isinstance(value, int):
        # At most 30 digits: Python refuses to convert more than 4300 (ValueError, a 500), and no bound is that big.
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,30}", value.strip()):
            value = int(value)
        else:
            raise InvalidRequest(f"{flag}: expected a whole number, got {value!r:.40}")
    if value < low:
        raise InvalidRequest(f"{flag}: must be at least {low}, got {value}")
    if high is not None and value > high:
        raise InvalidRequest(f"{flag}: must be at most {high}, got {value}")
    return int(value)


def optional_usd(value: Any, flag: str) -> str | None:
    """A cap in US dollars, kept as an exact decimal string."""
    return None if value is None else str(parse_usd(value, flag))


def ttl_seconds(value: Any, config: Config) -> int:
    """A TTL (spawn or extend): above zero and at most the configured maximum."""
    return parse_whole_seconds(value, "--ttl", 1, config.max_ttl)


def grace_seconds(value: Any, config: Config) -> int:
    """Seconds between SIGTERM and SIGKILL: 0 to the configured maximum."""
    return parse_whole_seconds(value, "--grace", 0, config.max_grace)


def build_spec(request: Any, config: Config, host_cpus: int, roles: frozenset[str] = frozenset()) -> AgentSpec:
    """Validate a spawn request against the config; raise ``InvalidRequest`` on any fault."""
    if not isinstance(request, dict):
        raise InvalidRequest("spawn request must be a JSON object")
    unknown = set(request) - SPAWN_FIELDS
    if unknown:
        raise InvalidRequest(f"unknown spawn fields: {sorted(unknown)}")
    image = request.get("image")
    if not isinstance(image, str) or not image.strip():
        raise InvalidRequest("an image is required")
    command = request.get("command") or []
    if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
        raise InvalidRequest("command must be a list of strings")
    name = request.get("name")
    if name is not None and (not isinstance(name, str) or not NAME_PATTERN.fullmatch(name)):
        raise InvalidRequest(
            f"invalid name {name!r}: 1-63 letters, digits, _ . - starting with a letter or digit"
        )
    role = request.get("role") or "default"
    if not isinstance(role, str):
        raise InvalidRequest("role must be a string")
    limits = config.limits_for(role, roles)

    env = parse_pairs(request.get("env"), "env")
    for key in env:
        if key.startswith(RESERVED_ENV_PREFIX):
            raise InvalidRequest(f"env {key!r}: the FLEETD_ prefix is reserved for the daemon")
    labels = parse_pairs(request.get("labels"), "label")
    for key in labels:
        if key.startswith(RESERVED_LABEL_PREFIX):
            raise InvalidRequest(f"label {key!r}: the fleetd. prefix is reserved for the daemon")

    def pick(key: str) -> Any:
        value = request.get(key)
        return getattr(limits, key) if value is None else value

    memory = pick("memory")
    memory = None if memory is None else parse_memory(memory, "--memory")
    reservation = pick("memory_reservation")
    reservation = None if reservation is None else parse_memory(reservation, "--memory-reservation")
    if memory is not None and reservation is not None and reservation > memory:
        raise InvalidRequest("--memory-reservation must be smaller than --memory")
    cpus = pick("cpus")
    nano_cpus = None if cpus is None else parse_cpus(cpus, host_cpus)
    # Checked against the role's list when the agent is made (Supervisor.launch): the role lives in the store.
    egress = egress_settings(request, None)
    return AgentSpec(
        image=image.strip(),
        command=tuple(command),
        name=name,
        role=role,
        env=env,
        labels=labels,
        memory=memory,
        memory_reservation=reservation,
        disk=parse_disk(pick("disk")),
        nano_cpus=nano_cpus,
        pids_limit=whole_number(pick("pids_limit"), "--pids-limit", 1),
        ttl=ttl_seconds(pick("ttl"), config),
        grace=grace_seconds(pick("grace"), config),
        daily_usd=optional_usd(request.get("daily_usd"), "--daily-usd"),
        monthly_usd=optional_usd(request.get("monthly_usd"), "--monthly-usd"),
        max_llm_calls=None if request.get("max_llm_calls") is None
        else whole_number(request["max_llm_calls"], "--max-llm-calls", 0),
        heartbeat_interval=heartbeat_interval(pick("heartbeat_interval")),
        restart=restart_policy(pick("restart")),
        **{f"{which}_probe": probe(pick(f"{which}_probe"), which) for which in PROBES},
        egress=None if egress.policy is None else egress.policy.to_json(),
        egress_max_bytes=egress.max_bytes,
    )


def heartbeat_interval(value: Any) -> float:
    """Seconds between an agent's heartbeats (0: none expected)."""
    return 0 if value is None else parse_heartbeat_interval(value)


def restart_policy(value: Any) -> str:
    if value is None:
        return "never"
    try:
        return str(RestartPolicy.parse(str(value)))
    except ValueError as exc:
        raise InvalidRequest(f"--restart: {exc}") from None


def probe(value: Any, which: str) -> dict[str, Any] | None:
    """A probe given as the flag's text (``http:8080/healthz,period=5``) or as the API's object."""
    if value is None:
        return None
    try:
        spec = ProbeSpec.from_dict(value) if isinstance(value, dict) else ProbeSpec.parse(str(value))
        return spec.for_kind(which).to_dict()  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"--{which}-probe: {exc}") from None
