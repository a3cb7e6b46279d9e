"""The public JSON shape of an agent record (the API's ``Agent``; docs/openapi.yaml), built from its store row and
what the watchdog knows of its heartbeats. Pure: the API layer and the metrics call it."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fleetd.models import LIVE_STATES, AgentSpec, State, parse_iso, utcnow

Heartbeat = tuple[str | None, float | None, Any]  # last beat (ISO), its age in seconds, the progress it carried


def agent_view(agent: dict[str, Any], heartbeat: Heartbeat,
               transitions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The public shape of an agent record; with ``transitions``, the detailed one (``fleetd inspect``)."""
    spec = AgentSpec.from_json(json.loads(agent["spec"]))
    deadline = parse_iso(agent["deadline"])
    live = agent["state"] in LIVE_STATES
    out: dict[str, Any] = {
        "id": agent["id"], "name": agent["name"], "image": agent["image"], "role": agent["role"],
        "state": agent["state"], "reason": agent["reason"], "exit_code": agent["exit_code"],
        "oom_killed": bool(agent["oom_killed"]), "container_id": agent["container_id"],
        "created_at": agent["created_at"], "started_at": agent["started_at"],
        "finished_at": agent["finished_at"], "deadline": agent["deadline"],
        "ttl_remaining": seconds_until(deadline) if live and deadline else None,
        "kill_at": agent["kill_at"], **heartbeat_view(agent, spec, heartbeat),
        "ready": bool(agent["ready"]) if agent["state"] == State.RUNNING and agent["ready"] is not None else (
            False if live else None),
        "restarts": agent["restarts"], "restart_policy": spec.restart, "restart_at": agent["restart_at"],
        "labels": dict(spec.labels),
        "limits": {
            "memory": spec.memory, "memory_reservation": spec.memory_reservation, "disk": spec.disk,
            "cpus": spec.nano_cpus / 1e9 if spec.nano_cpus else None,
            "pids_limit": spec.pids_limit, "ttl": spec.ttl, "grace": spec.grace,
        },
    }
    if transitions is not None:
        out["spec"] = spec.to_json()
        out["transitions"] = transitions
    return out


def heartbeat_view(agent: dict[str, Any], spec: AgentSpec, heartbeat: Heartbeat) -> dict[str, Any]:
    """The watchdog's figures, else the last ones recorded in the store (after a restart of the daemon)."""
    last, age, progress = heartbeat
    if last is None and agent["last_heartbeat"]:
        last = agent["last_heartbeat"]
        at = parse_iso(last)
        age = round((utcnow() - at).total_seconds(), 3) if at else None
        progress = json.loads(agent["progress"]) if agent["progress"] else None
    return {"last_heartbeat": last, "heartbeat_age": age, "heartbeat_interval": spec.heartbeat_interval,
            "progress": progress}


def seconds_until(moment: datetime) -> float:
    return round(max(0.0, (moment - utcnow()).total_seconds()), 1)
