"""A deployment's autoscaler as pure decisions: no Docker, no queue, no clock.

A deployment is a pool of identical agents taking tasks from a durable queue.
On each tick the daemon observes the pool (tasks waiting; each agent: holding
a lease, idle, starting, draining, its TTL deadline) and asks
``Autoscaler.decide(observation, now)`` what to do. It then starts and
drains agents as the ``Decision`` says and records it as an event:
``Decision.to_json()`` carries every input, so an event explains itself.

The rule, from issue 16::

    wanted = clamp(min, max, busy + ceil(queued / tasks_per_agent) + warm)

Scale up at once. Scale down as Kubernetes' HPA does with its stabilization
window: keep the recommendations of the last ``scale_down_window`` seconds and
scale down only to the highest of them, so a dip shorter than the window
changes nothing and a burst inside it cancels a pending scale down. A
recommendation holds until the next tick's, so "lower for the whole window"
is exact, not one tick short; until the history spans a window (a new
autoscaler, a restarted daemon) nothing is scaled down. Then at most one
agent per ``scale_down_step_seconds``, and only an idle one, asked to drain:
the one nearest its TTL deadline (it would need replacing soonest; a newer
agent has the most life left), ties by id. An agent holding a lease is never
chosen; as ``busy`` is part of ``wanted`` that only bites above ``max``, and
then the scale down waits.

Counting (the caller must list agents it has decided to start but not yet
created, or the next tick starts them again):

- capacity (``Decision.current``, what ``wanted`` is compared with): agents
  not draining. Draining agents take no new task: not capacity.
- ``max`` bounds every live container, draining ones included: they still
  hold memory and CPU on the one VM. A scale up that finds no room waits for
  draining agents to exit.

Times are floats of seconds on one monotonic clock the caller owns, as in
``fleetd.health``. The recommendation history is memory only: after a daemon
restart no scale down happens for one window, which errs on the side of
capacity. Inputs are per deployment; a rollout can run one ``Autoscaler`` per
version over that version's agents, or split ``wanted`` between versions.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any


def _check_count(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, not {value!r}")


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")


@dataclass(frozen=True)
class ScalingPolicy:
    """A deployment's scaling options (``--min``, ``--max``, ``--warm``, ``--tasks-per-agent``, ...).

    ``warm`` idle agents are kept ready beyond the busy ones, within ``max``.
    """

    min: int = 0
    max: int = 10
    warm: int = 0
    tasks_per_agent: int = 5
    scale_down_window: float = 300.0
    scale_down_step_seconds: float = 60.0

    def __post_init__(self) -> None:
        _check_count("min", self.min, 0)
        # max 0 would leave the queue to grow for ever; stopping a deployment is its own verb.
        _check_count("max", self.max, 1)
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        _check_count("warm", self.warm, 0)
        if self.warm > self.max:
            raise ValueError(f"warm ({self.warm}) must be within max ({self.max})")
        _check_count("tasks_per_agent", self.tasks_per_agent, 1)
        for name in ("scale_down_window", "scale_down_step_seconds"):
            _check_seconds(name, getattr(self, name))

    def clamp(self, count: int) -> int:
        return max(self.min, min(self.max, count))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PoolAgent:
    """One live agent of the deployment, as the daemon sees it at a tick."""

    id: str
    started_at: float  # spawn time: its TTL clock started then
    deadline: float  # when its TTL expires
    busy: bool = False  # holds a leased task
    ready: bool = True  # False while starting: not yet long-polling the queue
    draining: bool = False  # asked to drain: takes no new task, on its way out

    @property
    def idle(self) -> bool:
        return not self.busy and not self.draining

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Observation:
    """The inputs of one decision: tasks waiting in the queue and the pool's live agents."""

    queued: int
    agents: tuple[PoolAgent, ...] = ()

    def __post_init__(self) -> None:
        _check_count("queued", self.queued, 0)
        ids = [a.id for a in self.agents]
        if len(set(ids)) != len(ids):
            raise ValueError("agent ids in an observation must be unique")

    @property
    def busy(self) -> int:
        """Agents holding a lease and not draining: each holds a slot the formula keeps."""
        return sum(1 for a in self.agents if a.busy and not a.draining)

    @property
    def draining(self) -> int:
        return sum(1 for a in self.agents if a.draining)

    @property
    def capacity(self) -> int:
        """Agents that take tasks: every one not draining."""
        return sum(1 for a in self.agents if not a.draining)

    def to_json(self) -> dict[str, Any]:
        return {"queued": self.queued, "busy": self.busy, "draining": self.draining,
                "agents": [a.to_json() for a in self.agents]}


@dataclass(frozen=True)
class Decision:
    """What to do at one tick, with every input, for the daemon to act on and record.

    ``raw`` is the formula before the clamp, ``wanted`` after it (this tick's
    recommendation), ``stabilized`` the highest recommendation over the
    scale-down window, ``desired`` the capacity this decision moves toward
    (``wanted`` up, ``stabilized`` down) and ``current`` the capacity now.
    ``start`` new agents; ``drain``: idle agents drained to scale down.
    """

    now: float
    policy: ScalingPolicy
    observation: Observation
    raw: int
    wanted: int
    stabilized: int
    desired: int
    current: int
    start: int = 0
    drain: tuple[str, ...] = ()
    reason: str = ""

    @property
    def acts(self) -> bool:
        """Whether there is anything to do (record an event only then)."""
        return bool(self.start or self.drain)

    def to_json(self) -> dict[str, Any]:
        return {
            "now": self.now, "policy": self.policy.to_json(), "observation": self.observation.to_json(),
            "raw": self.raw, "wanted": self.wanted, "stabilized": self.stabilized, "desired": self.desired,
            "current": self.current, "start": self.start, "drain": list(self.drain), "reason": self.reason,
        }


@dataclass
class Autoscaler:
    """The scaler of one deployment: its policy and the recommendations of the last window.

    ``history`` holds ``(time, wanted)`` samples, a new one only when the
    value changes; a sample holds until the next one. It keeps the last
    sample at or before the window's start (what held then) and those after:
    its length is bounded by the changes within one window.
    """

    policy: ScalingPolicy
    history: list[tuple[float, int]] = field(default_factory=list)
    last_scale_down: float | None = None
    last_now: float | None = None

    def decide(self, observation: Observation, now: float) -> Decision:
        """Record this tick's recommendation and say what to do at ``now``."""
        if self.last_now is not None and now < self.last_now:
            raise ValueError(f"the clock went back from {self.last_now} to {now}: pass one monotonic clock")
        self.last_now = now
        policy, obs = self.policy, observation
        raw = obs.busy + -(-obs.queued // policy.tasks_per_agent) + policy.warm
        wanted = policy.clamp(raw)
        self._record(now, wanted)
        current = obs.capacity
        stabilized = self._stabilized(now, current)
        desired = max(wanted, min(current, stabilized))
        room = max(0, policy.max - len(obs.agents))

        start = min(max(0, desired - current), room)
        room -= start
        drain: list[str] = []
        if desired < current and self._step_allows(now):
            # Nearest its TTL first: it would need replacing soonest, and a newer agent has the most life left.
            candidates = sorted((a for a in obs.agents if a.idle),
                                key=lambda a: (a.deadline, a.id))
            if candidates:
                drain.append(candidates[0].id)
                self.last_scale_down = now

        decision = Decision(now, policy, obs, raw, wanted, stabilized, desired, current,
                            start, tuple(drain))
        return dataclasses.replace(decision, reason=_reason(decision))

    def _record(self, now: float, wanted: int) -> None:
        if not self.history or self.history[-1][1] != wanted:
            self.history.append((now, wanted))
        since = now - self.policy.scale_down_window
        while len(self.history) > 1 and self.history[1][0] <= since:
            del self.history[0]

    def _stabilized(self, now: float, current: int) -> int:
        """The highest recommendation over the window, or ``current`` while history is shorter than it.

        Never above ``max``: a pool above it (max lowered) comes down without waiting for a window.
        """
        since = now - self.policy.scale_down_window
        highest = max(v for _, v in self.history)
        if self.history[0][0] > since:  # what held at the window's start is unknown: keep what we have
            highest = max(highest, current)
        return min(highest, self.policy.max)

    def _step_allows(self, now: float) -> bool:
        last = self.last_scale_down
        return last is None or now - last >= self.policy.scale_down_step_seconds


def _reason(d: Decision) -> str:
    """The event's sentence: the move and its inputs."""
    p, obs = d.policy, d.observation
    inputs = f"{obs.queued} queued, {obs.busy} busy, tasks_per_agent {p.tasks_per_agent}, warm {p.warm}"
    if obs.draining:
        inputs += f", {obs.draining} draining"
    if d.raw > p.max:
        inputs += f" (capped at max {p.max})"
    elif d.raw < p.min:
        inputs += f" (raised to min {p.min})"
    short = d.desired - d.current - d.start
    if d.start:
        reason = f"scaled up {d.current} -> {d.current + d.start}: {inputs}"
        if short:
            reason += f"; {short} more wait for room under max {p.max}"
    elif short > 0:
        reason = f"scale up {d.current} -> {d.desired} waits for room: {len(obs.agents)} live, max {p.max}"
    elif d.drain:
        reason = (f"scaled down {d.current} -> {d.current - 1}: highest wanted in the last "
                  f"{p.scale_down_window:g} s is {d.stabilized}; {inputs}")
    elif d.desired < d.current:
        idle = any(a.idle for a in obs.agents)
        why = f"one agent per {p.scale_down_step_seconds:g} s" if idle else f"no idle agent, {obs.busy} busy"
        reason = f"scale down {d.current} -> {d.desired} waits ({why}); {inputs}"
    elif d.wanted < d.current:
        reason = (f"holding {d.current}: wanted {d.wanted} has not stayed below {d.current} "
                  f"for {p.scale_down_window:g} s; {inputs}")
    else:
        reason = f"holding {d.current}: {inputs}"
    return reason
