"""Canary and blue-green rollouts (fleetd.rollouts, the fleet controller's part) on a real store and supervisor over
the in-memory runtime: the split at submit, what each version's agents may take, the verdict acting, promotion and
rollback by hand, version affinity after either, blue-green's switch and drain."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from fleetd import fleet as fleet_module
from fleetd.autoscale import ScalingPolicy
from fleetd.errors import Conflict, InvalidRequest
from fleetd.fleet import JUDGE_EVERY, PROGRESS_DEADLINE, START_FAILURES, VERSION_LABEL
from fleetd.rollouts import Phase, Rollout, Strategy, pools, rollout_request, split_policy, takes
from fleetd.task_queue import Takes
from fleetd.zone2.contract import PoolCap
from tests.unit.fleet_rig import Rig, run

V2 = {"command": ["work", "--v2"]}


def versions(rig: Rig) -> dict[int, tuple[str, str | None]]:
    return {v.number: (v.state.value, None if v.outcome is None else v.outcome.value)
            for v in rig.fleet.deployments.get("web").versions}


def by_version(rig: Rig) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for agent in rig.pool():
        container = rig.runtime.by_name(rig.runtime.agent_name(agent["id"]))
        assert container is not None
        found.setdefault(container["Labels"][VERSION_LABEL], []).append(agent)
    return found


async def canary(rig: Rig, percent: int = 20, **options: Any) -> None:
    """web v1 with two warm agents, then v2 as a canary of ``percent``."""
    rig.deploy(warm=2, max=10)
    await rig.tick()
    applied = rig.deploy(warm=2, max=10, canary=percent, **V2, **options)
    assert applied["message"] == f"updated: version 2 rolling out (canary {percent}%)"
    assert applied["current_version"] == 1 and applied["rollout"]["phase"] == "canary"


async def work(rig: Rig, agent: dict[str, Any], fail: bool = False) -> str | None:
    """The agent takes a task and completes (or fails) it; the task's id, None when it got none."""
    lease = await rig.fleet.next_task(agent["id"], 0)
    if lease is None:
        return None
    if fail:
        rig.fleet.fail(lease.id, agent["id"], lease.attempt, "bad answer", retry=False)
    else:
        rig.fleet.complete(lease.id, agent["id"], lease.attempt, "ok")
    return lease.id


async def judged(rig: Rig) -> None:
    rig.clock.offset += JUDGE_EVERY
    await rig.tick()


# -- pure parts ----------------------------------------------------------------
def test_the_split_of_scaling_gives_the_canary_its_share_and_keeps_room_for_both() -> None:
    current, canary_policy = split_policy(ScalingPolicy(min=4, max=10, warm=2), 10)
    assert (canary_policy.min, canary_policy.max, canary_policy.warm) == (1, 1, 1)
    assert (current.min, current.max, current.warm) == (3, 9, 1)
    current, canary_policy = split_policy(ScalingPolicy(min=0, max=1, warm=0), 50)
    assert canary_policy.max == 1 and current.max == 1  # a canary needs an agent to be judged


def test_what_each_version_takes() -> None:
    rollout = Rollout("web", Strategy.CANARY, 2, 1, Phase.CANARY, None, "s", 0, None, "t")
    assert takes(True, 1, 1, rollout) == Takes.ANY
    assert takes(True, 2, 1, rollout) == Takes.ROUTED
    assert takes(False, 1, 2, None) == Takes.BOUND
    standby = Rollout("web", Strategy.BLUE_GREEN, 2, 1, Phase.STARTING, None, "s", 0, 2, "t")
    assert takes(True, 2, 1, standby) == Takes.NONE
    assert set(pools(ScalingPolicy(), 1, standby)) == {1, 2}
    assert pools(ScalingPolicy(), 1, standby)[2][0].min == 2


@pytest.mark.parametrize(("fields", "message"), [
    ({"canary": 60}, "--canary percent must be an integer from 1 to 50"),
    ({"canary": 10, "promote_after": 0}, "--promote-after must be an integer from 1"),
    ({"strategy": "blue-green", "canary": 10}, "--canary: only for a canary"),
    ({"strategy": "canary"}, "give --canary PCT"),
    ({"strategy": "sideways"}, "--strategy: one of rolling, canary, blue-green"),
    ({"canary": 10, "canary_max_usd": "-1"}, "--canary-max-usd"),
])
def test_bad_rollout_options_are_refused_with_the_flag_named(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        rollout_request(fields)


# -- canary ----------------------------------------------------------------------
def test_a_canary_gets_its_share_of_new_tasks_and_the_split_is_reproducible(tmp_path: Path) -> None:
    routes: list[list[str | None]] = []
    for attempt in ("a", "b"):
        async def check(rig: Rig) -> None:
            await canary(rig, 7)
            tasks = rig.fleet.submit_many({"deployment": "web", "tasks": [{"input": n} for n in range(1000)]})
            routes.append([t.route for t in tasks])
            assert rig.fleet.deployments.get("web").rollout.routed == 1000  # type: ignore[union-attr]

        (tmp_path / attempt).mkdir()
        run(tmp_path / attempt, check)
    assert routes[0] == routes[1]  # seeded per deployment
    share = Counter(routes[0])["v2"] / 1000
    assert abs(share - 0.07) <= 0.02


def test_an_idempotent_replay_takes_no_position_of_the_split(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        await canary(rig)
        first = rig.fleet.submit({"deployment": "web", "input": 1, "key": "k"})
        again = rig.fleet.submit({"deployment": "web", "input": 1, "key": "k"})
        assert again.id == first.id
        assert rig.fleet.deployments.get("web").rollout.routed == 1  # type: ignore[union-attr]

    run(tmp_path, check)


def test_canary_agents_take_only_routed_tasks_and_current_agents_never_take_them(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        await canary(rig, 50)
        tasks = rig.fleet.submit_many({"deployment": "web", "tasks": [{"input": n} for n in range(20)]})
        await rig.tick()
        pools_ = by_version(rig)
        assert pools_.get("2"), "the canary has agents"
        routed = {t.id for t in tasks if t.route == "v2"}
        taken: dict[str, set[str]] = {"1": set(), "2": set()}
        for version, agents in pools_.items():
            for agent in agents:
                while (task_id := await work(rig, agent)) is not None:
                    taken[version].add(task_id)
        assert taken["2"] == routed
        assert taken["1"] == {t.id for t in tasks} - routed

    run(tmp_path, check)


def test_a_failing_canary_is_rolled_back_early_and_gets_no_new_task(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        await canary(rig, 50, promote_after=20)
        rig.fleet.submit_many({"deployment": "web", "tasks": [{"input": n} for n in range(60)]})
        await rig.tick()
        pools_ = by_version(rig)
        canary_agent, current_agent = pools_["2"][0], pools_["1"][0]
        for _ in range(10):
            await work(rig, current_agent)
        done = 0
        while rig.fleet.deployments.get("web").rollout is not None and done < 20:
            await work(rig, canary_agent, fail=done % 2 == 0)  # half of its tasks fail
            done += 1
            await judged(rig)
        assert rig.fleet.deployments.get("web").rollout is None
        assert done < 20, "rolled back before promote-after canary tasks finished"
        assert versions(rig)[2] == ("draining", "rolled_back") and versions(rig)[1] == ("active", None)
        events = [e for e in rig.store.events(limit=200) if e["type"] == "rollout_rolled_back"]
        assert events and "error rate" in events[0]["message"] and events[0]["data"]["canary"]["failed"] >= 1
        # Its queued tasks went back to the current version; new ones all go there.
        assert not [t for t in rig.fleet.queue.tasks("web", "queued") if t.route == "v2"]
        later = rig.fleet.submit_many({"deployment": "web", "tasks": [{"input": n} for n in range(50)]})
        assert {t.route for t in later} == {None}
        assert await work(rig, canary_agent) is None

    run(tmp_path, check)


def test_a_good_canary_is_promoted_and_the_old_version_drains_without_cutting_a_task(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        await canary(rig, 50, promote_after=5)
        rig.fleet.submit_many({"deployment": "web", "tasks": [{"input": n} for n in range(30)]})
        await rig.tick()
        pools_ = by_version(rig)
        old, new = pools_["1"], pools_["2"][0]
        in_flight = await rig.fleet.next_task(old[0]["id"], 0)  # v1 holds a task across the promotion
        assert in_flight is not None
        for _ in range(5):
            await work(rig, old[1])
            await work(rig, new)
        await judged(rig)
        assert rig.fleet.deployments.get("web").current_version == 2
        assert versions(rig) == {1: ("draining", "replaced"), 2: ("active", "promoted")}
        promoted = [e for e in rig.store.events(limit=200) if e["type"] == "rollout_promoted"]
        assert promoted and promoted[0]["data"]["by"] == "fleetd" and promoted[0]["data"]["action"] == "promote"
        assert old[0]["id"] in {a["id"] for a in rig.pool()}  # still finishing its task
        assert await work(rig, old[1]) is None  # a drained v1 agent takes nothing new
        rig.fleet.complete(in_flight.id, old[0]["id"], in_flight.attempt, "done")
        assert rig.fleet.queue.get(in_flight.id).state == "succeeded"

    run(tmp_path, check)


def test_a_v1_task_whose_agent_dies_after_the_promotion_is_retried_on_v1(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        await canary(rig, 10)
        rig.fleet.submit_many({"deployment": "web", "tasks": [{"input": n} for n in range(2)]})
        first, second = by_version(rig)["1"][:2]
        held = await rig.fleet.next_task(first["id"], 0)
        other = await rig.fleet.next_task(second["id"], 0)
        assert held is not None and other is not None and held.id != other.id
        rig.fleet.promote("web")
        await rig.tick()  # v1's agents drain; both hold a task, so both stay
        rig.runtime.exit(first["container_id"], 137)  # killed holding a v1 task
        await rig.settle()
        again = rig.fleet.queue.get(held.id)
        assert again.version == "v1" and again.state == "queued"
        rig.fleet.complete(other.id, second["id"], other.attempt, "ok")
        await rig.tick()  # idle and drained, but v1 has a retry waiting: it stays for it
        assert second["id"] in {a["id"] for a in rig.pool()}
        for agent in by_version(rig).get("2", []):
            assert await work(rig, agent) != held.id  # v2 never takes a v1 task
        lease = await rig.fleet.next_task(second["id"], 0)
        assert lease is not None and lease.id == held.id and lease.attempt == 2
        assert await rig.fleet.next_task(second["id"], 0) is not None  # the held one again, nothing new
        rig.fleet.complete(held.id, second["id"], lease.attempt, "ok")
        assert await rig.fleet.next_task(second["id"], 0) is None  # no new work for a replaced version
        await rig.tick()
        assert second["id"] not in {a["id"] for a in rig.pool()}  # its retries done, it goes
        assert rig.fleet.queue.get(held.id).state == "succeeded"

    run(tmp_path, check)


def test_a_bound_task_fails_version_removed_when_no_agent_of_its_version_is_left(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        await canary(rig, 10)
        task = rig.fleet.submit({"deployment": "web", "input": 1})
        holder = by_version(rig)["1"][0]
        assert (await rig.fleet.next_task(holder["id"], 0)) is not None
        rig.fleet.promote("web")
        await rig.tick()
        rig.runtime.exit(holder["container_id"], 137)
        await rig.settle()
        for _ in range(3):
            await rig.tick()
        assert not by_version(rig).get("1")
        ended = rig.fleet.queue.get(task.id)
        assert ended.state == "failed" and ended.code == "version_removed"  # never moved to v2

    run(tmp_path, check)


def test_promote_and_rollback_by_hand_and_409_without_a_rollout(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=1)
        await rig.tick()
        with pytest.raises(Conflict, match="no rollout in progress"):
            rig.fleet.promote("web")
        with pytest.raises(Conflict, match="no rollout in progress"):
            rig.fleet.rollback("web")
        rig.deploy(warm=1, canary=10, **V2)
        with pytest.raises(Conflict, match="version 2 is rolling out"):
            rig.deploy(warm=1, canary=10, command=["work", "--v3"])
        assert rig.deploy(warm=1, canary=10, **V2)["message"] == "unchanged (version 2 is rolling out)"
        rig.fleet.rollback("web")
        assert versions(rig)[2] == ("draining", "rolled_back")
        event = next(e for e in rig.store.events(limit=100) if e["type"] == "rollout_rolled_back")
        assert event["data"]["by"] == "user"

    run(tmp_path, check)


def test_a_canary_whose_agents_never_start_is_rolled_back(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        await canary(rig, 50)
        rig.fleet.submit_many({"deployment": "web", "tasks": [{"input": n} for n in range(10)]})
        for _ in range(START_FAILURES * 4):
            await rig.tick()
            for agent in by_version(rig).get("2", []):
                rig.runtime.exit(agent["container_id"], 1)  # exits before it ever asks for a task
            await rig.settle()
            rig.clock.offset += 400  # past the launch backoff
            if rig.fleet.deployments.get("web").rollout is None:
                break
        assert versions(rig)[2][1] == "rolled_back"

    run(tmp_path, check)


def test_inspect_shows_per_version_figures_and_the_verdict(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        await canary(rig, 50, promote_after=50)
        rig.fleet.submit_many({"deployment": "web", "tasks": [{"input": n} for n in range(10)]})
        await rig.tick()
        for version, agents in by_version(rig).items():
            await work(rig, agents[0], fail=version == "2")
            await work(rig, agents[0])
        await judged(rig)
        view = rig.fleet.view(rig.fleet.deployments.get("web"), detail=True)
        figures = {v["label"]: v["tasks"] for v in view["versions"]}
        assert figures["v1"]["succeeded"] == 2 and figures["v1"]["error_rate"] == 0
        assert figures["v2"]["failed"] == 1 and figures["v2"]["error_rate"] == 0.5
        assert figures["v2"]["p95_duration_seconds"] is not None and figures["v2"]["llm_calls_per_task"] == 0
        assert view["rollout"]["verdict"]["action"] == "wait"

    run(tmp_path, check)


# -- blue-green ------------------------------------------------------------------
def test_blue_green_switches_once_the_new_agents_are_ready_and_the_old_ones_drain(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=2)
        await rig.tick()
        old = rig.pool()
        applied = rig.fleet.apply("web", {"image": "img", "command": ["work", "--v2"], "ttl": 3600, "warm": 2,
                                          "strategy": "blue-green"}, 2)
        assert applied.message == "updated: version 2 rolling out (blue-green, 2 agents)"
        await rig.tick()
        green = by_version(rig)["2"]
        assert len(green) == 2
        task = rig.fleet.submit({"deployment": "web", "input": 1})
        assert await rig.fleet.next_task(green[0]["id"], 0) is None  # standing by: nothing yet
        await rig.tick()
        assert rig.fleet.deployments.get("web").rollout.phase == Phase.STARTING  # type: ignore[union-attr]
        assert await rig.fleet.next_task(green[1]["id"], 0) is None
        await rig.tick()  # both have asked: the switch
        deployment = rig.fleet.deployments.get("web")
        assert deployment.current_version == 2 and deployment.rollout.phase == Phase.SWITCHED  # type: ignore[union-attr]
        lease = await rig.fleet.next_task(green[0]["id"], 0)
        assert lease is not None and lease.id == task.id
        for agent in old:
            assert await rig.fleet.next_task(agent["id"], 0) is None  # blue takes nothing new
        for _ in range(3):
            await rig.tick()
        assert not {a["id"] for a in old} & {a["id"] for a in rig.pool()}
        assert rig.fleet.deployments.get("web").rollout is None
        assert versions(rig) == {1: ("retired", "replaced"), 2: ("active", "promoted")}
        assert [e["type"] for e in rig.store.events(limit=100) if e["type"].startswith("rollout_")] == [
            "rollout_switched", "rollout_finished"]

    run(tmp_path, check)


def test_a_canary_with_a_spend_cap_is_one_pool_in_zone2_and_a_refusal_at_it_rolls_it_back(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        await canary(rig, 50, canary_max_usd="0.25")
        await rig.tick()
        pools_ = by_version(rig)
        canary_agent = rig.store.get(pools_["2"][0]["id"])
        assert canary_agent is not None
        pool = rig.fleet.pool_of(canary_agent)
        assert pool is not None and pool.key.startswith("web/v2@") and pool.cap_nusd == 250_000_000
        current = rig.fleet.pool_of(pools_["1"][0])  # the current version's: counted, not capped
        assert current is not None and current.key.startswith("web/v1@") and current.cap_nusd is None
        rig.fleet.heard("budget_exceeded", {"pool": "web/v1"})  # not the canary's pool: nothing happens
        rig.fleet.heard("task_budget_exceeded", {"pool": pool.key})
        await rig.tick()
        assert rig.fleet.deployments.get("web").rollout is not None
        rig.fleet.heard("budget_exceeded", {"pool": pool.key, "max_usd": 0.25})
        await rig.tick()
        assert versions(rig)[2][1] == "rolled_back"
        event = next(e for e in rig.store.events(limit=100) if e["type"] == "rollout_rolled_back")
        assert "spend cap ($0.25)" in event["message"]
        assert rig.fleet.pool_of(canary_agent) == pool  # draining: still capped

    run(tmp_path, check)


def test_a_promoted_version_leaves_its_spend_pool(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        await canary(rig, 50, canary_max_usd="1")
        await rig.tick()
        agent = rig.store.get(by_version(rig)["2"][0]["id"])
        assert agent is not None and rig.fleet.pool_of(agent) is not None
        rig.fleet.promote("web")
        promoted = rig.fleet.pool_of(agent)
        assert promoted is not None and promoted.cap_nusd is None  # still counted, no longer capped

    run(tmp_path, check)


# -- review of issue 17 ------------------------------------------------------------
async def forget_and_recreate(rig: Rig) -> None:
    """``deploy rm web`` until the controller forgets it, then ``deploy web`` again (version 1 anew)."""
    rig.fleet.deployments.remove("web", drain=False)
    for _ in range(5):
        await rig.tick()
        if not rig.fleet.deployments.list():
            break
    assert not rig.fleet.deployments.list()
    rig.deploy(warm=2, max=10)
    await rig.tick()


def test_a_promotion_tells_zone2_that_the_promoted_agents_left_the_canarys_spend_pool(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        await canary(rig, 50, canary_max_usd="1")
        await rig.tick()
        ids = [a["id"] for a in by_version(rig)["2"]]
        told: list[list[PoolCap | None]] = []  # (uncapped pools after the promotion: counted, not capped)

        async def repool() -> None:  # what zone 2 is told: each live agent's registration, its pool with it
            told.append([rig.fleet.pool_of(agent) for i in ids if (agent := rig.store.get(i)) is not None])

        rig.fleet.repool = repool
        rig.fleet.promote("web")
        await rig.settle()
        # Else zone 2 keeps capping the promoted version, now every task's, at the canary's cap.
        assert told and [p.cap_nusd if p else "no pool" for p in told[-1]] == [None] * len(ids)

    run(tmp_path, check)


def test_a_recreated_deployments_canary_does_not_inherit_the_old_ones_spend_pool(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        await canary(rig, 50, canary_max_usd="1")
        await rig.tick()
        first = rig.store.get(by_version(rig)["2"][0]["id"])
        assert first is not None
        old = rig.fleet.pool_of(first)
        await forget_and_recreate(rig)
        rig.deploy(warm=2, max=10, canary=50, canary_max_usd="1", **V2)
        await rig.tick()
        second = rig.store.get(by_version(rig)["2"][0]["id"])
        assert second is not None
        new = rig.fleet.pool_of(second)
        # The ledger's spend of a pool is all time: the same key would start the new canary at the old one's spend.
        assert old is not None and new is not None and new.key != old.key

    run(tmp_path, check)


def test_a_recreated_deployments_canary_is_not_rolled_back_for_the_old_ones_start_failures(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=1)
        await rig.tick()
        rig.deploy(warm=1, **V2)  # a rolling version 2 whose agents never start
        for _ in range(START_FAILURES):
            await rig.tick()
            for agent in by_version(rig).get("2", []):
                rig.runtime.exit(agent["container_id"], 1)
            await rig.settle()
            rig.clock.offset += 400
        await forget_and_recreate(rig)
        rig.deploy(warm=2, max=10, canary=50, **V2)
        await rig.tick()
        await rig.tick()
        assert rig.fleet.deployments.get("web").rollout is not None, "rolled back for another deployment's agents"

    run(tmp_path, check)


def test_a_cap_refusal_heard_before_a_removal_breaks_no_tick_of_a_recreated_deployment(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        await canary(rig, 50, canary_max_usd="1")
        await rig.tick()
        agent = rig.store.get(by_version(rig)["2"][0]["id"])
        assert agent is not None
        rig.fleet.rollback("web")
        pool = rig.fleet.pool_of(agent)  # rolled back: its draining agents are still capped, and refused
        assert pool is not None
        rig.fleet.heard("budget_exceeded", {"pool": pool.key})
        await forget_and_recreate(rig)
        assert not rig.fleet.capped, "a forgotten deployment's refusals stay in memory for ever"
        rig.deploy(warm=2, max=10, canary=50, **V2)  # no cap this time
        await rig.fleet.tick()  # raised TypeError (formatting a cap of None): every deployment's tick stopped
        await rig.settle()
        assert rig.fleet.deployments.get("web").rollout is not None

    run(tmp_path, check)


def test_a_deployment_whose_rollout_fails_to_advance_stops_no_other(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy("a", warm=1)
        await rig.tick()
        rig.deploy("a", warm=1, canary=10, **V2)

        def broken(*args: Any) -> Any:
            raise RuntimeError("ledger trouble")

        monkeypatch.setattr(rig.fleet, "_judge", broken)
        rig.deploy("b", warm=1)
        await rig.tick()
        assert len(rig.pool("b")) == 1, "b is scaled although a's rollout could not be judged"
        assert len(rig.pool("a")) >= 2, "and a is scaled too: its current version and its canary"

    run(tmp_path, check)


def test_a_small_canary_is_judged_on_its_own_tasks_not_crowded_out_by_the_current_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fleetd.fleet.FIGURES_ROWS", 40)

    async def check(rig: Rig) -> None:
        await canary(rig, 10, promote_after=10, max_duration_increase=1000)
        rig.fleet.submit_many({"deployment": "web", "tasks": [{"input": n} for n in range(400)]})
        await rig.tick()
        pools_ = by_version(rig)
        for _ in range(15):  # the canary's share of the work: one task in ten
            assert await work(rig, pools_["2"][0]) is not None
            for _ in range(9):
                assert await work(rig, pools_["1"][0]) is not None
        await judged(rig)
        # 15 canary tasks finished, promote-after 10: a verdict is due. The newest 40 finished tasks of the
        # deployment hold only about 4 of the canary's, so it waited, and would for ever at this split.
        assert rig.fleet.deployments.get("web").rollout is None, rig.fleet.verdicts["web"]["reason"]

    run(tmp_path, check)


def test_a_canary_waiting_for_more_tasks_than_the_figures_window_is_still_judged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fleetd.fleet.FIGURES_ROWS", 10)

    async def check(rig: Rig) -> None:
        await canary(rig, 50, promote_after=20, max_duration_increase=1000)
        rig.fleet.submit_many({"deployment": "web", "tasks": [{"input": n} for n in range(100)]})
        await rig.tick()
        pools_ = by_version(rig)
        for _ in range(25):
            assert await work(rig, pools_["2"][0]) is not None
            assert await work(rig, pools_["1"][0]) is not None
        await judged(rig)
        assert rig.fleet.deployments.get("web").rollout is None, rig.fleet.verdicts["web"]["reason"]

    run(tmp_path, check)


class PoolSpend:
    """The ledger as the judge reads it: what each spend pool's agents spent (all their calls), none per task."""

    def __init__(self, spent: dict[str, int]) -> None:
        self.spent = spent

    def of(self, ids: Any) -> dict[str, tuple[int, int]]:
        return {}

    def pool_spend(self, key: str, since: Any = None) -> int:
        return next((v for k, v in self.spent.items() if key.startswith(k)), 0)


def test_a_canary_whose_agents_spend_outside_their_tasks_is_judged_on_all_of_it(tmp_path: Path) -> None:
    """A hostile canary agent makes its LLM calls while it holds no task: its tasks cost nothing, yet its version
    spends. The verdict's cost per succeeded task is its version's spend (the spend pool), not its tasks'."""
    async def check(rig: Rig) -> None:
        await canary(rig, 50, promote_after=4)
        rig.fleet.costs = PoolSpend({"web/v1@": 4 * 10_000_000, "web/v2@": 4 * 30_000_000})  # type: ignore[assignment]
        rig.fleet.submit_many({"deployment": "web", "tasks": [{"input": n} for n in range(16)]})
        await rig.tick()
        pools_ = by_version(rig)
        for _ in range(4):
            await work(rig, pools_["1"][0])
            await work(rig, pools_["2"][0])
        await judged(rig)
        assert versions(rig)[2] == ("draining", "rolled_back") or versions(rig)[2] == ("retired", "rolled_back")
        event = next(e for e in rig.store.events(limit=200) if e["type"] == "rollout_rolled_back")
        assert "cost per succeeded task $0.030000 on the canary vs $0.010000" in event["message"]

    run(tmp_path, check)


def test_a_replaced_version_keeps_only_as_many_idle_agents_as_retries_wait(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=3, max=10)
        await rig.tick()
        first, *idle = by_version(rig)["1"]
        task = rig.fleet.submit({"deployment": "web", "input": 1})
        lease = await rig.fleet.next_task(first["id"], 0)
        assert lease is not None and lease.id == task.id and len(idle) == 2
        rig.deploy(warm=3, max=10, **V2)  # a rolling update: v1 drains
        rig.runtime.exit(first["container_id"], 137)  # its task goes back, bound to v1
        await rig.settle()
        await rig.tick()
        left = [a["id"] for a in by_version(rig).get("1", [])]
        assert len(left) == 1 and left[0] in {a["id"] for a in idle}  # one retry waits: one agent stays for it

    run(tmp_path, check)


def test_a_blue_green_version_whose_agents_never_get_ready_is_rolled_back_after_the_deadline(tmp_path: Path,
                                                                                            monkeypatch: Any) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=1)
        await rig.tick()
        rig.fleet.apply("web", {"image": "img", "command": ["work", "--v2"], "ttl": 3600, "warm": 1,
                                "strategy": "blue-green"}, 2)
        await rig.tick()  # its agent starts and never asks for a task
        assert rig.fleet.deployments.get("web").rollout is not None
        later = fleet_module.utcnow() + timedelta(seconds=PROGRESS_DEADLINE + 1)
        monkeypatch.setattr(fleet_module, "utcnow", lambda: later)
        await rig.tick()
        assert versions(rig)[2][1] == "rolled_back"
        event = next(e for e in rig.store.events(limit=100) if e["type"] == "rollout_rolled_back")
        assert f"were ready after {PROGRESS_DEADLINE:.0f} s" in event["message"]

    run(tmp_path, check)


# -- a running canary's options, given again ---------------------------------------
def test_a_running_canarys_options_given_again_change_in_place_and_the_others_keep_theirs(tmp_path: Path) -> None:
    """``fleetd deploy web --canary 40 ...`` with the rolling-out version's spec: the percent changes (the split of the
    tasks queued from then on follows it), the spend cap given before stays, zone 2 is told a changed cap."""

    async def check(rig: Rig) -> None:
        await canary(rig, 10, canary_max_usd="1", promote_after=50)
        await rig.tick()  # the canary's agents
        told: list[int | None] = []

        async def repool() -> None:
            agent = rig.store.get(by_version(rig)["2"][0]["id"])
            pool = rig.fleet.pool_of(agent) if agent is not None else None
            told.append(None if pool is None else pool.cap_nusd)

        rig.fleet.repool = repool
        applied = rig.deploy(warm=2, max=10, canary=40, **V2)
        assert applied["message"] == "updated: version 2's canary percent 10 -> 40"
        policy = rig.fleet.deployments.get("web").rollout.policy  # type: ignore[union-attr]
        assert (policy.percent, policy.max_usd, policy.promote_after) == (40, 1.0, 50)  # type: ignore[union-attr]
        tasks = rig.fleet.submit_many({"deployment": "web", "tasks": [{"input": n} for n in range(1000)]})
        assert abs(Counter(t.route for t in tasks)["v2"] / 1000 - 0.40) <= 0.04
        await rig.settle()
        assert told == [], "the cap did not change: zone 2 has nothing new to learn"
        applied = rig.fleet.apply("web", {"image": "img", "ttl": 3600, "warm": 2, "max": 10, "canary": 40,
                                          "canary_max_usd": "3", **V2}, 2)  # as the API does: Fleet's apply
        assert applied.message == "updated: version 2's canary max_usd 1 -> 3"
        await rig.settle()
        assert told == [3_000_000_000]
        assert rig.deploy(warm=2, max=10, canary=40, **V2)["message"] == "unchanged (version 2 is rolling out)"
        event = [e for e in rig.store.events(limit=100) if e["type"] == "deployment_updated"][-1]
        assert event["data"]["policy"]["max_usd"] == 3.0 and event["data"]["version"] == 2

    run(tmp_path, check)


def test_a_blue_green_target_after_a_daemon_restart_counts_only_the_current_versions_agents(tmp_path: Path) -> None:
    """The draining set is the daemon's memory: after a restart, the replaced version's agents still finishing their
    task are not in it, and the new version's target must not count them."""

    async def check(rig: Rig) -> None:
        rig.deploy(warm=2)
        await rig.tick()
        for _ in range(2):
            rig.fleet.submit({"deployment": "web", "input": 1})
        for agent in rig.pool():
            assert await rig.fleet.next_task(agent["id"], 0) is not None  # v1's two agents are busy
        rig.deploy(warm=2, **V2)  # v2 takes over; v1's agents finish their task first
        await rig.tick()
        assert {v: len(a) for v, a in by_version(rig).items()} == {"1": 2, "2": 2}
        rig.fleet.draining.clear()  # as after a restart of the daemon
        applied = rig.fleet.apply("web", {"image": "img", "command": ["work", "--v3"], "ttl": 3600, "warm": 2,
                                          "strategy": "blue-green"}, 2)
        assert applied.message == "updated: version 3 rolling out (blue-green, 2 agents)"

    run(tmp_path, check)
