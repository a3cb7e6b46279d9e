"""The supervisor's pure decisions, with a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleetd.decisions import (
    Adopt,
    Backoff,
    MarkLost,
    RecordExit,
    RemoveOrphan,
    deadline_for,
    exit_reason,
    expired_exits,
    kill_time,
    plan_reconcile,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_deadline_and_kill_time() -> None:
    assert deadline_for(NOW, 3600) == NOW + timedelta(hours=1)
    assert kill_time(NOW, 30) == NOW + timedelta(seconds=30)


def test_exit_reason() -> None:
    # A stop the daemon began keeps its reason, whatever the exit code.
    assert exit_reason("stopping", "ttl_expired", 137, False, False) == "ttl_expired"
    assert exit_reason("stopping", "stopped", 0, True, True) == "stopped"
    # OOM needs Docker's word *and* death by SIGKILL.
    assert exit_reason("running", None, 137, True, False) == "oom_killed"
    assert exit_reason("running", None, 137, False, True) == "oom_killed"
    assert exit_reason("running", None, 137, False, False) == "exited"
    assert exit_reason("running", None, 1, True, True) == "exited"
    assert exit_reason("running", None, 0, False, False) == "exited"


def agent(agent_id: str, state: str) -> dict[str, object]:
    return {"id": agent_id, "state": state}


def test_plan_reconcile() -> None:
    agents = [agent("run", "running"), agent("gone", "running"), agent("dead", "stopping"),
              agent("new", "created"), agent("old", "exited")]
    containers = [
        {"id": "c-run", "agent_id": "run", "running": True},
        {"id": "c-dead", "agent_id": "dead", "running": False},
        {"id": "c-new", "agent_id": "new", "running": True},
        {"id": "c-old", "agent_id": "old", "running": False},
        {"id": "c-orphan", "agent_id": "stranger", "running": True},
        {"id": "c-nolabel", "agent_id": None, "running": True},
    ]
    assert plan_reconcile(agents, containers) == [
        Adopt("run", "c-run"),
        MarkLost("gone"),
        RecordExit("dead", "c-dead"),
        Adopt("new", "c-new"),
        RemoveOrphan("c-orphan", "stranger"),
        RemoveOrphan("c-nolabel", None),
    ]


def test_expired_exits_by_age_and_count() -> None:
    def exited(agent_id: str, minutes_ago: int) -> dict[str, object]:
        finished = (NOW - timedelta(minutes=minutes_ago)).isoformat()
        return {"id": agent_id, "state": "exited", "container_id": "c", "finished_at": finished, "created_at": finished}

    agents = [exited("a", 1), exited("b", 2), exited("c", 3), exited("d", 120)]
    assert expired_exits(agents, NOW, retention=3600, keep=10) == ["d"]
    assert expired_exits(agents, NOW, retention=3600, keep=2) == ["c", "d"]
    running = {"id": "r", "state": "running", "container_id": "c", "finished_at": None, "created_at": NOW.isoformat()}
    assert expired_exits([running], NOW, retention=0, keep=0) == []


def test_backoff() -> None:
    backoff = Backoff(initial=0.5, cap=4)
    assert [backoff.next() for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    backoff.reset()
    assert backoff.next() == 0.5
