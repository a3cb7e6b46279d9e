"""The lifetime counters a metrics scrape reads (fleetd.store.Store.counts): kept as things happen, so that a
scrape's cost does not follow the records and events the retention windows keep (a week, a month)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from fleetd.models import Reason, State, iso, utcnow
from fleetd.store import Store


def add_agent(store: Store, agent_id: str, reason: Reason = Reason.EXITED, probe: str | None = "liveness") -> None:
    store.insert_agent(agent_id, name=agent_id, image="img", role="default", state=State.CREATED.value,
                       created_at=iso(utcnow()), deadline=iso(utcnow() + timedelta(hours=1)), spec="{}")
    store.transition(agent_id, State.RUNNING)
    if probe:
        store.add_event("probe_failed", "failed", agent_id, {"probe": probe})
    store.transition(agent_id, State.RESTARTING, reason)
    store.add_event("restarted", "restart 1", agent_id)
    store.transition(agent_id, State.RUNNING)
    store.transition(agent_id, State.EXITED, reason, finished_at=iso(utcnow() - timedelta(days=2)))
    store.transition(agent_id, State.REMOVED, reason)


def steps(conn: sqlite3.Connection, work: Callable[[], Any]) -> int:
    """SQLite virtual-machine steps (in thousands) that ``work`` takes: a cost that does not depend on the machine."""
    counted = [0]

    def tick() -> int:
        counted[0] += 1
        return 0

    conn.set_progress_handler(tick, 1000)
    try:
        work()
    finally:
        conn.set_progress_handler(None, 0)
    return counted[0]


def test_counts_cost_the_same_with_ten_or_two_thousand_agents_in_the_window(tmp_path: Path) -> None:
    """Counting rows in the windows made every scrape scan them: 2,000 agents' records cost ~200x ten's."""
    store = Store(tmp_path / "state.db")
    for n in range(10):
        add_agent(store, f"a{n}")
    few = steps(store.conn, store.counts)
    for n in range(10, 2000):
        add_agent(store, f"a{n}")
    many = steps(store.conn, store.counts)
    assert many <= few + 1, (few, many)
    counts = store.counts()
    assert counts["spawns"] == 2000 and counts["restarts"] == 2000
    assert counts["exits_by_reason"] == {"exited": 4000} and counts["probe_failures"] == {"liveness": 2000}
    store.close()


def test_counts_keep_what_retention_removes_and_a_refused_spawn_is_not_one(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    add_agent(store, "a1", Reason.OOM_KILLED, probe=None)
    add_agent(store, "a2", Reason.LIVENESS_FAILED, probe="startup")
    before = store.counts()
    removed = store.purge(records_before=utcnow(), events_before=utcnow())
    assert removed["agents"] == 2 and store.agents() == []
    assert store.counts() == before == {"spawns": 2, "restarts": 2, "probe_failures": {"startup": 1},
                                        "exits_by_reason": {"oom_killed": 2, "liveness_failed": 2}}
    store.insert_agent("bad", name="bad", image="nope", role="default", state=State.CREATED.value,
                       created_at=iso(utcnow()), deadline=iso(utcnow()), spec="{}")
    store.discard_agent("bad")
    assert store.counts() == before and store.get("bad") is None and not store.events(agent_id="bad")
    store.close()


def test_an_older_state_db_starts_its_counters_from_what_it_counted(tmp_path: Path) -> None:
    """A state.db from before the counters (migration m008): what retention had moved to retired_counts and what
    its rows count, both kept; the tasks' retired counts stay where they are."""
    path = tmp_path / "state.db"
    store = Store(path)
    add_agent(store, "a1")
    store.close()
    with sqlite3.connect(path) as conn:  # undo m008, as a state.db written by the previous release
        for trigger in ("count_spawns", "count_exits", "count_restarts", "count_probe_failures"):
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DROP TABLE lifetime_counts")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm008_lifetime_counts'")
        conn.executemany("INSERT INTO retired_counts VALUES (?, ?, ?)",
                         [("spawns", "", 40), ("exits", "exited", 30), ("restarts", "", 5),
                          ("probe_failures", "readiness", 3), ("tasks", "succeeded", 7)])
    store = Store(path)
    assert store.counts() == {"spawns": 41, "restarts": 6, "exits_by_reason": {"exited": 32},
                              "probe_failures": {"liveness": 1, "readiness": 3}}
    left = list(store.conn.execute("SELECT name, key, value FROM retired_counts"))
    assert left == [("tasks", "succeeded", 7)]
    add_agent(store, "a2", probe=None)
    assert store.counts()["spawns"] == 42 and json.dumps(store.counts())
    store.close()


def test_state_counts_cost_the_same_with_ten_or_two_thousand_removed_agents(tmp_path: Path) -> None:
    """`fleetd status` and every scrape count agents by state: counting the table walked every removed agent the
    records window keeps."""
    store = Store(tmp_path / "state.db")
    for n in range(10):
        add_agent(store, f"a{n}")
    few = steps(store.conn, store.state_counts)
    for n in range(10, 2000):
        add_agent(store, f"a{n}")
    store.insert_agent("live", name="live", image="img", role="default", state=State.CREATED.value,
                       created_at=iso(utcnow()), deadline=iso(utcnow()), spec="{}")
    store.transition("live", State.RUNNING)
    assert steps(store.conn, store.state_counts) <= few + 1
    assert store.state_counts() == {"removed": 2000, "running": 1}
    store.purge(records_before=utcnow(), events_before=utcnow())
    assert store.state_counts() == {"running": 1}
    store.discard_agent("live")
    assert store.state_counts() == {}
    store.close()
