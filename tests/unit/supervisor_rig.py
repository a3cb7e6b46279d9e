"""One supervisor on a real store, an in-memory runtime, zone 2 and disks (tests/unit/fake_runtime.py): ``run`` a
check against it, ``insert`` agent records as an earlier daemon would have left them; ``build`` one the way the
daemon does, from its parts."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from fleetd.admin import Admin
from fleetd.blocking import BlockingCalls
from fleetd.config import Config
from fleetd.deployments import Deployments
from fleetd.event_bus import EventBus
from fleetd.fleet import Fleet
from fleetd.gateway import Zone2, zone2_ledger
from fleetd.liveness import Liveness, engine_exec
from fleetd.log_streams import LogStreams
from fleetd.models import AgentSpec, iso, utcnow
from fleetd.services import Services
from fleetd.store import Store
from fleetd.supervisor import Supervisor
from fleetd.task_costs import TaskCosts
from fleetd.task_queue import TaskQueue
from fleetd.timers import Timers
from fleetd.vault import Vault
from fleetd.zone2_port import Zone2Port
from tests.unit.fake_runtime import FakeDisks, FakeRuntime, FakeZone2


def build(config: Config, store: Store, runtime: FakeRuntime, timers: Timers, disks: FakeDisks | None = None,
          zone2: Zone2Port | None = None) -> Supervisor:
    """A supervisor wired as fleetd.daemon wires one, on fakes; ``close_all`` undoes it."""
    calls = BlockingCalls(4)
    liveness = Liveness(store, engine_exec(runtime, calls))  # type: ignore[arg-type]
    return Supervisor(config, store, runtime, timers, calls, zone2 or FakeZone2(), liveness,  # type: ignore[arg-type]
                      disks or FakeDisks())  # type: ignore[arg-type]


async def close_all(supervisor: Supervisor) -> None:
    await supervisor.background.cancel()
    await supervisor.liveness.stop()
    supervisor.close()
    supervisor.calls.close()


def run(tmp_path: Path, check: Callable[[Supervisor, Store, FakeRuntime], Awaitable[None]],
        runtime: FakeRuntime | None = None) -> None:
    async def main() -> None:
        store = Store(tmp_path / "state.db")
        engine = runtime or FakeRuntime()
        timers = Timers()
        timers.start()
        supervisor = build(Config(state_dir=tmp_path, spare_namespaces=0), store, engine, timers)
        try:
            await check(supervisor, store, engine)
        finally:
            timers.shutdown()
            await close_all(supervisor)
            store.close()

    asyncio.run(main())


async def deliver(supervisor: Supervisor, runtime: FakeRuntime) -> None:
    """Hand the runtime's die events to the supervisor, as the event watcher does, and let them be recorded."""
    while runtime.died:
        supervisor.on_docker_event(runtime.died.pop(0))
    for _ in range(50):
        if not supervisor.background.tasks:
            return
        await asyncio.sleep(0.01)


def insert(store: Store, agent_id: str, restart: str = "never", **fields: Any) -> None:
    fields = {"container_id": f"c-{agent_id}", **fields}
    store.insert_agent(agent_id, name=agent_id, image="img", role="default", created_at=iso(utcnow()),
                       deadline=iso(utcnow() + timedelta(hours=1)),
                       spec=json.dumps(AgentSpec(image="img", restart=restart).to_json()), **fields)




def build_services(config: Config, store: Store, runtime: Any = None) -> Services:
    """The API's parts as fleetd.daemon makes them, on a fake runtime, with a real zone 2 keeper that is never
    started (its pushes wait for a start that does not come; its status and views are real)."""
    runtime = runtime or FakeRuntime(config.instance)
    timers = Timers()
    calls = BlockingCalls(4)
    liveness = Liveness(store, engine_exec(runtime, calls))
    vault = Vault(store, secrets.token_bytes(32))
    zone2 = Zone2(config.state_dir, store, vault, runtime, calls.call, liveness)
    supervisor = Supervisor(config, store, runtime, timers, calls, zone2, liveness, FakeDisks())  # type: ignore[arg-type]
    fleet = Fleet(store, Deployments(store, config), TaskQueue(store),
                  costs=TaskCosts(zone2_ledger(config.state_dir)))
    return Services(config, supervisor, store, liveness, zone2, Admin(store, vault, zone2), EventBus(),
                    LogStreams(runtime, calls), timers, fleet)
