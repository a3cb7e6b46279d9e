"""The validation of ``fleetd deploy``: a request becomes an agent spec, a scaling policy and task defaults.

A deployment is a pool of identical worker agents taking tasks from the durable queue (``fleetd.task_queue``),
scaled by ``fleetd.autoscale``. Its options are the agent's, as ``fleetd spawn`` takes them (``build_spec``), its
scaling policy (``ScalingPolicy``, which says what a valid policy is) and the defaults of the tasks submitted to it
(``TaskDefaults``, within the queue's own limits). No I/O.

Rules where the issue is silent:

- Scaling and task options not given come from ``base`` (on an update: the deployment's current ones), else the
  issue's defaults. ``None`` means "not given", as in ``build_spec``; ``task_max_usd: "none"`` removes the cap.
- A deployment's agents are named NAME-<n>: its name is NAME_PATTERN within 50 characters, so that NAME-<n> is an
  agent name too, and an agent ``name`` is refused. ``ls``, ``inspect``, ``scale`` and ``rm`` are the verbs of
  ``fleetd deploy``, not names. ``restart`` is refused: the pool replaces its agents itself, and a restart policy
  would start a drained agent again.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from fleetd.autoscale import ScalingPolicy
from fleetd.config import Config
from fleetd.errors import InvalidRequest
from fleetd.models import AgentSpec
from fleetd.spec import SPAWN_FIELDS, build_spec, optional_usd, whole_number
from fleetd.task_queue import DEFAULT_ATTEMPTS, DEFAULT_TTL, MAX_ATTEMPTS, MAX_TTL
from fleetd.units import NAME_PATTERN, parse_duration, parse_whole_seconds

SCALING_FIELDS = ("min", "max", "warm", "tasks_per_agent", "scale_down_window")  # ScalingPolicy's, set by a user
TASK_FIELDS = ("task_ttl", "task_attempts", "task_max_usd")  # TaskDefaults' fields, prefixed
DEPLOY_FIELDS = frozenset(SCALING_FIELDS + TASK_FIELDS)
MAX_NAME_CHARS = 50  # NAME-<n> stays within NAME_PATTERN's 63 for any n below 10**12
RESERVED_NAMES = frozenset({"ls", "inspect", "scale", "rm"})
NO_CAP = "none"


@dataclass(frozen=True)
class TaskDefaults:
    """What a task submitted to the deployment gets when its submit says nothing (``TaskQueue.submit``)."""

    ttl: int = DEFAULT_TTL
    attempts: int = DEFAULT_ATTEMPTS
    max_usd: str | None = None  # the per-task LLM cap, an exact decimal string; None: no cap

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class DeploySpec(NamedTuple):
    """A validated deploy request."""

    agent: AgentSpec
    scaling: ScalingPolicy
    tasks: TaskDefaults


def check_name(name: object) -> str:
    """A deployment's name, or InvalidRequest saying what a name may be."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME_CHARS:
        raise InvalidRequest(f"invalid deployment name {name!r}: 1-{MAX_NAME_CHARS} letters, digits, _ . - "
                             "starting with a letter or digit (its agents are named NAME-<n>)")
    if name in RESERVED_NAMES:
        raise InvalidRequest(f"invalid deployment name {name!r}: {', '.join(sorted(RESERVED_NAMES))} are verbs of "
                             "fleetd deploy")
    return name


def deploy_request(request: Any, config: Config, host_cpus: int, roles: frozenset[str] = frozenset(),
                   base: tuple[ScalingPolicy, TaskDefaults] | None = None) -> DeploySpec:
    """Validate a deploy request: the agent as ``fleetd spawn`` does (``build_spec``), then the deployment's
    options; an option not given comes from ``base`` (the deployment's current options), else its default."""
    if not isinstance(request, dict):
        raise InvalidRequest("deploy request must be a JSON object")
    unknown = set(request) - SPAWN_FIELDS - DEPLOY_FIELDS
    if unknown:
        raise InvalidRequest(f"unknown deploy fields: {sorted(unknown)}")
    if request.get("name") is not None:
        raise InvalidRequest("name: a deployment names its agents NAME-<n> after itself; give no agent name")
    if request.get("restart") is not None:
        raise InvalidRequest("restart: a deployment replaces its agents itself; it takes no restart policy")
    scaling, tasks = base or (ScalingPolicy(), TaskDefaults())
    agent = build_spec({k: v for k, v in request.items() if k in SPAWN_FIELDS}, config, host_cpus, roles)
    return DeploySpec(agent, scaled(scaling, {f: request.get(f) for f in SCALING_FIELDS}),
                      task_defaults(tasks, request))


def scaled(policy: ScalingPolicy, changes: Mapping[str, Any]) -> ScalingPolicy:
    """``policy`` with the options of ``changes`` that are not None. ScalingPolicy says what is valid (one source of
    truth for the limits); its errors are told with the flags' names."""
    values: dict[str, Any] = {}
    for field, value in changes.items():
        if value is not None:
            flag = _flag(field)
            values[field] = parse_duration(value, flag) if field == "scale_down_window" else _integer(value, flag)
    try:
        return dataclasses.replace(policy, **values)
    except ValueError as exc:
        raise InvalidRequest(re.sub(rf"\b({'|'.join(SCALING_FIELDS)})\b", lambda m: _flag(m[1]), str(exc))) from None


def task_defaults(base: TaskDefaults, request: Mapping[str, Any]) -> TaskDefaults:
    """``base`` with the task options of ``request`` that are not None, within the task queue's own limits."""
    ttl, attempts, max_usd = (request.get(f) for f in TASK_FIELDS)
    if isinstance(max_usd, str) and max_usd.strip().lower() == NO_CAP:
        cap = None
    else:
        cap = base.max_usd if max_usd is None else optional_usd(max_usd, "--task-max-usd")
    return TaskDefaults(
        ttl=base.ttl if ttl is None else parse_whole_seconds(ttl, "--task-ttl", 1, MAX_TTL),
        attempts=base.attempts if attempts is None else whole_number(attempts, "--task-attempts", 1, MAX_ATTEMPTS),
        max_usd=cap,
    )


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _integer(value: Any, flag: str) -> int:
    """A whole number, bounds left to ScalingPolicy."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,30}", value.strip()):
        return int(value)
    raise InvalidRequest(f"{flag}: expected a whole number, got {value!r}")
