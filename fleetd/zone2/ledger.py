"""Zone 2's durable ledger: one row per metered LLM call, in ``ledger.db`` in the control directory.

The control directory is on the host (the daemon's state dir), mounted into
zone 2 alone; the file holds token counts and costs, never a secret. WAL mode
with ``synchronous=NORMAL``: a committed row survives a SIGKILL of zone 2 (and
of the daemon, which does not write here). When zone 2 starts it loads the
month's spend and every agent's call count from here, so budgets hold across
restarts. A call made while its agent held a task of a deployment names the
task (``task_id``): the daemon reads each task's cost from here, on a
read-only connection of its own (``fleetd.task_costs``). A call of an agent
registered with a spend pool (a canary version's) names the pool (``pool``):
zone 2 sums a pool's spend from here when it first meets it, and the daemon
reads it the same way.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.migrations import Migrations

from fleetd.bounds import MAX_TEXT_CHARS, clip
from fleetd.wal import WAL_BACKSTOP_PAGES, Checkpointer
from fleetd.zone2.llm import Usage

LEDGER_FILE = "ledger.db"
INSERT = ("INSERT INTO calls (request_id, at, agent_id, role, credential, api, model, status, input_tokens, "
          "cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, cost_nusd, reserved_nusd, "
          "estimated, attempts, cache_write_1h_tokens, service_tier, response_id, context_tokens, speed, "
          "inference_geo, task_id, pool) "
          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
CONTEXT_OF = ("SELECT context_tokens FROM calls WHERE response_id = ? AND context_tokens IS NOT NULL "
              "ORDER BY id DESC LIMIT 1")  # on the partial index calls_response_id
# What a task has cost over all its attempts: read from the partial index calls_task_id alone (it covers cost_nusd)
TASK_SPEND = "SELECT COALESCE(SUM(cost_nusd), 0), COUNT(*) FROM calls WHERE task_id = ?"
# What a spend pool's calls have cost, all time: from the partial index calls_pool alone (it covers cost_nusd)
POOL_SPEND = "SELECT COALESCE(SUM(cost_nusd), 0), COUNT(*) FROM calls WHERE pool = ?"
POOL_SPEND_SINCE = "SELECT COALESCE(SUM(cost_nusd), 0) FROM calls WHERE pool = ? AND at >= ? AND task_id IS NULL"
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


@migrations()
def m002_cache_ttl_and_service_tier(db: sqlite_utils.Database) -> None:
    db.execute("ALTER TABLE calls ADD COLUMN cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE calls ADD COLUMN service_tier TEXT")


@migrations()
def m003_response_context(db: sqlite_utils.Database) -> None:
    # OpenAI Responses: the answer's id and how many tokens a call continuing from it (previous_response_id)
    # carries in from upstream, so that its reservation covers them.
    db.execute("ALTER TABLE calls ADD COLUMN response_id TEXT")
    db.execute("ALTER TABLE calls ADD COLUMN context_tokens INTEGER")
    db.execute("CREATE INDEX calls_response_id ON calls(response_id) WHERE response_id IS NOT NULL")


@migrations()
def m004_speed_and_inference_geo(db: sqlite_utils.Database) -> None:
    # Anthropic: fast mode and US-only inference, each billed at a multiple of the standard prices
    db.execute("ALTER TABLE calls ADD COLUMN speed TEXT")
    db.execute("ALTER TABLE calls ADD COLUMN inference_geo TEXT")


@migrations()
def m005_task_id(db: sqlite_utils.Database) -> None:
    # The task of a deployment the agent held when it made the call (zone2.tasks.HeldTasks), for per-task cost and
    # caps. A partial index (most calls are no task's), covering cost_nusd: a task's spend is summed from it alone,
    # by zone 2 when it meets a task with a cap, and by the daemon for its task views (fleetd.task_costs).
    db.execute("ALTER TABLE calls ADD COLUMN task_id TEXT")
    db.execute("CREATE INDEX calls_task_id ON calls(task_id, cost_nusd) WHERE task_id IS NOT NULL")


@migrations()
def m006_pool(db: sqlite_utils.Database) -> None:
    # The spend pool of the agent's registration (a canary version's), whose cap is on the spend of all its agents'
    # calls, all time. A partial index covering cost_nusd, as calls_task_id: a pool's spend is summed from it alone,
    # by zone 2 when it meets the pool and by the daemon (fleetd.task_costs).
    db.execute("ALTER TABLE calls ADD COLUMN pool TEXT")
    # With the time in it too: the daemon reads a version's spend since its rollout began (POOL_SPEND_SINCE).
    db.execute("CREATE INDEX calls_pool ON calls(pool, at, task_id, cost_nusd) WHERE pool IS NOT NULL")


def _clip(text: str | None) -> str | None:
    return None if text is None else clip(text)


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
    # OpenAI Responses: the tokens of the conversation as this answer leaves it (its whole input and its output),
    # which a call naming it as previous_response_id reads again; None when unknown
    context_tokens: int | None = None
    task_id: str | None = None  # the task the agent held (zone2.tasks.HeldTasks), if any
    pool: str | None = None  # the key of the spend pool the agent was registered with (contract.PoolCap), if any


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        # Written on zone 2's event loop, one transaction per call (see record); read at start.
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        self.db.enable_wal()
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP_PAGES}")
        migrations.apply(self.db)
        self.conn = conn
        self.in_memory = str(path) == ":memory:"
        # Rows whose commit failed (a full disk, an I/O error), oldest first; record and flush retry them.
        self.unwritten: list[Call] = []
        self.error: str | None = None
        self.checkpointer = None if self.in_memory else Checkpointer(path)

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()
        self.conn.close()

    def record(self, call: Call) -> bool:
        """Write one row: committed (WAL) when this returns True.

        Zone 2 calls this on its event loop for every metered call, before the agent gets its answer. In
        autocommit mode the INSERT is its own transaction (a BEGIN and a COMMIT would cost ~20 µs more);
        a WAL commit with ``synchronous=NORMAL`` is an append to the WAL file, no fsync: ~15 µs here.
        Handing rows to a writer thread cost each answer milliseconds under load instead (the thread waits
        for the GIL of the busy loop, the loop for the thread's wake-up), and batching the rows of one
        loop turn made each answer wait for the whole turn. Checkpoints, which fsync, are what must stay
        off the loop: see :class:`Checkpointer`.

        A row that cannot be committed (SQLite's error is kept in ``error``) waits in ``unwritten``, in
        order, behind any earlier ones; False says so. Each INSERT is atomic, so none is written twice.
        """
        self.unwritten.append(call)
        return self.flush()

    def flush(self) -> bool:
        """Commit the rows that wait in ``unwritten``, oldest first; True when none is left."""
        while self.unwritten:
            try:
                self._insert(self.unwritten[0])
            except sqlite3.Error as exc:
                self.error = str(exc)
                return False
            del self.unwritten[0]
        self.error = None
        return True

    def _insert(self, call: Call) -> None:
        u = call.usage
        # Agent- and upstream-chosen strings are cut to MAX_TEXT_CHARS (a model name can be megabytes under
        # allow-unpriced); a response id that long is not kept at all, as a cut one could match another call's.
        response_id = u.response_id if u.response_id is None or len(u.response_id) <= MAX_TEXT_CHARS else None
        self.conn.execute(INSERT, (
            call.request_id, call.at.isoformat(), call.agent_id, call.role, _clip(call.credential), call.api,
            _clip(call.model), call.status, u.input_tokens, u.cached_input_tokens, u.cache_write_tokens,
            u.output_tokens, u.reasoning_tokens, call.cost_nusd, call.reserved_nusd, int(call.estimated),
            call.attempts, u.cache_write_1h_tokens, _clip(u.service_tier), response_id, call.context_tokens,
            _clip(u.speed), _clip(u.inference_geo), call.task_id, call.pool))

    def context_of(self, response_id: str) -> int | None:
        """The context tokens recorded for an OpenAI response, or None when zone 2 has not seen it (or cannot read
        the ledger: the caller then assumes the most)."""
        try:
            row = self.conn.execute(CONTEXT_OF, (response_id,)).fetchone()
        except sqlite3.Error:
            return None
        return None if row is None else int(row[0])

    def task_spend(self, task_id: str) -> tuple[int, int]:
        """What a task's calls have cost, all its attempts together, and how many there were (nano-USD, calls)."""
        cost, calls = self.conn.execute(TASK_SPEND, (task_id,)).fetchone()
        return int(cost), int(calls)

    def pool_spend(self, key: str) -> tuple[int, int]:
        """What the calls of a spend pool's agents have cost, all time, and how many there were (nano-USD, calls)."""
        cost, calls = self.conn.execute(POOL_SPEND, (key,)).fetchone()
        return int(cost), int(calls)

    def history(self, since: datetime) -> Iterator[tuple[str, datetime, int]]:
        """(agent, when, cost) of every call since ``since``: what budgets must know after a restart."""
        for agent_id, at, cost in self.conn.execute(
            "SELECT agent_id, at, cost_nusd FROM calls WHERE at >= ? ORDER BY at", (since.isoformat(),)
        ):
            yield agent_id, datetime.fromisoformat(at), cost

    def agent_history(self, agent_id: str, since: datetime) -> tuple[list[tuple[datetime, int]], int]:
        """One agent's (when, cost) since ``since``, and how many calls it made before (index calls_agent_at)."""
        rows = [(datetime.fromisoformat(at), cost) for at, cost in self.conn.execute(
            "SELECT at, cost_nusd FROM calls WHERE agent_id = ? AND at >= ? ORDER BY at",
            (agent_id, since.isoformat()))]
        earlier = self.conn.execute("SELECT count(*) FROM calls WHERE agent_id = ? AND at < ?",
                                    (agent_id, since.isoformat())).fetchone()[0]
        return rows, int(earlier)

    def call_counts(self, before: datetime) -> dict[str, int]:
        """Calls per agent made before ``before`` (the rest come with :meth:`history`)."""
        rows = self.conn.execute("SELECT agent_id, count(*) FROM calls WHERE at < ? GROUP BY agent_id",
                                 (before.isoformat(),))
        return {agent_id: count for agent_id, count in rows}

    def calls(self, agent_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest rows, read on a connection of their own (the writer's may be mid-transaction)."""
        where, args = ("WHERE agent_id = ?", [agent_id]) if agent_id else ("", [])
        if self.in_memory:
            return list(self.db.query(f"SELECT * FROM calls {where} ORDER BY id DESC LIMIT ?", [*args, limit]))
        with contextlib.closing(sqlite3.connect(str(self.path))) as reader:
            return list(sqlite_utils.Database(reader).query(
                f"SELECT * FROM calls {where} ORDER BY id DESC LIMIT ?", [*args, limit]))
