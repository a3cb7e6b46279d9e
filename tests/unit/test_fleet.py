"""The fleet controller on a real store and supervisor over the in-memory runtime: pools started and drained as the
autoscaler says, the long poll, leases given back when an agent ends, versions, removal, launch backoff."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from fleetd.errors import Conflict, FleetdError, WaitTimeout
from fleetd.fleet import DEPLOYMENT_LABEL, VERSION_LABEL, WAKE_SPACING, Answered, Fleet, Waiters
from fleetd.gateway.daemon_socket import DaemonSocket
from fleetd.models import iso, utcnow
from fleetd.zone2.contract import TaskAnswers, TaskComplete, TaskCompletions, TaskHold, TaskOutcome
from tests.unit.fleet_rig import Rig, run
from tests.unit.openapi_doc import SPEC_PATH, check


def test_a_warm_pool_is_started_and_named_after_its_deployment(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=2)
        await rig.tick()
        pool = rig.pool()
        assert sorted(a["name"] for a in pool) == ["web-1", "web-2"]
        container = rig.runtime.by_name(rig.runtime.agent_name(pool[0]["id"]))
        assert container is not None
        assert container["Labels"][DEPLOYMENT_LABEL] == "web" and container["Labels"][VERSION_LABEL] == "1"
        await rig.tick()  # the launched agents count: nothing more starts
        assert len(rig.pool()) == 2
        view = rig.fleet.view(rig.fleet.deployments.get("web"), detail=True)
        assert view["replicas"]["live"] == 2 and view["replicas"]["wanted"] == 2
        assert view["decisions"][0]["start"] == 2 and "scaled up 0 -> 2" in view["decisions"][0]["reason"]

    run(tmp_path, check)


def test_queue_depth_scales_the_pool_up_at_once(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(tasks_per_agent=5, max=3)
        await rig.tick()
        assert rig.pool() == []  # min 0, warm 0, nothing queued
        for n in range(11):
            rig.fleet.submit({"deployment": "web", "input": {"n": n}})
        await rig.tick()
        assert len(rig.pool()) == 3  # ceil(11 / 5) = 3, within max 3
        events = [e for e in rig.store.events(None, 100, None, None, None) if e["type"] == "scaling_decision"]
        assert events[-1]["data"]["queued"] == 11 and events[-1]["data"]["start"] == 3

    run(tmp_path, check)


def test_a_worker_takes_completes_and_a_waiter_sees_it(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=1)
        await rig.tick()
        [agent] = rig.pool()
        task = rig.fleet.submit({"deployment": "web", "input": {"q": 1}})
        waiter = asyncio.ensure_future(rig.fleet.wait_task(task.id, 10))
        lease = await rig.fleet.next_task(agent["id"], 0)
        assert lease is not None and lease.id == task.id and lease.input == {"q": 1} and lease.attempt == 1
        again = await rig.fleet.next_task(agent["id"], 0)  # one task at a time: the held one again
        assert again is not None and again.id == task.id
        rig.fleet.complete(task.id, agent["id"], None, {"a": 2})
        done = await asyncio.wait_for(waiter, 5)
        assert done.state == "succeeded" and done.output == {"a": 2} and done.version == "v1"

    run(tmp_path, check)


class Watch:
    """The heartbeat watchdog, for a daemon.sock that only relays task calls."""

    def beat(self, agent_id: str, progress: dict[str, Any] | None) -> bool:
        return True

    def pause(self, why: str) -> None: ...

    def resume(self) -> None: ...


async def nobody_at(ip: str) -> None:
    return None


def test_daemon_sock_answers_a_completion_with_the_next_task_when_asked(tmp_path: Path) -> None:
    """POST /control/tasks/ID/complete (and /fail) with ``next_wait``, as zone 2 relays ``?next=S``: the outcome
    only (not the task's input and output again) and the agent's next lease, or null when none came in time."""

    async def check(rig: Rig) -> None:
        rig.deploy(warm=1)
        await rig.tick()
        [agent] = rig.pool()
        first, second = (rig.fleet.submit({"deployment": "web", "input": {"n": n}}) for n in (1, 2))
        lease = await rig.fleet.next_task(agent["id"], 0)
        assert lease is not None and lease.id == first.id

        door = DaemonSocket(tmp_path / "daemon.sock", rig.store, nobody_at, Watch(), rig.fleet)
        async with TestClient(TestServer(door.app())) as client:
            answer = await client.post(f"/control/tasks/{first.id}/complete",
                                       json={"agent_id": agent["id"], "attempt": 1, "output": "a", "next_wait": 0})
            assert answer.status == 200
            assert await answer.json() == {"id": first.id, "state": "succeeded", "attempts": 1, "next": {
                "id": second.id, "input": {"n": 2}, "attempt": 1, "deadline": rig.fleet.queue.get(second.id).deadline}}
            started = time.monotonic()
            answer = await client.post(f"/control/tasks/{second.id}/fail",
                                       json={"agent_id": agent["id"], "attempt": 1, "error": "x", "retry": False,
                                             "next_wait": 0.3})
            assert await answer.json() == {"id": second.id, "state": "failed", "attempts": 1, "next": None}
            assert time.monotonic() - started >= 0.3  # it waited for one
            answer = await client.post(f"/control/tasks/{second.id}/complete",
                                       json={"agent_id": agent["id"], "attempt": 1, "output": "late"})
            assert answer.status == 409
            third = rig.fleet.submit({"deployment": "web", "input": {"n": 3}})
            assert (await rig.fleet.next_task(agent["id"], 0)).id == third.id  # type: ignore[union-attr]
            started = time.monotonic()
            answer = await client.post(f"/control/tasks/{third.id}/complete",
                                       json={"agent_id": agent["id"], "attempt": 1, "output": "c", "next_wait": 0.3})
            assert await answer.json() == {"id": third.id, "state": "succeeded", "attempts": 1, "next": None}
            assert time.monotonic() - started >= 0.3  # none was ready with the answer: it waited for one

    run(tmp_path, check)


def test_daemon_sock_records_a_group_of_completions_in_one_commit_each_answered_as_alone(tmp_path: Path) -> None:
    """POST /control/tasks/completions, as zone 2 relays completions that came together: one transaction, and each
    completion's answer as it would have been alone: its outcome and next lease, or its own 409/404, which leaves
    the others recorded."""

    async def check(rig: Rig) -> None:
        rig.deploy(warm=3)
        await rig.tick()
        one, two, three = (a["id"] for a in rig.pool())
        tasks = [rig.fleet.submit({"deployment": "web", "input": {"n": n}}) for n in range(5)]
        leases = {agent: await rig.fleet.next_task(agent, 0) for agent in (one, two, three)}
        assert all(leases.values())
        commits: list[str] = []
        rig.store.conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
        door = DaemonSocket(tmp_path / "daemon.sock", rig.store, nobody_at, Watch(), rig.fleet)
        group = TaskCompletions((
            (leases[one].id, TaskComplete(one, 1, {"by": 1}, next_wait=0)),  # type: ignore[union-attr]
            (leases[two].id, TaskComplete(two, 2, "a stale attempt")),  # type: ignore[union-attr]
            ("0000000000000000", TaskComplete(three, None, "no such task")),
            (leases[three].id, TaskComplete(three, None, {"by": 3}, next_wait=0)),  # type: ignore[union-attr]
        ))
        async with TestClient(TestServer(door.app())) as client:
            answer = await client.post("/control/tasks/completions", json=group.to_json())
            assert answer.status == 200
            answers = TaskAnswers.from_json(await answer.json()).answers
        assert commits == ["COMMIT"], "one transaction for the group"
        assert [a.status for a in answers] == [200, 409, 404, 200]
        first, last = (TaskOutcome.from_json(answers[i].body) for i in (0, 3))
        assert (first.state, last.state) == ("succeeded", "succeeded")
        assert first.next is not None and last.next is not None
        assert (first.next.id, last.next.id) == (tasks[3].id, tasks[4].id)  # each with its next lease, in order
        assert "attempt 1" in answers[1].body["error"]["message"]
        assert rig.fleet.queue.get(leases[two].id).state == "leased"  # type: ignore[union-attr]
        assert rig.fleet.queue.get(leases[one].id).output == {"by": 1}  # type: ignore[union-attr]

    run(tmp_path, check)


def test_a_group_that_fails_as_a_whole_is_recorded_one_by_one(tmp_path: Path) -> None:
    """A fault in one completion (not a refusal) must not cost the others of its group theirs: a hostile agent's
    output that breaks the transaction fails alone."""

    async def check(rig: Rig) -> None:
        rig.deploy(warm=2)
        await rig.tick()
        honest, hostile = (a["id"] for a in rig.pool())
        for n in range(2):
            rig.fleet.submit({"deployment": "web", "input": n})
        leases = {agent: await rig.fleet.next_task(agent, 0) for agent in (honest, hostile)}
        recorded = rig.fleet.queue.complete_many

        def breaks_on_poison(completions: list[Any]) -> Any:
            if any(c.output == "poison" for c in completions):
                raise RecursionError("maximum recursion depth exceeded")
            return recorded(completions)

        rig.fleet.queue.complete_many = breaks_on_poison  # type: ignore[method-assign]
        door = DaemonSocket(tmp_path / "daemon.sock", rig.store, nobody_at, Watch(), rig.fleet)
        group = TaskCompletions(((leases[hostile].id, TaskComplete(hostile, 1, "poison")),  # type: ignore[union-attr]
                                 (leases[honest].id, TaskComplete(honest, 1, "fine"))))  # type: ignore[union-attr]
        async with TestClient(TestServer(door.app())) as client:
            answer = await client.post("/control/tasks/completions", json=group.to_json())
            answers = TaskAnswers.from_json(await answer.json()).answers
        assert [a.status for a in answers] == [500, 200]
        assert rig.fleet.queue.get(leases[honest].id).state == "succeeded"  # type: ignore[union-attr]
        assert rig.fleet.queue.get(leases[hostile].id).state == "leased"  # type: ignore[union-attr]

    run(tmp_path, check)


def test_a_lease_and_the_holds_zone2_is_told_carry_the_tasks_cap(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=2)
        await rig.tick()
        capped, free = rig.pool()
        task = rig.fleet.submit({"deployment": "web", "input": {"q": 1}, "max_usd": "0.25"})
        other = rig.fleet.submit({"deployment": "web", "input": {"q": 2}})
        lease = await rig.fleet.next_task(capped["id"], 0)
        assert lease is not None and lease.id == task.id and lease.max_nusd == 250_000_000
        assert lease.to_json()["max_usd"] == "0.25"  # what zone 2 reads, and the agent with it
        free_lease = await rig.fleet.next_task(free["id"], 0)
        assert free_lease is not None and free_lease.id == other.id and free_lease.max_nusd is None
        assert "max_usd" not in free_lease.to_json()
        assert rig.fleet.held(capped["id"]) == TaskHold(task.id, 1, 250_000_000)
        assert rig.fleet.holds() == {capped["id"]: TaskHold(task.id, 1, 250_000_000),
                                     free["id"]: TaskHold(other.id, 1, None)}
        rig.fleet.complete(task.id, capped["id"], 1, None)
        assert rig.fleet.held(capped["id"]) is None and set(rig.fleet.holds()) == {free["id"]}

    run(tmp_path, check)


def test_the_long_poll_wakes_when_a_task_is_submitted(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=1)
        await rig.tick()
        [agent] = rig.pool()
        poll = asyncio.ensure_future(rig.fleet.next_task(agent["id"], 30))
        await asyncio.sleep(0.05)
        assert not poll.done()
        started = time.monotonic()
        task = rig.fleet.submit({"deployment": "web", "input": None})
        lease = await asyncio.wait_for(poll, 5)
        assert lease is not None and lease.id == task.id
        assert time.monotonic() - started < 0.5  # woken, not found by the 1 s recheck
        empty = await rig.fleet.next_task(agent["id"], 0.1)
        assert empty is not None and empty.id == task.id  # still held

    run(tmp_path, check)


def test_a_task_of_an_agent_that_dies_is_given_back_and_retried(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=1, task_attempts=2)
        await rig.tick()
        [agent] = rig.pool()
        task = rig.fleet.submit({"deployment": "web", "input": 1})
        assert (await rig.fleet.next_task(agent["id"], 0)) is not None
        rig.runtime.exit(agent["container_id"], 137)
        await rig.settle()
        again = rig.fleet.queue.get(task.id)
        assert again.state == "queued" and again.attempts == 1 and again.code == "exited"
        await rig.tick()  # 1 queued + 1 warm: two successors; one takes attempt 2
        successor, _ = rig.pool()
        assert {a["name"] for a in rig.pool()} == {"web-2", "web-3"}
        lease = await rig.fleet.next_task(successor["id"], 0)
        assert lease is not None and lease.id == task.id and lease.attempt == 2
        with pytest.raises(Conflict):  # the dead agent's attempt is fenced off
            rig.fleet.complete(task.id, agent["id"], 1, "late")
        rig.runtime.exit(successor["container_id"], 1)
        await rig.settle()
        assert rig.fleet.queue.get(task.id).state == "dead"

    run(tmp_path, check)


def test_a_new_version_drains_the_old_agents_without_cutting_a_task(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=2)
        await rig.tick()
        old = rig.pool()
        task = rig.fleet.submit({"deployment": "web", "input": 1})
        busy = old[0]["id"]
        assert (await rig.fleet.next_task(busy, 0)) is not None
        assert rig.deploy(warm=2, command=["work", "--v2"])["message"] == "updated: version 2"
        await rig.tick()
        names = {a["name"]: a for a in rig.pool()}
        assert {"web-3", "web-4"} <= set(names)  # version 2 started
        assert busy in {a["id"] for a in rig.pool()}  # still finishing its task
        assert old[1]["id"] not in {a["id"] for a in rig.pool()}  # the idle one is stopped
        assert (await rig.fleet.next_task(busy, 0)).id == task.id  # type: ignore[union-attr]
        late = rig.fleet.submit({"deployment": "web", "input": 2})
        done, following = rig.fleet.complete_and_take(task.id, busy, None, "ok")  # complete?next
        assert done.state == "succeeded" and following is None  # a drained agent takes no new task with its answer
        assert (await rig.fleet.next_task(busy, 0)) is None  # nor by asking
        await rig.tick()
        assert busy not in {a["id"] for a in rig.pool()}
        await rig.tick()
        versions = {v.number: v.state.value for v in rig.fleet.deployments.get("web").versions}
        assert versions == {1: "retired", 2: "active"}
        v2 = names["web-3"]["id"]
        lease = await rig.fleet.next_task(v2, 0)
        assert lease is not None and lease.id == late.id
        after = rig.fleet.submit({"deployment": "web", "input": 3})
        done, following = rig.fleet.complete_and_take(late.id, v2, lease.attempt, "ok")
        assert done.state == "succeeded" and following is not None and following.id == after.id
        assert rig.fleet.queue.get(after.id).version == "v2"

    run(tmp_path, check)


def test_removing_a_deployment_stops_its_agents_and_ends_its_queue(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=1)
        await rig.tick()
        waiting = rig.fleet.submit({"deployment": "web", "input": 1})
        rig.fleet.submit({"deployment": "web", "input": 2})
        rig.fleet.deployments.remove("web", drain=False)
        with pytest.raises(Conflict):
            rig.fleet.submit({"deployment": "web", "input": 3})
        await rig.tick()
        assert rig.pool() == []
        await rig.tick()
        assert rig.fleet.deployments.list() == []
        task = rig.fleet.queue.get(waiting.id)
        assert task.state == "failed" and task.code == "deployment_removed"

    run(tmp_path, check)


def test_a_drained_removal_serves_the_queue_first(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=1)
        await rig.tick()
        [agent] = rig.pool()
        task = rig.fleet.submit({"deployment": "web", "input": 1})
        rig.fleet.deployments.remove("web", drain=True)
        await rig.tick()
        assert len(rig.pool()) == 1
        lease = await rig.fleet.next_task(agent["id"], 0)
        assert lease is not None and lease.id == task.id
        rig.fleet.complete(task.id, agent["id"], None, "done")
        await rig.tick()
        await rig.tick()
        assert rig.pool() == [] and rig.fleet.deployments.list() == []
        assert rig.fleet.queue.get(task.id).state == "succeeded"

    run(tmp_path, check)


def test_a_pool_that_cannot_start_backs_off(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=1)
        rig.runtime.missing_images.add("img")
        await rig.tick()
        await rig.tick()
        await rig.tick()
        failed = [e for e in rig.store.events(None, 100, None, None, None) if e["type"] == "deployment_launch_failed"]
        assert len(failed) == 1  # not one launch per tick
        rig.runtime.missing_images.clear()
        rig.clock.offset += 3
        await rig.tick()
        assert len(rig.pool()) == 1

    run(tmp_path, check)


def test_a_worker_that_exits_before_asking_for_work_backs_off_too(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=1)
        await rig.tick()
        [agent] = rig.pool()
        rig.runtime.exit(agent["container_id"], 1)  # a crash at start-up
        await rig.settle()
        await rig.tick()
        assert rig.pool() == []  # not restarted every second
        rig.clock.offset += 3
        await rig.tick()
        [successor] = rig.pool()
        assert (await rig.fleet.next_task(successor["id"], 0)) is None  # it polls: ready, the backoff resets
        assert rig.fleet.launches["web"].failures == 0

    run(tmp_path, check)


def test_scale_down_waits_for_the_window_then_drains_one_idle_agent(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(min=0, warm=0, tasks_per_agent=1, scale_down_window=10)
        for n in range(3):
            rig.fleet.submit({"deployment": "web", "input": n})
        await rig.tick()
        pool = rig.pool()
        assert len(pool) == 3
        for agent in pool:
            lease = await rig.fleet.next_task(agent["id"], 0)
            assert lease is not None
            rig.fleet.complete(lease.id, agent["id"], None, "ok")
        await rig.tick()
        assert len(rig.pool()) == 3  # wanted is 0, but not for the whole window yet
        rig.clock.offset += 11
        await rig.tick()
        assert len(rig.pool()) == 2  # one agent per step
        rig.clock.offset += 61
        await rig.tick()
        assert len(rig.pool()) == 1

    run(tmp_path, check)


def test_wait_with_a_timeout_says_so(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy()
        task = rig.fleet.submit({"deployment": "web", "input": 1})
        with pytest.raises(WaitTimeout):
            await rig.fleet.wait_task(task.id, 0.1)
        rig.fleet.cancel(task.id)
        assert (await rig.fleet.wait_task(task.id, 1)).state == "cancelled"

    run(tmp_path, check)


def test_an_agent_outside_any_deployment_takes_no_task(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        agent = await rig.supervisor.spawn({"image": "img", "command": ["x"]})
        with pytest.raises(Conflict):
            await rig.fleet.next_task(agent["id"], 0)

    run(tmp_path, check)


def test_the_views_match_the_documented_schemas(tmp_path: Path) -> None:
    doc = yaml.safe_load(SPEC_PATH.read_text())

    async def check_views(rig: Rig) -> None:
        rig.deploy(warm=2)
        await rig.tick()
        task = rig.fleet.submit({"deployment": "web", "input": {"q": 1}, "ttl": "10m", "max_usd": "0.25"})
        deployment = rig.fleet.deployments.get("web")
        detail = rig.fleet.view(deployment, detail=True)
        assert detail["decisions"] and detail["queue"]["queued"] == 1
        check(doc, "DeploymentDetail", detail)
        check(doc, "Deployment", rig.fleet.view(deployment))
        check(doc, "Task", task.to_json())

    run(tmp_path, check_views)


def test_a_submit_wakes_one_long_poll_not_all(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=3)
        await rig.tick()
        polls = [asyncio.ensure_future(rig.fleet.next_task(a["id"], 30)) for a in rig.pool()]
        await asyncio.sleep(0.05)
        taken = rig.fleet.queue.lease
        leases: list[str] = []

        def counted(*args: Any, **kwargs: Any) -> Any:
            leases.append(args[0])
            return taken(*args, **kwargs)

        rig.fleet.queue.lease = counted  # type: ignore[method-assign]
        rig.fleet.submit({"deployment": "web", "input": 1})
        done, pending = await asyncio.wait(polls, timeout=0.5)
        assert len(done) == 1 and len(pending) == 2
        assert len(leases) == 1, "only the woken poll took the write lock"
        for poll in pending:
            poll.cancel()

    run(tmp_path, check)


def counted_looks(rig: Rig) -> list[str]:
    """Every look a long poll takes at the queue, by agent id, from now on."""
    looks: list[str] = []
    look = rig.fleet._lease

    def counted(member: Any) -> Any:
        looks.append(member.id)
        return look(member)

    rig.fleet._lease = counted  # type: ignore[method-assign]
    return looks


def test_a_wake_that_no_poll_can_use_does_not_go_round_the_line(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=5)
        await rig.tick()
        looks = counted_looks(rig)
        polls = [asyncio.ensure_future(rig.fleet.next_task(a["id"], 30)) for a in rig.pool()]
        await asyncio.sleep(0.05)
        assert len(looks) == 5
        rig.fleet._signal("web")  # a task made ready and taken before the woken poll looked
        await asyncio.sleep(0.3)
        assert len(looks) == 6, f"one wake, one look (a wake passed on forever spins the daemon): {len(looks)}"
        rig.fleet._signal_all()  # what they may take changed: each looks once
        await asyncio.sleep(0.3)
        assert len(looks) == 11
        assert not any(p.done() for p in polls)
        for poll in polls:
            poll.cancel()
        await asyncio.gather(*polls, return_exceptions=True)

    run(tmp_path, check)


def test_a_wake_for_a_task_the_woken_poll_may_not_take_goes_on_to_one_that_may(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=3)
        await rig.tick()
        first, second, third = (a["id"] for a in rig.pool())
        polls = {agent_id: asyncio.ensure_future(rig.fleet.next_task(agent_id, 30))
                 for agent_id in (first, second, third)}
        await asyncio.sleep(0.05)
        rig.fleet.draining.update({first: "test", second: "test"})  # first in line, taking nothing new
        looks = counted_looks(rig)
        task = rig.fleet.submit({"deployment": "web", "input": 1})
        lease = await asyncio.wait_for(polls[third], 1)
        assert lease is not None and lease.id == task.id
        assert looks == [first, second, third]
        await asyncio.sleep(0.2)
        assert looks == [first, second, third], "the wake went no further than the poll that took the task"
        for poll in (polls[first], polls[second]):
            assert not poll.done()
            poll.cancel()
        await asyncio.gather(polls[first], polls[second], return_exceptions=True)

    run(tmp_path, check)


def test_a_wake_not_looked_at_goes_on_and_never_round_the_line_twice() -> None:
    async def check() -> None:
        waiters = Waiters()
        first, second, third = waiters.join(), waiters.join(), waiters.join()
        waiters.wake()
        assert first.done() and first.result() == 2 and not second.done()
        waiters.leave(first, looked=False)  # its agent hung up before it looked: the next in line gets the wake
        assert second.done() and second.result() == 1  # one more of the line behind it
        waiters.leave(second)  # it looked: the wake is spent
        assert not third.done()
        again = waiters.join()  # [third, again]
        waiters.wake()
        assert third.result() == 1
        waiters.pass_on(third.result())  # it found a task it may not take
        assert again.result() == 0
        waiters.pass_on(again.result())  # nor may this one: the wake has been round, and ends
        assert len(waiters) == 0

    asyncio.run(check())


def test_a_poll_whose_agent_hangs_up_as_it_is_woken_takes_nothing_and_passes_the_wake_on(tmp_path: Path) -> None:
    """The wake and the hang-up in one turn of the loop: asyncio.wait_for (3.11) returns the wake and swallows the
    cancel; the poll must not lease the task to an agent that left."""

    async def check(rig: Rig) -> None:
        rig.deploy(warm=2)
        await rig.tick()
        first, second = (a["id"] for a in rig.pool())
        gone = asyncio.ensure_future(rig.fleet.next_task(first, 30))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(rig.fleet.next_task(second, 30))
        await asyncio.sleep(0.05)
        task = rig.fleet.submit({"deployment": "web", "input": 1})  # wakes the first in line...
        gone.cancel()  # ...whose agent hangs up before it looks
        lease = await asyncio.wait_for(waiting, 1)
        assert lease is not None and lease.id == task.id
        assert gone.cancelled()
        assert rig.fleet.queue.held(first) is None

    run(tmp_path, check)


def test_an_agent_polling_many_times_holds_at_most_two_waits(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=1)
        await rig.tick()
        [agent] = rig.pool()
        polls = [asyncio.ensure_future(rig.fleet.next_task(agent["id"], 30)) for _ in range(6)]
        done, pending = await asyncio.wait(polls, timeout=0.3)
        assert len(done) == 4 and all(p.result() is None for p in done)  # answered at once, empty
        assert len(pending) == 2
        for poll in pending:
            poll.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        assert rig.fleet._polls == {}

    run(tmp_path, check)


def test_an_idle_agent_near_its_ttl_is_replaced_before_it_expires(tmp_path: Path) -> None:
    async def check(rig: Rig) -> None:
        rig.deploy(warm=1, ttl=600)
        await rig.tick()
        [old] = rig.pool()
        assert (await rig.fleet.next_task(old["id"], 0)) is None  # ready, idle
        # 590 s of its 600 s TTL gone: within the refresh margin (max(60 s, 10 %))
        rig.store.update(old["id"], created_at=iso(utcnow() - timedelta(seconds=590)),
                         deadline=iso(utcnow() + timedelta(seconds=10)))
        await rig.tick()
        pool = {a["name"]: a for a in rig.pool()}
        assert set(pool) == {"web-1", "web-2"}
        new = pool["web-2"]
        container = rig.runtime.by_name(rig.runtime.agent_name(new["id"]))
        assert container is not None and container["Labels"]["fleetd.replaces"] == old["id"]
        await rig.tick()
        assert len(rig.pool()) == 2  # the old one serves until its successor asks for work
        assert (await rig.fleet.next_task(new["id"], 0)) is None
        await rig.tick()
        assert [a["id"] for a in rig.pool()] == [new["id"]]
        reasons = [d["reason"] for d in rig.fleet.decisions["web"]]
        assert any(f"replacing {old['id']}" in r for r in reasons)
        assert any(f"retiring {old['id']} (replaced by {new['id']})" in r for r in reasons)

    run(tmp_path, check)


def test_stop_ends_the_controller_even_when_a_wake_up_comes_with_the_cancel(tmp_path: Path) -> None:
    """As fleetd.liveness's loop: on Python 3.11 asyncio.wait_for swallowed a cancel that came with the wake-up (a
    submit as the daemon stops), and stop() waited for the controller forever."""
    async def check(rig: Rig) -> None:
        hung = []
        for turns in range(4):  # the cancel lands that many loop turns after the wake-up
            fleet = Fleet(rig.store, rig.fleet.deployments, rig.fleet.queue)
            fleet.start(rig.supervisor)
            await asyncio.sleep(0.01)  # it has ticked and waits for the next tick
            fleet.wake()
            for _ in range(turns):
                await asyncio.sleep(0)
            stopping = asyncio.ensure_future(fleet.stop())
            done, _ = await asyncio.wait({stopping}, timeout=1)
            if not done:
                hung.append(turns)
                stopping.cancel()  # a second cancel ends the loop, so that the test ends
                with contextlib.suppress(asyncio.CancelledError):
                    await stopping
        assert hung == []

    run(tmp_path, check)


def test_a_stream_of_wakes_ticks_at_most_every_wake_spacing(tmp_path: Path) -> None:
    """A thousand submits a second each wake the controller; it looks at every deployment at most every
    WAKE_SPACING seconds, not once per submit (each look is milliseconds on the loop that serves the submits)."""
    async def check(rig: Rig) -> None:
        fleet = Fleet(rig.store, rig.fleet.deployments, rig.fleet.queue)
        ticks = 0

        async def counted() -> None:
            nonlocal ticks
            ticks += 1

        fleet.tick = counted  # type: ignore[method-assign]
        fleet.start(rig.supervisor)
        try:
            seconds = 0.5
            give_up = time.monotonic() + seconds
            while time.monotonic() < give_up:
                fleet.wake()
                await asyncio.sleep(0.001)
        finally:
            await fleet.stop()
        assert 2 <= ticks <= seconds / WAKE_SPACING + 2, ticks

    run(tmp_path, check)


def test_a_refused_completion_wakes_no_task_waiter_nor_the_controller(tmp_path: Path) -> None:
    """A hostile agent's completions of tasks it does not hold (404, 409) record nothing: they must not wake every
    ``task wait`` (each reloads its task, input and output) nor the controller, as a recorded one does."""

    async def check(rig: Rig) -> None:
        rig.deploy(warm=1)
        await rig.tick()
        [agent] = (a["id"] for a in rig.pool())
        task = rig.fleet.submit({"deployment": "web", "input": "x" * 1000})
        looks: list[str] = []
        get = rig.fleet.queue.get

        def counted(task_id: str) -> Any:
            looks.append(task_id)
            return get(task_id)

        rig.fleet.queue.get = counted  # type: ignore[method-assign]
        waiter = asyncio.ensure_future(rig.fleet.wait_task(task.id, 30))
        await asyncio.sleep(0.05)
        before = looks.count(task.id)
        rig.fleet.draining[agent] = "test"
        rig.fleet._wake.clear()
        refused = rig.fleet.complete_many([Answered("0000000000000000", agent, 1, "bogus"),
                                           Answered(task.id, agent, 1, "not leased")])
        assert [r.status for r in refused] == [404, 409]  # type: ignore[union-attr]
        for _ in range(100):
            with contextlib.suppress(FleetdError):
                rig.fleet.complete("0000000000000000", agent, 1, "bogus")
        await asyncio.sleep(0.05)
        assert looks.count(task.id) == before, "refused completions woke the task's waiter"
        assert not rig.fleet._wake.is_set(), "refused completions woke the controller"
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)

    run(tmp_path, check)


def test_a_wake_taken_by_a_poll_that_answers_the_task_it_already_holds_goes_on(tmp_path: Path) -> None:
    """An agent may hold a task while a long poll of its own waits in line (it won a ready task with a second poll,
    ``wait=0``). Woken for a new task, that poll answers the task held, not the new one: the wake must go on to the
    next in line, else the new task waits for the other polls' waits to end."""

    async def check(rig: Rig) -> None:
        rig.deploy(warm=2)
        await rig.tick()
        hostile, honest = (a["id"] for a in rig.pool())
        first = asyncio.ensure_future(rig.fleet.next_task(hostile, 30))  # first in line
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(rig.fleet.next_task(honest, 30))
        await asyncio.sleep(0.02)
        held = rig.fleet.queue.submit("web", "won by a second poll")
        assert rig.fleet.queue.lease(hostile, "web", "v1") is not None  # as its next?wait=0 would, before a wake
        task = rig.fleet.submit({"deployment": "web", "input": "new"})  # wakes the head of the line
        lease = await asyncio.wait_for(first, 1)
        assert lease is not None and lease.id == held.id
        got = await asyncio.wait_for(second, 2)  # on the current code: only after its 30 s
        assert got is not None and got.id == task.id

    run(tmp_path, check)


def test_an_attempt_past_sqlites_integers_is_refused_alone_not_a_fault_of_its_group(tmp_path: Path) -> None:
    """An agent names any whole number as its attempt: one past SQLite's integers (2**63) must be refused as that
    completion's own 4xx, not break its group's transaction (which is then recorded again one by one, and answered
    500, which zone 2 makes a 503 the agent retries, again and again)."""

    async def check(rig: Rig) -> None:
        rig.deploy(warm=2)
        await rig.tick()
        honest, hostile = (a["id"] for a in rig.pool())
        for n in range(3):
            rig.fleet.submit({"deployment": "web", "input": n})
        old = await rig.fleet.next_task(hostile, 0)
        assert old is not None
        rig.fleet.complete(old.id, hostile, 1, "done")  # a task of its own it knows the id of
        leases = {agent: await rig.fleet.next_task(agent, 0) for agent in (honest, hostile)}
        commits: list[str] = []
        rig.store.conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
        door = DaemonSocket(tmp_path / "daemon.sock", rig.store, nobody_at, Watch(), rig.fleet)
        group = TaskCompletions(((old.id, TaskComplete(hostile, 2 ** 63, "again")),
                                 (leases[honest].id, TaskComplete(honest, 1, "fine"))))  # type: ignore[union-attr]
        async with TestClient(TestServer(door.app())) as client:
            answer = await client.post("/control/tasks/completions", json=group.to_json())
            answers = TaskAnswers.from_json(await answer.json()).answers
            alone = await client.post(f"/control/tasks/{old.id}/complete",
                                      json={"agent_id": hostile, "attempt": 2 ** 63, "output": "again"})
        assert answers[0].status in (400, 409), answers[0]
        assert answers[1].status == 200
        assert commits == ["COMMIT"], "one transaction for the group"
        assert alone.status in (400, 409)

    run(tmp_path, check)
