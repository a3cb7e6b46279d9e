"""``daemon.sock``: the daemon's API for zone 2, which asks who an address it does not know yet is (so an agent's
first call never races its registration), relays heartbeats, and sends events to record. Each handler reads its
message with the contract's class (``fleetd.zone2.contract``); a message it cannot read is a 400."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from fleetd.store import Store
from fleetd.zone2.contract import Event, HeartbeatAnswer, HeartbeatBatch, Registration
from fleetd.zone2.control import received, refuse_malformed

Whois = Callable[[str], Awaitable[Registration | None]]


class HeartbeatWatch(Protocol):
    """The heartbeat watchdog (``fleetd.liveness.Liveness``): zone 2 relays the agents' beats to it, and the keeper
    pauses it while the beats cannot arrive."""

    def beat(self, agent_id: str, progress: dict[str, Any] | None) -> bool: ...

    def pause(self, why: str) -> None: ...

    def resume(self) -> None: ...


class DaemonSocket:
    def __init__(self, path: Path, store: Store, whois: Whois, watchdog: HeartbeatWatch) -> None:
        self.path = path
        self.store = store
        self.whois = whois
        self.watchdog = watchdog
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[refuse_malformed])

        async def whois(request: web.Request) -> web.Response:
            reg = await self.whois(request.query.get("ip", ""))
            if reg is None:
                return web.json_response({"error": "not an agent"}, status=404)
            return web.json_response(reg.to_json())

        async def event(request: web.Request) -> web.Response:
            event = await received(request, Event)
            agent_id = event.agent_id if event.agent_id and self.store.get(event.agent_id) else None
            self.store.add_event(event.type, event.message, agent_id, event.data)
            return web.json_response({"ok": True})

        async def heartbeats(request: web.Request) -> web.Response:
            """A batch of heartbeats relayed by zone 2; answers which agents are being watched."""
            beats = (await received(request, HeartbeatBatch)).beats
            taken = tuple(b.agent_id for b in beats if self.watchdog.beat(b.agent_id, b.progress))
            return web.json_response(HeartbeatAnswer(taken).to_json())

        app.router.add_get("/control/whois", whois)
        app.router.add_post("/control/heartbeats", heartbeats)
        app.router.add_post("/control/events", event)
        return app

    async def serve(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        if self.path.exists():
            self.path.unlink()
        await web.UnixSite(self._runner, str(self.path)).start()
        os.chmod(self.path, 0o666)  # zone 2 connects as nobody; the control dir is what keeps others out

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
