"""Spend pools in zone 2 (a canary version's cap, ``--canary-max-usd``): every agent registered with the same pool
spends from it, all time; a call whose worst case would take the pool's spend and reservations past its cap is refused
with 429 ``budget_exceeded``, as the agent's caps are. Its spend is in the ledger (each call's row names the pool),
loaded when zone 2 first meets the pool, also after a restart."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path

from fleetd.zone2.ledger import POOL_SPEND, Call, Ledger
from fleetd.zone2.llm import Usage

POOL = "web:v2"


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
