"""Deployments: pools of identical worker agents, their versions, and the validation of ``fleetd deploy``.

A deployment is a row of state.db: its scaling options (``fleetd.autoscale.ScalingPolicy``), the defaults of the
tasks submitted to it (``TaskDefaults``), its state and its current version. Each version keeps the agent spec its
agents are spawned from, and a state: ``active``, ``draining`` (replaced: its agents are being drained) or
``retired`` (no agent left). The controller (a later piece) starts and drains agents and adds the live counts to
the JSON view; this module keeps the records and says what a change means. No I/O but SQLite.

Rules where the issue is silent:

- ``apply`` is ``kubectl apply``: a new version only when the agent spec changed, made current while the version
  it replaces turns ``draining``; scaling and task options change in place. Re-applying an older spec makes a new
  version as well: numbers only grow, so a task bound to ``v1`` never meets another spec under that label.
- The agent spec is given whole on every apply (as ``docker run``); scaling and task options not given keep their
  current values on an update (the issue's defaults at creation), so that a new image does not undo a
  ``deploy scale``. ``None`` means "not given", as in ``build_spec``; ``task_max_usd: "none"`` removes the cap.
- A deployment's agents are named NAME-<n>: its name is NAME_PATTERN within 50 characters, so that NAME-<n> is an
  agent name too, and an agent ``name`` is refused. ``ls``, ``inspect``, ``scale`` and ``rm`` are the verbs of
  ``fleetd deploy``, not names. ``restart`` is refused: the pool replaces its agents itself, and a restart policy
  would start a drained agent again.
- A deployment being removed refuses apply and scale (409) until the controller forgets it; removing it again
  without ``drain`` hurries a draining removal. Only a removed deployment can be forgotten.
- Retired versions beyond the newest ten are deleted (Invariant 10), as Kubernetes' ``revisionHistoryLimit``.
- Events name the spec fields that changed and the image, never env values (an event outlives its deployment).
- A new version with ``--canary PCT`` or ``--strategy blue-green`` is made beside the current one, which stays current
  until a promotion (``fleetd.rollouts``); while a rollout runs, another new version is refused (409: promote or roll
  back first), re-applying the rolling-out version's spec answers ``unchanged``, and options change in place: the
  deployment's, and the canary's own (``--canary``, its thresholds and spend cap), those not given keeping theirs.
  ``promote`` and ``rollback`` are verbs too. A rolled-back version drains like a replaced one.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, NamedTuple

from fleetd.autoscale import ScalingPolicy
from fleetd.canary import CanaryPolicy
from fleetd.config import Config
from fleetd.errors import Conflict, InvalidRequest, NotFound
from fleetd.models import AgentSpec, iso, utcnow
from fleetd.rollouts import (
    ROLLOUT_FIELDS,
    Phase,
    Rollout,
    RolloutRequest,
    Rollouts,
    Strategy,
    retuned,
    rollout_request,
)
from fleetd.spec import SPAWN_FIELDS, build_spec, optional_usd, whole_number
from fleetd.store import Store
from fleetd.task_queue import DEFAULT_ATTEMPTS, DEFAULT_TTL, MAX_ATTEMPTS, MAX_TTL
from fleetd.units import NAME_PATTERN, parse_duration, parse_whole_seconds
from fleetd.zone2.pricing import nusd

SCALING_FIELDS = ("min", "max", "warm", "tasks_per_agent", "scale_down_window")  # ScalingPolicy's, set by a user
TASK_FIELDS = ("task_ttl", "task_attempts", "task_max_usd")  # TaskDefaults' fields, prefixed
DEPLOY_FIELDS = frozenset(SCALING_FIELDS + TASK_FIELDS + ROLLOUT_FIELDS)
MAX_NAME_CHARS = 50  # NAME-<n> stays within NAME_PATTERN's 63 for any n below 10**12
RESERVED_NAMES = frozenset({"ls", "inspect", "scale", "rm", "promote", "rollback"})
MAX_RETIRED_VERSIONS = 10
NO_CAP = "none"
ROLLOUT_COLUMNS = ("deployment", "strategy", "version", "previous", "phase", "policy", "seed", "routed", "target",
                   "started_at")

CREATED_EVENT = "deployment_created"
UPDATED_EVENT = "deployment_updated"
PROMOTED_EVENT = "rollout_promoted"
ROLLED_BACK_EVENT = "rollout_rolled_back"
SWITCHED_EVENT = "rollout_switched"
FINISHED_EVENT = "rollout_finished"
SCALED_EVENT = "deployment_scaled"
REMOVED_EVENT = "deployment_removed"


class DeploymentState(StrEnum):
    ACTIVE = "active"
    REMOVING = "removing"  # the controller stops its agents, then forgets it


class VersionState(StrEnum):
    ACTIVE = "active"  # its agents take tasks
    DRAINING = "draining"  # replaced: its agents finish and go
    RETIRED = "retired"  # none of its agents is left


class Outcome(StrEnum):
    """How a version stopped being (or became) the current one, kept on its row."""

    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    REPLACED = "replaced"


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
    rollout: RolloutRequest = RolloutRequest()


class Serving(NamedTuple):
    """What an agent of one version may take, read in one indexed query on each of its requests for a task."""

    deployment: DeploymentState
    drain: bool  # the deployment's removal lets its agents finish their work
    version: VersionState
    current: int  # the deployment's current version
    rollout: Rollout | None


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
                      task_defaults(tasks, request), rollout_request(request))


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


def options(scaling: ScalingPolicy, tasks: TaskDefaults) -> dict[str, Any]:
    """The deployment's options as its columns: ScalingPolicy's user-set fields and TaskDefaults' fields (task_)."""
    return {**{f: getattr(scaling, f) for f in SCALING_FIELDS}, **{f"task_{k}": v for k, v in asdict(tasks).items()}}


@dataclass(frozen=True)
class Replicas:
    """What the controller observes of a deployment's agents now (``deploy ls`` and ``deploy inspect``)."""

    wanted: int
    live: int
    busy: int
    idle: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Version:
    """One version of a deployment: the spec its agents are spawned from."""

    number: int
    spec: AgentSpec
    state: VersionState
    created_at: str
    outcome: Outcome | None = None

    @property
    def label(self) -> str:
        """The version as tasks name it (``TaskQueue.lease`` binds a task to it): ``v1``, ``v2`` ..."""
        return f"v{self.number}"

    def to_json(self) -> dict[str, Any]:
        return {"version": self.number, "label": self.label, "state": self.state.value,
                "outcome": None if self.outcome is None else self.outcome.value, "created_at": self.created_at,
                "spec": self.spec.to_json()}


@dataclass(frozen=True)
class Deployment:
    """A deployment as ``deploy inspect`` shows it, with every version kept."""

    name: str
    state: DeploymentState
    current_version: int
    scaling: ScalingPolicy
    tasks: TaskDefaults
    drain: bool  # removing: the controller lets its agents finish their work first
    created_at: str
    updated_at: str
    versions: tuple[Version, ...]
    rollout: Rollout | None = None

    @property
    def current(self) -> Version:
        return self.version(self.current_version)

    def version(self, number: int) -> Version:
        return next(v for v in self.versions if v.number == number)

    @classmethod
    def from_rows(cls, row: Mapping[str, Any], versions: Iterable[Mapping[str, Any]],
                  rollout: Rollout | None = None) -> Deployment:
        return cls(
            name=row["name"], state=DeploymentState(row["state"]), current_version=row["current_version"],
            scaling=ScalingPolicy(**{f: row[f] for f in SCALING_FIELDS}),
            tasks=TaskDefaults(row["task_ttl"], row["task_attempts"], row["task_max_usd"]),
            drain=bool(row["drain"]), created_at=row["created_at"], updated_at=row["updated_at"],
            versions=tuple(Version(v["version"], AgentSpec.from_json(json.loads(v["spec"])),
                                   VersionState(v["state"]), v["created_at"],
                                   Outcome(v["outcome"]) if v["outcome"] else None) for v in versions),
            rollout=rollout,
        )

    def to_json(self, replicas: Replicas | None = None) -> dict[str, Any]:
        """The JSON view; ``replicas`` are the controller's live counts (None until it reports them). ``deploy
        inspect`` adds the queue's depth and the scaling decisions beside it."""
        return {
            "name": self.name, "state": self.state.value, "drain": self.drain,
            "current_version": self.current_version, "image": self.current.spec.image,
            "scaling": {f: getattr(self.scaling, f) for f in SCALING_FIELDS}, "tasks": self.tasks.to_json(),
            "created_at": self.created_at, "updated_at": self.updated_at,
            "versions": [v.to_json() for v in self.versions],
            "replicas": None if replicas is None else replicas.to_json(),
            "rollout": None if self.rollout is None else self.rollout.to_json(),
        }


@dataclass(frozen=True)
class Applied:
    """What ``apply`` did: ``message`` is ``created``, ``updated: version 2``, ``updated: max 10 -> 20`` or
    ``unchanged``."""

    deployment: Deployment
    message: str


class Deployments:
    """The deployments of one instance, in the store's state.db; ``clock`` injected for the tests.

    Each change is one store transaction, then one event: do not call these methods inside another transaction.
    """

    def __init__(self, store: Store, config: Config, clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self.conn = store.conn
        self.config = config
        self.clock = clock
        self.rollouts = Rollouts(store)

    def apply(self, name: str, request: Any, host_cpus: int, live: int = 0) -> Applied:
        """Create the deployment (version 1), or update it: a new version when the agent spec changed, current at
        once (the one it replaces turns draining) or rolled out beside the current one (canary, blue-green: ``live``
        is the current version's live agents, a blue-green target); the options in place when only they changed."""
        check_name(name)
        roles = frozenset(r["name"] for r in self.store.roles())
        now = iso(self.clock())
        with self.store.transaction():
            before = self._find(name)
            if before is None:
                spec = deploy_request(request, self.config, host_cpus, roles)
                if spec.rollout.strategy != Strategy.ROLLING:
                    raise InvalidRequest(f"--strategy {spec.rollout.strategy}: deployment {name} does not exist yet; "
                                         "a rollout is for a new version of a deployment that runs")
                values = options(spec.scaling, spec.tasks)
                columns = {"name": name, "state": DeploymentState.ACTIVE.value, "current_version": 1, **values,
                           "drain": 0, "created_at": now, "updated_at": now}
                self.conn.execute(f"INSERT INTO deployments ({', '.join(columns)}) "
                                  f"VALUES ({', '.join('?' for _ in columns)})", list(columns.values()))
                self._add_version(name, 1, spec.agent, now)
                event = (CREATED_EVENT, f"deployment {name} created: version 1 ({spec.agent.image})",
                         {"deployment": name, "version": 1, "image": spec.agent.image, **values})
                message = "created"
            else:
                self._refuse_removing(before, "updated")
                spec = deploy_request(request, self.config, host_cpus, roles, (before.scaling, before.tasks))
                values = options(spec.scaling, spec.tasks)
                changes = _changes(options(before.scaling, before.tasks), values)
                fields = _spec_changes(before.current.spec, spec.agent)
                rolling = before.rollout
                if fields and rolling is not None:
                    if not _spec_changes(before.version(rolling.version).spec, spec.agent):
                        fields = []  # the version rolling out, applied again
                    else:
                        raise Conflict(f"deployment {name}: version {rolling.version} is rolling out "
                                       f"({rolling.strategy}): promote it or roll it back (fleetd deploy promote|"
                                       f"rollback {name}) before deploying another")
                retune = None  # the canary's options given again for the version rolling out: changed in place
                if rolling is not None and not fields and rolling.policy is not None and spec.rollout.policy:
                    retune = retuned(rolling.policy, spec.rollout.policy, request)
                    retune = None if retune == rolling.policy else retune
                if not changes and not fields and retune is None:
                    note = "" if rolling is None else f" (version {rolling.version} is rolling out)"
                    return Applied(before, "unchanged" + note)
                self._set_options(name, values, now)
                data: dict[str, Any] = {"deployment": name, "options": changes}
                if rolling is not None and retune is not None:
                    self._retune(name, rolling, retune)
                    data |= {"version": rolling.version, "policy": retune.to_json()}
                if fields:
                    number = max(v.number for v in before.versions) + 1
                    self._add_version(name, number, spec.agent, now)
                    how = spec.rollout.strategy
                    if how == Strategy.ROLLING:
                        self._make_current(name, number, None)
                        message = f"updated: version {number}"
                    else:
                        target = max(1, live) if how == Strategy.BLUE_GREEN else None
                        self.rollouts.begin(name, how, number, before.current_version, spec.rollout.policy, target,
                                            now or "")
                        if spec.rollout.policy is not None and spec.rollout.policy.max_usd is not None:
                            self.conn.execute("UPDATE deployment_versions SET spend_cap_nusd = ? WHERE deployment = ? "
                                              "AND version = ?", (nusd(Decimal(str(spec.rollout.policy.max_usd))),
                                                                  name, number))
                        message = f"updated: version {number} rolling out ({how}" + (
                            f" {spec.rollout.policy.percent}%)" if spec.rollout.policy else f", {target} agents)")
                    data |= {"version": number, "previous": before.current_version, "image": spec.agent.image,
                             "changed": fields}
                    if how != Strategy.ROLLING:
                        data |= {"strategy": how.value, "target": target,
                                 "policy": None if spec.rollout.policy is None else spec.rollout.policy.to_json()}
                else:
                    parts = [_describe(changes)] if changes else []
                    if rolling is not None and rolling.policy is not None and retune is not None:
                        parts.append(f"version {rolling.version}'s canary {_describe_policy(rolling.policy, retune)}")
                    message = "updated: " + ", ".join(parts)
                event = (UPDATED_EVENT, f"deployment {name} {message}", data)
        self.store.add_event(event[0], event[1], data=event[2])
        return Applied(self.get(name), message)

    def get(self, name: str) -> Deployment:
        found = self._find(name)
        if found is None:
            raise NotFound(f"no such deployment: {name}")
        return found

    def serving(self, name: str, number: int) -> Serving | None:
        """The deployment's state, whether its removal drains, its version ``number``'s state, its current version
        and its rollout: one indexed read (an agent's every request for a task asks), None when either is gone."""
        row = self.conn.execute(
            "SELECT d.state, d.drain, v.state, d.current_version, r.* FROM deployments d JOIN deployment_versions v "
            "ON v.deployment = d.name LEFT JOIN rollouts r ON r.deployment = d.name "
            "WHERE d.name = ? AND v.version = ?", (name, number)).fetchone()
        if row is None:
            return None
        rollout = None
        if row[4] is not None:
            rollout = Rollout.from_row(dict(zip(ROLLOUT_COLUMNS, row[4:], strict=True)))
        return Serving(DeploymentState(row[0]), bool(row[1]), VersionState(row[2]), row[3], rollout)

    def task_defaults(self, name: str) -> tuple[DeploymentState, TaskDefaults]:
        """The deployment's state and what its tasks get by default: one indexed read, without parsing every
        version's spec as ``get`` does (each submit asks). NotFound when there is no such deployment."""
        row = self.conn.execute("SELECT state, task_ttl, task_attempts, task_max_usd FROM deployments WHERE name = ?",
                                (name,)).fetchone()
        if row is None:
            raise NotFound(f"no such deployment: {name}")
        return DeploymentState(row[0]), TaskDefaults(row[1], row[2], row[3])

    def list(self) -> builtins.list[Deployment]:
        """Every deployment, by name (removing ones too)."""
        versions: dict[str, list[dict[str, Any]]] = {}
        for v in self.store.rows("SELECT * FROM deployment_versions ORDER BY deployment, version"):
            versions.setdefault(v["deployment"], []).append(v)
        rollouts = self.rollouts.all()
        return [Deployment.from_rows(row, versions.get(row["name"], []), rollouts.get(row["name"]))
                for row in self.store.rows("SELECT * FROM deployments ORDER BY name")]

    def scale(self, name: str, min: object = None, max: object = None, warm: object = None) -> Deployment:
        """Change ``min``, ``max`` or ``warm`` (``deploy scale``), validated as ``deploy`` does."""
        if min is None and max is None and warm is None:
            raise InvalidRequest("deploy scale: give --min, --max or --warm")
        with self.store.transaction():
            before = self.get(name)
            self._refuse_removing(before, "scaled")
            after = scaled(before.scaling, {"min": min, "max": max, "warm": warm})
            changes = _changes(options(before.scaling, before.tasks), options(after, before.tasks))
            if changes:
                self._set_options(name, options(after, before.tasks), iso(self.clock()))
        if changes:
            self.store.add_event(SCALED_EVENT, f"deployment {name} scaled: {_describe(changes)}",
                                 data={"deployment": name, "options": changes})
        return self.get(name)

    def remove(self, name: str, drain: bool) -> Deployment:
        """Mark the deployment removing; the controller stops its agents (after they finish their work when
        ``drain``), then calls ``forget``. Removing it again without ``drain`` hurries a draining removal."""
        with self.store.transaction():
            before = self.get(name)
            hurry = before.state == DeploymentState.REMOVING and before.drain and not drain
            if before.state == DeploymentState.REMOVING and not hurry:
                return before
            self.conn.execute("UPDATE deployments SET state = ?, drain = ?, updated_at = ? WHERE name = ?",
                              (DeploymentState.REMOVING.value, int(drain), iso(self.clock()), name))
        how = "after its agents finish their work" if drain else "now"
        self.store.add_event(REMOVED_EVENT, f"deployment {name} removing {how}",
                             data={"deployment": name, "drain": drain, "hurried": hurry})
        return self.get(name)

    def forget(self, name: str) -> None:
        """The record goes, with its versions: the controller has stopped the agents of a removed deployment."""
        with self.store.transaction():
            state = self.get(name).state
            if state != DeploymentState.REMOVING:
                raise Conflict(f"deployment {name} is {state.value}: remove it before it is forgotten")
            self.conn.execute("DELETE FROM deployment_versions WHERE deployment = ?", (name,))
            self.conn.execute("DELETE FROM deployments WHERE name = ?", (name,))
            self.rollouts.end(name)

    def retire_version(self, name: str, number: int) -> Deployment:
        """A draining version has no agent left (the controller says so): retired, and only the newest
        MAX_RETIRED_VERSIONS retired ones are kept."""
        with self.store.transaction():
            version = next((v for v in self.get(name).versions if v.number == number), None)
            if version is None:
                raise NotFound(f"deployment {name} has no version {number}")
            if version.state != VersionState.DRAINING:
                raise Conflict(f"version {number} of deployment {name} is {version.state.value}: only a draining "
                               "version retires")
            self.conn.execute("UPDATE deployment_versions SET state = ? WHERE deployment = ? AND version = ?",
                              (VersionState.RETIRED.value, name, number))
            self.conn.execute(
                "DELETE FROM deployment_versions WHERE deployment = :name AND state = :retired AND version NOT IN "
                "(SELECT version FROM deployment_versions WHERE deployment = :name AND state = :retired "
                "ORDER BY version DESC LIMIT :keep)",
                {"name": name, "retired": VersionState.RETIRED.value, "keep": MAX_RETIRED_VERSIONS})
        return self.get(name)

    # -- rollouts ----------------------------------------------------------------
    def promote(self, name: str, why: str, data: Mapping[str, Any] | None = None) -> Deployment:
        """The rolling-out version becomes current (blue-green: its switch); the one it replaces drains. 409 when
        there is no rollout to promote."""
        with self.store.transaction():
            rollout = self._rollout(name, "promote")
            if rollout.phase == Phase.SWITCHED:
                raise Conflict(f"deployment {name}: version {rollout.version} is current already; version "
                               f"{rollout.previous} is draining")
            self._make_current(name, rollout.version, Outcome.PROMOTED)
            if rollout.strategy == Strategy.BLUE_GREEN:
                self.rollouts.set_phase(name, Phase.SWITCHED)
            else:
                self.rollouts.end(name)
            self._reroute(name, rollout)
        kind = SWITCHED_EVENT if rollout.strategy == Strategy.BLUE_GREEN else PROMOTED_EVENT
        self.store.add_event(kind, f"deployment {name}: version {rollout.version} promoted, version "
                             f"{rollout.previous} drains: {why}", data=self._decision(rollout, why, data))
        return self.get(name)

    def rollback(self, name: str, why: str, data: Mapping[str, Any] | None = None) -> Deployment:
        """The rolling-out version takes no new task and drains; its tasks still unbound go back to the current
        version. 409 when there is no rollout to roll back (a blue-green switch is final: deploy the old spec)."""
        with self.store.transaction():
            rollout = self._rollout(name, "roll back")
            if rollout.phase == Phase.SWITCHED:
                raise Conflict(f"deployment {name}: blue-green switched to version {rollout.version} already; "
                               f"deploy version {rollout.previous}'s spec again to go back")
            self._set_version(name, rollout.version, VersionState.DRAINING, Outcome.ROLLED_BACK)
            self.rollouts.end(name)
            self._reroute(name, rollout)
        self.store.add_event(ROLLED_BACK_EVENT, f"deployment {name}: version {rollout.version} rolled back: {why}",
                             data=self._decision(rollout, why, data))
        return self.get(name)

    def finish_rollout(self, name: str) -> None:
        """A switched blue-green rollout whose old version has retired is over."""
        with self.store.transaction():
            rollout = self.rollouts.get(name)
            if rollout is None or rollout.phase != Phase.SWITCHED:
                return
            self.rollouts.end(name)
        self.store.add_event(FINISHED_EVENT, f"deployment {name}: blue-green rollout of version {rollout.version} "
                             f"done (version {rollout.previous} retired)",
                             data={"deployment": name, "version": rollout.version, "previous": rollout.previous})

    def _rollout(self, name: str, verb: str) -> Rollout:
        self._refuse_removing(self.get(name), f"{verb}d" if verb.endswith("e") else "rolled back")
        rollout = self.rollouts.get(name)
        if rollout is None:
            raise Conflict(f"deployment {name} has no rollout in progress: nothing to {verb}")
        return rollout

    def _reroute(self, name: str, rollout: Rollout) -> None:
        """Tasks routed to the rollout's version and not yet leased: to the current version (after a promotion that
        is the same version; after a rollback, the old one). Bound ones stay bound (version affinity)."""
        self.conn.execute("UPDATE tasks SET route = NULL WHERE deployment = ? AND route = ? AND state = 'queued' AND "
                          "version IS NULL", (name, rollout.label))

    @staticmethod
    def _decision(rollout: Rollout, why: str, data: Mapping[str, Any] | None) -> dict[str, Any]:
        return {"deployment": rollout.deployment, "version": rollout.version, "previous": rollout.previous,
                "strategy": rollout.strategy.value, "reason": why, **(data or {})}

    def _make_current(self, name: str, number: int, outcome: Outcome | None) -> None:
        """``number`` becomes current (marked ``outcome``); every other active version drains, marked replaced."""
        self.conn.execute("UPDATE deployment_versions SET state = ?, outcome = COALESCE(outcome, ?) WHERE "
                          "deployment = ? AND state = ? AND version != ?",
                          (VersionState.DRAINING.value, Outcome.REPLACED.value, name, VersionState.ACTIVE.value,
                           number))
        if outcome is not None:
            self._set_version(name, number, VersionState.ACTIVE, outcome)
        self.conn.execute("UPDATE deployments SET current_version = ?, updated_at = ? WHERE name = ?",
                          (number, iso(self.clock()), name))

    def _set_version(self, name: str, number: int, state: VersionState, outcome: Outcome) -> None:
        self.conn.execute("UPDATE deployment_versions SET state = ?, outcome = ? WHERE deployment = ? AND version = ?",
                          (state.value, outcome.value, name, number))

    def spend_cap(self, name: str, number: int) -> tuple[int | None, str] | None:
        """A version's spend cap (nano-USD) while it binds: a canary's, or a rolled-back one's (its agents drain);
        None once promoted, or without one. With the version's creation time, which names its spend pool. None for
        a version that is not there."""
        row = self.conn.execute("SELECT spend_cap_nusd, outcome, created_at FROM deployment_versions WHERE "
                                "deployment = ? AND version = ?", (name, number)).fetchone()
        if row is None:
            return None
        binds = row[0] is not None and row[1] not in (Outcome.PROMOTED.value, Outcome.REPLACED.value)
        return (int(row[0]) if binds else None), str(row[2])

    def _find(self, name: str) -> Deployment | None:
        rows = self.store.rows("SELECT * FROM deployments WHERE name = ?", [name])
        if not rows:
            return None
        versions = self.store.rows("SELECT * FROM deployment_versions WHERE deployment = ? ORDER BY version", [name])
        return Deployment.from_rows(rows[0], versions, self.rollouts.get(name))

    def _add_version(self, name: str, number: int, spec: AgentSpec, now: str | None) -> None:
        self.conn.execute("INSERT INTO deployment_versions (deployment, version, spec, state, created_at) "
                          "VALUES (?, ?, ?, ?, ?)",
                          (name, number, json.dumps(spec.to_json()), VersionState.ACTIVE.value, now))

    def _retune(self, name: str, rolling: Rollout, policy: CanaryPolicy) -> None:
        """A running canary's options, changed in place; its spend cap is its version's (zone 2 learns it anew)."""
        self.rollouts.set_policy(name, policy)
        if rolling.policy is None or policy.max_usd != rolling.policy.max_usd:
            cap = None if policy.max_usd is None else nusd(Decimal(str(policy.max_usd)))
            self.conn.execute("UPDATE deployment_versions SET spend_cap_nusd = ? WHERE deployment = ? AND version = ?",
                              (cap, name, rolling.version))

    def _set_options(self, name: str, values: dict[str, Any], now: str | None) -> None:
        sets = ", ".join(f"{column} = ?" for column in values)
        self.conn.execute(f"UPDATE deployments SET {sets}, updated_at = ? WHERE name = ?",
                          [*values.values(), now, name])

    @staticmethod
    def _refuse_removing(deployment: Deployment, verb: str) -> None:
        if deployment.state == DeploymentState.REMOVING:
            raise Conflict(f"deployment {deployment.name} is being removed: it cannot be {verb}")


def _changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Option -> [old, new] for each option that changed."""
    return {k: [before[k], after[k]] for k in before if before[k] != after[k]}


def _spec_changes(before: AgentSpec, after: AgentSpec) -> list[str]:
    """The agent spec's fields that differ, compared as JSON values (a tuple and its list, 1 and 1.0 are equal)."""
    old, new = (json.loads(json.dumps(s.to_json())) for s in (before, after))
    return [k for k in new if new[k] != old.get(k)]


def _describe_policy(before: CanaryPolicy, after: CanaryPolicy) -> str:
    """``percent 10 -> 20``: a canary's options that changed."""
    old, new = before.to_json(), after.to_json()
    return _describe({k: [old[k], new[k]] for k in old if old[k] != new[k]})


def _describe(changes: Mapping[str, list[Any]]) -> str:
    """``max 10 -> 20, task_max_usd none -> 0.5``."""
    def show(value: Any) -> str:
        return NO_CAP if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    return ", ".join(f"{k} {show(old)} -> {show(new)}" for k, (old, new) in changes.items())
