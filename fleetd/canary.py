"""A canary's routing and verdict as pure decisions: no Docker, no queue, no clock (issue 17).

A canary runs a deployment's new version beside its current one. Two questions, both answered here:

- **Which version gets a newly queued task?** ``routes_to_canary(seed, position, percent)``: the task's
  ``position`` counts the deployment's tasks queued since the canary started (0, 1, 2 ...). Positions are
  taken in blocks of 100; in each block exactly ``percent`` positions, drawn at random from a generator seeded
  with the deployment's seed and the block's number, go to the canary. So each task's version is random (a
  client cannot time its tasks onto one version), the same seed gives the same split (reproducible tests), a
  daemon restart changes nothing (no generator state to lose: the position is the queue's), and over any
  whole number of blocks the canary's share is exactly ``percent`` (over 1,000 tasks, never off by 2 points,
  whatever the seed; a coin per task would be off by more than that one time in five at 50 %).
- **Promote, roll back, or wait?** ``judge(canary, current, policy, canary_spent_usd)`` compares what the two
  versions' tasks did over the same period (the caller counts the current version's tasks finished since the
  canary started). After ``promote_after`` canary tasks have finished: roll back when the canary's error rate
  (failed and dead over finished) exceeds the current's by more than ``max_error_rate_increase`` (absolute),
  its cost per succeeded task by more than ``max_cost_increase`` (relative), or its median duration of a
  succeeded task by more than ``max_duration_increase`` (relative); else promote. Before that, roll back early
  when the result is already certain: even were every canary task still to finish to succeed, its error rate
  at ``promote_after`` would exceed the bound (against the current version's rate as it stands). A canary
  whose spend has reached ``max_usd`` is rolled back at once.

Every verdict carries its reason with the numbers and both versions' figures, for the event that records it.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleetd.task_queue import Task

BLOCK = 100  # positions per block of the split: ``percent`` of each go to the canary
MIN_PERCENT, MAX_PERCENT = 1, 50
MAX_PROMOTE_AFTER = 100_000  # canary tasks to wait for: a whole queue (task_queue.MAX_PENDING) and more


def routes_to_canary(seed: str, position: int, percent: int) -> bool:
    """Whether the deployment's task at ``position`` (0-based, counted from the canary's start) goes to the
    canary: ``percent`` positions of every block of 100, drawn at random with ``seed`` and the block's number."""
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise ValueError(f"position must be an integer >= 0, not {position!r}")
    _check_percent(percent)
    block, place = divmod(position, BLOCK)
    # random.Random seeded with bytes is stable across runs and Python versions (unlike hash() of a str).
    digest = hashlib.sha256(f"{seed}\0{block}".encode()).digest()
    return place in random.Random(digest).sample(range(BLOCK), percent)


def _check_percent(percent: object) -> None:
    if isinstance(percent, bool) or not isinstance(percent, int) or not MIN_PERCENT <= percent <= MAX_PERCENT:
        raise ValueError(f"canary percent must be an integer from {MIN_PERCENT} to {MAX_PERCENT}, not {percent!r}")


def _check_fraction(name: str, value: object, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, not {value!r}")
    if not 0 <= value <= high:
        raise ValueError(f"{name} must be from 0 to {high:g}, not {value!r}")


@dataclass(frozen=True)
class CanaryPolicy:
    """``fleetd deploy NAME --canary PCT``'s options, with the issue's defaults."""

    percent: int
    promote_after: int = 100
    max_error_rate_increase: float = 0.05  # absolute: 0.05 = five points
    max_cost_increase: float = 0.20  # relative, cost per succeeded task
    max_duration_increase: float = 0.50  # relative, median duration of a succeeded task
    max_usd: float | None = None  # the canary version's total spend

    def __post_init__(self) -> None:
        _check_percent(self.percent)
        if (isinstance(self.promote_after, bool) or not isinstance(self.promote_after, int)
                or not 1 <= self.promote_after <= MAX_PROMOTE_AFTER):
            raise ValueError(f"promote-after must be an integer from 1 to {MAX_PROMOTE_AFTER}, "
                             f"not {self.promote_after!r}")
        _check_fraction("max-error-rate-increase", self.max_error_rate_increase, 1.0)
        _check_fraction("max-cost-increase", self.max_cost_increase, 1000.0)
        _check_fraction("max-duration-increase", self.max_duration_increase, 1000.0)
        usd = self.max_usd
        if usd is not None and (isinstance(usd, bool) or not isinstance(usd, int | float)
                                or not math.isfinite(usd) or usd <= 0):
            raise ValueError(f"canary-max-usd must be a number of dollars > 0, not {usd!r}")

    def to_json(self) -> dict[str, Any]:
        return {"percent": self.percent, "promote_after": self.promote_after,
                "max_error_rate_increase": self.max_error_rate_increase,
                "max_cost_increase": self.max_cost_increase, "max_duration_increase": self.max_duration_increase,
                "max_usd": self.max_usd}


def median(values: tuple[float, ...]) -> float | None:
    """The middle value (the mean of the two middle ones for an even count); None for none."""
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


@dataclass(frozen=True)
class VersionFigures:
    """What one version's tasks did over the period compared: finished tasks only (cancelled ones do not count:
    nobody's fault). Cost per succeeded task is what all of them cost over the successes: a version that spends on
    tasks it then fails pays for them in this figure."""

    succeeded: int = 0
    failed: int = 0
    dead: int = 0
    cost_usd: float = 0.0  # LLM spend of all its finished tasks
    durations: tuple[float, ...] = field(default=())  # s from first lease to success, one per succeeded task
    llm_calls: int = 0  # of all its finished tasks

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.dead

    @property
    def errors(self) -> int:
        return self.failed + self.dead

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.finished if self.finished else None

    @property
    def cost_per_success(self) -> float | None:
        return self.cost_usd / self.succeeded if self.succeeded else None

    @property
    def median_duration(self) -> float | None:
        return median(self.durations)

    def to_json(self, detail: bool = False) -> dict[str, Any]:
        """The figures; with ``detail`` (``deploy inspect``'s per-version view) p95 and LLM calls per task too."""
        data = {"succeeded": self.succeeded, "failed": self.failed, "dead": self.dead, "finished": self.finished,
                "error_rate": self.error_rate, "cost_per_succeeded_usd": self.cost_per_success,
                "p50_duration_seconds": self.median_duration}
        if detail:
            data["p95_duration_seconds"] = quantile(self.durations, 0.95)
            data["llm_calls_per_task"] = self.llm_calls / self.finished if self.finished else None
        return data


def quantile(values: tuple[float, ...], q: float) -> float | None:
    """The ``q`` quantile, linear between the two nearest values (numpy's default); None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def version_figures(tasks: Iterable[Task], costs: Mapping[str, tuple[int, int]]) -> VersionFigures:
    """The figures of ``tasks`` (finished ones: those cancelled are left out), with ``costs``: task id -> (nUSD,
    LLM calls) of each."""
    states: dict[str, int] = {"succeeded": 0, "failed": 0, "dead": 0}
    spent = calls = 0
    durations = []
    for task in tasks:
        if task.state.value not in states:
            continue
        states[task.state.value] += 1
        cost, made = costs.get(task.id, (0, 0))
        spent, calls = spent + cost, calls + made
        if task.state.value == "succeeded" and task.started_at and task.finished_at:
            durations.append(max(0.0, (datetime.fromisoformat(task.finished_at)
                                       - datetime.fromisoformat(task.started_at)).total_seconds()))
    return VersionFigures(states["succeeded"], states["failed"], states["dead"], spent / 1e9, tuple(durations), calls)


class Action(StrEnum):
    WAIT = "wait"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str
    canary: VersionFigures
    current: VersionFigures
    policy: CanaryPolicy
    canary_spent_usd: float

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action.value, "reason": self.reason, "canary": self.canary.to_json(),
                "current": self.current.to_json(), "policy": self.policy.to_json(),
                "canary_spent_usd": self.canary_spent_usd}


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f} %"


def judge(canary: VersionFigures, current: VersionFigures, policy: CanaryPolicy,
          canary_spent_usd: float = 0.0) -> Verdict:
    """Promote, roll back, or wait; the reason names the numbers it was decided on."""

    def verdict(action: Action, reason: str) -> Verdict:
        return Verdict(action, reason, canary, current, policy, canary_spent_usd)

    if policy.max_usd is not None and canary_spent_usd >= policy.max_usd:
        return verdict(Action.ROLLBACK, f"the canary spent ${canary_spent_usd:.4f}, its cap is "
                                        f"${policy.max_usd:.4f}")
    base_rate = current.error_rate or 0.0  # no finished task of the current version: judged against none failing
    bound = base_rate + policy.max_error_rate_increase
    n = policy.promote_after
    if canary.finished < n:
        # The lowest error rate the canary can still have at n finished tasks: all the rest succeed.
        if canary.errors / n > bound:
            return verdict(Action.ROLLBACK, f"{canary.errors} of the canary's {canary.finished} finished tasks "
                                            f"failed: at {n} its error rate is at least {_pct(canary.errors / n)}, "
                                            f"more than {_pct(base_rate)} (current) + "
                                            f"{_pct(policy.max_error_rate_increase)}")
        return verdict(Action.WAIT, f"{canary.finished} of {n} canary tasks finished")
    rate = canary.errors / canary.finished
    if rate > bound:
        return verdict(Action.ROLLBACK, f"error rate {_pct(rate)} on the canary vs {_pct(base_rate)} on the "
                                        f"current version: more than {_pct(policy.max_error_rate_increase)} higher")
    notes = []
    for what, ours, theirs, bound, show, more in (
            ("cost per succeeded task", canary.cost_per_success, current.cost_per_success, policy.max_cost_increase,
             "${:.6f}", "higher"),
            ("p50 duration", canary.median_duration, current.median_duration, policy.max_duration_increase,
             "{:.3f} s", "longer")):
        if ours is None or theirs is None:
            notes.append(f"{'cost' if what.startswith('cost') else 'duration'} not compared (a version has no "
                         "succeeded task)")
            continue
        if ours > theirs * (1 + bound) + 1e-12:
            return verdict(Action.ROLLBACK, f"{what} {show.format(ours)} on the canary vs {show.format(theirs)} on "
                                            f"the current version: more than {bound * 100:g} % {more}")
        notes.append(f"{what} {show.format(ours)} vs {show.format(theirs)}")
    return verdict(Action.PROMOTE, f"{canary.finished} canary tasks finished: error rate {_pct(rate)} vs "
                                   f"{_pct(base_rate)}, " + ", ".join(notes))
