"""What the socket API and the metrics listener serve from: the daemon's parts, each by its own name.

Built once by ``fleetd.daemon``. Handlers reach the part they need here (the store for reads, the supervisor for
lifecycle verbs, zone 2 for budgets) instead of through the supervisor; the JSON views the API answers with are
built here too, from those parts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from fleetd import __version__
from fleetd.admin import Admin
from fleetd.config import Config
from fleetd.errors import NotFound
from fleetd.event_bus import EventBus
from fleetd.fleet import Fleet
from fleetd.gateway import Zone2
from fleetd.liveness import Liveness
from fleetd.log_streams import LogStreams
from fleetd.models import State
from fleetd.peaks import finished, newest_limits
from fleetd.rightsize import report
from fleetd.store import Store
from fleetd.supervisor import Supervisor
from fleetd.timers import Timers
from fleetd.views import agent_view


@dataclass(frozen=True)
class Services:
    config: Config
    agents: Supervisor  # the lifecycle verbs: spawn, stop, kill, extend, rm, wait, drain, teardown
    records: Store  # reads: agents, transitions, events, roles
    liveness: Liveness  # heartbeats as the watchdog sees them
    zone2: Zone2  # prices and budgets (counted there)
    admin: Admin  # credentials and roles
    events: EventBus  # the live feed of what the store records (fleetd events -f)
    logs: LogStreams
    timers: Timers
    fleet: Fleet  # deployments and their task queue

    def agent_json(self, agent: dict[str, Any], detail: bool = False) -> dict[str, Any]:
        """An agent's record as the API shows it (``fleetd.views``), with its watchdog's heartbeat figures."""
        transitions = self.records.transitions(agent["id"]) if detail else None
        return agent_view(agent, self.liveness.heartbeat(agent["id"]), transitions)

    def rightsize(self, deployment: str | None, role: str | None) -> dict[str, Any]:
        """The right-sizing report of a deployment (404 unless it exists) or else of a role (404 unless it is
        known: ``default``, the config file's, ``fleetd role set``'s, or one that finished agents had)."""
        if deployment is not None:
            return self.fleet.rightsize(self.fleet.deployments.get(deployment))
        assert role is not None
        rows = finished(self.records, role=role)
        if not rows and role != "default" and role not in self.config.roles and self.records.role(role) is None:
            raise NotFound(f"no such role: {role}")
        return {"kind": "role", "name": role, **report(rows, *newest_limits(self.records, role))}

    def status(self) -> dict[str, Any]:
        """The body of GET /v1/status (`fleetd status`): its cost follows the live fleet, not the history."""
        counts = self.records.state_counts()
        watchdog = self.liveness.watchdog
        return {
            "version": __version__, "instance": self.config.instance, "pid": os.getpid(),
            "uptime_seconds": round(time.monotonic() - self.agents.started, 1),
            "socket": str(self.config.socket), "state_dir": str(self.config.state_dir),
            "docker": self.agents.engine(),
            "agents": {s.value: counts.get(s.value, 0) for s in State},
            "timers": len(self.timers.scheduler.get_jobs()),
            "log_streams": self.logs.open,
            "zone2": self.zone2.status(),
            "max_ttl": self.config.max_ttl,
            "draining": self.agents.draining,
            "watchdog": {"paused": watchdog.paused, "watched": len(watchdog.watches),
                         "probed": len(self.liveness.trackers)},
        }
