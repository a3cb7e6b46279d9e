"""Zone 2's egress log (issue 18): one row per connection, bounded, read by the daemon newest first."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetd.zone2 import egress_log as module
from fleetd.zone2.egress_log import EgressLog, read_log

NOW = 1_800_000_000.0


@dataclass
class Row:
    host: str
    decision: str = "allowed"
    agent_id: str | None = "a1"
    port: int = 443
    method: str = "CONNECT"
    reason: str | None = None
    address: str | None = "10.9.0.5"
    bytes_out: int = 100
    bytes_in: int = 2000
    started_at: float = NOW
    duration_s: float = 0.25


def test_rows_are_read_newest_first_by_agent_and_denied(tmp_path: Path) -> None:
    path = tmp_path / "egress.db"
    log = EgressLog(path, clock=lambda: NOW)
    log.write(Row("allowed.example.test"))
    log.write(Row("other.example.test", "denied", reason="not in the role's egress list", address=None))
    log.write(Row("allowed.example.test", agent_id="b2", bytes_in=5))
    assert [r["host"] for r in read_log(path)] == ["allowed.example.test", "other.example.test",
                                                   "allowed.example.test"]
    [denied] = read_log(path, denied=True)
    assert denied["reason"] == "not in the role's egress list" and denied["agent_id"] == "a1"
    assert [r["bytes_in"] for r in read_log(path, agent_id="b2")] == [5]
    assert [r["agent_id"] for r in read_log(path, limit=1)] == ["b2"]  # the newest
    assert read_log(path)[0]["at"] == "2027-01-15T08:00:00.000Z" and read_log(path)[0]["duration_s"] == 0.25
    assert read_log(tmp_path / "none.db") == []  # zone 2 wrote nothing yet
    log.close()


def test_the_log_stays_bounded_in_rows_and_age(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "MAX_ROWS", 50)
    monkeypatch.setattr(module, "PRUNE_EVERY", 10)
    now = [NOW]
    path = tmp_path / "egress.db"
    log = EgressLog(path, clock=lambda: now[0])
    for n in range(200):  # a hostile agent's flood of denied connections
        log.write(Row(f"h{n}.example.test", "denied", started_at=now[0]))
    rows = sqlite3.connect(path).execute("SELECT COUNT(*), MIN(host) FROM connections").fetchone()
    assert rows[0] <= 50 + 10
    assert read_log(path, limit=1)[0]["host"] == "h199.example.test"
    now[0] += module.MAX_AGE + 1
    log.prune()
    assert read_log(path) == []  # none older than MAX_AGE
    log.close()


def test_a_row_that_cannot_be_written_is_dropped_and_counted(tmp_path: Path) -> None:
    log = EgressLog(tmp_path / "egress.db")
    log.conn.execute("DROP TABLE connections")  # any SQLite error (a full disk)
    log.write(Row("allowed.example.test"))
    assert log.dropped == 1 and log.written == 0
    log.close()
