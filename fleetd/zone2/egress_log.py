"""The egress log: one row per connection an agent asked zone 2's forward proxy for, allowed or denied, in
``egress.db`` in the control directory (``fleetd egress log`` reads it, on a read-only connection of its own).

Bounded, unlike the ledger (which never loses a call's cost): a hostile agent can ask for thousands of denied
connections a second, and the host's disk must not pay for it. The log keeps the newest MAX_ROWS rows and none older
than MAX_AGE; it is pruned every PRUNE_EVERY rows, so it holds at most MAX_ROWS + PRUNE_EVERY. Rows are written on
zone 2's event loop, one autocommit INSERT each (WAL, ``synchronous=NORMAL``: ~15 µs, as the ledger's); a row that
cannot be written (a full disk) is dropped and counted, never retried: the connection it tells of is long over, and
the counters (``Counts.egress``) still have it.

The same module reads the log for the daemon (``read_log``).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import sqlite_utils
from sqlite_utils.migrations import Migrations

from fleetd.bounds import clip

log = logging.getLogger(__name__)

EGRESS_FILE = "egress.db"
MAX_ROWS = 100_000
MAX_AGE = 30 * 86400.0  # seconds
DAY = 86400.0
PRUNE_EVERY = 1_000
READ_TIMEOUT = 1.0
MAX_READ = 1_000  # rows one read returns at most
ADD_BYTES = ("INSERT INTO days (agent_id, day, bytes) VALUES (?, ?, ?) "
             "ON CONFLICT (agent_id, day) DO UPDATE SET bytes = bytes + excluded.bytes")
INSERT = ("INSERT INTO connections (at, agent_id, host, port, method, decision, reason, address, bytes_out, "
          "bytes_in, duration_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
migrations = Migrations("fleetd-egress")


@migrations()
def m001_connections(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE connections (
            id INTEGER PRIMARY KEY, at TEXT NOT NULL, agent_id TEXT, host TEXT NOT NULL, port INTEGER NOT NULL,
            method TEXT NOT NULL, decision TEXT NOT NULL, reason TEXT, address TEXT,
            bytes_out INTEGER NOT NULL, bytes_in INTEGER NOT NULL, duration_s REAL NOT NULL)"""
    )
    # fleetd egress log --agent ID [--denied], newest first; the unfiltered log reads the primary key backwards.
    db.execute("CREATE INDEX connections_agent ON connections(agent_id, id)")
    db.execute("CREATE INDEX connections_denied ON connections(id) WHERE decision = 'denied'")


@migrations()
def m002_days(db: sqlite_utils.Database) -> None:
    # Each agent's bytes (in and out) per UTC day (days since the epoch), added to as its connections end: the byte
    # cap holds across a zone 2 restart. Apart from the connections, which a flood of denied ones pushes out of the
    # log in seconds; one row per agent and day, the days before yesterday pruned.
    db.execute("CREATE TABLE days (agent_id TEXT NOT NULL, day INTEGER NOT NULL, bytes INTEGER NOT NULL, "
               "PRIMARY KEY (agent_id, day)) WITHOUT ROWID")


class Record(Protocol):
    """What the log keeps of a connection (``forward_proxy.EgressRecord``; read-only, as a frozen dataclass's)."""

    @property
    def agent_id(self) -> str | None: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def method(self) -> str: ...

    @property
    def decision(self) -> str: ...

    @property
    def reason(self) -> str | None: ...

    @property
    def address(self) -> str | None: ...

    @property
    def bytes_out(self) -> int: ...

    @property
    def bytes_in(self) -> int: ...

    @property
    def started_at(self) -> float: ...

    @property
    def duration_s(self) -> float: ...


class EgressLog:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        db = sqlite_utils.Database(conn)
        db.enable_wal()
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=1000")
        migrations.apply(db)
        self.conn = conn
        self.written = 0
        self.dropped = 0  # rows that could not be written
        self.prune()

    def write(self, record: Record) -> None:
        try:
            moved = record.bytes_out + record.bytes_in
            if record.agent_id is not None and moved:
                day = int((record.started_at + record.duration_s) // DAY)
                self.conn.execute(ADD_BYTES, (record.agent_id, day, moved))
            self.conn.execute(INSERT, (
                _iso(record.started_at), record.agent_id, clip(record.host), record.port, clip(record.method),
                record.decision, None if record.reason is None else clip(record.reason), record.address,
                record.bytes_out, record.bytes_in,
                round(record.duration_s, 3)))
        except sqlite3.Error as exc:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("egress log: %d rows dropped (%s)", self.dropped, exc)
            return
        self.written += 1
        if self.written % PRUNE_EVERY == 0:
            self.prune()

    def prune(self) -> None:
        """Delete rows beyond the newest MAX_ROWS and those older than MAX_AGE."""
        with contextlib.suppress(sqlite3.Error):  # busy or full: the next prune tries again
            self.conn.execute("DELETE FROM connections WHERE id <= (SELECT MAX(id) FROM connections) - ?",
                              (MAX_ROWS,))
            # Rows are written in time order: the oldest row not too old, found walking the ids up (no index on at,
            # which every write would pay for), bounds the rows to delete; a walk as long as what it deletes.
            self.conn.execute("DELETE FROM connections WHERE id < COALESCE((SELECT id FROM connections WHERE at >= ? "
                              "ORDER BY id LIMIT 1), (SELECT MAX(id) + 1 FROM connections))",
                              (_iso(self.clock() - MAX_AGE),))
            self.conn.execute("DELETE FROM days WHERE day < ?", (int(self.clock() // DAY) - 1,))

    def day_bytes(self, agent_id: str, day: int) -> int:
        """What ``agent_id``'s connections that ended on ``day`` moved (the forward proxy's ``counted``)."""
        row = self.conn.execute("SELECT bytes FROM days WHERE agent_id = ? AND day = ?", (agent_id, day)).fetchone()
        return 0 if row is None else int(row[0])

    def close(self) -> None:
        self.conn.close()


def read_log(path: Path, agent_id: str | None = None, denied: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` rows (oldest first, as ``docker logs`` prints), of one agent and/or denied ones only.
    Empty when zone 2 has written no log yet."""
    if not path.exists():
        return []
    where, args = [], []
    if agent_id is not None:
        where.append("agent_id = ?")
        args.append(agent_id)
    if denied:
        where.append("decision = 'denied'")
    query = (f"SELECT * FROM connections {'WHERE ' + ' AND '.join(where) if where else ''} "
             "ORDER BY id DESC LIMIT ?")
    uri = f"{path.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=READ_TIMEOUT)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(query, (*args, max(1, min(limit, MAX_READ)))).fetchall()
    found = [dict(row) for row in reversed(rows)]
    for row in found:
        del row["id"]
    return found


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
