"""Namespace holders made ahead of spawns: the slowest step of a spawn, done before it is asked for.

An agent's network namespace is its holder's (fleetd.netns). Starting a holder (Docker's endpoint
setup on the agents' network, then the holder's route) is most of a spawn's time. So the supervisor
keeps a few holders started ahead, each made for the agent id that the next spawn will take with it:
its name, hostname and label are already that id's, and nothing about it changes once it is taken.

A spare is nobody's until taken. At start-up the holders of no live agent are removed (the spares of
a previous run among them) and the pool is filled afresh; on teardown and on the daemon's stop the
spares are removed. A holder is never given to a second agent: it goes with its agent.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fleetd.errors import FleetdError

log = logging.getLogger("fleetd")


class Holders(Protocol):
    """What the pool needs of the runtime (fleetd.runtime.DockerRuntime)."""

    def create_netns(self, agent_id: str, zone2_ip: str | None) -> str | None: ...

    def start_netns(self, holder: str) -> None: ...

    def remove_netns(self, agent_id: str) -> None: ...


Call = Callable[..., Awaitable[Any]]  # runs a blocking runtime call off the event loop


class SpareNamespaces:
    """Up to ``size`` started holders, each for the agent id it will give to a spawn."""

    def __init__(self, runtime: Holders, call: Call, zone2_ip: Callable[[], str | None], size: int) -> None:
        self.runtime = runtime
        self.call = call
        self.zone2_ip = zone2_ip
        self.size = size
        self.ready: deque[str] = deque()
        self.making: set[str] = set()
        self._filling: asyncio.Task[None] | None = None
        self._generation = 0  # bumped by clear(): a holder made for an older generation is removed, not kept

    def take(self) -> str | None:
        """The agent id of a started spare holder, now the caller's; None when there is none."""
        return self.ready.popleft() if self.ready else None

    def held(self) -> set[str]:
        """Agent ids whose holders are spares (ready or being made): not orphans."""
        return set(self.ready) | self.making

    def fill(self) -> None:
        """Make spares in the background until there are ``size`` (one filler at a time)."""
        if self.size <= 0 or (self._filling is not None and not self._filling.done()):
            return
        self._filling = asyncio.get_running_loop().create_task(self._fill(self._generation))

    async def _fill(self, generation: int) -> None:
        while len(self.ready) + len(self.making) < self.size and generation == self._generation:
            agent_id = secrets.token_hex(6)
            self.making.add(agent_id)
            try:
                holder = await self.call(self.runtime.create_netns, agent_id, self.zone2_ip())
                if holder is not None:
                    await self.call(self.runtime.start_netns, holder)
            except FleetdError as exc:
                log.warning("spare namespace holder not made (spawns make their own meanwhile): %s", exc.message)
                await self._remove(agent_id)
                return
            except Exception:
                log.exception("spare namespace holder not made")
                await self._remove(agent_id)
                return
            finally:
                self.making.discard(agent_id)
            if generation != self._generation:
                await self._remove(agent_id)
                return
            self.ready.append(agent_id)

    async def clear(self) -> int:
        """Remove every spare (teardown, the daemon's stop); a filler running stops. Returns how many."""
        self._generation += 1
        if self._filling is not None:
            await asyncio.gather(self._filling, return_exceptions=True)
            self._filling = None
        spares = list(self.ready)
        self.ready.clear()
        for agent_id in spares:
            await self._remove(agent_id)
        return len(spares)

    async def _remove(self, agent_id: str) -> None:
        try:
            await self.call(self.runtime.remove_netns, agent_id)
        except FleetdError as exc:
            log.warning("spare namespace holder %s not removed: %s", agent_id, exc.message)
