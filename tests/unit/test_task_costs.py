"""The daemon's read of what tasks cost (fleetd.task_costs): summed per task from zone 2's ledger, read-only, with
every committed call in it at once; and the task views of the API showing it (`fleetd task inspect`)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fleetd.api import init_app
from fleetd.gateway import zone2_ledger
from fleetd.services import Services
from fleetd.task_costs import CHUNK, POOL_SPEND, POOL_SPEND_SINCE, TaskCosts
from fleetd.task_queue import TaskQueue
from fleetd.zone2.ledger import Call, Ledger
from fleetd.zone2.llm import Usage

T1, T2, T3 = "0123456789abcdef", "fedcba9876543210", "00000000000000aa"


def call(task_id: str | None, cost: int, agent: str = "a1", pool: str | None = None) -> Call:
    return Call(uuid.uuid4().hex, datetime.now(UTC), agent, "worker", "openai", "chat", "gpt-4o-mini", 200,
                Usage(input_tokens=10, output_tokens=5), cost, cost, False, 1, task_id=task_id, pool=pool)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    path = zone2_ledger(tmp_path)
    path.parent.mkdir()
    written = Ledger(path)  # zone 2's, open (its WAL not checkpointed) while the daemon reads
    yield written
    written.close()


def test_the_cost_of_each_task_is_summed_from_the_ledger_at_once(ledger: Ledger) -> None:
    costs = TaskCosts(ledger.path)
    assert costs.of([T1]) == {}  # no call yet
    for row in (call(T1, 1_000), call(None, 7), call(T1, 2_500, agent="a2"), call(T2, 40)):
        assert ledger.record(row)  # committed: the next read sees it
    assert costs.of([T1, T2, T3, T1]) == {T1: (3_500, 2), T2: (40, 1)}
    assert costs.of([]) == {}
    ledger.record(call(T2, 60))  # a call that ended after its task did still counts
    assert costs.of([T2]) == {T2: (100, 2)}


def test_a_listing_of_thousands_of_tasks_is_read_in_chunks(ledger: Ledger) -> None:
    ids = [f"{n:016x}" for n in range(3 * CHUNK + 7)]
    for task_id in (ids[0], ids[CHUNK], ids[-1]):
        ledger.record(call(task_id, 5))
    assert TaskCosts(ledger.path).of(ids) == {ids[0]: (5, 1), ids[CHUNK]: (5, 1), ids[-1]: (5, 1)}


def test_the_ledger_is_read_read_only_and_one_query_uses_the_task_index(ledger: Ledger) -> None:
    ledger.record(call(T1, 5))
    before = ledger.path.stat().st_mtime_ns, (ledger.path.parent / (ledger.path.name + "-wal")).stat().st_size
    plans: list[str] = []
    real_connect = sqlite3.connect

    def spying(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        assert "mode=ro" in str(args[0]) and kwargs.get("uri") is True
        conn.set_trace_callback(plans.append)
        return conn

    costs = TaskCosts(ledger.path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sqlite3, "connect", spying)
        assert costs.of([T1, T2]) == {T1: (5, 1)}
    assert len([p for p in plans if p.startswith("SELECT")]) == 1
    with sqlite3.connect(ledger.path) as conn:
        plan = conn.execute("EXPLAIN QUERY PLAN SELECT task_id, SUM(cost_nusd), COUNT(*) FROM calls "
                            "WHERE task_id IN (?, ?) GROUP BY task_id", (T1, T2)).fetchall()
    assert "COVERING INDEX calls_task_id" in str(plan)
    after = ledger.path.stat().st_mtime_ns, (ledger.path.parent / (ledger.path.name + "-wal")).stat().st_size
    assert after == before


def test_no_ledger_or_one_from_before_task_ids_is_no_cost_and_said_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = zone2_ledger(tmp_path)
    assert TaskCosts(path).of([T1]) == {}  # zone 2 never ran
    path.parent.mkdir()
    with sqlite3.connect(path) as old:  # a zone 2 image from before the task_id column
        old.execute("CREATE TABLE calls (id INTEGER PRIMARY KEY, cost_nusd INTEGER NOT NULL)")
    costs = TaskCosts(path)
    with caplog.at_level(logging.WARNING, "fleetd.task_costs"):
        assert costs.of([T1]) == {} and costs.of([T2]) == {}
    assert len(caplog.records) == 1 and "no such column: task_id" in caplog.text


def test_a_pools_spend_is_the_sum_of_its_agents_calls_read_on_the_pool_index(ledger: Ledger) -> None:
    costs = TaskCosts(ledger.path)
    assert costs.pool_spend("web:v2") == 0  # no call yet
    for row in (call(T1, 1_000, pool="web:v2"), call(None, 250, agent="a2", pool="web:v2"), call(None, 7),
                call(T2, 40, pool="web:v3")):
        assert ledger.record(row)  # committed: the next read sees it
    assert (costs.pool_spend("web:v2"), costs.pool_spend("web:v3"), costs.pool_spend("web:v4")) == (1_250, 40, 0)
    with sqlite3.connect(ledger.path) as conn:
        plan = conn.execute(f"EXPLAIN QUERY PLAN {POOL_SPEND}", ("web:v2",)).fetchall()
    assert "COVERING INDEX calls_pool" in str(plan)
    costs.close()


def test_no_ledger_or_one_from_before_pools_is_no_pool_spend_and_said_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = zone2_ledger(tmp_path)
    assert TaskCosts(path).pool_spend("web:v2") == 0  # zone 2 never ran
    path.parent.mkdir()
    with sqlite3.connect(path) as old:  # a zone 2 image from before the pool column
        old.execute("CREATE TABLE calls (id INTEGER PRIMARY KEY, task_id TEXT, cost_nusd INTEGER NOT NULL)")
        old.execute("INSERT INTO calls (task_id, cost_nusd) VALUES (?, 5)", (T1,))
    costs = TaskCosts(path)
    with caplog.at_level(logging.WARNING, "fleetd.task_costs"):
        assert costs.pool_spend("web:v2") == 0 and costs.of([T1]) == {T1: (5, 1)}
        assert costs.pool_spend("web:v2") == 0  # the tasks' read did not make the pools' trouble new
    assert len(caplog.records) == 1 and "no such column: pool" in caplog.text
    costs.close()


def test_the_task_views_show_the_cost_and_calls_the_ledger_has(parts: Services, ledger: Ledger) -> None:
    queue: TaskQueue = parts.fleet.queue
    spent = queue.submit("web", {"q": 1}, max_usd="1")
    idle = queue.submit("web", {"q": 2})
    lease = queue.lease("a1", "web", "v1")
    assert lease is not None and lease.id == spent.id
    ledger.record(call(spent.id, 1_250_000))
    ledger.record(call(spent.id, 250_000))
    ledger.record(call(None, 9_000_000))

    async def main() -> dict[str, Any]:
        async with TestClient(TestServer(init_app(parts))) as client:
            async def answer(method: str, path: str, **kwargs: Any) -> Any:
                async with client.request(method, path, **kwargs) as response:
                    assert response.status in (200, 201), await response.text()
                    return await response.json()

            seen = {"inspect": await answer("GET", f"/v1/tasks/{spent.id}"),
                    "listed": await answer("GET", "/v1/tasks")}
            queue.fail(spent.id, "a1", lease.attempt, "no luck", retry=False)
            seen["waited"] = await answer("POST", f"/v1/tasks/{spent.id}/wait", params={"timeout": "1"})
            seen["cancelled"] = await answer("POST", f"/v1/tasks/{idle.id}/cancel")
            return seen

    seen = asyncio.run(main())
    assert (seen["inspect"]["cost_usd"], seen["inspect"]["llm_calls"], seen["inspect"]["max_usd"]) == (
        0.0015, 2, 1.0)
    assert {t["id"]: (t["cost_usd"], t["llm_calls"]) for t in seen["listed"]} == {spent.id: (0.0015, 2),
                                                                                   idle.id: (0.0, 0)}
    assert (seen["waited"]["state"], seen["waited"]["cost_usd"]) == ("failed", 0.0015)
    assert (seen["cancelled"]["state"], seen["cancelled"]["llm_calls"]) == ("cancelled", 0)


def test_one_kept_connection_sees_new_calls_and_follows_a_new_file(ledger: Ledger, tmp_path: Path) -> None:
    costs = TaskCosts(ledger.path)
    ledger.record(call(T1, 100))
    assert costs.of([T1]) == {T1: (100, 1)}
    kept = costs._conn
    ledger.record(call(T1, 50))  # committed after the first read: the same connection sees it
    assert costs.of([T1]) == {T1: (150, 2)} and costs._conn is kept
    ledger.close()
    for suffix in ("", "-wal", "-shm"):  # zone 2's ledger replaced by another file (a fresh state dir)
        Path(f"{ledger.path}{suffix}").unlink(missing_ok=True)
    assert costs.of([T1]) == {}  # gone: no figures, no error
    fresh = Ledger(ledger.path)
    try:
        fresh.record(call(T1, 7))
        assert costs.of([T1]) == {T1: (7, 1)} and costs._conn is not kept
    finally:
        fresh.close()
        costs.close()


def test_a_batch_submit_answers_its_tasks_and_refuses_a_bad_one_by_index(parts: Services) -> None:
    parts.fleet.deployments.apply("web", {"image": "img", "command": ["work"], "task_attempts": 2}, 2)

    async def main() -> list[tuple[int, Any]]:
        async with TestClient(TestServer(init_app(parts))) as client:
            seen = []
            for body in ({"deployment": "web", "tasks": [{"input": {"n": 1}}, {"input": None, "ttl": "1m"}]},
                         {"deployment": "web", "tasks": [{"input": 1}, {"input": 2, "priority": 9}]},
                         {"deployment": "web", "tasks": []},
                         {"deployment": "web", "tasks": [1]},
                         {"deployment": "web", "tasks": [{}], "key": "x"},
                         {"deployment": "nope", "tasks": [{}]}):
                async with client.post("/v1/tasks/batch", json=body) as response:
                    seen.append((response.status, await response.json()))
            return seen

    (status, tasks), *refused = asyncio.run(main())
    assert status == 201 and [(t["state"], t["max_attempts"], t["input"]) for t in tasks] == [
        ("queued", 2, None), ("queued", 2, None)]
    assert [parts.fleet.queue.get(t["id"]).input for t in tasks] == [{"n": 1}, None]
    assert [(s, body["error"]["message"][:40]) for s, body in refused] == [
        (400, "tasks[1]: unknown task fields: ['priorit"), (400, "tasks: a list of 1 to 1000 tasks, each a"),
        (400, "tasks[0]: an object with the task's inpu"), (400, "unknown fields: ['key'] (a batch is depl"),
        (404, "no such deployment: nope")]
    assert parts.fleet.queue.counts("web")["queued"] == 2


def test_a_pools_spend_since_a_time_counts_only_the_calls_from_then_on(ledger: Ledger) -> None:
    """A version's spend since its rollout began: the current version's calls before the canary started are not
    compared with the canary's."""
    costs = TaskCosts(ledger.path)
    before, start = datetime(2026, 12, 5, 3, 0, tzinfo=UTC), datetime(2026, 12, 5, 3, 10, 0, 500_000, tzinfo=UTC)
    for at, cost in ((before, 1_000), (start, 20), (datetime(2026, 12, 5, 4, 0, tzinfo=UTC), 300)):
        assert ledger.record(Call(uuid.uuid4().hex, at, "a1", "worker", "openai", "chat", "gpt-4o-mini", 200,
                                  Usage(input_tokens=1, output_tokens=1), cost, cost, False, 1, pool="web:v1"))
    assert ledger.record(Call(uuid.uuid4().hex, start, "a1", "worker", "openai", "chat", "gpt-4o-mini", 200,
                              Usage(input_tokens=1, output_tokens=1), 4_000, 4_000, False, 1, task_id="t1",
                              pool="web:v1"))  # a task's call: its task's cost counts it
    assert costs.pool_spend("web:v1") == 5_320
    assert costs.pool_spend("web:v1", start) == 320
    with sqlite3.connect(ledger.path) as conn:
        plan = conn.execute(f"EXPLAIN QUERY PLAN {POOL_SPEND_SINCE}", ("web:v1", start.isoformat())).fetchall()
    assert "COVERING INDEX calls_pool" in str(plan)
    costs.close()
