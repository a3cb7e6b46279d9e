"""Housekeeping on a timer: exited agents' containers go after their log retention (or beyond ``max_exited``), and
records and events past the retention windows (``[retention]``) are purged, so that state stays bounded."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from fleetd.agent_runtime import AgentRuntime
from fleetd.agent_storage import AgentStorage
from fleetd.config import Config
from fleetd.decisions import expired_exits
from fleetd.errors import FleetdError
from fleetd.models import State, utcnow
from fleetd.store import Store

log = logging.getLogger(__name__)
PERIOD = 30.0  # seconds between rounds, at most
PURGE_EVERY = 600.0  # seconds between retention runs (fleetd.store.Store.purge), at most
# Exited agents removed side by side. Spawns run several at once; a janitor that removed one agent at a time (a
# container, its network holder, two loop-backed disks: ~0.4 s, more under load) fell behind a soak of 6 at once,
# and the pile of exited containers it left slowed dockerd, which slowed removal further: 2,800 exited containers
# in 40 minutes (bench/README.md, soak run D), 56x the max_exited it was meant to hold.
REMOVALS_AT_ONCE = 8


class Janitor:
    def __init__(self, config: Config, store: Store, runtime: AgentRuntime, storage: AgentStorage,
                 call: Callable[..., Awaitable[Any]]) -> None:
        self.config = config
        self.store = store
        self.runtime = runtime
        self.storage = storage
        self.call = call
        self._purged = -PURGE_EVERY  # when retention last ran (monotonic)

    @property
    def period(self) -> float:
        """Often enough that a short log retention is honoured."""
        return min(PERIOD, max(1.0, self.config.log_retention / 2))

    async def run(self) -> None:
        """One round: remove exited agents' containers past retention, REMOVALS_AT_ONCE side by side, then purge old
        records when due."""
        doomed = expired_exits(
            self.store.agents((State.EXITED, State.FAILED)), utcnow(),
            self.config.log_retention, self.config.max_exited,
        )
        gate = asyncio.Semaphore(REMOVALS_AT_ONCE)
        await asyncio.gather(*(self._remove(agent_id, gate) for agent_id in doomed))
        # Often enough that a short retention is honoured, at most every PURGE_EVERY.
        period = min(PURGE_EVERY, self.config.retention_records / 4, self.config.retention_events / 4)
        if time.monotonic() - self._purged >= period:
            self.purge()

    async def _remove(self, agent_id: str, gate: asyncio.Semaphore) -> None:
        async with gate:
            agent = self.store.get(agent_id)
            if agent is None or agent["state"] not in (State.EXITED, State.FAILED):
                return
            try:
                await self.call(self.runtime.remove, agent["container_id"])
                # Also when the container was already gone (no destroy event then).
                await self.call(self.storage.remove, agent_id)
            except FleetdError as exc:
                log.warning("janitor: cannot remove %s: %s", agent_id, exc.message)
                return
            self.store.transition(agent_id, State.REMOVED, agent["reason"], exit_code=agent["exit_code"])

    def purge(self) -> dict[str, int]:
        """Retention ([retention]): records of removed agents, and events, older than their windows go."""
        self._purged = time.monotonic()
        now = utcnow()
        removed = self.store.purge(now - timedelta(seconds=self.config.retention_records),
                                   now - timedelta(seconds=self.config.retention_events))
        if any(removed.values()):
            log.info("retention: removed %(agents)d agent records, %(transitions)d transitions, %(events)d events",
                     removed)
        return removed
