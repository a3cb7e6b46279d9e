"""Zone 2's process: the agent-facing gateway plus a control socket only the daemon can reach.

The control directory is bind-mounted from the daemon's state dir into zone 2
alone: ``zone2.sock`` (served here; the daemon pushes credentials and
registrations) and ``daemon.sock`` (served by the daemon; zone 2 asks it who an
unknown address is).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from fleetd.fingerprint import code_fingerprint
from fleetd.zone2.contract import (
    BudgetAnswer,
    Credentials,
    Event,
    Health,
    Heartbeat,
    HeartbeatAnswer,
    HeartbeatBatch,
    Registration,
    Registrations,
    Zone2Policy,
)
from fleetd.zone2.control import received, refuse_malformed
from fleetd.zone2.costs import CostTracker
from fleetd.zone2.guard import IDLE_TIMEOUT, LINGER, READ_BUFFER, Guard, serve_guarded, stop_guarded
from fleetd.zone2.ledger import LEDGER_FILE, Ledger
from fleetd.zone2.proxy import init_gateway
from fleetd.zone2.registry import Registry

log = logging.getLogger("fleetd.zone2")
CONTROL_SOCKET = "zone2.sock"
DAEMON_SOCKET = "daemon.sock"
GATEWAY_PORT = 8080
HEARTBEAT_LINGER = 0.02  # s a heartbeat waits in zone 2 for others to go to the daemon with it


def init_control(registry: Registry, costs: CostTracker, guard: Guard, started: float) -> web.Application:
    """The daemon-facing control API (Unix socket): each handler reads its message with the contract's class."""
    app = web.Application(client_max_size=16 << 20, middlewares=[refuse_malformed])

    async def put_policy(request: web.Request) -> web.Response:
        costs.configure(await received(request, Zone2Policy))  # 400 for a newer daemon's, which this one cannot read
        return web.json_response({"prices": len(costs.prices)})

    async def get_budget(request: web.Request) -> web.Response:
        agents = request.query.getall("agent", [])
        answer = BudgetAnswer(costs.instance_status(), {agent_id: costs.status(agent_id) for agent_id in agents})
        return web.json_response(answer.to_json())

    async def health(request: web.Request) -> web.Response:
        return web.json_response(Health(
            len(registry.by_ip), len(registry.creds), round(time.monotonic() - started, 1), os.getpid(),
            ledger_error=costs.ledger.error, ledger_unwritten=len(costs.ledger.unwritten), code=code_fingerprint(),
            gateway=guard.status()).to_json())

    async def put_creds(request: web.Request) -> web.Response:
        registry.set_creds((await received(request, Credentials)).creds)
        return web.json_response({"creds": len(registry.creds)})

    async def put_agents(request: web.Request) -> web.Response:
        registry.replace_agents((await received(request, Registrations)).agents)
        return web.json_response({"agents": len(registry.by_ip)})

    async def post_agent(request: web.Request) -> web.Response:
        registry.register(await received(request, Registration))
        return web.json_response({"agents": len(registry.by_ip)})

    async def delete_agent(request: web.Request) -> web.Response:
        registry.unregister(request.match_info["agent_id"])
        costs.forget(request.match_info["agent_id"])
        return web.json_response({"agents": len(registry.by_ip)})

    app.router.add_get("/control/health", health)
    app.router.add_put("/control/policy", put_policy)
    app.router.add_get("/control/budget", get_budget)
    app.router.add_put("/control/creds", put_creds)
    app.router.add_put("/control/agents", put_agents)
    app.router.add_post("/control/agents", post_agent)
    app.router.add_delete("/control/agents/{agent_id}", delete_agent)
    return app


class DaemonLink:
    """Zone 2's line to the daemon over ``daemon.sock``: who is this address, and events to record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.session: aiohttp.ClientSession | None = None
        self.pending: set[asyncio.Task[None]] = set()
        self._beats: dict[str, tuple[dict[str, Any] | None, list[asyncio.Future[bool | None]]]] = {}
        self._flush: asyncio.TimerHandle | None = None
        self._sending: asyncio.Task[None] | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.path)),
                                                 timeout=aiohttp.ClientTimeout(total=5))
        return self.session

    async def whois(self, ip: str) -> Registration | None:
        try:
            async with self._session().get("http://daemon/control/whois", params={"ip": ip}) as response:
                if response.status != 200:
                    return None
                return Registration.from_json(await response.json())
        except (aiohttp.ClientError, TimeoutError, ValueError):  # ValueError: not JSON, or not a registration
            return None

    async def heartbeat(self, agent_id: str, progress: dict[str, Any] | None) -> bool | None:
        """Relay a heartbeat: True taken, False the daemon does not watch this agent, None unreachable.

        Heartbeats go to the daemon in batches, as a database commits a group: a beat waits
        ``HEARTBEAT_LINGER`` for others to join it, and beats that come while a batch is on its way wait for
        it and go together right after. An agent has its answer in ~25 ms, and 200 agents beating every 5 s
        cost the daemon fewer requests than beats.
        """
        future: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        last, waiting = self._beats.get(agent_id, (None, []))
        self._beats[agent_id] = (progress if progress is not None else last, waiting)
        waiting.append(future)
        if self._flush is None and self._sending is None:
            self._flush = asyncio.get_running_loop().call_later(HEARTBEAT_LINGER, self._send_beats)
        return await future

    def _send_beats(self) -> None:
        self._flush = None
        beats, self._beats = self._beats, {}
        self._sending = task = asyncio.get_running_loop().create_task(self._post_beats(beats))
        self.pending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self.pending.discard(task)
        self._sending = None
        if self._beats and self._flush is None:
            self._send_beats()  # they have waited for this batch already

    async def _post_beats(self, beats: dict[str, tuple[dict[str, Any] | None, list[asyncio.Future[bool | None]]]]
                          ) -> None:
        batch = HeartbeatBatch(tuple(Heartbeat(agent_id, progress) for agent_id, (progress, _) in beats.items()))
        taken: set[str] | None
        try:
            async with self._session().post("http://daemon/control/heartbeats", json=batch.to_json()) as response:
                taken = set(HeartbeatAnswer.from_json(await response.json()).taken) if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):  # ValueError: not JSON, or not an answer
            taken = None
        for agent_id, (_, waiting) in beats.items():
            for future in waiting:
                if not future.done():
                    future.set_result(None if taken is None else agent_id in taken)

    def emit(self, type_: str, agent_id: str | None, message: str, data: dict[str, Any]) -> None:
        """Send an event to the daemon's log in the background (never holds up a request)."""
        log.info("event %s %s: %s", type_, agent_id or "-", message)
        task = asyncio.get_running_loop().create_task(self._post_event(Event(type_, agent_id, message, data)))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _post_event(self, event: Event) -> None:
        try:
            async with self._session().post("http://daemon/control/events", json=event.to_json()) as response:
                await response.read()
        except (aiohttp.ClientError, TimeoutError):
            log.warning("could not send event %s to the daemon", event.type)

    async def close(self) -> None:
        if self.pending:
            await asyncio.wait(self.pending, timeout=2)
        if self.session is not None:
            await self.session.close()


async def serve(control_dir: Path, host: str, port: int) -> None:
    registry = Registry()
    daemon = DaemonLink(control_dir / DAEMON_SOCKET)
    costs = CostTracker(Ledger(control_dir / LEDGER_FILE), daemon.emit)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    guard = Guard(counts=costs.counts)
    agents_app = init_gateway(registry, daemon.whois, costs, daemon.heartbeat, guard)
    # Bodies are relayed as sent (an LLM call's must come uncompressed: zone 2 meters what it reads), and an idle
    # kept-alive connection is closed by the guard's sweep, not kept for aiohttp's default hour.
    gateway = web.AppRunner(agents_app, access_log=None, handle_signals=False, auto_decompress=False,
                            keepalive_timeout=IDLE_TIMEOUT, lingering_time=LINGER, read_bufsize=READ_BUFFER)
    control = web.AppRunner(init_control(registry, costs, guard, time.monotonic()), access_log=None,
                            handle_signals=False)
    await gateway.setup()
    await control.setup()
    control_path = control_dir / CONTROL_SOCKET
    if control_path.exists():
        control_path.unlink()
    await web.UnixSite(control, str(control_path)).start()
    # The daemon connects as root without CAP_DAC_OVERRIDE (its unit's sandbox): the control dir (the daemon's,
    # writable by zone 2's group, in the 0750 state dir) is what keeps others out.
    os.chmod(control_path, 0o666)
    listener, sweeper = await serve_guarded(gateway, guard, host, port)
    log.info("zone 2 serving agents on %s:%d (at most %d connections), control on %s", host, port,
             guard.shares.limits.connections, control_path)
    await stop.wait()
    await stop_guarded(listener, sweeper)
    await gateway.cleanup()
    await control.cleanup()
    await daemon.close()
    if not costs.ledger.flush():
        log.error("ledger: %d rows could not be written (%s) and are lost", len(costs.ledger.unwritten),
                  costs.ledger.error)
    costs.ledger.close()


def run(control_dir: Path, host: str = "0.0.0.0", port: int = GATEWAY_PORT) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        import uvloop  # zone 2 is on every agent call's path: libuv's loop costs less per request
    except ImportError:
        log.warning("uvloop is not installed: zone 2 runs on asyncio's own loop")
        asyncio.run(serve(control_dir, host, port))
    else:
        uvloop.run(serve(control_dir, host, port))
    return 0
