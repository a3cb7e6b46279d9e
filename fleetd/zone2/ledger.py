"""Zone 2's durable ledger: one row per metered LLM call, in ``ledger.db`` in the control directory.

The control directory is on the host (the daemon's state dir), mounted into
zone 2 alone; the file holds token counts and costs, never a secret. WAL mode
with ``synchronous=NORMAL``: a committed row survives a SIGKILL of zone 2 (and
of the daemon, which does not write here). When zone 2 starts it loads the
month's spend and every agent's call count from here, so budgets hold across
restarts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.migrations import Migrations

from fleetd.zone2.usage import Usage

LEDGER_FILE = "ledger.db"
migrations = Migrations("fleetd-ledger")


@migrations()
def m001_calls(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE calls (
            id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, at TEXT NOT NULL,
            agent_id TEXT NOT NULL, role TEXT NOT NULL, credential TEXT NOT NULL,
            api TEXT NOT NULL, model TEXT NOT NULL, status INTEGER,
            input_tokens INTEGER NOT NULL, cached_input_tokens INTEGER NOT NULL,
            cache_write_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
            reasoning_tokens INTEGER NOT NULL, cost_nusd INTEGER NOT NULL,
            reserved_nusd INTEGER NOT NULL, estimated INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 1)"""
    )
    db.execute("CREATE INDEX calls_agent_at ON calls(agent_id, at)")
    db.execute("CREATE INDEX calls_at ON calls(at)")


@dataclass(frozen=True)
class Call:
    request_id: str
    at: datetime
    agent_id: str
    role: str
    credential: str
    api: str
    model: str
    status: int | None
    usage: Usage
    cost_nusd: int
    reserved_nusd: int
    estimated: bool  # no usage arrived: billed at the reserved upper bound
    attempts: int


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        conn = sqlite3.connect(str(path), isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        self.db.enable_wal()
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        migrations.apply(self.db)
        self.conn = conn

    def close(self) -> None:
        self.conn.close()

    def record(self, call: Call) -> None:
        row = {k: v for k, v in asdict(call).items() if k != "usage"}
        row.update(asdict(call.usage))
        row["at"] = call.at.isoformat()
        row["estimated"] = int(call.estimated)
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self.conn.execute(f"INSERT INTO calls ({columns}) VALUES ({marks})", list(row.values()))

    def history(self, since: datetime) -> Iterator[tuple[str, datetime, int]]:
        """(agent, when, cost) of every call since ``since``: what budgets must know after a restart."""
        for agent_id, at, cost in self.conn.execute(
            "SELECT agent_id, at, cost_nusd FROM calls WHERE at >= ? ORDER BY at", (since.isoformat(),)
        ):
            yield agent_id, datetime.fromisoformat(at), cost

    def call_counts(self, before: datetime) -> dict[str, int]:
        """Calls per agent made before ``before`` (the rest come with :meth:`history`)."""
        rows = self.conn.execute("SELECT agent_id, count(*) FROM calls WHERE at < ? GROUP BY agent_id",
                                 (before.isoformat(),))
        return {agent_id: count for agent_id, count in rows}

    def calls(self, agent_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where, args = ("WHERE agent_id = ?", [agent_id]) if agent_id else ("", [])
        return list(self.db.query(f"SELECT * FROM calls {where} ORDER BY id DESC LIMIT ?", [*args, limit]))
