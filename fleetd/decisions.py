"""The supervisor's decisions as pure functions: no Docker, no SQLite, no clock.

Callers pass ``now``; tests pass any time they like.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fleetd.models import LIVE_STATES, Reason, State


def deadline_for(now: datetime, ttl: int) -> datetime:
    """The absolute deadline of an agent given ``ttl`` seconds from ``now``."""
    return now + timedelta(seconds=ttl)


def kill_time(now: datetime, grace: int) -> datetime:
    """When SIGKILL follows a SIGTERM sent at ``now``."""
    return now + timedelta(seconds=grace)


def exit_reason(
    state: str, reason: str | None, exit_code: int | None, oom_killed: bool, oom_event: bool
) -> str:
    """Why an agent's container ended.

    A stop the daemon started (ttl_expired, stopped, killed, …) keeps its reason.
    Otherwise the kernel's OOM killer is blamed only when Docker says so (the
    ``oom`` event or ``State.OOMKilled``) *and* the process died of SIGKILL:
    exit code 137 alone is not an OOM, and an OOM of some child process that
    the agent survived is not the reason it exited.
    """
    if state == State.STOPPING and reason:
        return reason
    if (oom_killed or oom_event) and exit_code == 137:
        return Reason.OOM_KILLED
    return Reason.EXITED


@dataclass(frozen=True)
class Adopt:
    agent_id: str
    container_id: str


@dataclass(frozen=True)
class RecordExit:
    agent_id: str
    container_id: str


@dataclass(frozen=True)
class MarkLost:
    agent_id: str


@dataclass(frozen=True)
class RemoveOrphan:
    container_id: str
    agent_label: str | None


Action = Adopt | RecordExit | MarkLost | RemoveOrphan


def plan_reconcile(agents: list[dict[str, Any]], containers: list[dict[str, Any]]) -> list[Action]:
    """What to do, at start or after the engine came back, to make state match Docker.

    ``agents`` are store rows; ``containers`` are ``{"id", "agent_id", "running"}``
    for every container carrying this instance's label. Running agents are
    re-adopted (never re-created); containers no record knows are orphans.
    """
    by_agent = {c["agent_id"]: c for c in containers if c["agent_id"]}
    known = {a["id"] for a in agents}
    actions: list[Action] = []
    for agent in agents:
        if agent["state"] not in LIVE_STATES:
            continue
        container = by_agent.get(agent["id"])
        if container is None:
            actions.append(MarkLost(agent["id"]))
        elif container["running"]:
            actions.append(Adopt(agent["id"], container["id"]))
        else:
            actions.append(RecordExit(agent["id"], container["id"]))
    for container in containers:
        if container["agent_id"] not in known:
            actions.append(RemoveOrphan(container["id"], container["agent_id"]))
    return actions


def expired_exits(agents: list[dict[str, Any]], now: datetime, retention: int, keep: int) -> list[str]:
    """Exited agents whose containers should go: past retention, or beyond the newest ``keep``."""
    exited = sorted(
        (a for a in agents if a["state"] in (State.EXITED, State.FAILED) and a["container_id"]),
        key=lambda a: a["finished_at"] or a["created_at"],
        reverse=True,
    )
    cutoff = now - timedelta(seconds=retention)
    doomed = []
    for index, agent in enumerate(exited):
        finished = datetime.fromisoformat(agent["finished_at"] or agent["created_at"])
        if index >= keep or finished <= cutoff:
            doomed.append(agent["id"])
    return doomed


class Backoff:
    """Exponential backoff for reconnecting: 0.5 s doubling to a cap, reset on success."""

    def __init__(self, initial: float = 0.5, cap: float = 30.0) -> None:
        self.initial = initial
        self.cap = cap
        self.current = initial

    def next(self) -> float:
        delay = self.current
        self.current = min(self.cap, self.current * 2)
        return delay

    def reset(self) -> None:
        self.current = self.initial
