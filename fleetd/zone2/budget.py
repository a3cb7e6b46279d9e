"""Budget windows and reservations: pure, single-threaded, with an injected clock.

Money is integer nano-USD. Before a metered request is forwarded, its upper-bound
cost is reserved against every window that applies (the agent's UTC day and
calendar month, and the instance's when capped, the task's the agent holds
when it has a cap, and the spend pool's the agent is registered with) in one
step: either it fits all of them and is reserved in all, or nothing changes.
Zone 2 runs one event loop, so a call to :meth:`Budgets.reserve` is atomic with
respect to every other request. When usage arrives the reservation settles to
the real cost and the rest is released; spend is counted in the windows of the
moment the request was reserved (so a call that straddles midnight is billed to
the day it started).

A task's window never resets: it holds the spend of all the task's attempts,
whichever agents made them (loaded from the ledger when zone 2 first meets the
task, see :meth:`Budgets.load_task`), and stays in memory while an agent holds
the task or a call made for it is in flight.

A spend pool's window (a canary version's cap: every agent registered with the
pool spends from it) never resets either: loaded from the ledger when zone 2
first meets the pool (:meth:`Budgets.load_pool`), it stays in memory while a
registration names the pool (:meth:`Budgets.keep_pools`) or a call of its is in
flight.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict

from fleetd.units import format_usd

if TYPE_CHECKING:
    from fleetd.zone2.contract import PoolCap

INSTANCE = "*instance*"  # the pseudo-agent whose windows are the instance's caps


@dataclass(frozen=True)
class Caps:
    """Limits for one agent (or the instance); ``None`` means no cap."""

    daily_nusd: int | None = None
    monthly_nusd: int | None = None
    max_llm_calls: int | None = None


def day_key(at: datetime) -> str:
    at = at.astimezone(UTC)
    return f"{at.year:04d}-{at.month:02d}-{at.day:02d}"


def month_key(at: datetime) -> str:
    at = at.astimezone(UTC)
    return f"{at.year:04d}-{at.month:02d}"


def day_reset(at: datetime) -> datetime:
    """The next UTC midnight after ``at``."""
    at = at.astimezone(UTC)
    return datetime(at.year, at.month, at.day, tzinfo=UTC) + timedelta(days=1)


def month_reset(at: datetime) -> datetime:
    """The first instant of the next calendar month (UTC) after ``at``."""
    at = at.astimezone(UTC)
    return datetime(at.year + at.month // 12, at.month % 12 + 1, 1, tzinfo=UTC)


class Spend(TypedDict):
    """An agent's (or the instance's) spend and calls now: its windows of today and this month."""

    spent_today_nusd: int
    spent_month_nusd: int
    reserved_nusd: int
    llm_calls: int
    inflight_calls: int


@dataclass(frozen=True)
class TaskCap:
    """The task a call is made for, and its cap on spend over all its attempts."""

    task_id: str
    max_nusd: int


@dataclass(frozen=True)
class Refusal:
    """Why a request cannot be admitted: ``budget_exceeded``, ``max_llm_calls_exceeded`` or
    ``task_budget_exceeded``."""

    type: str
    message: str
    retry_after: int | None  # seconds until the refusing window resets; None when waiting cannot help
    data: Mapping[str, Any] = field(default_factory=dict)  # figures for the refusal's event


@dataclass
class Reservation:
    id: int
    agent_id: str
    amount: int  # nano-USD held
    day: str
    month: str
    at: datetime
    settled: bool = False
    task_id: str | None = None  # the task whose window it is held against too
    pool: str | None = None  # the spend pool whose window it is held against too


@dataclass
class _Windows:
    spent: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # day or month key -> nano-USD
    reserved: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    calls: int = 0  # metered calls admitted, lifetime
    inflight_calls: int = 0


@dataclass
class _Total:
    """A window that never resets (a task's, a spend pool's): all its spend, and what its calls in flight hold."""

    spent: int = 0
    reserved: int = 0
    calls: int = 0  # settled
    inflight_calls: int = 0


class _Lasting:
    """Windows that never reset, by key (tasks by id, spend pools by key). Each is in memory from :meth:`load` (its
    spend so far, from the ledger) until it is released and no call held against it is in flight: the ledger then
    has all of its spend, for the next load."""

    def __init__(self) -> None:
        self.totals: dict[str, _Total] = {}
        self.released: set[str] = set()  # keys of totals nobody holds: dropped once no call of theirs is in flight

    def load(self, key: str, spent: int, calls: int) -> None:
        self.totals[key] = _Total(spent, calls=calls)
        self.released.discard(key)

    def release(self, key: str) -> None:
        total = self.totals.get(key)
        if total is None:
            return
        if total.inflight_calls:
            self.released.add(key)
        else:
            del self.totals[key]

    def hold(self, key: str, amount: int) -> None:
        total = self.totals[key]
        total.reserved += amount
        total.inflight_calls += 1

    def settle(self, key: str, amount: int, cost: int) -> None:
        """A call held against ``key`` is over: ``cost`` is spent, the rest of ``amount`` released."""
        total = self.totals.get(key)
        if total is None:
            return
        total.reserved -= amount
        total.inflight_calls -= 1
        total.calls += 1
        total.spent += cost
        if not total.inflight_calls and key in self.released:
            self.released.discard(key)
            del self.totals[key]

    def status(self, key: str) -> tuple[int, int] | None:
        total = self.totals.get(key)
        return None if total is None else (total.spent, total.reserved)


class Budgets:
    """Spend, reservations and call counts per agent, plus the instance."""

    def __init__(self, clock: Callable[[], datetime], instance_caps: Caps | None = None) -> None:
        self.clock = clock
        self.instance_caps = instance_caps or Caps()
        self._agents: dict[str, _Windows] = defaultdict(_Windows)
        self._ids = itertools.count(1)
        self._open: dict[int, Reservation] = {}
        self._tasks = _Lasting()  # by task id, for tasks with a cap
        self._pools = _Lasting()  # by pool key

    # -- history ---------------------------------------------------------------
    # Zone 2 keeps in memory the windows of the agents it serves, not of every agent the ledger names: the
    # instance's are loaded at start, an agent's when it first asks (``load_agent``), and dropped when it is gone
    # for good (``forget``). Its spend stays in the ledger.
    def load(self, rows: Iterable[tuple[str, datetime, int]]) -> None:
        """The instance's spend already made (agent, when, nano-USD), e.g. from the ledger after a restart."""
        for _agent_id, at, cost in rows:
            self._add(self._agents[INSTANCE], day_key(at), month_key(at), cost)
            self._agents[INSTANCE].calls += 1

    def load_calls(self, counts: dict[str, int]) -> None:
        """The instance's calls made before the loaded history (they count against no window)."""
        self._agents[INSTANCE].calls += sum(counts.values())

    def known(self, agent_id: str) -> bool:
        return agent_id in self._agents

    def load_agent(self, agent_id: str, rows: Iterable[tuple[datetime, int]], earlier_calls: int) -> None:
        """One agent's spend this month (when, nano-USD) and its calls before it: read before its first call."""
        windows = self._agents[agent_id]
        for at, cost in rows:
            self._add(windows, day_key(at), month_key(at), cost)
            windows.calls += 1
        windows.calls += earlier_calls

    def forget(self, agent_id: str) -> bool:
        """Drop an agent's windows (it is gone for good); kept while a call of its is in flight."""
        windows = self._agents.get(agent_id)
        if agent_id == INSTANCE or windows is None or windows.inflight_calls:
            return False
        del self._agents[agent_id]
        return True

    def task_known(self, task_id: str) -> bool:
        return task_id in self._tasks.totals

    def load_task(self, task_id: str, spent: int, calls: int) -> None:
        """A task's spend and calls so far, all its attempts together (from the ledger): read before its first call
        here is admitted."""
        self._tasks.load(task_id, spent, calls)

    def release_task(self, task_id: str) -> None:
        """No agent holds the task any more: its window leaves memory, once no call made for it is in flight (the
        ledger has its spend, for the next agent that holds it)."""
        self._tasks.release(task_id)

    def task_status(self, task_id: str) -> tuple[int, int] | None:
        """A task's (spent, reserved) nano-USD, while it is in memory."""
        return self._tasks.status(task_id)

    def pool_known(self, key: str) -> bool:
        return key in self._pools.totals

    def load_pool(self, key: str, spent: int, calls: int) -> None:
        """A spend pool's spend and calls so far, all its agents' and all time (from the ledger): read before its
        first call here is admitted."""
        self._pools.load(key, spent, calls)

    def keep_pools(self, keys: Collection[str]) -> None:
        """The pools the live registrations name: the others leave memory, each once no call of its is in flight
        (the ledger has their spend, for when a registration names one again)."""
        for key in list(self._pools.totals):
            if key in keys:
                self._pools.released.discard(key)
            else:
                self._pools.release(key)

    def pool_status(self, key: str) -> tuple[int, int] | None:
        """A spend pool's (spent, reserved) nano-USD, while it is in memory."""
        return self._pools.status(key)

    @staticmethod
    def _add(windows: _Windows, day: str, month: str, cost: int) -> None:
        windows.spent[day] += cost
        windows.spent[month] += cost

    def _charge(self, agent_id: str, day: str, month: str, cost: int) -> None:
        for who in (agent_id, INSTANCE):
            self._add(self._agents[who], day, month, cost)

    @staticmethod
    def _prune(windows: _Windows, day: str, month: str) -> None:
        """Forget windows that have closed (yesterday's, last month's) once nothing is reserved in them."""
        for key in [k for k in windows.spent if k not in (day, month) and not windows.reserved.get(k)]:
            del windows.spent[key]
        for key in [k for k, v in windows.reserved.items() if k not in (day, month) and not v]:
            del windows.reserved[key]

    # -- admission -------------------------------------------------------------
    def reserve(self, agent_id: str, caps: Caps, amount: int, task: TaskCap | None = None,
                pool: PoolCap | None = None) -> Reservation | Refusal:
        """Hold ``amount`` against every window, and one call against the maximum; or refuse. ``task``: the task the
        call is made for, whose window (:meth:`load_task` first) must hold it too; ``pool``: the spend pool the agent
        is registered with, likewise (:meth:`load_pool` first).

        A task's cap and a pool's are checked before the agent's and the instance's windows: they never reset, so
        the agent learns at once that waiting cannot help (it should give the task up), rather than after a window's
        reset. An uncapped pool holds nothing here."""
        if pool is not None and pool.cap_nusd is None:
            pool = None
        now = self.clock()
        day, month = day_key(now), month_key(now)
        agent = self._agents[agent_id]
        if len(agent.spent) > 2:
            self._prune(agent, day, month)
        if len(self._agents[INSTANCE].spent) > 2:
            self._prune(self._agents[INSTANCE], day, month)
        if caps.max_llm_calls is not None and agent.calls + agent.inflight_calls >= caps.max_llm_calls:
            return Refusal("max_llm_calls_exceeded",
                           f"this agent has used its {caps.max_llm_calls} LLM calls", None)
        refusal = (self._task_refusal(task, amount) or self._pool_refusal(pool, amount)
                   or self._window_refusal(agent, caps, amount, now))
        if refusal is not None:
            return refusal
        for windows in (agent, self._agents[INSTANCE]):
            windows.reserved[day] += amount
            windows.reserved[month] += amount
            windows.inflight_calls += 1
        if task is not None:
            self._tasks.hold(task.task_id, amount)
            self._tasks.released.discard(task.task_id)  # held again
        if pool is not None:
            self._pools.hold(pool.key, amount)
        reservation = Reservation(next(self._ids), agent_id, amount, day, month, now,
                                  task_id=None if task is None else task.task_id,
                                  pool=None if pool is None else pool.key)
        self._open[reservation.id] = reservation
        return reservation

    def _task_refusal(self, task: TaskCap | None, amount: int) -> Refusal | None:
        """``task_budget_exceeded`` when ``amount`` does not fit the task's cap, all its attempts together."""
        if task is None:
            return None
        total = self._tasks.totals[task.task_id]
        spent, reserved = total.spent, total.reserved
        if spent + reserved + amount <= task.max_nusd:
            return None
        return Refusal(
            "task_budget_exceeded",
            f"task {task.task_id}'s budget of {format_usd(task.max_nusd / 1e9)} would be exceeded: "
            f"{format_usd((spent + reserved) / 1e9)} spent or reserved over its attempts, this request may "
            f"cost up to {format_usd(amount / 1e9)}",
            None,
            {"task": task.task_id, "max_usd": _usd(task.max_nusd), "spent_usd": _usd(spent),
             "reserved_usd": _usd(reserved), "request_usd": _usd(amount)},
        )

    def _pool_refusal(self, pool: PoolCap | None, amount: int) -> Refusal | None:
        """``budget_exceeded`` when ``amount`` does not fit the spend pool's cap, all its agents' spend of all time
        together: no Retry-After, since it never resets."""
        if pool is None or pool.cap_nusd is None:
            return None
        total = self._pools.totals[pool.key]
        spent, reserved = total.spent, total.reserved
        if spent + reserved + amount <= pool.cap_nusd:
            return None
        return Refusal(
            "budget_exceeded",
            f"the canary version's spend cap of {format_usd(pool.cap_nusd / 1e9)} (pool {pool.key}) would be "
            f"exceeded: {format_usd((spent + reserved) / 1e9)} spent or reserved by its agents, this request may "
            f"cost up to {format_usd(amount / 1e9)}",
            None,
            {"pool": pool.key, "max_usd": _usd(pool.cap_nusd), "spent_usd": _usd(spent),
             "reserved_usd": _usd(reserved), "request_usd": _usd(amount)},
        )

    def _window_refusal(self, agent: _Windows, caps: Caps, amount: int, now: datetime) -> Refusal | None:
        """``budget_exceeded`` when ``amount`` does not fit the agent's or the instance's day or month; Retry-After
        is when the refusing window resets."""
        day, month = day_key(now), month_key(now)
        checks = [(agent, caps, "this agent's"), (self._agents[INSTANCE], self.instance_caps, "the instance's")]
        for windows, limits, whose in checks:
            for cap, key, label, reset in ((limits.daily_nusd, day, "daily", day_reset),
                                           (limits.monthly_nusd, month, "monthly", month_reset)):
                if cap is None:
                    continue
                committed = windows.spent[key] + windows.reserved[key]
                if committed + amount > cap:
                    retry = max(1, int((reset(now) - now).total_seconds() + 0.999))
                    return Refusal(
                        "budget_exceeded",
                        f"{whose} {label} budget of {format_usd(cap / 1e9)} would be exceeded: "
                        f"{format_usd(committed / 1e9)} spent or reserved, this request may cost up to "
                        f"{format_usd(amount / 1e9)}",
                        retry,
                    )
        return None

    def settle(self, reservation: Reservation, cost: int) -> None:
        """The request's real cost is known: charge it, release the reservation, count the call."""
        if reservation.settled:
            return
        reservation.settled = True
        self._open.pop(reservation.id, None)
        for who in (reservation.agent_id, INSTANCE):
            windows = self._agents[who]
            windows.reserved[reservation.day] -= reservation.amount
            windows.reserved[reservation.month] -= reservation.amount
            windows.inflight_calls -= 1
            windows.calls += 1
        self._charge(reservation.agent_id, reservation.day, reservation.month, cost)
        if reservation.task_id is not None:
            self._tasks.settle(reservation.task_id, reservation.amount, cost)
        if reservation.pool is not None:
            self._pools.settle(reservation.pool, reservation.amount, cost)

    # -- reading ---------------------------------------------------------------
    def status(self, agent_id: str) -> Spend:
        now = self.clock()
        windows = self._agents.get(agent_id) or _Windows()
        day, month = day_key(now), month_key(now)
        return {
            "spent_today_nusd": windows.spent.get(day, 0),
            "spent_month_nusd": windows.spent.get(month, 0),
            "reserved_nusd": sum(r.amount for r in self._open.values() if agent_id in (r.agent_id, INSTANCE)),
            "llm_calls": windows.calls,
            "inflight_calls": windows.inflight_calls,
        }

    def instance_status(self) -> Spend:
        return self.status(INSTANCE)

    def agents(self) -> list[str]:
        return sorted(a for a in self._agents if a != INSTANCE)


def _usd(amount_nusd: int) -> float:
    return round(amount_nusd / 1e9, 9)
