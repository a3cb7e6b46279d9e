"""A deployment's autoscaler as pure decisions, with explicit times."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from itertools import count

import pytest

from fleetd.autoscale import Autoscaler, Decision, Observation, PoolAgent, ScalingPolicy

HOUR = 3600.0


def agent(
    id: str, *, busy: bool = False, ready: bool = True, draining: bool = False,
    started: float = 0.0, ttl: float = HOUR, replaces: str | None = None,
) -> PoolAgent:
    return PoolAgent(id, started_at=started, deadline=started + ttl, busy=busy, ready=ready,
                     draining=draining, replaces=replaces)


def idle(n: int, prefix: str = "i", ttl: float = HOUR) -> list[PoolAgent]:
    return [agent(f"{prefix}{k}", ttl=ttl + k) for k in range(n)]  # deadlines apart: i0 is nearest


def busy(n: int) -> list[PoolAgent]:
    return [agent(f"b{k}", busy=True) for k in range(n)]


def decide(policy: ScalingPolicy, queued: int, agents: list[PoolAgent], now: float = 0.0) -> Decision:
    return Autoscaler(policy).decide(Observation(queued, tuple(agents)), now)


class Pool:
    """The daemon's side, simplified: drained agents exit at once, started ones are ready at the next tick."""

    def __init__(self, policy: ScalingPolicy, agents: Sequence[PoolAgent] = (), ttl: float = HOUR) -> None:
        self.scaler = Autoscaler(policy)
        self.agents = {a.id: a for a in agents}
        self.ttl = ttl
        self.ids = count()
        self.max_live = len(self.agents)

    def tick(self, now: float, queued: int = 0) -> Decision:
        decision = self.scaler.decide(Observation(queued, tuple(self.agents.values())), now)
        for gone in decision.drain + decision.retire:
            del self.agents[gone]
        new: list[str | None] = [None] * decision.start + list(decision.replace)
        for replaces in new:
            spawned = agent(f"n{next(self.ids)}", started=now, ttl=self.ttl, replaces=replaces)
            self.agents[spawned.id] = spawned
        self.max_live = max(self.max_live, len(self.agents))
        return decision

    def run(self, start: float, stop: float, every: float = 10.0, queued: int = 0) -> dict[float, Decision]:
        """Ticks from ``start`` to ``stop`` inclusive; the decisions that acted, by time."""
        acted: dict[float, Decision] = {}
        for k in range(int((stop - start) / every) + 1):
            decision = self.tick(start + k * every, queued)
            if decision.acts:
                acted[start + k * every] = decision
        return acted


# --------------------------------------------------------------------------- policy


def test_policy_defaults_are_the_issue_defaults() -> None:
    policy = ScalingPolicy()
    assert (policy.min, policy.max, policy.warm, policy.tasks_per_agent) == (0, 10, 0, 5)
    assert (policy.scale_down_window, policy.scale_down_step_seconds) == (300, 60)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min": 4, "max": 3}, r"min \(4\) must not exceed max \(3\)"),
        ({"warm": 11}, r"warm \(11\) must be within max \(10\)"),
        ({"tasks_per_agent": 0}, "tasks_per_agent must be an integer >= 1, not 0"),
        ({"min": -1}, "min must be an integer >= 0, not -1"),
        ({"max": 0}, "max must be an integer >= 1, not 0"),
        ({"max": 2.5}, "max must be an integer >= 1, not 2.5"),
        ({"warm": True}, "warm must be an integer >= 0, not True"),
        ({"scale_down_window": -1}, "scale_down_window must be a number of seconds >= 0, not -1"),
        ({"scale_down_step_seconds": math.inf}, "scale_down_step_seconds must be a number of seconds >= 0"),
        ({"refresh_min_seconds": math.nan}, "refresh_min_seconds must be a number of seconds >= 0"),
        ({"refresh_fraction": 1.0}, "refresh_fraction must be a number from 0 to below 1, not 1.0"),
        ({"max": 1001}, "max must be at most 1000, not 1001"),
        ({"min": 2**70, "max": 1000}, r"min \(1180591620717411303424\) must not exceed max \(1000\)"),
        ({"tasks_per_agent": 10_001}, "tasks_per_agent must be at most 10000, not 10001"),
        ({"scale_down_window": 3600.5}, "scale_down_window must be at most 3600 seconds, not 3600.5"),
    ],
)
def test_policy_refuses_nonsense(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScalingPolicy(**options)  # type: ignore[arg-type]


def test_warm_may_equal_max_and_min_may_equal_max() -> None:
    assert ScalingPolicy(min=10, max=10, warm=10).warm == 10


def test_the_upper_bounds_are_allowed() -> None:
    policy = ScalingPolicy(max=1000, tasks_per_agent=10_000, scale_down_window=3600)
    assert (policy.max, policy.tasks_per_agent, policy.scale_down_window) == (1000, 10_000, 3600)


@pytest.mark.parametrize(("ttl", "margin"), [(HOUR, 360), (1000, 100), (600, 60), (300, 60), (100, 50), (30, 15)])
def test_refresh_margin_is_max_of_60s_and_a_tenth_at_most_half_the_ttl(ttl: float, margin: float) -> None:
    assert ScalingPolicy().refresh_margin(ttl) == margin


def test_observation_refuses_duplicate_ids_and_negative_queue() -> None:
    with pytest.raises(ValueError, match="unique"):
        Observation(0, (agent("a"), agent("a", busy=True)))
    with pytest.raises(ValueError, match="queued must be an integer >= 0, not -1"):
        Observation(-1)


# --------------------------------------------------------------------------- the formula, scaling up


def test_scales_up_at_once_with_the_issue_formula() -> None:
    d = decide(ScalingPolicy(warm=1), 23, busy(2))
    assert (d.raw, d.wanted, d.current, d.desired, d.start) == (8, 8, 2, 8, 6)  # 2 + ceil(23/5) + 1
    assert d.drain == d.replace == d.retire == ()
    assert d.reason == "scaled up 2 -> 8: 23 queued, 2 busy, tasks_per_agent 5, warm 1"


@pytest.mark.parametrize(("queued", "wanted"), [(0, 0), (1, 1), (5, 1), (6, 2), (10, 2), (11, 3)])
def test_queued_tasks_round_up_per_agent(queued: int, wanted: int) -> None:
    assert decide(ScalingPolicy(), queued, []).wanted == wanted


def test_min_above_demand_starts_min() -> None:
    d = decide(ScalingPolicy(min=3), 0, busy(1))
    assert (d.raw, d.wanted, d.start) == (1, 3, 2)
    assert d.reason == "scaled up 1 -> 3: 0 queued, 1 busy, tasks_per_agent 5, warm 0 (raised to min 3)"


def test_max_caps_a_burst() -> None:
    d = decide(ScalingPolicy(max=10), 1000, busy(2) + idle(1))
    assert (d.raw, d.wanted, d.current, d.start) == (202, 10, 3, 7)
    assert d.reason == "scaled up 3 -> 10: 1000 queued, 2 busy, tasks_per_agent 5, warm 0 (capped at max 10)"


def test_warm_stays_within_max() -> None:
    d = decide(ScalingPolicy(max=10, warm=3), 0, busy(9))
    assert (d.raw, d.wanted, d.start) == (12, 10, 1)


def test_warm_pool_is_started_ahead_and_starting_agents_count() -> None:
    scaler = Autoscaler(ScalingPolicy(warm=2))
    assert scaler.decide(Observation(0), now=0).start == 2
    starting = (agent("w0", ready=False), agent("w1", ready=False))
    d = scaler.decide(Observation(0, starting), now=1)
    assert (d.current, d.start, d.acts) == (2, 0, False)
    assert d.reason == "holding 2: 0 queued, 0 busy, tasks_per_agent 5, warm 2"


def test_an_idle_agent_taking_a_task_keeps_the_warm_pool_topped_up() -> None:
    d = decide(ScalingPolicy(warm=2), 0, [agent("w0", busy=True), agent("w1")])
    assert (d.wanted, d.current, d.start) == (3, 2, 1)


def test_draining_agents_are_not_capacity() -> None:
    draining = [agent("d0", draining=True), agent("d1", draining=True, busy=True)]
    d = decide(ScalingPolicy(), 10, draining + idle(1))
    assert (d.observation.busy, d.wanted, d.current, d.start) == (0, 2, 1, 1)
    assert d.reason == "scaled up 1 -> 2: 10 queued, 0 busy, tasks_per_agent 5, warm 0, 2 draining"


def test_draining_agents_hold_room_under_max() -> None:
    d = decide(ScalingPolicy(max=3), 10, [agent("d0", draining=True), agent("d1", draining=True), *idle(1)])
    assert (d.wanted, d.current, d.start, d.acts) == (2, 1, 0, False)
    assert d.reason == "scale up 1 -> 2 waits for room: 3 live, max 3"
    d = decide(ScalingPolicy(max=3), 15, [agent("d0", draining=True), *idle(1)])
    assert (d.wanted, d.start) == (3, 1)
    assert d.reason.endswith("; 1 more wait for room under max 3")


# --------------------------------------------------------------------------- scaling down


def test_scale_down_waits_for_the_whole_window_then_one_agent_per_step() -> None:
    pool = Pool(ScalingPolicy(min=1), idle(4))
    acted = pool.run(0, 600)
    assert sorted(acted) == [300, 360, 420]  # 4 -> 3 -> 2 -> 1, then min holds
    assert [acted[t].drain for t in (300, 360, 420)] == [("i0",), ("i1",), ("i2",)]  # nearest TTL first
    assert list(pool.agents) == ["i3"]
    assert acted[300].reason == (
        "scaled down 4 -> 3: highest wanted in the last 300 s is 1; "
        "0 queued, 0 busy, tasks_per_agent 5, warm 0 (raised to min 1)"
    )


def test_holding_before_the_window_is_over_says_why() -> None:
    scaler = Autoscaler(ScalingPolicy())
    d = scaler.decide(Observation(0, tuple(idle(2))), now=0)
    assert (d.wanted, d.stabilized, d.desired, d.acts) == (0, 2, 2, False)
    assert d.reason == (
        "holding 2: wanted 0 has not stayed below 2 for 300 s; 0 queued, 0 busy, tasks_per_agent 5, warm 0"
    )
    assert scaler.decide(Observation(0, tuple(idle(2))), now=299.9).drain == ()
    assert scaler.decide(Observation(0, tuple(idle(2))), now=300).drain == ("i0",)


def test_scales_to_zero_after_the_window_with_no_min_and_no_warm() -> None:
    pool = Pool(ScalingPolicy(), idle(3))
    acted = pool.run(0, 900)
    assert sorted(acted) == [300, 360, 420]
    assert pool.agents == {}
    assert pool.tick(1000).reason == "holding 0: 0 queued, 0 busy, tasks_per_agent 5, warm 0"


def test_window_counts_from_when_wanted_dropped_not_from_the_tick_before() -> None:
    scaler = Autoscaler(ScalingPolicy())
    three = Observation(15, tuple(idle(3)))
    quiet = Observation(0, tuple(idle(3)))
    scaler.decide(three, now=0)
    scaler.decide(three, now=90)  # wanted 3 held until the tick at 100
    for now in range(100, 400, 10):
        assert scaler.decide(quiet, now=now).drain == (), now
    assert scaler.decide(quiet, now=400).drain == ("i0",)


def test_a_burst_during_the_window_cancels_a_pending_scale_down() -> None:
    scaler = Autoscaler(ScalingPolicy())
    quiet = Observation(0, tuple(idle(3)))
    for now in range(0, 200, 10):
        scaler.decide(quiet, now=now)
    burst = scaler.decide(Observation(15, tuple(idle(3))), now=200)  # wanted 3: exactly what runs
    assert (burst.wanted, burst.start, burst.drain) == (3, 0, ())
    for now in range(210, 510, 10):  # 300 s after the burst's sample began, not 300 s after t=0
        assert scaler.decide(quiet, now=now).drain == (), now
    d = scaler.decide(quiet, now=510)
    assert (d.stabilized, d.drain) == (0, ("i0",))


def test_a_burst_above_the_pool_scales_up_at_once_mid_window() -> None:
    pool = Pool(ScalingPolicy(), idle(3))
    pool.run(0, 150)
    d = pool.tick(160, queued=25)
    assert (d.current, d.start) == (3, 2)
    assert len(pool.agents) == 5
    assert pool.run(170, 459) == {}  # wanted 0 since 170: nothing drained before 470
    assert pool.tick(470).drain == ("i0",)


def test_clock_through_several_windows_with_sparse_ticks() -> None:
    scaler = Autoscaler(ScalingPolicy())
    obs = Observation(0, tuple(idle(4, ttl=10 * HOUR)))
    assert not scaler.decide(obs, now=0).acts
    assert scaler.decide(obs, now=1000).drain == ("i0",)  # the sample at 0 held through [700, 1000]
    obs = Observation(0, tuple(idle(4, ttl=10 * HOUR)[1:]))
    assert scaler.decide(obs, now=1059).drain == ()  # one agent per 60 s
    assert scaler.decide(obs, now=1060).drain == ("i1",)
    busy_again = Observation(10, tuple(idle(4, ttl=10 * HOUR)[2:]))
    assert not scaler.decide(busy_again, now=5000).acts  # wanted 2 == the 2 running
    obs = Observation(0, tuple(idle(4, ttl=10 * HOUR)[2:]))
    assert not scaler.decide(obs, now=5010).acts  # wanted 0 from here: 2 held over [5000, 5010)
    assert not scaler.decide(obs, now=5309).acts
    assert scaler.decide(obs, now=5310).drain == ("i2",)


def test_history_is_bounded_by_the_changes_within_one_window() -> None:
    scaler = Autoscaler(ScalingPolicy(max=20))
    for now in range(0, 10_000, 10):
        scaler.decide(Observation((now // 10 % 2) * 50, tuple(idle(10))), now=now)  # wanted flaps 0/10
    assert len(scaler.history) == 31  # the sample holding at 9690 and one per tick after it
    for now in range(10_000, 20_000, 10):
        scaler.decide(Observation(0, tuple(idle(10))), now=now)
    assert scaler.history == [(10_000, 0)]


def test_the_clock_must_not_go_back() -> None:
    scaler = Autoscaler(ScalingPolicy())
    scaler.decide(Observation(0), now=100)
    with pytest.raises(ValueError, match="clock went back from 100 to 99"):
        scaler.decide(Observation(0), now=99)


def test_window_zero_scales_down_at_once_but_still_one_per_step() -> None:
    pool = Pool(ScalingPolicy(scale_down_window=0), idle(2))
    acted = pool.run(0, 120)
    assert sorted(acted) == [0, 60]
    assert acted[0].reason.startswith("scaled down 2 -> 1: highest wanted in the last 0 s is 0;")


def test_a_pool_above_max_comes_down_without_a_window() -> None:
    pool = Pool(ScalingPolicy(max=2), idle(4))
    acted = pool.run(0, 200)
    assert sorted(acted) == [0, 60]
    assert acted[0].stabilized == 2
    assert len(pool.agents) == 2


def test_busy_agents_are_never_drained_even_when_nearest_their_ttl() -> None:
    agents = [agent("b0", busy=True, ttl=100), agent("b1", busy=True, ttl=200), *idle(3)]
    pool = Pool(ScalingPolicy(scale_down_window=0), agents)
    acted = pool.run(0, 600)
    assert [d.drain for d in acted.values()] == [("i0",), ("i1",), ("i2",)]
    assert sorted(pool.agents) == ["b0", "b1"]


def test_scale_down_waits_while_every_agent_is_busy() -> None:
    # Only possible above max: the formula never wants fewer than the busy agents it may run.
    scaler = Autoscaler(ScalingPolicy(max=2))
    d = scaler.decide(Observation(0, tuple(busy(3))), now=0)
    assert (d.wanted, d.desired, d.current, d.drain) == (2, 2, 3, ())
    assert d.reason == (
        "scale down 3 -> 2 waits (no idle agent, 3 busy); 0 queued, 3 busy, tasks_per_agent 5, warm 0 (capped at max 2)"
    )
    freed = (*busy(2), agent("b2"))
    assert scaler.decide(Observation(0, freed), now=1).drain == ("b2",)


def test_drain_choice_breaks_deadline_ties_by_id() -> None:
    agents = [agent("z"), agent("a"), agent("m", ttl=HOUR + 1)]
    d = decide(ScalingPolicy(scale_down_window=0), 0, agents)
    assert d.drain == ("a",)


def test_step_waiting_is_explained() -> None:
    scaler = Autoscaler(ScalingPolicy(scale_down_window=0))
    scaler.decide(Observation(0, tuple(idle(3))), now=0)
    d = scaler.decide(Observation(0, tuple(idle(3)[1:])), now=30)
    assert (d.desired, d.drain) == (0, ())
    assert d.reason == "scale down 2 -> 0 waits (one agent per 60 s); 0 queued, 0 busy, tasks_per_agent 5, warm 0"


# --------------------------------------------------------------------------- warm pool refresh


def test_an_idle_agent_near_its_ttl_is_replaced_first_then_retired() -> None:
    scaler = Autoscaler(ScalingPolicy(warm=1))
    old = agent("w0", ttl=HOUR)  # margin 360 s
    assert not scaler.decide(Observation(0, (old,)), now=3240).acts  # exactly 360 s left: not yet
    d = scaler.decide(Observation(0, (old,)), now=3240.5)
    assert (d.start, d.replace, d.retire) == (0, ("w0",), ())
    assert d.reason == "holding 1: 0 queued, 0 busy, tasks_per_agent 5, warm 1; replacing w0 (359.5 s of TTL left)"

    new = agent("w1", started=3241, ready=False, replaces="w0")
    d = scaler.decide(Observation(0, (old, new)), now=3250)
    assert (d.current, d.start, d.replace, d.retire, d.acts) == (1, 0, (), (), False)

    new = agent("w1", started=3241, replaces="w0")
    d = scaler.decide(Observation(0, (old, new)), now=3260)
    assert (d.start, d.replace, d.retire, d.drain) == (0, (), ("w0",), ())
    assert d.reason.endswith("; retiring w0 (replaced by w1)")


def test_a_replacement_that_took_a_task_at_once_still_retires_the_old_agent() -> None:
    old = agent("w0", ttl=HOUR)
    new = agent("w1", started=3241, busy=True, replaces="w0")
    d = decide(ScalingPolicy(warm=1), 0, [old, new], now=3250)
    assert (d.wanted, d.current, d.start, d.retire) == (2, 1, 1, ("w0",))


def test_an_old_agent_that_took_a_task_meanwhile_is_not_retired() -> None:
    old = agent("w0", busy=True)
    new = agent("w1", started=3241, replaces="w0")
    d = decide(ScalingPolicy(warm=1), 0, [old, new], now=3250)
    assert (d.current, d.start, d.retire, d.drain) == (2, 0, (), ())


def test_busy_and_draining_agents_near_their_ttl_are_not_replaced() -> None:
    agents = [agent("b0", busy=True), agent("d0", draining=True)]
    d = decide(ScalingPolicy(), 10, agents, now=HOUR - 1)
    assert (d.replace, d.retire) == ((), ())


def test_a_short_ttl_is_not_replaced_from_its_spawn_on() -> None:
    scaler = Autoscaler(ScalingPolicy(warm=1))
    short = agent("w0", ttl=60)  # margin 30 s, not 60 s
    assert scaler.decide(Observation(0, (short,)), now=30).replace == ()
    assert scaler.decide(Observation(0, (short,)), now=30.1).replace == ("w0",)


def test_refresh_at_max_drains_first_and_never_exceeds_max() -> None:
    pool = Pool(ScalingPolicy(max=2, warm=2), [agent("w0", ttl=1000), agent("w1", ttl=HOUR)], ttl=HOUR)
    d = pool.tick(899)  # 101 s left, margin 100: not near
    assert not d.acts
    d = pool.tick(901)
    assert (d.start, d.replace, d.retire) == (0, (), ("w0",))
    assert d.reason == "holding 2: 0 queued, 0 busy, tasks_per_agent 5, warm 2; " \
        "retiring w0 before its replacement (no room under max 2)"
    d = pool.tick(902)  # w0 exited (the rig drains at once): the ordinary scale up starts its successor
    assert (d.current, d.start) == (1, 1)
    assert pool.max_live == 2


def test_at_max_a_draining_agent_holds_off_the_early_retirement() -> None:
    agents = [agent("w0", ttl=1000), agent("w1", ttl=1001), agent("d0", draining=True)]
    d = decide(ScalingPolicy(max=3, warm=2), 0, agents, now=950)
    assert (d.replace, d.retire, d.start) == ((), (), 0)
    d = decide(ScalingPolicy(max=3, warm=2), 0, agents[:2], now=950)
    assert (d.replace, d.retire) == (("w0",), ())  # the room d0 held is free: replace first


def test_refresh_with_one_room_replaces_the_nearest_and_drains_no_other() -> None:
    agents = [agent("w0", ttl=1000), agent("w1", ttl=1001), agent("w2", ttl=HOUR)]
    d = decide(ScalingPolicy(max=4, warm=3), 0, agents, now=950)
    assert (d.replace, d.retire) == (("w0",), ())  # w1 waits: no room, and w0's overlap uses it


def test_surplus_agents_near_their_ttl_are_not_replaced() -> None:
    scaler = Autoscaler(ScalingPolicy(warm=1, scale_down_window=0))
    agents = (agent("w0", ttl=1000), agent("w1", ttl=1001), agent("w2", ttl=HOUR))
    d = scaler.decide(Observation(0, agents), now=950)
    assert (d.desired, d.drain, d.replace) == (1, ("w0",), ())  # w1 is surplus too; w2 keeps the warm slot
    d = scaler.decide(Observation(0, agents[1:]), now=951)
    assert (d.drain, d.replace) == ((), ())


def test_a_pool_kept_warm_for_hours_never_exceeds_max() -> None:
    pool = Pool(ScalingPolicy(max=3, warm=3), ttl=600)
    pool.run(0, 4 * HOUR, every=5)
    assert pool.max_live == 3
    assert len(pool.agents) == 3


# --------------------------------------------------------------------------- the event


def test_to_json_carries_every_input() -> None:
    policy = ScalingPolicy(min=1, max=5, warm=1)
    d = decide(policy, 7, [agent("b0", busy=True), agent("d0", draining=True)], now=12.5)
    data = json.loads(json.dumps(d.to_json()))
    assert data["now"] == 12.5
    assert data["policy"] == {
        "min": 1, "max": 5, "warm": 1, "tasks_per_agent": 5, "scale_down_window": 300.0,
        "scale_down_step_seconds": 60.0, "refresh_min_seconds": 60.0, "refresh_fraction": 0.1,
    }
    assert data["observation"]["queued"] == 7
    assert (data["observation"]["busy"], data["observation"]["draining"]) == (1, 1)
    assert data["observation"]["agents"][1] == {
        "id": "d0", "started_at": 0.0, "deadline": HOUR, "busy": False, "ready": True,
        "draining": True, "replaces": None,
    }
    assert {k: data[k] for k in ("raw", "wanted", "stabilized", "desired", "current", "start")} == {
        "raw": 4, "wanted": 4, "stabilized": 4, "desired": 4, "current": 1, "start": 3,
    }
    assert (data["replace"], data["drain"], data["retire"]) == ([], [], [])
    assert data["reason"] == "scaled up 1 -> 4: 7 queued, 1 busy, tasks_per_agent 5, warm 1, 1 draining"
