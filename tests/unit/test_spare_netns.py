"""The pool of namespace holders made ahead of spawns, against a fake runtime (fleetd.spare_netns)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fleetd.errors import RuntimeFailure
from fleetd.spare_netns import SpareNamespaces


class FakeHolders:
    def __init__(self) -> None:
        self.running: set[str] = set()
        self.made: list[str] = []
        self.fail = False
        self.gate: asyncio.Event | None = None  # when set, start_netns waits for it (in the test's loop)

    def create_netns(self, agent_id: str, zone2_ip: str | None) -> str | None:
        assert zone2_ip == "10.0.0.2"
        if self.fail:
            raise RuntimeFailure("docker: no more addresses")
        self.made.append(agent_id)
        return f"holder-{agent_id}"

    def start_netns(self, holder: str) -> None:
        self.running.add(holder.removeprefix("holder-"))

    def remove_netns(self, agent_id: str) -> None:
        self.running.discard(agent_id)


def pool(holders: FakeHolders, size: int = 2, before: Callable[[], Any] | None = None) -> SpareNamespaces:
    async def call(func: Callable[..., Any], *args: Any) -> Any:
        await asyncio.sleep(0)  # a thread hop, as the supervisor's executor
        if before is not None and func.__name__ == "start_netns":
            await before()
        return func(*args)

    return SpareNamespaces(holders, call, lambda: "10.0.0.2", size)


async def settle(spares: SpareNamespaces) -> None:
    if spares._filling is not None:
        await spares._filling


def test_fills_to_its_size_and_a_spawn_takes_a_started_holder_then_it_is_made_again() -> None:
    async def main() -> None:
        holders = FakeHolders()
        spares = pool(holders)
        spares.fill()
        spares.fill()  # one filler at a time
        await settle(spares)
        assert len(spares.ready) == 2 and holders.running == set(spares.ready) == set(holders.made)
        taken = spares.take()
        assert taken in holders.running and taken not in spares.held()
        spares.fill()
        await settle(spares)
        assert len(spares.ready) == 2 and len(holders.made) == 3 and taken not in spares.ready

    asyncio.run(main())


def test_an_empty_pool_gives_nothing_and_size_zero_makes_nothing() -> None:
    async def main() -> None:
        holders = FakeHolders()
        spares = pool(holders, size=0)
        spares.fill()
        await settle(spares)
        assert spares.take() is None and holders.made == []

    asyncio.run(main())


def test_a_failure_to_make_one_leaves_nothing_behind_and_spawns_go_on_without() -> None:
    async def main() -> None:
        holders = FakeHolders()
        holders.fail = True
        spares = pool(holders)
        spares.fill()
        await settle(spares)
        assert spares.take() is None and spares.held() == set() and holders.running == set()

    asyncio.run(main())


def test_clear_removes_the_spares_and_one_being_made_is_removed_not_kept() -> None:
    async def main() -> None:
        holders = FakeHolders()
        gate = asyncio.Event()
        spares = pool(holders, size=2, before=gate.wait)
        spares.fill()
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(spares.making) == 1  # the first is being made, its start held at the gate
        being_made = next(iter(spares.making))
        asyncio.get_running_loop().call_later(0.01, gate.set)
        assert await spares.clear() == 0  # none was ready yet
        assert being_made in holders.made and holders.running == set() and spares.held() == set()
        assert len(holders.made) == 1  # the filler stopped with the clear
        spares.fill()  # the next spawn fills it again
        await settle(spares)
        assert len(spares.ready) == 2 and holders.running == set(spares.ready)
        assert await spares.clear() == 2 and holders.running == set()

    asyncio.run(main())
