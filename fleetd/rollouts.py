"""A deployment's rollout of a new version: canary or blue-green, one row of state.db while it runs (issue 17).

``fleetd deploy NAME ... --canary PCT`` or ``--strategy blue-green`` makes the new version beside the current one
instead of in its place (``fleetd.deployments.Deployments.apply``), and a row here says how the two share the work:

- **canary** (phase ``canary``): ``percent`` % of newly queued tasks are routed to the new version
  (``fleetd.canary.routes_to_canary``: the split is decided at submit, by the task's position among those queued
  since the canary started, with the rollout's seed), the rest stay on the current version. The fleet controller
  compares the two versions' tasks (``fleetd.canary.judge``) and promotes or rolls back; a user may do either by hand.
- **blue-green** (phases ``starting`` then ``switched``): the new version is started to ``target`` agents (the
  current version's live count when the rollout began, at least 1) and takes no task until ``target`` of them are
  ready (they have asked for a task); then every new task goes to it (it becomes the current version) and the old
  version drains. The row goes once the old version has retired.

A deployment has at most one rollout; a new version while one runs is refused (409) until it is promoted or rolled
back. The routing counter (``routed``) is the queue's: it moves in the submit's own transaction, so a daemon restart
changes nothing of the split, and an idempotent replay of a submit takes no position.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fleetd.autoscale import ScalingPolicy
from fleetd.canary import CanaryPolicy, routes_to_canary
from fleetd.errors import InvalidRequest
from fleetd.store import Store
from fleetd.task_queue import Takes
from fleetd.units import parse_usd

ROLLOUT_FIELDS = ("strategy", "canary", "promote_after", "max_error_rate_increase", "max_cost_increase",
                  "max_duration_increase", "canary_max_usd")
_POLICY_FIELDS = {"canary": "percent", "canary_max_usd": "max_usd"}  # a request's names for CanaryPolicy's fields


class Strategy(StrEnum):
    ROLLING = "rolling"  # the new version replaces the current one at once (its agents drain)
    CANARY = "canary"
    BLUE_GREEN = "blue-green"


class Phase(StrEnum):
    CANARY = "canary"  # both versions take new tasks, split by percent
    STARTING = "starting"  # blue-green: the new version's agents start; the current one takes every task
    SWITCHED = "switched"  # blue-green: the new version is current; the old one drains


@dataclass(frozen=True)
class Rollout:
    deployment: str
    strategy: Strategy
    version: int  # the new one
    previous: int  # the version current when it began
    phase: Phase
    policy: CanaryPolicy | None  # canary only
    seed: str
    routed: int  # tasks queued since the canary began (each took a position of the split)
    target: int | None  # blue-green: agents of the new version to have ready before the switch
    started_at: str

    @property
    def label(self) -> str:
        return f"v{self.version}"

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Rollout:
        policy = json.loads(row["policy"]) if row["policy"] else None
        return cls(row["deployment"], Strategy(row["strategy"]), row["version"], row["previous"], Phase(row["phase"]),
                   None if policy is None else CanaryPolicy(**policy), row["seed"], row["routed"], row["target"],
                   row["started_at"])

    def to_json(self) -> dict[str, Any]:
        return {"strategy": self.strategy.value, "version": self.version, "previous": self.previous,
                "phase": self.phase.value, "percent": None if self.policy is None else self.policy.percent,
                "routed": self.routed, "started_at": self.started_at,
                "policy": None if self.policy is None else self.policy.to_json(), "target": self.target}


@dataclass(frozen=True)
class RolloutRequest:
    """What a deploy request asks of its new version's rollout (validated)."""

    strategy: Strategy = Strategy.ROLLING
    policy: CanaryPolicy | None = None


def rollout_request(request: Mapping[str, Any]) -> RolloutRequest:
    """The rollout fields of a deploy request: ``strategy`` (rolling, canary, blue-green; ``canary`` alone implies
    canary), ``canary`` (percent) and the canary's thresholds, each checked by ``CanaryPolicy``."""
    raw = request.get("strategy")
    percent = request.get("canary")
    if raw is None:
        strategy = Strategy.CANARY if percent is not None else Strategy.ROLLING
    else:
        try:
            strategy = Strategy(raw)
        except ValueError:
            raise InvalidRequest(f"--strategy: one of {', '.join(Strategy)}, got {raw!r}") from None
    canary_options = {f: request.get(f) for f in ROLLOUT_FIELDS[2:] if request.get(f) is not None}
    if strategy != Strategy.CANARY:
        given = sorted(f for f in ("canary", *canary_options) if request.get(f) is not None)
        if given:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            raise InvalidRequest(f"{flags}: only for a canary (--canary PCT), not --strategy {strategy}")
        return RolloutRequest(strategy)
    if percent is None:
        raise InvalidRequest("--strategy canary: give --canary PCT, the share of new tasks (1-50) for the new version")
    values: dict[str, Any] = {}
    for field, value in canary_options.items():
        if field == "canary_max_usd":
            values["max_usd"] = float(parse_usd(value, "--canary-max-usd"))
        elif field == "promote_after":
            values[field] = _whole(value, "--promote-after")
        else:
            values[field] = _number(value, "--" + field.replace("_", "-"))
    try:
        return RolloutRequest(strategy, CanaryPolicy(percent=_whole(percent, "--canary"), **values))
    except ValueError as exc:
        raise InvalidRequest(f"--{exc}") from None  # CanaryPolicy names the option: "promote-after must be ..."


def retuned(policy: CanaryPolicy, asked: CanaryPolicy, request: Mapping[str, Any]) -> CanaryPolicy:
    """A running canary's ``policy`` with the options ``request`` gives again (read into ``asked``) changed, and the
    others kept, as a deployment's own options are (``fleetd deploy`` with the rolling-out version's spec and
    ``--canary 20``: the percent changes, the spend cap stays)."""
    given = {_POLICY_FIELDS.get(f, f): getattr(asked, _POLICY_FIELDS.get(f, f)) for f in ROLLOUT_FIELDS[1:]
             if request.get(f) is not None}
    return dataclasses.replace(policy, **given)


def _whole(value: Any, flag: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise InvalidRequest(f"{flag}: expected a whole number, got {value!r}")


def _number(value: Any, flag: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise InvalidRequest(f"{flag}: expected a number, got {value!r}")


class Rollouts:
    """The rollouts of one instance: rows of state.db's ``rollouts``. Methods that change one run inside the
    caller's transaction (``Deployments``' or the queue's)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn = store.conn

    def get(self, deployment: str) -> Rollout | None:
        rows = self.store.rows("SELECT * FROM rollouts WHERE deployment = ?", [deployment])
        return Rollout.from_row(rows[0]) if rows else None

    def all(self) -> dict[str, Rollout]:
        return {r["deployment"]: Rollout.from_row(r) for r in self.store.rows("SELECT * FROM rollouts")}

    def begin(self, deployment: str, strategy: Strategy, version: int, previous: int, policy: CanaryPolicy | None,
              target: int | None, now: str) -> None:
        """Inside the deploy's transaction. The split's seed is the deployment's name and the version: the same
        deploy on a new instance routes the same tasks (reproducible tests), each canary of it differently."""
        phase = Phase.CANARY if strategy == Strategy.CANARY else Phase.STARTING
        self.conn.execute(
            "INSERT INTO rollouts (deployment, strategy, version, previous, phase, policy, seed, routed, target, "
            "started_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
            (deployment, strategy.value, version, previous, phase.value,
             None if policy is None else json.dumps(policy.to_json()), f"{deployment}:{version}", target, now))

    def set_policy(self, deployment: str, policy: CanaryPolicy) -> None:
        """A running canary's options changed in place (the split's positions go on: the new percent applies to the
        tasks queued from now on)."""
        self.conn.execute("UPDATE rollouts SET policy = ? WHERE deployment = ?",
                          (json.dumps(policy.to_json()), deployment))

    def set_phase(self, deployment: str, phase: Phase) -> None:
        self.conn.execute("UPDATE rollouts SET phase = ? WHERE deployment = ?", (phase.value, deployment))

    def end(self, deployment: str) -> None:
        self.conn.execute("DELETE FROM rollouts WHERE deployment = ?", (deployment,))

    def route(self, deployment: str) -> str | None:
        """Inside a submit's transaction: the version label a new task of ``deployment`` goes to during its canary
        (None: the current version), taking the next position of the split."""
        row = self.conn.execute("SELECT version, seed, routed, policy FROM rollouts WHERE deployment = ? AND "
                                "phase = ?", (deployment, Phase.CANARY.value)).fetchone()
        if row is None:
            return None
        version, seed, position, policy = row
        self.conn.execute("UPDATE rollouts SET routed = routed + 1 WHERE deployment = ?", (deployment,))
        return f"v{version}" if routes_to_canary(seed, position, json.loads(policy)["percent"]) else None



def split_policy(policy: ScalingPolicy, percent: int) -> tuple[ScalingPolicy, ScalingPolicy]:
    """A deployment's scaling options shared between its current version and its canary, each scaled on its own
    queue: the canary gets ``percent`` % of ``min``, ``warm`` and ``max`` (rounded up; at least one agent of room),
    the current version the rest (at least one agent of room). With ``max`` 1 the two together may hold one agent
    more than ``max`` for the canary's time: a canary needs an agent to be judged."""
    share = percent / 100
    room = max(1, math.ceil(policy.max * share))
    canary = dataclasses.replace(policy, max=room, min=min(room, math.ceil(policy.min * share)),
                                 warm=min(room, math.ceil(policy.warm * share)))
    rest = max(1, policy.max - room)
    current = dataclasses.replace(policy, max=rest, min=min(rest, max(0, policy.min - canary.min)),
                                  warm=min(rest, max(0, policy.warm - canary.warm)))
    return current, canary


def standby_policy(policy: ScalingPolicy, target: int) -> ScalingPolicy:
    """A blue-green version while it starts: exactly ``target`` agents, which take no task yet."""
    return dataclasses.replace(policy, min=target, max=max(target, 1), warm=0)


def pools(policy: ScalingPolicy, current: int, rollout: Rollout | None) -> dict[int, tuple[ScalingPolicy, Takes]]:
    """Version -> its scaling options and what its agents take, for every version that should have agents now
    (any other version's agents drain)."""
    if rollout is None or rollout.phase == Phase.SWITCHED:
        return {current: (policy, Takes.ANY)}
    if rollout.phase == Phase.CANARY:
        assert rollout.policy is not None
        ours, canary = split_policy(policy, rollout.policy.percent)
        return {current: (ours, Takes.ANY), rollout.version: (canary, Takes.ROUTED)}
    return {current: (policy, Takes.ANY), rollout.version: (standby_policy(policy, rollout.target or 1), Takes.NONE)}


def takes(active: bool, version: int, current: int, rollout: Rollout | None) -> Takes:
    """What an agent of ``version`` may lease: a version no longer active only retries bound to it (version
    affinity); the current one anything for it; a canary what was routed to it; a blue-green version still starting
    nothing."""
    if not active:
        return Takes.BOUND
    if version == current:
        return Takes.ANY
    if rollout is not None and rollout.version == version:
        return Takes.ROUTED if rollout.phase == Phase.CANARY else Takes.NONE
    return Takes.BOUND
