"""What tasks have cost, read by the daemon from zone 2's ledger: the one record of every metered LLM call.

Zone 2 names in each call's ledger row the task its agent held (``fleetd.zone2.tasks.HeldTasks``), and commits the row
before the agent has its answer (``Ledger.record``: one INSERT per call, no batching), so a call's cost is here as
soon as the call is over, late ones included (a call still streaming when its agent completed the task counts once it
ends). The ledger stays the source of truth: nothing is copied into state.db's tasks table, whose ``cost_nusd`` and
``llm_calls`` keep only what was added there directly (``TaskQueue.add_cost``; nothing in the daemon does now) and
are added to the ledger's figures in the task views.

The file is zone 2's (it runs as nobody; the daemon, root without CAP_DAC_OVERRIDE, may read it, not write it): it is
opened read-only (``mode=ro``) and the connection kept while the file is the same one (its device and inode), each
read one query on the partial index ``calls_task_id``, which covers the cost. (Opened for each read, the ledger cost
the daemon 12 % of its time at 400 tasks/s, bench/fleet.py: every completion reads a task's cost.) In WAL mode a
reader that cannot write the ``-shm`` file still reads (SQLite 3.22 and later), and sees every committed row. No
ledger yet (zone 2 never ran), an older one without ``task_id`` (a zone 2 image from before it), or one that cannot
be read: no figures (zero), and a warning in the log when the reason changes.

A spend pool's spend (a canary version's agents', all time: ``Ledger.pool_spend``) is read the same way, one query on
the partial index ``calls_pool``; a ledger without ``pool`` (a zone 2 image from before pools) has none (zero).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Collection, Iterable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from fleetd.task_queue import Task

log = logging.getLogger(__name__)
CHUNK = 500  # task ids per query (SQLite's bound parameters; a listing may name 10000)
READ_TIMEOUT = 1.0  # s to wait for a lock (a reader in WAL mode next to never waits)

POOL_SPEND = "SELECT COALESCE(SUM(cost_nusd), 0) FROM calls WHERE pool = ?"  # on the covering index calls_pool
# Since a time, only the calls no task carried (a version's spend outside its tasks): the same index
POOL_SPEND_SINCE = "SELECT COALESCE(SUM(cost_nusd), 0) FROM calls WHERE pool = ? AND at >= ? AND task_id IS NULL"
NO_POOL_COLUMN = "no such column: pool"  # SQLite's error on a ledger from before pools

Cost = tuple[int, int]  # nano-USD, metered LLM calls


class TaskCosts:
    """The figures of the ledger at ``path`` (``fleetd.gateway.zone2_ledger``) per task: ``of(ids)`` -> {task id:
    (cost_nusd, calls)} for the tasks it has calls of; and per spend pool: ``pool_spend(key)`` -> nano-USD."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._trouble: dict[str, str | None] = {}  # per reading (tasks, pools): why its last read failed (logged once)
        self._conn: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # (device, inode) of the file _conn reads

    def of(self, task_ids: Iterable[str]) -> dict[str, Cost]:
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}
        found: dict[str, Cost] = {}
        try:
            conn = self._connection()
            if conn is None:
                return {}
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start:start + CHUNK]
                marks = ", ".join("?" for _ in chunk)
                for task_id, cost, calls in conn.execute(
                        f"SELECT task_id, SUM(cost_nusd), COUNT(*) FROM calls WHERE task_id IN ({marks}) "
                        "GROUP BY task_id", chunk):
                    found[task_id] = (int(cost), int(calls))
        except sqlite3.Error as exc:
            self.close()  # opened afresh next time
            self._failed("tasks", str(exc))
            return {}
        self._trouble["tasks"] = None
        return found

    def pool_spend(self, key: str, since: datetime | None = None) -> int:
        """What the calls of a spend pool's agents have cost, all time; or, ``since`` a time, those no task carried;
        in nano-USD: 0 when the ledger has none of its calls, is not there yet, or has no pool column yet."""
        try:
            conn = self._connection()
            if conn is None:
                return 0
            if since is None:
                (spent,) = conn.execute(POOL_SPEND, (key,)).fetchone()
            else:  # the ledger's times are datetime.isoformat()'s
                (spent,) = conn.execute(POOL_SPEND_SINCE, (key, since.isoformat())).fetchone()
        except sqlite3.Error as exc:
            if str(exc) != NO_POOL_COLUMN:
                self.close()  # opened afresh next time
            self._failed("pools", str(exc))
            return 0
        self._trouble["pools"] = None
        return int(spent)

    def _connection(self) -> sqlite3.Connection | None:
        """The kept read-only connection, opened again when the file is another one (or first appears)."""
        try:
            stat = self.path.stat()
        except OSError:
            self.close()
            return None
        if self._conn is None or self._file != (stat.st_dev, stat.st_ino):
            self.close()
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, timeout=READ_TIMEOUT, check_same_thread=False)
            self._file = (stat.st_dev, stat.st_ino)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        self._conn, self._file = None, None

    def _failed(self, reading: str, why: str) -> None:
        if why != self._trouble.get(reading):
            log.warning("task costs: cannot read zone 2's ledger %s (%s): %s show no LLM cost", self.path, why,
                        reading)
        self._trouble[reading] = why

    def costed(self, tasks: Collection[Task]) -> list[Task]:
        """The tasks with their LLM cost and calls: the ledger's, plus what their rows in state.db hold."""
        figures = self.of(t.id for t in tasks)
        out = []
        for task in tasks:
            cost, calls = figures.get(task.id, (0, 0))
            out.append(replace(task, cost_nusd=task.cost_nusd + cost, llm_calls=task.llm_calls + calls)
                       if calls else task)
        return out
