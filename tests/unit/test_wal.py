"""state.db's WAL checkpoints run in a thread of their own (fleetd.wal), not inside the event loop's commits."""

from __future__ import annotations

import time
from pathlib import Path

from fleetd.store import Store
from fleetd.task_queue import TaskQueue
from fleetd.wal import WAL_BACKSTOP_PAGES


def test_the_store_checkpoints_in_a_thread_and_its_commits_do_not(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = Store(path)
    try:
        # SQLite's own checkpoint (inside a commit, two fsyncs) only as a backstop, far beyond its default 1,000
        assert store.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_BACKSTOP_PAGES
        assert store.checkpointer is not None and store.checkpointer.thread.is_alive()
        size_before = path.stat().st_size
        queue = TaskQueue(store)
        queue.submit_many("web", [{"input": {"n": n, "pad": "x" * 500}} for n in range(300)])
        deadline = time.monotonic() + 10
        while path.stat().st_size <= size_before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.stat().st_size > size_before, "no checkpoint copied the WAL into the database file"
    finally:
        store.close()
    assert store.checkpointer is None  # stopped and joined by close()
