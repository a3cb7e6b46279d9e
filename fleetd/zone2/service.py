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

from fleetd.zone2.proxy import init_gateway
from fleetd.zone2.registry import Registration, Registry, Upstream

log = logging.getLogger("fleetd.zone2")
CONTROL_SOCKET = "zone2.sock"
DAEMON_SOCKET = "daemon.sock"
GATEWAY_PORT = 8080


def registration(data: dict[str, Any]) -> Registration:
    return Registration(str(data["agent_id"]), str(data["ip"]), str(data.get("role") or "default"),
                        frozenset(data.get("creds") or ()))


def init_control(registry: Registry, started: float) -> web.Application:
    """The daemon-facing control API (Unix socket)."""
    app = web.Application(client_max_size=16 << 20)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "agents": len(registry.by_ip), "creds": len(registry.creds),
                                  "uptime_seconds": round(time.monotonic() - started, 1), "pid": os.getpid()})

    async def put_creds(request: web.Request) -> web.Response:
        data = await request.json()
        registry.set_creds([Upstream(c["name"], c["upstream"], c["secret"]) for c in data])
        return web.json_response({"creds": len(registry.creds)})

    async def put_agents(request: web.Request) -> web.Response:
        registry.replace_agents([registration(a) for a in await request.json()])
        return web.json_response({"agents": len(registry.by_ip)})

    async def post_agent(request: web.Request) -> web.Response:
        registry.register(registration(await request.json()))
        return web.json_response({"agents": len(registry.by_ip)})

    async def delete_agent(request: web.Request) -> web.Response:
        registry.unregister(request.match_info["agent_id"])
        return web.json_response({"agents": len(registry.by_ip)})

    app.router.add_get("/control/health", health)
    app.router.add_put("/control/creds", put_creds)
    app.router.add_put("/control/agents", put_agents)
    app.router.add_post("/control/agents", post_agent)
    app.router.add_delete("/control/agents/{agent_id}", delete_agent)
    return app


class DaemonWhois:
    """Asks the daemon, over its control socket, which agent an address belongs to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, ip: str) -> Registration | None:
        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.path)),
                                                 timeout=aiohttp.ClientTimeout(total=5))
        try:
            async with self.session.get("http://daemon/control/whois", params={"ip": ip}) as response:
                if response.status != 200:
                    return None
                return registration(await response.json())
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


async def serve(control_dir: Path, host: str, port: int) -> None:
    registry = Registry()
    whois = DaemonWhois(control_dir / DAEMON_SOCKET)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gateway = web.AppRunner(init_gateway(registry, whois), access_log=None, handle_signals=False)
    control = web.AppRunner(init_control(registry, time.monotonic()), access_log=None, handle_signals=False)
    await gateway.setup()
    await control.setup()
    control_path = control_dir / CONTROL_SOCKET
    if control_path.exists():
        control_path.unlink()
    await web.UnixSite(control, str(control_path)).start()
    os.chmod(control_path, 0o600)
    await web.TCPSite(gateway, host, port, backlog=1024, reuse_address=True).start()
    log.info("zone 2 serving agents on %s:%d, control on %s", host, port, control_path)
    await stop.wait()
    await gateway.cleanup()
    await control.cleanup()
    await whois.close()


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
