"""Budget windows, reservations, the breaker and the retry policy, with an injected clock."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from fleetd.zone2.breaker import (
    Admit,
    Breaker,
    BreakerSettings,
    BreakerState,
    Reject,
    RetrySettings,
    parse_retry_after,
    retry_delay,
)
from fleetd.zone2.budget import Budgets, Caps, Refusal, Reservation, TaskCap, day_reset, month_reset
from fleetd.zone2.contract import PoolCap

USD = 1_000_000_000


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def reserve(budgets: Budgets, agent: str, caps: Caps, amount: int) -> Reservation:
    held = budgets.reserve(agent, caps, amount)
    assert isinstance(held, Reservation), held
    return held


def test_reservations_never_let_committed_money_pass_the_cap() -> None:
    budgets = Budgets(Clock(datetime(2026, 11, 26, 12, tzinfo=UTC)))
    caps = Caps(daily_nusd=10 * USD, monthly_nusd=100 * USD)
    held = [budgets.reserve("a", caps, 3 * USD) for _ in range(5)]
    assert [isinstance(h, Reservation) for h in held] == [True, True, True, False, False]
    refusal = held[3]
    assert isinstance(refusal, Refusal) and refusal.type == "budget_exceeded"
    assert "daily" in refusal.message
    assert budgets.status("a")["reserved_nusd"] == 9 * USD
    # settling below the bound releases the rest: another call fits now
    for h in held[:3]:
        assert isinstance(h, Reservation)
        budgets.settle(h, 1 * USD)
    assert budgets.status("a") | {} == {"spent_today_nusd": 3 * USD, "spent_month_nusd": 3 * USD,
                                        "reserved_nusd": 0, "llm_calls": 3, "inflight_calls": 0}
    assert isinstance(budgets.reserve("a", caps, 7 * USD), Reservation)
    assert isinstance(budgets.reserve("a", caps, 1), Refusal)


def test_settling_twice_is_harmless_and_agents_are_separate() -> None:
    budgets = Budgets(Clock(datetime(2026, 11, 26, tzinfo=UTC)))
    caps = Caps(daily_nusd=5 * USD)
    a = reserve(budgets, "a", caps, 5 * USD)
    reserve(budgets, "b", caps, 5 * USD)  # b has its own window
    budgets.settle(a, 2 * USD)
    budgets.settle(a, 2 * USD)
    assert budgets.status("a")["spent_today_nusd"] == 2 * USD
    assert budgets.status("a")["llm_calls"] == 1
    assert budgets.instance_status()["spent_today_nusd"] == 2 * USD
    assert budgets.instance_status()["reserved_nusd"] == 5 * USD


def test_day_window_resets_at_utc_midnight_and_retry_after_says_when() -> None:
    clock = Clock(datetime(2026, 11, 26, 23, 59, 30, tzinfo=UTC))
    budgets = Budgets(clock)
    caps = Caps(daily_nusd=1 * USD, monthly_nusd=100 * USD)
    budgets.settle(reserve(budgets, "a", caps, 1 * USD), 1 * USD)
    refusal = budgets.reserve("a", caps, 1)
    assert isinstance(refusal, Refusal) and refusal.retry_after == 30
    clock.at += timedelta(seconds=31)
    assert isinstance(budgets.reserve("a", caps, 1 * USD), Reservation)
    assert budgets.status("a")["spent_month_nusd"] == 1 * USD


def test_month_boundary_resets_the_month_and_a_call_is_billed_where_it_started() -> None:
    clock = Clock(datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC))
    budgets = Budgets(clock)
    caps = Caps(daily_nusd=None, monthly_nusd=10 * USD)
    budgets.settle(reserve(budgets, "a", caps, 9 * USD), 9 * USD)
    straddling = reserve(budgets, "a", caps, 1 * USD)  # started on the 30th ...
    refused = budgets.reserve("a", caps, 1)
    assert isinstance(refused, Refusal) and refused.retry_after == 1 and "monthly" in refused.message
    clock.at = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
    budgets.settle(straddling, 1 * USD)  # ... and settles on the 1st: November pays
    status = budgets.status("a")
    assert status["spent_month_nusd"] == 0 and status["spent_today_nusd"] == 0
    assert isinstance(budgets.reserve("a", caps, 10 * USD), Reservation)
    assert month_reset(datetime(2026, 12, 31, 12, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)
    assert day_reset(datetime(2026, 2, 28, 1, tzinfo=UTC)) == datetime(2026, 3, 1, tzinfo=UTC)


def test_instance_cap_binds_all_agents_together() -> None:
    budgets = Budgets(Clock(datetime(2026, 11, 26, tzinfo=UTC)), Caps(daily_nusd=4 * USD))
    caps = Caps(daily_nusd=3 * USD)
    reserve(budgets, "a", caps, 3 * USD)
    refusal = budgets.reserve("b", caps, 2 * USD)
    assert isinstance(refusal, Refusal) and "instance" in refusal.message


def test_max_llm_calls_counts_calls_in_flight_and_history() -> None:
    budgets = Budgets(Clock(datetime(2026, 11, 26, tzinfo=UTC)))
    budgets.load_agent("a", [], earlier_calls=2)
    caps = Caps(max_llm_calls=4)
    first = reserve(budgets, "a", caps, 0)
    reserve(budgets, "a", caps, 0)
    refusal = budgets.reserve("a", caps, 0)
    assert isinstance(refusal, Refusal) and refusal.type == "max_llm_calls_exceeded" and refusal.retry_after is None
    budgets.settle(first, 0)
    assert isinstance(budgets.reserve("a", caps, 0), Refusal)  # settled calls still count


def test_a_task_cap_holds_the_spend_of_all_its_attempts_and_never_resets() -> None:
    clock = Clock(datetime(2026, 11, 26, 23, tzinfo=UTC))
    budgets = Budgets(clock)
    budgets.load_task("t1", 2 * USD, 4)  # earlier attempts, from the ledger
    task = TaskCap("t1", 5 * USD)
    first = budgets.reserve("a", Caps(), 2 * USD, task)
    assert isinstance(first, Reservation) and budgets.task_status("t1") == (2 * USD, 2 * USD)
    refusal = budgets.reserve("b", Caps(), 1 * USD + 1, task)  # whichever agent holds it now
    assert isinstance(refusal, Refusal) and refusal.type == "task_budget_exceeded"
    assert refusal.retry_after is None and "task t1's budget of $5.0000" in refusal.message
    assert refusal.data == {"task": "t1", "max_usd": 5.0, "spent_usd": 2.0, "reserved_usd": 2.0,
                            "request_usd": 1.000000001}
    budgets.settle(first, USD // 2)  # the unused part of the bound goes back to the task too
    assert budgets.task_status("t1") == (2 * USD + USD // 2, 0)
    assert isinstance(budgets.reserve("b", Caps(), 2 * USD + USD // 2, task), Reservation)
    clock.at += timedelta(days=40)  # a new day and month: the agents' windows reset, the task's does not
    assert isinstance(budgets.reserve("b", Caps(), 1, task), Refusal)
    assert isinstance(budgets.reserve("b", Caps(), 1), Reservation)  # the agent's own calls, for no task, go on


def test_a_task_cap_is_checked_before_the_windows_that_reset() -> None:
    budgets = Budgets(Clock(datetime(2026, 11, 26, tzinfo=UTC)))
    budgets.load_task("t1", 0, 0)
    refusal = budgets.reserve("a", Caps(daily_nusd=USD), 2 * USD, TaskCap("t1", USD))
    assert isinstance(refusal, Refusal) and refusal.type == "task_budget_exceeded"  # waiting for midnight won't help
    refusal = budgets.reserve("a", Caps(daily_nusd=USD), 2 * USD, TaskCap("t1", 3 * USD))
    assert isinstance(refusal, Refusal) and refusal.type == "budget_exceeded"
    assert budgets.task_status("t1") == (0, 0)  # refused: nothing held anywhere
    assert budgets.status("a")["reserved_nusd"] == 0


def test_a_released_task_leaves_memory_once_its_calls_in_flight_settle() -> None:
    budgets = Budgets(Clock(datetime(2026, 11, 26, tzinfo=UTC)))
    budgets.load_task("t1", 0, 0)
    budgets.load_task("t2", 0, 0)
    in_flight = budgets.reserve("a", Caps(), USD, TaskCap("t1", 5 * USD))
    assert isinstance(in_flight, Reservation)
    budgets.release_task("t1")
    budgets.release_task("t2")
    assert (budgets.task_known("t1"), budgets.task_known("t2")) == (True, False)  # t1's call still counts
    budgets.settle(in_flight, USD)
    assert not budgets.task_known("t1")  # the ledger has it now
    budgets.release_task("t3")  # never known: nothing to do


def test_a_pool_cap_holds_the_spend_of_all_its_agents_and_never_resets() -> None:
    clock = Clock(datetime(2026, 11, 26, 23, tzinfo=UTC))
    budgets = Budgets(clock)
    budgets.load_pool("web:v2", USD, 3)  # spent before, from the ledger
    pool = PoolCap("web:v2", 5 * USD)
    first = budgets.reserve("a", Caps(), 2 * USD, pool=pool)
    second = budgets.reserve("b", Caps(), USD, pool=pool)  # another agent of the same pool
    assert isinstance(first, Reservation) and isinstance(second, Reservation)
    assert budgets.pool_status("web:v2") == (USD, 3 * USD)
    refusal = budgets.reserve("c", Caps(), USD + 1, pool=pool)
    assert isinstance(refusal, Refusal) and refusal.type == "budget_exceeded" and refusal.retry_after is None
    assert "the canary version's spend cap of $5.0000 (pool web:v2) would be exceeded" in refusal.message
    assert refusal.data == {"pool": "web:v2", "max_usd": 5.0, "spent_usd": 1.0, "reserved_usd": 3.0,
                            "request_usd": 1.000000001}
    assert budgets.status("c")["reserved_nusd"] == 0  # refused: nothing held anywhere
    budgets.settle(first, USD // 2)  # the unused part of the bound goes back to the pool too
    budgets.settle(second, USD)
    assert budgets.pool_status("web:v2") == (2 * USD + USD // 2, 0)
    assert isinstance(budgets.reserve("c", Caps(), 2 * USD + USD // 2, pool=pool), Reservation)
    clock.at += timedelta(days=40)  # a new day and month: the agents' windows reset, the pool's does not
    assert isinstance(budgets.reserve("c", Caps(), 1, pool=pool), Refusal)
    assert isinstance(budgets.reserve("c", Caps(), USD), Reservation)  # an agent without the pool is not its


def test_a_pool_cap_is_checked_before_the_windows_that_reset_and_after_a_tasks() -> None:
    budgets = Budgets(Clock(datetime(2026, 11, 26, tzinfo=UTC)))
    budgets.load_pool("web:v2", 0, 0)
    budgets.load_task("t1", 0, 0)
    refusal = budgets.reserve("a", Caps(daily_nusd=USD), 2 * USD, pool=PoolCap("web:v2", USD))
    assert isinstance(refusal, Refusal) and refusal.retry_after is None and "pool web:v2" in refusal.message
    refusal = budgets.reserve("a", Caps(), 2 * USD, TaskCap("t1", USD), PoolCap("web:v2", USD))
    assert isinstance(refusal, Refusal) and refusal.type == "task_budget_exceeded"
    refusal = budgets.reserve("a", Caps(daily_nusd=USD), 2 * USD, pool=PoolCap("web:v2", 3 * USD))
    assert isinstance(refusal, Refusal) and refusal.retry_after is not None and "daily" in refusal.message
    assert budgets.pool_status("web:v2") == (0, 0)


def test_pools_no_registration_names_leave_memory_once_their_calls_in_flight_settle() -> None:
    budgets = Budgets(Clock(datetime(2026, 11, 26, tzinfo=UTC)))
    for key in ("p1", "p2", "p3"):
        budgets.load_pool(key, 0, 0)
    in_flight = budgets.reserve("a", Caps(), USD, pool=PoolCap("p1", 5 * USD))
    assert isinstance(in_flight, Reservation)
    budgets.keep_pools({"p3"})
    assert [budgets.pool_known(k) for k in ("p1", "p2", "p3")] == [True, False, True]  # p1's call still counts
    budgets.settle(in_flight, USD)
    assert not budgets.pool_known("p1")  # the ledger has it now
    again = budgets.reserve("a", Caps(), USD, pool=PoolCap("p3", 5 * USD))
    assert isinstance(again, Reservation)
    budgets.keep_pools(set())
    budgets.keep_pools({"p3"})  # named again before its call settled: it stays
    budgets.settle(again, USD)
    assert budgets.pool_status("p3") == (USD, 0)


def test_history_loaded_after_a_restart_is_enforced() -> None:
    now = datetime(2026, 11, 26, 10, tzinfo=UTC)
    budgets = Budgets(Clock(now), Caps(daily_nusd=6 * USD))
    history = [("a", now - timedelta(hours=1), 4 * USD), ("a", now - timedelta(days=1), 5 * USD)]
    budgets.load(history)  # the instance's, at start
    assert not budgets.known("a")  # an agent's are read when it first asks
    budgets.load_agent("a", [(at, cost) for _, at, cost in history], earlier_calls=0)
    status = budgets.status("a")
    assert status["spent_today_nusd"] == 4 * USD and status["spent_month_nusd"] == 9 * USD
    assert status["llm_calls"] == 2
    assert isinstance(budgets.reserve("a", Caps(daily_nusd=5 * USD), 2 * USD), Refusal)
    refusal = budgets.reserve("b", Caps(), 3 * USD)  # the instance's history is enforced for every agent
    assert isinstance(refusal, Refusal) and "instance" in refusal.message


def test_an_agent_gone_for_good_leaves_memory_and_closed_windows_are_dropped() -> None:
    clock = Clock(datetime(2026, 11, 26, 10, tzinfo=UTC))
    budgets = Budgets(clock)
    held = reserve(budgets, "a", Caps(), USD)
    assert not budgets.forget("a")  # a call in flight: kept until it settles
    budgets.settle(held, USD)
    for day in range(40):  # a long-lived agent: a window per day it spent in
        clock.at = datetime(2026, 11, 26, 10, tzinfo=UTC) + timedelta(days=day)
        budgets.settle(reserve(budgets, "b", Caps(), USD), USD)
    assert len(budgets._agents["b"].spent) <= 3 and len(budgets._agents["b"].reserved) <= 3  # today, yesterday, month
    assert budgets.forget("a") and budgets.forget("b") and budgets.agents() == []
    assert budgets.instance_status()["llm_calls"] == 41  # the instance's count stays


def test_random_concurrent_reservations_never_exceed_any_cap() -> None:
    rng = random.Random(7)
    budgets = Budgets(Clock(datetime(2026, 11, 26, tzinfo=UTC)), Caps(daily_nusd=50 * USD))
    caps = Caps(daily_nusd=20 * USD, monthly_nusd=30 * USD)
    open_: list[Reservation] = []
    for _ in range(2000):
        if open_ and rng.random() < 0.5:
            held = open_.pop(rng.randrange(len(open_)))
            budgets.settle(held, rng.randint(0, held.amount))
        else:
            agent = rng.choice("abc")
            got = budgets.reserve(agent, caps, rng.randint(0, 2 * USD))
            if isinstance(got, Reservation):
                open_.append(got)
        for agent in "abc":
            s = budgets.status(agent)
            assert s["spent_today_nusd"] + s["reserved_nusd"] <= 20 * USD
            assert s["spent_month_nusd"] + s["reserved_nusd"] <= 30 * USD
        inst = budgets.instance_status()
        assert inst["spent_today_nusd"] + inst["reserved_nusd"] <= 50 * USD


# -- breaker -------------------------------------------------------------------


def trip(breaker: Breaker, now: float) -> None:
    for i in range(breaker.settings.threshold):
        admission = breaker.admit(now + i)
        assert isinstance(admission, Admit) and not admission.probe
        breaker.record(now + i, 429, admission.probe)


def test_breaker_opens_after_threshold_consecutive_429s_within_the_window() -> None:
    breaker = Breaker(BreakerSettings(threshold=5, window=30, open_seconds=60))
    for t in range(4):
        breaker.record(float(t), 429, False)
    breaker.record(4.0, 200, False)  # a success resets the streak
    for t in range(5, 9):
        breaker.record(float(t), 429, False)
    assert breaker.state is BreakerState.CLOSED
    breaker.record(40.0, 429, False)  # the first four are older than 30 s by now
    assert breaker.state is BreakerState.CLOSED
    for t in range(41, 44):
        breaker.record(float(t), 429, False)
    assert breaker.state is BreakerState.CLOSED
    breaker.record(44.0, 429, False)  # 40, 41, 42, 43, 44: five in a row within 30 s
    assert breaker.state is BreakerState.OPEN
    rejected = breaker.admit(50.0)
    assert isinstance(rejected, Reject) and rejected.retry_after == 60 - (50 - 44)


def test_half_open_lets_exactly_one_probe_and_backoff_doubles_then_resets() -> None:
    breaker = Breaker(BreakerSettings(threshold=5, window=30, open_seconds=60, max_open_seconds=200))
    trip(breaker, 0.0)
    opened = breaker.reopen_at
    assert opened == 4 + 60
    probe = breaker.admit(opened)
    assert isinstance(probe, Admit) and probe.probe and probe.transition is not None
    assert all(isinstance(breaker.admit(opened + 0.1), Reject) for _ in range(10))  # only one probe
    breaker.record(opened + 1, 429, True)  # probe failed: reopen for 120 s
    assert breaker.state is BreakerState.OPEN and breaker.reopen_at == opened + 1 + 120
    probe = breaker.admit(breaker.reopen_at)
    breaker.record(breaker.reopen_at, 429, True)  # 240 would exceed the 200 s cap
    assert breaker.reopen_at - breaker.reopen_at + breaker.open_for() == 200
    probe = breaker.admit(breaker.reopen_at)
    assert isinstance(probe, Admit) and probe.probe
    transition = breaker.record(breaker.reopen_at, 200, True)
    assert transition is not None and transition.to is BreakerState.CLOSED
    trip(breaker, 10_000.0)
    assert breaker.open_for() == 60  # the backoff was reset by the successful probe


def test_an_inconclusive_probe_leaves_it_half_open_for_the_next_request() -> None:
    breaker = Breaker(BreakerSettings(threshold=1, open_seconds=10))
    trip(breaker, 0.0)
    assert isinstance(breaker.admit(10.0), Admit)
    breaker.record(10.5, None, True)
    assert breaker.state is BreakerState.HALF_OPEN
    second = breaker.admit(11.0)
    assert isinstance(second, Admit) and second.probe


def test_late_429s_of_requests_in_flight_do_not_retrip_an_open_breaker() -> None:
    breaker = Breaker(BreakerSettings(threshold=2, open_seconds=10))
    trip(breaker, 0.0)
    reopen = breaker.reopen_at
    for _ in range(5):
        breaker.record(2.0, 429, False)
    assert breaker.trips == 1 and breaker.reopen_at == reopen


# -- retries -------------------------------------------------------------------


def test_retry_only_429_and_5xx_with_full_jitter_and_retry_after() -> None:
    settings = RetrySettings(max_retries=3, base=0.5, cap=8)
    assert retry_delay(settings, 0, 400, None) is None
    assert retry_delay(settings, 0, 404, None) is None
    assert retry_delay(settings, 0, 200, None) is None
    bounds: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        bounds.append((low, high))
        return high

    assert retry_delay(settings, 0, 429, None, uniform) == 0.5
    assert retry_delay(settings, 2, 503, None, uniform) == 2.0
    assert bounds == [(0.0, 0.5), (0.0, 2.0)]
    assert retry_delay(settings, 3, 429, None) is None  # out of retries
    assert retry_delay(settings, 0, 429, 3.0) == 3.0  # Retry-After honoured
    assert retry_delay(settings, 0, 429, 30.0) is None  # longer than the cap: the agent gets the 429
    assert retry_delay(RetrySettings(base=10, cap=4, max_retries=9), 5, 500, None, uniform) == 4


def test_retry_after_parsing() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-1") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize("bad", [" ", "abc", "nan-ish"])
def test_retry_after_garbage_is_ignored(bad: str) -> None:
    assert parse_retry_after(bad) is None


def test_a_refusal_shows_the_numbers_fleetd_budget_shows() -> None:
    from cli.money import dollars

    budgets = Budgets(Clock(datetime(2026, 11, 26, tzinfo=UTC)))
    budgets.settle(reserve(budgets, "a", Caps(), 4_990_000_000), 4_990_000_000)
    refusal = budgets.reserve("a", Caps(daily_nusd=5 * USD), 12_000_000)
    assert isinstance(refusal, Refusal)
    assert (f"daily budget of {dollars(5.0)} would be exceeded: {dollars(4.99)} spent or reserved, this request "
            f"may cost up to {dollars(0.012)}") in refusal.message
    assert "$5.0000" in refusal.message and "$4.9900" in refusal.message
