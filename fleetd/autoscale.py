"""A deployment's autoscaler as pure decisions: no Docker, no queue, no clock.

A deployment is a pool of identical agents taking tasks from a durable queue.
On each tick the daemon observes the pool (tasks waiting; each agent: holding
a lease, idle, starting, draining, its TTL deadline) and asks
``Autoscaler.decide(observation, now)`` what to do. It then starts, replaces
and drains agents as the ``Decision`` says and records it as an event:
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
  not draining, less idle agents whose TTL replacement already exists (the
  pair holds one slot). Draining agents take no new task: not capacity.
- ``max`` bounds every live container, draining ones and both halves of a
  replacement included: they all hold memory and CPU on the one VM. A scale
  up that finds no room waits for draining agents to exit.

Warm pool refresh: an idle agent with less than ``ScalingPolicy.refresh_margin``
of its TTL left gets a replacement started first (``Decision.replace``; the
daemon labels the new agent with ``replaces=<old id>`` and reports it back as
``PoolAgent.replaces``); once the replacement is ready the old agent is
drained (``Decision.retire``). The link lives in the observation, not here,
so it survives a daemon restart. With no room under ``max`` the old agent is
drained first, one at a time and only while no other hand-over is under way,
and the ordinary scale-up rule starts its successor once it has exited: the
pool never exceeds ``max`` and is never more than one slot short. An agent
the pool no longer needs (capacity above ``desired``) gets no successor.

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

# Upper bounds of the options a user sets (Invariant 10: every piece of state has a bound; and a count must fit
# a SQLite integer where a deployment is stored).
MAX_AGENTS = 1000  # agents of one deployment, all on one VM
MAX_TASKS_PER_AGENT = 10_000  # a whole queue (task_queue.MAX_PENDING): beyond it the formula cannot change
MAX_SCALE_DOWN_WINDOW = 3600.0  # as Kubernetes' HPA: the window's history is kept in memory


def _check_count(name: str, value: object, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, not {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be at most {high}, not {value!r}")


def _check_seconds(name: str, value: object, high: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
    if value > high:
        raise ValueError(f"{name} must be at most {high:g} seconds, not {value!r}")


@dataclass(frozen=True)
class ScalingPolicy:
    """A deployment's scaling options (``--min``, ``--max``, ``--warm``, ``--tasks-per-agent``, ...).

    ``warm`` idle agents are kept ready beyond the busy ones, within ``max``.
    ``refresh_min_seconds`` and ``refresh_fraction`` say when an idle agent
    is near its TTL (see ``refresh_margin``).
    """

    min: int = 0
    max: int = 10
    warm: int = 0
    tasks_per_agent: int = 5
    scale_down_window: float = 300.0
    scale_down_step_seconds: float = 60.0
    refresh_min_seconds: float = 60.0
    refresh_fraction: float = 0.1

    def __post_init__(self) -> None:
        _check_count("min", self.min, 0)
        # max 0 would leave the queue to grow for ever; stopping a deployment is its own verb.
        _check_count("max", self.max, 1, MAX_AGENTS)
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        _check_count("warm", self.warm, 0)
        if self.warm > self.max:
            raise ValueError(f"warm ({self.warm}) must be within max ({self.max})")
        _check_count("tasks_per_agent", self.tasks_per_agent, 1, MAX_TASKS_PER_AGENT)
        _check_seconds("scale_down_window", self.scale_down_window, MAX_SCALE_DOWN_WINDOW)
        for name in ("scale_down_step_seconds", "refresh_min_seconds"):
            _check_seconds(name, getattr(self, name))
        if isinstance(self.refresh_fraction, bool) or not (
            isinstance(self.refresh_fraction, int | float) and 0 <= self.refresh_fraction < 1
        ):
            raise ValueError(f"refresh_fraction must be a number from 0 to below 1, not {self.refresh_fraction!r}")

    def clamp(self, count: int) -> int:
        return max(self.min, min(self.max, count))

    def refresh_margin(self, ttl: float) -> float:
        """How long before its deadline an idle agent is replaced: ``max(60 s, 10 % of its TTL)``.

        At most half the TTL: with a TTL of 60 s or less every agent would be
        "near" from its spawn on and the pool would replace itself for ever.
        """
        return min(max(self.refresh_min_seconds, self.refresh_fraction * ttl), ttl / 2)

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
    replaces: str | None = None  # the idle agent this one was started to replace

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

    def replacements(self) -> dict[str, PoolAgent]:
        """Idle agent id -> the live, not draining agent started to replace it."""
        idle = {a.id for a in self.agents if a.idle}
        return {a.replaces: a for a in self.agents if a.replaces in idle and not a.draining}

    @property
    def capacity(self) -> int:
        """Agents that take tasks, counting an idle agent and its replacement as one."""
        return sum(1 for a in self.agents if not a.draining) - len(self.replacements())

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
    ``start`` new agents; ``replace``: start one new agent per id, labelled as
    its replacement; ``drain``: idle agents drained to scale down;
    ``retire``: idle agents drained because of their TTL.
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
    replace: tuple[str, ...] = ()
    drain: tuple[str, ...] = ()
    retire: tuple[str, ...] = ()
    reason: str = ""

    @property
    def acts(self) -> bool:
        """Whether there is anything to do (record an event only then)."""
        return bool(self.start or self.replace or self.drain or self.retire)

    def to_json(self) -> dict[str, Any]:
        return {
            "now": self.now, "policy": self.policy.to_json(), "observation": self.observation.to_json(),
            "raw": self.raw, "wanted": self.wanted, "stabilized": self.stabilized, "desired": self.desired,
            "current": self.current, "start": self.start, "replace": list(self.replace),
            "drain": list(self.drain), "retire": list(self.retire), "reason": self.reason,
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
        replacements = obs.replacements()

        start = min(max(0, desired - current), room)
        room -= start
        drain: list[str] = []
        if desired < current and self._step_allows(now):
            # Nearest its TTL first: it would need replacing soonest, and a newer agent has the most life left.
            candidates = sorted((a for a in obs.agents if a.idle and a.id not in replacements),
                                key=lambda a: (a.deadline, a.id))
            if candidates:
                drain.append(candidates[0].id)
                self.last_scale_down = now

        renew: list[str] = []
        retire = [old for old, new in sorted(replacements.items()) if new.ready]
        near = sorted((a for a in obs.agents if a.idle and a.id not in replacements and a.id not in drain
                       and a.deadline - now < policy.refresh_margin(a.deadline - a.started_at)),
                      key=lambda a: (a.deadline, a.id))
        surplus = max(0, current - len(drain) - desired)
        for agent in near:
            if surplus:  # a slot the pool no longer needs: the scale down (or the TTL) takes it, no successor
                surplus -= 1
            elif room > 0:
                renew.append(agent.id)
                room -= 1
            elif not (renew or replacements or drain or retire or obs.draining):
                # No room: drain first, and only while no other hand-over is under way, so the pool
                # is never more than one slot short; the next near agent waits for a later tick.
                retire.append(agent.id)

        decision = Decision(now, policy, obs, raw, wanted, stabilized, desired, current,
                            start, tuple(renew), tuple(drain), tuple(retire))
        return dataclasses.replace(decision, reason=_reason(decision, replacements))

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


def _reason(d: Decision, replacements: dict[str, PoolAgent]) -> str:
    """The event's sentence: the main move with its inputs, then each TTL refresh."""
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
        idle = any(a.idle and a.id not in replacements for a in obs.agents)
        why = f"one agent per {p.scale_down_step_seconds:g} s" if idle else f"no idle agent, {obs.busy} busy"
        reason = f"scale down {d.current} -> {d.desired} waits ({why}); {inputs}"
    elif d.wanted < d.current:
        reason = (f"holding {d.current}: wanted {d.wanted} has not stayed below {d.current} "
                  f"for {p.scale_down_window:g} s; {inputs}")
    else:
        reason = f"holding {d.current}: {inputs}"
    deadlines = {a.id: a.deadline for a in obs.agents}
    for old in d.replace:
        reason += f"; replacing {old} ({deadlines[old] - d.now:g} s of TTL left)"
    for old in d.retire:
        if old in replacements:
            reason += f"; retiring {old} (replaced by {replacements[old].id})"
        else:
            reason += f"; retiring {old} before its replacement (no room under max {p.max})"
    return reason
