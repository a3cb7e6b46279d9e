"""WAL checkpoints off the writer's thread, for the SQLite files written on an event loop (zone 2's ledger, the
daemon's state.db): a commit that checkpoints inside it waits for two fsyncs.

Measured on the daemon's task path (tests' fleet rig, 20 agents completing and leasing tasks in a loop, in one
process): 665 tasks/s with SQLite's automatic checkpoint at its default of 1,000 pages, 910 with the backstop at
10,000 and the checkpoints here (two commits a task, each writing the pages of the tasks table and its indexes).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

CHECKPOINT_INTERVAL = 0.25  # s between checkpoints by the Checkpointer thread
WAL_BACKSTOP_PAGES = 10_000  # the writer's own automatic checkpoint (4 KB pages), which also restarts the WAL


class Checkpointer:
    """WAL checkpoints in a thread of their own, so that the event loop's commits never wait for an fsync.

    SQLite checkpoints inside a commit once the WAL holds ``wal_autocheckpoint`` pages: at its default
    (1000 pages, which single-row commits fill every ~300 calls) about one commit in 200 took ~3-4 ms,
    most of it the two fsyncs, which is a few per cent of the loop's time at 1500 calls/s. Here a
    PASSIVE checkpoint (it never blocks the writer) runs every ``interval`` seconds on its own
    connection. It cannot restart the WAL (only a writer can, once a checkpoint has caught up with the
    last commit, which under steady load never happens from another thread), so the writer keeps an
    automatic checkpoint at WAL_BACKSTOP_PAGES (~40 MB): it then finds almost everything copied, and
    the WAL starts over.
    """

    def __init__(self, path: Path, interval: float = CHECKPOINT_INTERVAL) -> None:
        self.path = path
        self.interval = interval
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"checkpoint-{path.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.closing(sqlite3.connect(str(self.path), isolation_level=None)) as conn:
            conn.execute("PRAGMA busy_timeout=5000")
            while not self.stopping.wait(self.interval):
                with contextlib.suppress(sqlite3.Error):  # busy, or a full disk: the next round tries again
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self.stopping.set()
        self.thread.join()
