"""One supervisor on a real store, an in-memory runtime and fake disks (tests/unit/fake_runtime.py): ``run`` a check
against it, ``insert`` agent records as an earlier daemon would have left them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from fleetd.config import Config
from fleetd.models import AgentSpec, iso, utcnow
from fleetd.store import Store
from fleetd.supervisor import Supervisor
from fleetd.timers import Timers
from tests.unit.fake_runtime import FakeDisks, FakeRuntime


def run(tmp_path: Path, check: Callable[[Supervisor, Store, FakeRuntime], Awaitable[None]]) -> None:
    async def main() -> None:
        store = Store(tmp_path / "state.db")
        runtime = FakeRuntime()
        timers = Timers()
        timers.start()
        supervisor = Supervisor(Config(state_dir=tmp_path, spare_namespaces=0), store,
                                runtime, timers, FakeDisks())  # type: ignore[arg-type]
        try:
            await check(supervisor, store, runtime)
        finally:
            timers.shutdown()
            supervisor.close()
            store.close()

    asyncio.run(main())


def insert(store: Store, agent_id: str, restart: str = "never", **fields: Any) -> None:
    fields = {"container_id": f"c-{agent_id}", **fields}
    store.insert_agent(agent_id, name=agent_id, image="img", role="default", created_at=iso(utcnow()),
                       deadline=iso(utcnow() + timedelta(hours=1)),
                       spec=json.dumps(AgentSpec(image="img", restart=restart).to_json()), **fields)


