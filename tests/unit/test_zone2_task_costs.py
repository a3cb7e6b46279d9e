"""Per-task cost in zone 2: every metered call an agent makes while it holds a task is the task's (its ledger row names
it), and a task's cap (``--max-usd``) is reserved against like the agent's caps, over all the task's attempts, also
after zone 2 restarts (the daemon's registration of the agent names the task it holds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetd.zone2.budget import Caps
from fleetd.zone2.contract import Registration, Registrations, TaskHold
from fleetd.zone2.guard import Guard
from fleetd.zone2.service import init_control
from fleetd.zone2.tasks import HeldTask, HeldTasks
from tests.unit.loopback import serve
from tests.unit.metering_rig import CHAT, USD, Rig, run

TASK = "0123456789abcdef"
OTHER = "fedcba9876543210"
# 64 output tokens at $100/M: $0.0064 reserved and (the simulator answering 64) spent per call
BODY = {"model": "test-model", "max_tokens": 64, "messages": [{"role": "user", "content": "x"}]}
CALL = 64 * 100_000 + 1  # what one such call costs, in nano-USD ($0.001/M for the one input token)
CAP = USD // 100  # $0.01: one call fits, two do not
TWO_CALLS = 16 * USD // 1000  # $0.016: two calls fit, three do not


def agent(task: TaskHold | None = None, caps: Caps | None = None) -> Registration:
    return Registration("agent1", "127.0.0.1", "worker", frozenset({"sim"}), caps or Caps(), task=task)


def error_of(raw: bytes) -> dict[str, str]:
    error: dict[str, str] = json.loads(raw)["error"]
    return error


def test_calls_made_while_an_agent_holds_a_task_name_it_in_the_ledger(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        r.sim.config.output_tokens = 64
        assert (await r.post(CHAT, BODY))[0] == 200
        r.held.hold("agent1", TASK, 1)  # a task without a cap: attributed, not capped
        for _ in range(2):
            assert (await r.post(CHAT, BODY))[0] == 200
        assert not r.costs.budgets.task_known(TASK)  # nothing to enforce: its spend is not kept in memory
        r.held.drop("agent1", TASK, 1)
        assert (await r.post(CHAT, BODY))[0] == 200
        assert [row["task_id"] for row in r.ledger()] == [None, TASK, TASK, None]
        assert r.costs.ledger.task_spend(TASK) == (2 * CALL, 2)
        assert r.costs.ledger.task_spend(OTHER) == (0, 0)

    run(tmp_path, check)


def test_a_task_cap_refuses_the_call_that_would_pass_it_with_429_task_budget_exceeded(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        r.sim.config.output_tokens = 64
        r.held.hold("agent1", TASK, 1, CAP)
        assert (await r.post(CHAT, BODY))[0] == 200
        for _ in range(2):
            status, headers, raw = await r.post(CHAT, BODY)
            assert status == 429
            # budget_exceeded's shape and headers; no Retry-After: a task's cap never resets
            assert error_of(raw)["type"] == error_of(raw)["code"] == "task_budget_exceeded"
            assert f"task {TASK}'s budget of $0.0100 would be exceeded" in error_of(raw)["message"]
            assert headers["x-should-retry"] == "false" and "Retry-After" not in headers
        assert r.upstream_calls() == 1
        assert r.costs.budgets.task_status(TASK) == (CALL, 0)
        assert r.costs.counts.refusals["task_budget_exceeded"] == 2
        # one event, with the task and its figures (at most one per agent, task and minute)
        assert [(e[0], e[1]) for e in r.events] == [("task_budget_exceeded", "agent1")]
        assert r.events[0][3] == {"role": "worker", "task": TASK, "max_usd": 0.01, "spent_usd": CALL / 1e9,
                                  "reserved_usd": 0.0, "request_usd": pytest.approx(0.0064, abs=1e-5)}
        # the agent's own caps still apply on top, and its calls for no task are not the task's
        r.held.drop("agent1", TASK, 1)
        assert (await r.post(CHAT, BODY))[0] == 200
        r.held.hold("agent1", OTHER, 1, 10 * CAP)
        r.register(Caps(daily_nusd=2 * CALL + 1))
        status, headers, raw = await r.post(CHAT, BODY)
        assert (status, error_of(raw)["code"]) == (429, "budget_exceeded") and "Retry-After" in headers
        r.held.hold("agent1", OTHER, 1, CAP // 2)  # another task refused: its event is due at once
        assert error_of((await r.post(CHAT, BODY))[2])["code"] == "task_budget_exceeded"
        assert [e[0] for e in r.events] == ["task_budget_exceeded", "budget_exceeded", "task_budget_exceeded"]

    run(tmp_path, check)


def test_a_tasks_spend_counts_across_its_attempts_whichever_agent_made_them(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        r.sim.config.output_tokens = 64
        r.held.hold("agent1", TASK, 1, TWO_CALLS)
        for _ in range(2):
            assert (await r.post(CHAT, BODY))[0] == 200
        r.held.drop("agent1", TASK, 1)  # attempt 1 failed: the task is queued again
        assert not r.costs.budgets.task_known(TASK)  # its spend left memory with its last holder
        r.registry.unregister("agent1")
        r.registry.register(Registration("agent2", "127.0.0.1", "worker", frozenset({"sim"})))
        r.held.hold("agent2", TASK, 2, TWO_CALLS)  # attempt 2, another agent: no fresh budget
        status, _, raw = await r.post(CHAT, BODY)
        assert (status, error_of(raw)["code"]) == (429, "task_budget_exceeded")
        assert r.costs.budgets.task_status(TASK) == (2 * CALL, 0)  # summed from the ledger
        assert r.upstream_calls() == 2

    run(tmp_path, check)


def test_after_zone2_restarts_the_agents_registration_names_the_task_it_holds(tmp_path: Path) -> None:
    async def before(r: Rig) -> None:
        r.sim.config.output_tokens = 64
        r.held.hold("agent1", TASK, 1, CAP)
        assert (await r.post(CHAT, BODY))[0] == 200

    async def asked(r: Rig) -> None:
        # a new zone 2 (tracker, registry, held tasks) over the same ledger: the agent's first call comes before the
        # daemon's push, and the daemon's answer to whois names the task
        r.registry.unregister("agent1")
        assert len(r.held) == 0
        r.whois["127.0.0.1"] = agent(TaskHold(TASK, 1, CAP))
        status, _, raw = await r.post(CHAT, BODY)
        assert (status, error_of(raw)["code"]) == (429, "task_budget_exceeded")
        assert r.held.held("agent1") == HeldTask(TASK, 1, CAP)

    async def pushed(r: Rig) -> None:
        # the daemon's push of every live agent after zone 2 started (Zone2.push_all): PUT /control/agents
        r.sim.config.output_tokens = 64
        async with serve(init_control(r.registry, r.costs, Guard(), 0.0, r.held)) as control:
            regs = Registrations((agent(TaskHold(TASK, 2, TWO_CALLS)),))
            async with r.client.put(control + "/control/agents", json=regs.to_json()) as response:
                assert response.status == 200
        assert r.held.held("agent1") == HeldTask(TASK, 2, TWO_CALLS)
        assert (await r.post(CHAT, BODY))[0] == 200  # the second call, with the one made before the restarts
        assert error_of((await r.post(CHAT, BODY))[2])["code"] == "task_budget_exceeded"
        assert [row["task_id"] for row in r.ledger()] == [TASK, TASK]

    for check in (before, asked, pushed):
        run(tmp_path, check)


def test_a_lease_seen_pass_outranks_an_older_registration_and_releases_are_heard() -> None:
    released: list[str] = []
    held = HeldTasks(on_release=released.append)
    held.learn(agent(TaskHold(TASK, 1, CAP)))
    assert held.held("agent1") == HeldTask(TASK, 1, CAP)
    held.hold("agent1", OTHER, 1)  # a newer lease: TASK is no longer the agent's
    held.learn(agent(TaskHold(TASK, 1, CAP)))  # a registration written before that lease
    held.learn(agent())  # or one naming no task
    assert held.held("agent1") == HeldTask(OTHER, 1) and released == [TASK]
    held.hold("agent1", OTHER, 1)  # the same task answered again: nothing released
    held.drop("agent1", OTHER, 2)  # another attempt's answer: still held
    assert released == [TASK]
    held.drop("agent1", OTHER, 1)
    held.hold("a2", TASK, 3)
    held.hold("a3", OTHER, 2)
    held.forget("a2")
    held.keep({"agent1"})
    assert released == [TASK, OTHER, TASK, OTHER] and len(held) == 0
