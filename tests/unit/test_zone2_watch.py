"""The daemon's watch of zone 2 (fleetd.gateway.keeper.Keeper): agents' view decides the heartbeat watchdog, not
the control socket's. No Docker: zone 2's answers are scripted."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fleetd.gateway import keeper
from fleetd.gateway.control_client import ControlClient
from fleetd.gateway.keeper import Keeper
from fleetd.store import Store
from fleetd.zone2.contract import Health


class Watchdog:
    """Records what zone 2 tells the heartbeat watchdog: True resumed, False paused."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def beat(self, agent_id: str, progress: dict[str, Any] | None) -> bool:
        return True

    def pause(self, why: str) -> None:
        self.seen.append(False)

    def resume(self) -> None:
        self.seen.append(True)


class Scripted(Keeper):
    """Zone 2 whose control socket answers and whose agents' port answers as scripted, one answer a probe."""

    def __init__(self, store: Store, tmp_path: Path, agents_port: list[bool]) -> None:
        runtime: Any = SimpleNamespace(instance="t")
        self.recorded = Watchdog()
        super().__init__(runtime, None, ControlClient(tmp_path / "zone2.sock"), store, self.recorded,  # type: ignore[arg-type]
                         "img", str(tmp_path), None)  # type: ignore[arg-type]
        self.script = agents_port
        self.healthy, self.ip = True, "172.30.0.2"

    async def health(self) -> Health | None:
        return Health(0, 0, 0.0, 1)

    async def serving_agents(self) -> bool:
        return self.script.pop(0) if self.script else True


def test_a_starved_agents_port_pauses_the_watchdog_until_agents_get_answers(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Zone 2's control socket answered while its agents' port was starved (one agent held every descriptor): the
    watchdog went on and a bystander beating every second was stopped as heartbeat_lost."""
    monkeypatch.setattr(keeper, "HEALTH_PERIOD", 0.01)
    store = Store(tmp_path / "state.db")
    zone2 = Scripted(store, tmp_path, [True, False, False, False, True, False, True])
    seen = zone2.recorded.seen

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(zone2._watch())
        while zone2.script:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(main())
    # one missed probe is a blip; two in a row pause it; the next answer resumes it (every window afresh)
    assert seen[:4] == [True, False, True, True] and all(seen[3:])
    kinds = [e["type"] for e in store.events()]
    assert kinds == ["zone2_starved", "zone2_serving"]
    assert zone2.status()["serving_agents"] is True
    store.close()
