"""Agent states, reasons and the spawn spec: plain values, no I/O."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class State(StrEnum):
    CREATED = "created"  # row written, container not yet started
    RUNNING = "running"
    STOPPING = "stopping"  # SIGTERM sent, SIGKILL due at kill_at
    EXITED = "exited"  # container stopped; kept for logs until retention ends
    REMOVED = "removed"  # container gone
    FAILED = "failed"  # never started
    RESTARTING = "restarting"  # exited; its restart policy starts it again at restart_at


LIVE_STATES = (State.CREATED, State.RUNNING, State.STOPPING, State.RESTARTING)


class Reason(StrEnum):
    TTL_EXPIRED = "ttl_expired"
    STOPPED = "stopped"
    KILLED = "killed"
    OOM_KILLED = "oom_killed"
    EXITED = "exited"
    START_FAILED = "start_failed"
    LOST = "lost"  # the container vanished while nobody watched
    TEARDOWN = "teardown"
    DRAINED = "drained"
    HEARTBEAT_LOST = "heartbeat_lost"  # no heartbeat for 2 x its interval
    LIVENESS_FAILED = "liveness_failed"
    STARTUP_FAILED = "startup_failed"

    @classmethod
    def named(cls, value: str | None, default: Reason) -> Reason:
        """The reason called ``value``, else ``default`` (``value in Reason`` raises TypeError on Python 3.11)."""
        try:
            return default if value is None else cls(value)
        except ValueError:
            return default


@dataclass(frozen=True)
class AgentSpec:
    """What the user asked for, after validation and defaults."""

    image: str
    command: tuple[str, ...] = ()
    name: str | None = None
    role: str = "default"
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    memory: int | None = None
    memory_reservation: int | None = None
    disk: int | None = None  # bytes the agent may write in all (None: spawned before disks were bounded)
    nano_cpus: int | None = None
    pids_limit: int = 256
    ttl: int = 3600
    grace: int = 30
    daily_usd: str | None = None  # budget overrides for this agent (USD, exact decimal strings)
    monthly_usd: str | None = None
    max_llm_calls: int | None = None
    heartbeat_interval: float = 0  # seconds; 0 = no heartbeats expected
    restart: str = "never"  # never | on-failure[:N] | always
    startup_probe: dict[str, Any] | None = None
    readiness_probe: dict[str, Any] | None = None
    liveness_probe: dict[str, Any] | None = None
    # spawn --egress: patterns narrowing the role's (None: the role's list); spawn --egress-max-bytes (None: role's)
    egress: list[str] | None = None
    egress_max_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["command"] = list(self.command)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentSpec:
        return cls(**{**data, "command": tuple(data.get("command") or ())})


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z``, the one time format fleetd shows and stores."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text)
