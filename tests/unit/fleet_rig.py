"""The fleet controller's test rig: a real store and supervisor over the in-memory runtime, a clock a test moves,
and one tick at a time (test_fleet.py, test_rollouts.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetd.config import Config
from fleetd.deployments import Deployments
from fleetd.fleet import Fleet
from fleetd.models import LIVE_STATES, State
from fleetd.store import Store
from fleetd.supervisor import Supervisor
from fleetd.task_queue import TaskQueue
from fleetd.timers import Timers
from tests.unit.fake_runtime import FakeRuntime
from tests.unit.supervisor_rig import build, close_all


class Clock:
    """Monotonic seconds that a test can move forward (the autoscaler's window and step)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


@dataclass
class Rig:
    fleet: Fleet
    supervisor: Supervisor
    runtime: FakeRuntime
    store: Store
    clock: Clock

    async def tick(self) -> None:
        """One controller tick, then its launches and stops carried out and their exits recorded."""
        await self.fleet.tick()
        await self.settle()

    async def settle(self) -> None:
        for _ in range(100):
            while self.runtime.died:
                self.supervisor.on_docker_event(self.runtime.died.pop(0))
            pending = self.fleet.background.tasks | self.supervisor.background.tasks
            if not pending and not self.runtime.died:
                return
            await asyncio.sleep(0.01)

    def deploy(self, name: str = "web", **options: Any) -> dict[str, Any]:
        applied = self.fleet.deployments.apply(name, {"image": "img", "command": ["work"], "ttl": 3600,
                                                      **options}, 2)
        return applied.deployment.to_json() | {"message": applied.message}

    def pool(self, name: str = "web") -> list[dict[str, Any]]:
        return [a for a in self.store.agents(tuple(LIVE_STATES))
                if a["name"].startswith(f"{name}-") and a["state"] == State.RUNNING]


def run(tmp_path: Path, check: Callable[[Rig], Awaitable[None]]) -> None:
    async def main() -> None:
        store = Store(tmp_path / "state.db")
        runtime = FakeRuntime()
        timers = Timers()
        timers.start()
        config = Config(state_dir=tmp_path, spare_namespaces=0)
        supervisor = build(config, store, runtime, timers)
        await supervisor.start()
        clock = Clock()
        fleet = Fleet(store, Deployments(store, config), TaskQueue(store, backoff_base=0.0), monotonic=clock)
        fleet.attach(supervisor)
        try:
            await check(Rig(fleet, supervisor, runtime, store, clock))
        finally:
            await fleet.stop()
            timers.shutdown()
            await close_all(supervisor)
            store.close()

    asyncio.run(main())
