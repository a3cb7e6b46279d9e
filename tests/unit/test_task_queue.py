"""The durable task queue (fleetd.task_queue) on a real state.db: every transition, the fencing of leases,
concurrent leases from two connections, backoff, expiry, idempotency, retention and a restart."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from fleetd.errors import Conflict, InvalidRequest, NotFound
from fleetd.models import iso
from fleetd.store import Store
from fleetd.task_queue import MAX_BODY_BYTES, Lease, TaskQueue, TaskState
from tests.unit.wall_clock import START, WallClock


class HighRng(random.Random):
    """Always the top of the range: the backoff's bound itself."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def clock() -> WallClock:
    return WallClock()


@pytest.fixture
def queue(store: Store, clock: WallClock) -> TaskQueue:
    return TaskQueue(store, clock=clock, rng=random.Random(7))


def at(seconds: float) -> str | None:
    return iso(START + timedelta(seconds=seconds))


def lease(queue: TaskQueue, agent: str, deployment: str = "web", version: str = "v1") -> Lease:
    got = queue.lease(agent, deployment, version)
    assert got is not None
    return got


def test_submit_queues_a_task_with_the_deployment_defaults(queue: TaskQueue) -> None:
    task = queue.submit("web", {"url": "https://example.test/"})
    assert task.state is TaskState.QUEUED and task.deployment == "web" and task.input == {"url": "https://example.test/"}
    assert (task.attempts, task.max_attempts, task.version, task.agent_id) == (0, 3, None, None)
    assert (task.created_at, task.deadline, task.retry_at) == (at(0), at(3600), at(0))
    assert (task.started_at, task.finished_at, task.cost_nusd, task.llm_calls, task.max_nusd) == (
        None, None, 0, 0, None)
    shown = task.to_json()
    assert {"id", "deployment", "version", "state", "attempts", "agent_id", "input", "output", "error", "cost_usd",
            "llm_calls", "created_at", "started_at", "finished_at"} <= set(shown)
    assert shown["state"] == "queued" and shown["cost_usd"] == 0 and json.loads(json.dumps(shown)) == shown


def test_submit_takes_ttl_attempts_max_usd_and_key(queue: TaskQueue) -> None:
    task = queue.submit("web", [1, 2], ttl="10m", attempts=5, max_usd="0.25", key="k1")
    assert (task.deadline, task.max_attempts, task.max_nusd, task.key) == (at(600), 5, 250_000_000, "k1")
    assert task.to_json()["max_usd"] == 0.25


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"deployment": "bad name"}, "invalid deployment"),
        ({"ttl": 0}, "--ttl"),
        ({"ttl": 7 * 86400 + 1}, "--ttl"),
        ({"attempts": 0}, "--attempts"),
        ({"attempts": 101}, "--attempts"),
        ({"attempts": True}, "--attempts"),
        ({"max_usd": "-1"}, "--max-usd"),
        ({"key": ""}, "--key"),
        ({"key": "k" * 257}, "--key"),
        ({"payload": float("nan")}, "not JSON"),
        ({"payload": object()}, "not JSON"),
    ],
)
def test_submit_refuses_bad_values(queue: TaskQueue, kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"deployment": "web", "payload": {}, **kwargs}
    with pytest.raises(InvalidRequest, match=message):
        queue.submit(str(args.pop("deployment")), args.pop("payload"), **args)
    assert queue.counts()["queued"] == 0


def test_input_and_output_are_capped_at_one_mebibyte_of_json(queue: TaskQueue) -> None:
    largest = "x" * (MAX_BODY_BYTES - 2)  # with its two quotes: exactly the cap
    task = queue.submit("web", largest)
    assert queue.get(task.id).input == largest
    with pytest.raises(InvalidRequest, match=f"{MAX_BODY_BYTES + 1} bytes of JSON, at most {MAX_BODY_BYTES}"):
        queue.submit("web", largest + "x")
    got = lease(queue, "a1")
    with pytest.raises(InvalidRequest, match="task output"):
        queue.complete(got.id, "a1", 1, largest + "x")
    assert queue.get(task.id).state is TaskState.LEASED  # a refused output changes nothing
    queue.complete(got.id, "a1", 1, largest)
    assert queue.get(got.id).output == largest


def test_lease_hands_out_the_oldest_task_binds_the_version_and_counts_the_attempt(queue: TaskQueue,
                                                                                   clock: WallClock) -> None:
    first = queue.submit("web", {"n": 1})
    second = queue.submit("web", {"n": 2})
    queue.submit("batch", {"n": 3})
    clock.advance(5)
    got = lease(queue, "a1")
    assert got == Lease(first.id, {"n": 1}, 1, at(3600))
    assert got.to_json() == {"id": first.id, "input": {"n": 1}, "attempt": 1, "deadline": at(3600)}
    task = queue.get(first.id)
    assert (task.state, task.agent_id, task.version, task.attempts, task.started_at) == (
        TaskState.LEASED, "a1", "v1", 1, at(5))
    assert lease(queue, "a2").id == second.id  # FIFO within the deployment
    assert queue.lease("a3", "web", "v1") is None  # batch's task is not web's
    assert queue.held("a2") == queue.get(second.id) and queue.held("a3") is None


def test_an_agent_holding_a_task_gets_that_task_back_not_a_second_one(queue: TaskQueue) -> None:
    first = queue.submit("web", "one")
    second = queue.submit("web", "two")
    assert lease(queue, "a1") == lease(queue, "a1") == Lease(first.id, "one", 1, at(3600))
    assert queue.get(first.id).attempts == 1  # asking again is not a new attempt
    assert queue.get(second.id).state is TaskState.QUEUED


def test_a_bound_task_goes_only_to_agents_of_its_version(queue: TaskQueue, clock: WallClock) -> None:
    bound = queue.submit("web", "bound")
    lease(queue, "old-1", version="v1")
    queue.give_back("old-1", "exited")
    later = queue.submit("web", "later")
    clock.advance(3600 - 1)  # past any backoff, before the deadline
    assert lease(queue, "new-1", version="v2").id == later.id  # the older task is bound to v1: skipped
    assert queue.lease("new-2", "web", "v2") is None
    assert lease(queue, "old-2", version="v1") == Lease(bound.id, "bound", 2, at(3600))
    assert queue.get(later.id).version == "v2"


def test_complete_succeeds_and_clears_the_error_of_an_earlier_attempt(queue: TaskQueue, clock: WallClock) -> None:
    task = queue.submit("web", "q")
    lease(queue, "a1")
    queue.fail(task.id, "a1", 1, "rate limited")
    assert queue.get(task.id).error == "rate limited"
    clock.advance(60)
    assert lease(queue, "a2").attempt == 2
    clock.advance(1)
    queue.complete(task.id, "a2", 2, {"answer": 42})
    done = queue.get(task.id)
    assert (done.state, done.output, done.error, done.code, done.agent_id, done.finished_at) == (
        TaskState.SUCCEEDED, {"answer": 42}, None, None, "a2", at(61))
    assert queue.held("a2") is None


def test_fail_without_retry_ends_the_task_failed(queue: TaskQueue) -> None:
    task = queue.submit("web", "q")
    lease(queue, "a1")
    failed = queue.fail(task.id, "a1", 1, "input is not a URL", retry=False)
    assert (failed.state, failed.error, failed.code, failed.attempts, failed.finished_at) == (
        TaskState.FAILED, "input is not a URL", "agent_error", 1, at(0))
    assert queue.lease("a1", "web", "v1") is None


def test_fail_with_retry_queues_the_task_after_a_full_jitter_backoff(queue: TaskQueue, clock: WallClock) -> None:
    task = queue.submit("web", "q")
    lease(queue, "a1")
    delay = random.Random(7).uniform(0, 10)  # the queue's rng, seeded alike: attempt 1's bound is base (10 s)
    again = queue.fail(task.id, "a1", 1, "upstream 503", code="upstream_error")
    assert (again.state, again.agent_id, again.code, again.error, again.finished_at) == (
        TaskState.QUEUED, None, "upstream_error", "upstream 503", None)
    assert again.retry_at == iso(START + timedelta(seconds=delay)) and 0 < delay < 10
    clock.advance(delay - 0.01)
    assert queue.lease("a2", "web", "v1") is None  # its backoff has not elapsed
    clock.now = START + timedelta(seconds=delay)
    assert lease(queue, "a2").attempt == 2


def test_the_backoff_bound_doubles_from_base_up_to_cap(store: Store) -> None:
    queue = TaskQueue(store, rng=HighRng(), backoff_base=10, backoff_cap=360)
    assert [queue.backoff(n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 320, 360, 360]
    seeded = TaskQueue(store, rng=random.Random(3))
    delays = [seeded.backoff(n) for n in range(1, 200)]
    reference = random.Random(3)
    assert delays == [reference.uniform(0, min(360, 10 * 2 ** (n - 1))) for n in range(1, 200)]
    assert all(0 <= d <= min(360, 10 * 2 ** (n - 1)) for n, d in enumerate(delays, 1))
    assert max(delays) > 300  # the jitter spans the range, not only its low end


def test_give_back_retries_with_backoff_until_the_attempts_are_spent_then_dead(store: Store, clock: WallClock) -> None:
    queue = TaskQueue(store, clock=clock, rng=HighRng())
    task = queue.submit("web", "q", attempts=3)
    assert queue.give_back("nobody", "exited") is None
    for attempt, backoff in ((1, 10), (2, 20)):
        assert lease(queue, f"a{attempt}").attempt == attempt
        back = queue.give_back(f"a{attempt}", "heartbeat_lost")
        assert back is not None and back.state is TaskState.QUEUED and back.attempts == attempt
        assert back.retry_at == iso(clock.now + timedelta(seconds=backoff)) and back.code == "heartbeat_lost"
        clock.advance(backoff)
    assert lease(queue, "a3").attempt == 3
    dead = queue.give_back("a3", "killed")
    assert dead is not None
    assert (dead.state, dead.code, dead.agent_id, dead.attempts, dead.finished_at) == (
        TaskState.DEAD, "killed", "a3", 3, iso(clock.now))
    assert dead.error == "attempts spent (3 of 3); the last: agent a3 gave the task back: killed"
    clock.advance(3600)
    assert queue.lease("a4", "web", "v1") is None and queue.get(task.id).state is TaskState.DEAD  # kept, not expired


def test_fail_with_retry_on_the_last_attempt_is_dead(queue: TaskQueue) -> None:
    task = queue.submit("web", "q", attempts=1)
    lease(queue, "a1")
    assert queue.fail(task.id, "a1", 1, "crashed").state is TaskState.DEAD


def test_complete_and_take_answers_and_leases_the_next_in_one_transaction(queue: TaskQueue, store: Store,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = queue.submit("web", "q1"), queue.submit("web", "q2")
    heard: list[list[str]] = []
    queue.on_finished.append(lambda tasks: heard.append([t.id for t in tasks]))
    lease(queue, "a1")
    transactions = []
    begin = store.transaction
    monkeypatch.setattr(store, "transaction", lambda: transactions.append(1) or begin())
    done, following = queue.complete_and_take(first.id, "a1", 1, {"answer": 1}, "web", "v1")
    assert done.state is TaskState.SUCCEEDED and done.id == first.id and heard == [[first.id]]
    assert following is not None and (following.id, following.input, following.attempt) == (second.id, "q2", 1)
    assert queue.held("a1") is not None and queue.held("a1").id == second.id  # type: ignore[union-attr]
    assert transactions == [1]  # one commit for both
    done, following = queue.complete_and_take(second.id, "a1", 1, None, "web", "v1")
    assert done.state is TaskState.SUCCEEDED and following is None  # nothing ready: the caller polls
    # a stale completion leases nothing, and changes nothing
    third = queue.submit("web", "q3")
    with pytest.raises(Conflict):
        queue.complete_and_take(first.id, "a2", 1, "late", "web", "v1")
    assert queue.get(third.id).state is TaskState.QUEUED
    # the same completion again (its answer was lost): answered as the first, no lease taken on its behalf
    again, following = queue.complete_and_take(second.id, "a1", 1, None, "web", "v1")
    assert again.state is TaskState.SUCCEEDED and following is None and queue.get(third.id).state is TaskState.QUEUED


def test_a_completion_from_a_stale_attempt_is_refused_with_409(queue: TaskQueue, clock: WallClock) -> None:
    task = queue.submit("web", "q")
    lease(queue, "a1")
    queue.give_back("a1", "heartbeat_lost")  # a1 is alive after all, and will try to complete
    with pytest.raises(Conflict) as queued:
        queue.complete(task.id, "a1", 1, "late")
    assert queued.value.status == 409
    assert queued.value.message == (f"task {task.id}: attempt 1 of agent a1 is not the current lease; "
                                    "the task is queued (heartbeat_lost) at attempt 1")
    clock.advance(60)
    assert lease(queue, "a2").attempt == 2
    for agent, attempt in (("a1", 1), ("a1", 2), ("a2", 1), ("a2", 3)):
        with pytest.raises(Conflict, match=f"attempt {attempt} of agent {agent} is not the current lease; the task "
                                           "is leased to agent a2 at attempt 2"):
            queue.complete(task.id, agent, attempt, "late")
        with pytest.raises(Conflict):
            queue.fail(task.id, agent, attempt, "late")
    assert queue.get(task.id).state is TaskState.LEASED and queue.get(task.id).output is None
    assert queue.complete(task.id, "a2", 2, "on time").output is None  # answered without input and output
    assert queue.complete(task.id, "a2", 2, "twice").state == "succeeded"
    assert queue.get(task.id).output == "on time"  # the same answer again: unchanged
    with pytest.raises(Conflict, match="the task is succeeded at attempt 2"):
        queue.complete(task.id, "a1", 2, "twice")
    with pytest.raises(Conflict, match="the task is succeeded at attempt 2"):
        queue.fail(task.id, "a2", 2, "after all")
    assert queue.get(task.id).output == "on time"
    with pytest.raises(NotFound, match="no such task: nope"):
        queue.complete("nope", "a2", 2, "x")


def test_a_task_past_its_deadline_fails_with_ttl_expired(queue: TaskQueue, clock: WallClock) -> None:
    waiting = queue.submit("web", "waits", ttl=60)
    running = queue.submit("web", "runs", ttl=120)
    kept = queue.submit("web", "long", ttl=3600)
    clock.advance(59.999)
    assert queue.expire() == []
    assert lease(queue, "a1").id == waiting.id  # due at 60 s: still handed out at 59.999 s
    assert queue.give_back("a1", "exited") is not None
    assert lease(queue, "a2").id == running.id
    clock.advance(0.001)
    assert queue.expire() == [waiting.id]
    expired = queue.get(waiting.id)
    assert (expired.state, expired.code, expired.finished_at) == (TaskState.FAILED, "ttl_expired", at(60))
    clock.advance(60)
    assert queue.expire() == [running.id]
    assert queue.get(running.id).agent_id == "a2"  # who held it, kept for inspection
    with pytest.raises(Conflict, match=r"the task is failed \(ttl_expired\) at attempt 1"):
        queue.complete(running.id, "a2", 1, "too late")
    assert queue.get(kept.id).state is TaskState.QUEUED


def test_no_task_is_handed_out_or_completed_past_its_deadline_before_a_sweep(queue: TaskQueue,
                                                                            clock: WallClock) -> None:
    late = queue.submit("web", "late", ttl=10)
    held = queue.submit("web", "held", ttl=20)
    fresh = queue.submit("web", "fresh", ttl=100)
    lease(queue, "a1")  # late
    clock.advance(10)
    assert lease(queue, "a1").id == held.id  # a1's lease expired: it may take the next task
    clock.advance(10)
    with pytest.raises(Conflict, match="ttl_expired"):
        queue.complete(held.id, "a1", 1, "done")
    assert queue.get(held.id).state is TaskState.FAILED  # the expiry stays, though the completion was refused
    assert lease(queue, "a2").id == fresh.id
    assert queue.get(late.id).code == "ttl_expired"


def test_cancel_ends_a_queued_or_leased_task_and_the_holder_gets_409(queue: TaskQueue, clock: WallClock) -> None:
    held = queue.submit("web", "held")
    waiting = queue.submit("web", "waiting")
    lease(queue, "x")
    clock.advance(1)
    cancelled = queue.cancel(waiting.id)
    assert (cancelled.state, cancelled.code, cancelled.agent_id, cancelled.finished_at) == (
        TaskState.CANCELLED, "cancelled", None, at(1))
    cancelled = queue.cancel(held.id)
    assert (cancelled.state, cancelled.agent_id, cancelled.attempts, cancelled.finished_at) == (
        TaskState.CANCELLED, "x", 1, at(1))
    with pytest.raises(Conflict, match=f"task {held.id}: attempt 1 of agent x is not the current lease; the task "
                                       "is cancelled at attempt 1"):
        queue.complete(held.id, "x", 1, "result")
    assert queue.get(held.id).output is None
    assert queue.cancel(held.id) == cancelled  # again: no change, no error
    later = queue.submit("web", "later")
    assert lease(queue, "x").id == later.id  # x no longer holds the cancelled task: it may take the next
    queue.complete(later.id, "x", 1, None)
    with pytest.raises(Conflict, match=f"task {later.id} is already succeeded: it cannot be cancelled"):
        queue.cancel(later.id)
    with pytest.raises(NotFound):
        queue.cancel("nope")


def test_an_idempotency_key_answers_the_first_task_of_its_deployment(queue: TaskQueue) -> None:
    first = queue.submit("web", {"b": 2, "a": 1}, key="order-7")
    again = queue.submit("web", {"a": 1, "b": 2}, key="order-7")
    assert again == first
    other = queue.submit("batch", {"a": 1, "b": 2}, key="order-7")  # unique per deployment only
    assert other.id != first.id
    with pytest.raises(Conflict, match=f"idempotency key 'order-7' was used for task {first.id} with another input"):
        queue.submit("web", {"a": 2}, key="order-7")
    assert queue.counts("web")["queued"] == 1 and queue.counts("batch")["queued"] == 1
    assert queue.submit("web", {"a": 1}).id != first.id  # no key: a new task each time


def test_a_deployment_holds_at_most_max_pending_unfinished_tasks(store: Store, clock: WallClock) -> None:
    queue = TaskQueue(store, clock=clock, max_pending=2)
    first = queue.submit("web", 1)
    queue.submit("web", 2)
    with pytest.raises(Conflict, match="deployment web has 2 unfinished tasks, at most 2"):
        queue.submit("web", 3)
    queue.submit("batch", 3)  # another deployment's queue
    lease(queue, "a1")
    queue.complete(first.id, "a1", 1, "ok")
    assert queue.submit("web", 3).state is TaskState.QUEUED


def test_cost_and_llm_calls_add_up_on_the_task(queue: TaskQueue) -> None:
    task = queue.submit("web", "q", max_usd=1)
    lease(queue, "a1")
    assert queue.add_cost(task.id, 1_500_000) == (1_500_000, 1)
    assert queue.add_cost(task.id, 2_000_000, 2) == (3_500_000, 3)
    queue.complete(task.id, "a1", 1, "ok")
    assert queue.add_cost(task.id, 500_000) == (4_000_000, 4)  # a call settled after the completion still counts
    shown = queue.get(task.id).to_json()
    assert (shown["cost_usd"], shown["llm_calls"], shown["max_usd"]) == (0.004, 4, 1.0)
    with pytest.raises(NotFound):
        queue.add_cost("nope", 1)
    with pytest.raises(InvalidRequest):
        queue.add_cost(task.id, -1)


def scenario(queue: TaskQueue, clock: WallClock) -> dict[str, str]:
    """One task in each state of deployment web, and a queued one in batch."""
    ids = {name: queue.submit("web", name, attempts=1, ttl=100 if name == "failed" else 3600).id
           for name in ("succeeded", "failed", "cancelled", "dead", "leased", "queued")}
    for name in ("succeeded", "failed", "cancelled", "dead", "leased"):
        assert lease(queue, name).id == ids[name]
    queue.complete(ids["succeeded"], "succeeded", 1, "ok")
    queue.cancel(ids["cancelled"])
    queue.give_back("dead", "exited")
    clock.advance(100)
    queue.expire()
    queue.submit("batch", "other")
    return ids


def test_counts_per_state_and_listings(queue: TaskQueue, clock: WallClock) -> None:
    ids = scenario(queue, clock)
    assert queue.counts("web") == {"queued": 1, "leased": 1, "succeeded": 1, "failed": 1, "cancelled": 1, "dead": 1}
    assert queue.counts() == {"queued": 2, "leased": 1, "succeeded": 1, "failed": 1, "cancelled": 1, "dead": 1}
    assert queue.counts("none") == dict.fromkeys(("queued", "leased", "succeeded", "failed", "cancelled", "dead"), 0)
    assert [t.id for t in queue.tasks("web")] == list(ids.values())
    assert [t.state.value for t in queue.tasks("web")] == list(ids)
    assert [t.deployment for t in queue.tasks(state="queued")] == ["web", "batch"]
    listed = queue.tasks("web", "succeeded")
    assert [t.id for t in listed] == [ids["succeeded"]] and listed[0].input is None and listed[0].output is None
    assert queue.get(ids["succeeded"]).output == "ok"  # the bodies are there: only left out of listings
    assert len(queue.tasks(limit=2)) == 2
    with pytest.raises(InvalidRequest, match="--state"):
        queue.tasks(state="running")


def test_retention_removes_old_finished_tasks_and_the_totals_never_go_down(store: Store, clock: WallClock) -> None:
    queue = TaskQueue(store, clock=clock, rng=random.Random(1))
    ids = scenario(queue, clock)  # finished at 0 s (succeeded, cancelled, dead) and 100 s (failed)
    agents_before = store.counts()
    totals = queue.finished_totals()
    assert totals == {"succeeded": 1, "failed": 1, "cancelled": 1, "dead": 1}
    assert queue.purge(START + timedelta(seconds=100)) == 3  # ended before 100 s
    for name in ("succeeded", "cancelled", "dead"):
        with pytest.raises(NotFound):
            queue.get(ids[name])
    assert [queue.get(ids[n]).state.value for n in ("failed", "leased", "queued")] == ["failed", "leased", "queued"]
    assert queue.finished_totals() == totals
    assert queue.purge(START + timedelta(seconds=100)) == 0
    assert queue.purge(START + timedelta(days=30)) == 1  # failed; live tasks are never purged
    assert queue.finished_totals() == totals and queue.counts("web")["leased"] == 1
    assert store.counts() == agents_before  # the agents' counters are not the tasks'


def test_two_connections_leasing_at_once_never_hand_out_one_task_twice(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    setup = Store(path)
    submitted = {TaskQueue(setup).submit("web", n).id for n in range(60)}
    setup.close()
    opening = threading.Lock()  # opening a store applies migrations: one at a time, then race
    start = threading.Barrier(4)
    handed: list[list[str]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            with opening:
                store = Store(path)
            queue = TaskQueue(store)
            start.wait()
            n = 0
            while (got := queue.lease(f"agent-{index}-{n}", "web", "v1")) is not None:
                handed[index].append(got.id)
                n += 1
                time.sleep(0.001)  # let the other connections in: the test is of interleaved leases
            store.close()
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    every = [task_id for ids in handed for task_id in ids]
    assert len(every) == len(set(every)) == 60 and set(every) == submitted
    assert sum(1 for ids in handed if ids) >= 2  # the connections did interleave


KILLED_DAEMON = """
import json, os, signal, sys
from datetime import datetime
from pathlib import Path
from fleetd.store import Store
from fleetd.task_queue import TaskQueue
queue = TaskQueue(Store(Path(sys.argv[1])), clock=lambda: datetime.fromisoformat(sys.argv[2]))
task = queue.submit("web", {"job": 1}, key="k")
waiting = queue.submit("web", {"job": 2})
lease = queue.lease("a1", "web", "v1")
print(json.dumps([task.id, waiting.id, lease.to_json()]), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_lease_survives_a_sigkill_and_can_be_given_back(tmp_path: Path, clock: WallClock) -> None:
    path = tmp_path / "state.db"
    killed = subprocess.run([sys.executable, "-c", KILLED_DAEMON, str(path), START.isoformat()],
                            capture_output=True, text=True, timeout=60, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    task_id, waiting_id, leased = json.loads(killed.stdout)

    store = Store(path)
    try:
        queue = TaskQueue(store, clock=clock, rng=HighRng())
        held = queue.get(task_id)
        assert (held.state, held.agent_id, held.attempts, held.input) == (TaskState.LEASED, "a1", 1, {"job": 1})
        assert lease(queue, "a1").to_json() == leased  # the agent asks again: the same lease, not a second task
        assert lease(queue, "a2").id == waiting_id
        assert queue.submit("web", {"job": 1}, key="k").id == task_id
        orphans = queue.give_back_orphans({"a2"})  # a1 ended while the daemon was down
        assert [(t.id, t.state, t.code, t.retry_at) for t in orphans] == [(task_id, TaskState.QUEUED, "lost", at(10))]
        assert queue.get(waiting_id).agent_id == "a2"  # a live agent keeps its lease
        clock.advance(10)
        assert lease(queue, "a3") == Lease(task_id, {"job": 1}, 2, at(3600))
        assert queue.give_back("a3", "heartbeat_lost") is not None  # and giving back works on the reopened file
        assert queue.counts("web") == {"queued": 1, "leased": 1, "succeeded": 0, "failed": 0, "cancelled": 0,
                                       "dead": 0}
    finally:
        store.close()


def test_a_completion_sent_again_is_answered_as_the_first(tmp_path: Path) -> None:
    """The agent's retry of a completion whose answer was lost: 200 with the task, not 409 (it did succeed)."""
    store = Store(tmp_path / "state.db")
    try:
        queue = TaskQueue(store)
        task = queue.submit("web", 1)
        lease = queue.lease("a1", "web", "v1")
        assert lease is not None
        first = queue.complete(task.id, "a1", lease.attempt, {"ok": 1})
        again = queue.complete(task.id, "a1", lease.attempt, {"ok": 2})
        assert again == first and again.state == "succeeded" and queue.get(task.id).output == {"ok": 1}
        with pytest.raises(Conflict):
            queue.complete(task.id, "a2", lease.attempt, "other agent")
        with pytest.raises(Conflict):
            queue.complete(task.id, "a1", lease.attempt + 1, "other attempt")
    finally:
        store.close()


def test_each_transition_tells_its_listeners_the_tasks_it_finished_after_it_committed(
        queue: TaskQueue, store: Store, clock: WallClock, caplog: pytest.LogCaptureFixture) -> None:
    heard: list[list[tuple[str, str]]] = []

    def listen(tasks: list[Any]) -> None:
        assert not store.conn.in_transaction  # committed
        assert all(t.finished_at is not None and t.input is None for t in tasks)  # summaries, as listings show
        heard.append([(t.id, t.state.value) for t in tasks])

    queue.on_finished.append(listen)
    done, failed, dead, cancelled, expired = (queue.submit("web", n, attempts=1, ttl=60) for n in range(5))
    queue.lease("a1", "web", "v1")
    queue.complete(done.id, "a1", 1, "ok")
    queue.lease("a2", "web", "v1")
    queue.fail(failed.id, "a2", 1, "no", retry=False)
    queue.lease("a3", "web", "v1")
    queue.give_back("a3", "heartbeat_lost")  # its only attempt: dead
    queue.cancel(cancelled.id)
    with pytest.raises(Conflict):
        queue.complete(done.id, "a9", 1, "again")  # refused: nothing finished, nothing heard
    queue.complete(done.id, "a1", 1, "again")  # the same completion again: answered, nothing finished anew
    clock.advance(61)
    assert queue.expire() == [expired.id]
    assert heard == [[(done.id, "succeeded")], [(failed.id, "failed")], [(dead.id, "dead")],
                     [(cancelled.id, "cancelled")], [(expired.id, "failed")]]
    queue.on_finished.insert(0, lambda tasks: 1 / 0)  # a listener that fails does not undo the transition
    again = queue.submit("web", "x")
    with caplog.at_level("ERROR"):
        assert queue.cancel(again.id).state == "cancelled"
    assert "a listener to finished tasks failed" in caplog.text and heard[-1] == [(again.id, "cancelled")]


def test_the_counts_kept_by_triggers_match_the_tasks_after_every_kind_of_change(store: Store, clock: WallClock
                                                                                 ) -> None:
    """task_counts (what submit, the autoscaler, `deploy ls` and the metrics read) against a count of the rows, after
    a random walk over every transition, expiry and retention; a count that reaches 0 leaves no row behind."""
    queue = TaskQueue(store, clock=clock, rng=random.Random(3), backoff_base=0.0)
    walk = random.Random(11)

    def counted() -> dict[tuple[str, str], int]:
        return {(d, s): n for d, s, n in store.conn.execute(
            "SELECT deployment, state, COUNT(*) FROM tasks GROUP BY 1, 2")}

    for step in range(400):
        deployment = walk.choice(["web", "batch"])
        agent = walk.choice(["a1", "a2", "a3"])
        move = walk.random()
        if move < 0.35:
            queue.submit(deployment, {"n": step}, ttl=walk.choice([5, 3600]))
        elif move < 0.6:
            queue.lease(agent, deployment, "v1")
        elif (held := queue.held(agent)) is not None and move < 0.85:
            if walk.random() < 0.6:
                queue.complete(held.id, agent, held.attempts, "ok")
            else:
                queue.fail(held.id, agent, held.attempts, "no", retry=walk.random() < 0.5)
        elif move < 0.9:
            queue.give_back(agent, "exited")
        elif move < 0.95 and (live := queue.tasks(deployment, "queued", limit=1)):
            queue.cancel(live[0].id)
        else:
            clock.advance(2)
            queue.expire()
            queue.purge(clock.now - timedelta(seconds=4))
        kept = {(d, s): n for d, s, n in store.conn.execute("SELECT deployment, state, value FROM task_counts")}
        assert kept == counted(), f"after step {step}"
    assert sum(queue.counts().values()) == sum(counted().values()) > 0
    assert queue.queued("web") == counted().get(("web", "queued"), 0)


def test_a_batch_is_queued_in_order_in_one_transaction_or_not_at_all(store: Store, clock: WallClock) -> None:
    queue = TaskQueue(store, clock=clock, max_pending=5)
    first = queue.submit("web", {"n": 0}, key="k0")
    batch = queue.submit_many("web", [{"input": {"n": 1}}, {"input": {"n": 0}, "key": "k0"},
                                      {"input": {"n": 2}, "ttl": 60, "attempts": 1, "max_usd": "0.5", "key": "k2"},
                                      {"input": {"n": 2}, "key": "k2"}])
    assert [t.id for t in batch][1:4:2] == [first.id, batch[2].id]  # a known key, in or before the batch: its task
    assert (batch[2].max_attempts, batch[2].max_nusd, batch[2].input) == (1, 500_000_000, None)  # listed, no input
    assert [queue.get(t.id).input for t in batch] == [{"n": 1}, {"n": 0}, {"n": 2}, {"n": 2}]
    assert queue.counts("web")["queued"] == 3
    with pytest.raises(InvalidRequest, match=r"tasks\[1\]: --attempts"):
        queue.submit_many("web", [{"input": 1}, {"input": 2, "attempts": 0}])
    with pytest.raises(Conflict, match="unfinished tasks"):  # the bound counts the batch's own tasks
        queue.submit_many("web", [{"input": n} for n in range(3)])
    with pytest.raises(Conflict, match="another input"):
        queue.submit_many("web", [{"input": 9}, {"input": 1, "key": "k2"}])
    assert queue.counts("web")["queued"] == 3  # none of the refused batches' tasks
