"""Spend pools in zone 2 (a canary version's cap, ``--canary-max-usd``): every agent registered with the same pool
spends from it, all time; a call whose worst case would take the pool's spend and reservations past its cap is refused
with 429 ``budget_exceeded``, as the agent's caps are. Its spend is in the ledger (each call's row names the pool),
loaded when zone 2 first meets the pool, also after a restart."""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleetd.zone2.contract import PoolCap, Registration, Registrations
from fleetd.zone2.guard import Guard
from fleetd.zone2.ledger import POOL_SPEND, Call, Ledger
from fleetd.zone2.llm import Usage
from fleetd.zone2.service import init_control
from tests.unit.loopback import serve
from tests.unit.metering_rig import AUTH, CHAT, USD, Rig, run

POOL = "web:v2"
# 64 output tokens at $100/M: $0.0064 reserved and (the simulator answering 64) spent per call
BODY = {"model": "test-model", "max_tokens": 64, "messages": [{"role": "user", "content": "x"}]}
CALL = 64 * 100_000 + 1  # what one such call costs, in nano-USD ($0.001/M for the one input token)
ONE_CALL = USD // 100  # $0.01: one call fits, two do not
TWO_CALLS = 16 * USD // 1000  # $0.016: two calls fit, three do not


def agent(agent_id: str, ip: str, pool: PoolCap | None) -> Registration:
    return Registration(agent_id, ip, "worker", frozenset({"sim"}), pool=pool)


async def post_from(r: Rig, ip: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    """BODY from an agent at ``ip`` (a loopback address of its own): the status, headers and JSON answer."""
    connector = aiohttp.TCPConnector(local_addr=(ip, 0))
    async with aiohttp.ClientSession(connector=connector) as client, \
            client.post(r.gw + CHAT, json=BODY, headers=AUTH) as response:
        return response.status, dict(response.headers), json.loads(await response.read())


def row(cost: int, pool: str | None = None, agent: str = "a1") -> Call:
    return Call(uuid.uuid4().hex, datetime.now(UTC), agent, "worker", "openai", "chat", "gpt-4o-mini", 200,
                Usage(input_tokens=10, output_tokens=5), cost, cost, False, 1, pool=pool)


def test_an_older_ledger_gains_the_pool_column_and_a_pools_spend_is_summed_from_its_index(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    ledger.record(row(1_000))
    ledger.close()
    with sqlite3.connect(path) as conn:  # undo m006, as the ledger of a zone 2 image from before pools
        conn.execute("DROP INDEX calls_pool")
        conn.execute("ALTER TABLE calls DROP COLUMN pool")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm006_pool'")
    ledger = Ledger(path)
    try:
        assert ledger.pool_spend(POOL) == (0, 0)
        for call in (row(2_000, POOL), row(30, POOL, agent="a2"), row(400, "web:v3"), row(5)):
            assert ledger.record(call)
        assert ledger.pool_spend(POOL) == (2_030, 2) and ledger.pool_spend("web:v3") == (400, 1)
        assert [r["pool"] for r in reversed(ledger.calls())] == [None, POOL, POOL, "web:v3", None]
        plan = ledger.conn.execute(f"EXPLAIN QUERY PLAN {POOL_SPEND}", (POOL,)).fetchall()
        assert "COVERING INDEX calls_pool" in str(plan)
    finally:
        ledger.close()


def test_a_pool_cap_refuses_the_call_that_would_pass_it_with_429_budget_exceeded(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        r.sim.config.output_tokens = 64
        r.registry.register(agent("agent1", "127.0.0.1", PoolCap(POOL, ONE_CALL)))
        assert (await post_from(r, "127.0.0.1"))[0] == 200
        for _ in range(2):
            status, headers, answer = await post_from(r, "127.0.0.1")
            assert status == 429
            # the agent caps' shape and headers; no Retry-After: a pool's cap never resets
            assert answer["error"]["type"] == answer["error"]["code"] == "budget_exceeded"
            assert (f"the canary version's spend cap of $0.0100 (pool {POOL}) would be exceeded"
                    in answer["error"]["message"])
            assert headers["x-should-retry"] == "false" and "Retry-After" not in headers
        assert r.upstream_calls() == 1
        assert r.costs.budgets.pool_status(POOL) == (CALL, 0)  # the refused calls hold nothing
        assert r.costs.counts.refusals["budget_exceeded"] == 2
        # one event (at most one per agent, pool and minute), with the pool and its figures
        assert [(e[0], e[1]) for e in r.events] == [("budget_exceeded", "agent1")]
        assert r.events[0][3] == {"role": "worker", "pool": POOL, "max_usd": 0.01, "spent_usd": CALL / 1e9,
                                  "reserved_usd": 0.0, "request_usd": pytest.approx(0.0064, abs=1e-5)}
        assert [(row["pool"], row["cost_nusd"]) for row in r.ledger()] == [(POOL, CALL)]

    run(tmp_path, check)


def test_the_agents_of_one_pool_spend_from_it_together_and_others_are_not_its(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        r.sim.config.output_tokens = 64
        r.registry.register(agent("agent1", "127.0.0.1", PoolCap(POOL, TWO_CALLS)))
        r.registry.register(agent("agent2", "127.0.0.2", PoolCap(POOL, TWO_CALLS)))
        r.registry.register(agent("agent3", "127.0.0.3", None))  # no pool (a stable version's agent)
        r.registry.register(agent("agent4", "127.0.0.4", PoolCap("web:v3", TWO_CALLS)))  # another pool
        assert (await post_from(r, "127.0.0.1"))[0] == 200
        assert (await post_from(r, "127.0.0.2"))[0] == 200
        for ip in ("127.0.0.2", "127.0.0.1"):
            status, _, answer = await post_from(r, ip)
            assert (status, answer["error"]["code"]) == (429, "budget_exceeded")
        for _ in range(3):  # the agent without a pool is held by none
            assert (await post_from(r, "127.0.0.3"))[0] == 200
        assert (await post_from(r, "127.0.0.4"))[0] == 200  # nor is another pool's
        assert r.costs.budgets.pool_status(POOL) == (2 * CALL, 0)
        assert r.costs.budgets.pool_status("web:v3") == (CALL, 0)
        assert r.costs.ledger.pool_spend(POOL) == (2 * CALL, 2)
        assert [row["pool"] for row in r.costs.ledger.calls("agent3")] == [None, None, None]
        assert [e[1] for e in r.events] == ["agent2", "agent1"]  # each agent's refusal is an event

    run(tmp_path, check)


def test_a_pools_spend_is_loaded_from_the_ledger_after_zone2_restarts(tmp_path: Path) -> None:
    async def before(r: Rig) -> None:
        r.sim.config.output_tokens = 64
        r.registry.register(agent("agent1", "127.0.0.1", PoolCap(POOL, TWO_CALLS)))
        assert (await post_from(r, "127.0.0.1"))[0] == 200

    async def after(r: Rig) -> None:
        # a new zone 2 (tracker, registry) over the same ledger; another agent of the pool, which it learns of from
        # the daemon's answer to whois (its first call comes before the daemon's push)
        r.sim.config.output_tokens = 64
        r.registry.unregister("agent1")
        assert not r.costs.budgets.pool_known(POOL)
        r.whois["127.0.0.2"] = agent("agent2", "127.0.0.2", PoolCap(POOL, TWO_CALLS))
        assert (await post_from(r, "127.0.0.2"))[0] == 200  # the second call, with the one made before the restart
        status, _, answer = await post_from(r, "127.0.0.2")
        assert (status, answer["error"]["code"]) == (429, "budget_exceeded")
        assert r.costs.budgets.pool_status(POOL) == (2 * CALL, 0)
        assert r.upstream_calls() == 1

    for check in (before, after):
        run(tmp_path, check)


def test_a_pool_leaves_memory_when_no_registration_names_it(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        r.sim.config.output_tokens = 64
        pool = PoolCap(POOL, TWO_CALLS)
        async with serve(init_control(r.registry, r.costs, Guard(), 0.0, r.held)) as control:
            async def send(method: str, path: str, body: Any = None) -> None:
                async with r.client.request(method, control + path, json=body) as response:
                    assert response.status == 200

            await send("POST", "/control/agents", agent("agent1", "127.0.0.1", pool).to_json())
            await send("POST", "/control/agents", agent("agent2", "127.0.0.2", pool).to_json())
            assert (await post_from(r, "127.0.0.1"))[0] == 200
            await send("DELETE", "/control/agents/agent1")
            assert r.costs.budgets.pool_status(POOL) == (CALL, 0)  # agent2 is still the pool's
            await send("POST", "/control/agents", agent("agent2", "127.0.0.2", None).to_json())  # re-registered
            assert not r.costs.budgets.pool_known(POOL)  # no registration names it: its spend is in the ledger
            await send("PUT", "/control/agents", Registrations((agent("agent2", "127.0.0.2", pool),)).to_json())
            assert (await post_from(r, "127.0.0.2"))[0] == 200
            assert r.costs.budgets.pool_status(POOL) == (2 * CALL, 0)  # loaded again: both calls
            status, _, answer = await post_from(r, "127.0.0.2")
            assert (status, answer["error"]["code"]) == (429, "budget_exceeded")
            await send("PUT", "/control/agents", [])
            assert not r.costs.budgets.pool_known(POOL)

    run(tmp_path, check)


def test_an_uncapped_pool_names_its_calls_in_the_ledger_and_holds_nothing_in_memory(tmp_path: Path) -> None:
    """Every deployment version's agents are a pool, capped only for a canary with --canary-max-usd: the others'
    calls are only counted (the daemon reads a version's spend, those outside its tasks too), never refused for it."""
    async def check(r: Rig) -> None:
        r.sim.config.output_tokens = 64
        r.registry.register(agent("agent1", "127.0.0.1", PoolCap("web:v1", None)))
        for _ in range(3):
            assert (await post_from(r, "127.0.0.1"))[0] == 200
        assert not r.costs.budgets.pool_known("web:v1")  # nothing loaded, nothing held
        assert r.registry.pools() == set()
        assert r.costs.ledger.pool_spend("web:v1") == (3 * CALL, 3)

    run(tmp_path, check)
