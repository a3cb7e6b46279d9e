"""Keep the zone 2 container running at its fixed address on the agents' network, with its firewall rules, and
watch that it answers: on its control socket (else it is brought back) and on the agents' port (else the heartbeat
watchdog is paused: agents' silence is then zone 2's doing, not theirs)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from fleetd.background import Background
from fleetd.errors import FleetdError, RuntimeFailure
from fleetd.fingerprint import code_fingerprint
from fleetd.firewall import Firewall
from fleetd.gateway.control_client import STALE_IMAGE_HINT, ControlClient
from fleetd.gateway.daemon_socket import HeartbeatWatch
from fleetd.runtime import DockerRuntime
from fleetd.store import Store
from fleetd.zone2.contract import Health
from fleetd.zone2.service import GATEWAY_PORT

log = logging.getLogger(__name__)
HEALTH_PERIOD = 1.0
AGENT_PROBE_TIMEOUT = 1.0  # s: zone 2 answering agents slower than this is starved (their p99 target is 0.1 s)
START_TIMEOUT = 20.0


class Keeper:
    def __init__(self, runtime: DockerRuntime, call: Callable[..., Awaitable[Any]], control: ControlClient,
                 store: Store, watchdog: HeartbeatWatch, image: str, control_dir: str,
                 on_up: Callable[[], Awaitable[None]]) -> None:
        self.runtime = runtime
        self.call = call
        self.control = control
        self.store = store
        self.watchdog = watchdog  # paused while zone 2 is down or starved
        self.image = image
        self.control_dir = control_dir  # bind-mounted into zone 2
        self.on_up = on_up  # tell a zone 2 that came up everything it must know
        self.firewall = Firewall(runtime.instance)
        self.container_id: str | None = None
        self.ip: str | None = None
        self.healthy = False
        self.restarts = 0
        self.code_matches: bool | None = None  # zone 2 runs the daemon's code (None: not known yet)
        self._warned_code: str | None = None  # the container warned about
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.background = Background()
        self.started = False
        self.suspended = False  # after teardown, until the next spawn
        self.starved = False  # the control socket answers, the agents' port does not
        self._missed_probes = 0
        self._probe_session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Bring zone 2 up (before any spawn is accepted) and keep it up."""
        self.started = True
        await self.ensure()
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        """Stop watching; zone 2 itself keeps running for the agents (like the agents do)."""
        if self._task is not None:
            self._task.cancel()
        if self._probe_session is not None:
            await self._probe_session.close()

    async def health(self) -> Health | None:
        return await self.control.health()

    async def ensure(self) -> None:
        """Zone 2 runs and knows everything; restart and re-feed it if not."""
        async with self._lock:
            data = await self.call(self.runtime.inspect, self.runtime.zone2_name)
            if data is not None and not self._at_fixed_address(data):
                await self.call(self.runtime.remove, data["Id"])  # agents find zone2 at that address alone
                data = None
            running = bool(data and data["State"]["Running"] and data["Config"]["Image"] == self.image)
            if running and await self.health() is not None:
                if not self.healthy:
                    await self._adopt(data)
                return
            self._unhealthy()
            if data is not None:
                self.restarts += 1
                self.store.add_event("zone2_restarted", "zone 2 was down: restarting it")
            self.container_id = await self._bring_up(data)
            deadline = time.monotonic() + START_TIMEOUT
            polls = 0
            while await self.health() is None:
                polls += 1
                gone = polls % 10 == 0 and not ((await self.call(self.runtime.inspect, self.container_id)) or {}).get(
                    "State", {}).get("Running")
                if gone or time.monotonic() > deadline:
                    logs = await self.call(self._logs_tail)
                    raise RuntimeFailure(f"zone 2 did not start ({self.image}): {logs.strip()[-500:]}")
                await asyncio.sleep(0.05)
            await self._adopt(await self.call(self.runtime.inspect, self.runtime.zone2_name))

    def _at_fixed_address(self, data: dict[str, Any]) -> bool:
        """Zone 2 was made with the address the agents' network keeps for it (when it keeps one)."""
        wanted = self.runtime.zone2_address
        endpoint = ((data.get("NetworkSettings") or {}).get("Networks") or {}).get(self.runtime.network) or {}
        return wanted is None or (endpoint.get("IPAMConfig") or {}).get("IPv4Address") == wanted

    async def _bring_up(self, data: dict[str, Any] | None) -> str:
        """Start the dead zone 2 container again (fastest), or create it afresh."""
        if data is not None and not data["State"]["Running"] and data["Config"]["Image"] == self.image:
            try:
                await self.call(self.runtime.start, data["Id"])
                return str(data["Id"])
            except FleetdError as exc:
                log.warning("zone 2: restarting the old container failed (%s): creating a new one", exc.message)
        return str(await self.call(self.runtime.run_zone2, self.image, self.control_dir))

    async def _adopt(self, data: dict[str, Any] | None) -> None:
        assert data is not None
        self.container_id = data["Id"]
        self.ip = (data["NetworkSettings"]["Networks"].get(self.runtime.network) or {}).get("IPAddress")
        if not self.ip:
            raise RuntimeFailure("zone 2 has no address on the agents' network")
        self._check_code()
        bridge = await self.call(self.runtime.agents_bridge)
        await self.call(self.firewall.apply, bridge, self.ip)
        await self.on_up()
        self.healthy = True
        self.store.add_event("zone2_ready", f"zone 2 serving agents at {self.ip}:{GATEWAY_PORT}")
        # The watchdog resumes when the agents' port answers (the next watch, within HEALTH_PERIOD), so that every
        # agent's window starts when its heartbeats can arrive again, not when the control socket did.

    def _check_code(self) -> None:
        """Warn (log, event, status) when zone 2 runs other fleetd code than the daemon: its image is stale."""
        health = self.control.last_health
        theirs = health.code if health else None
        self.code_matches = theirs == code_fingerprint()
        if not self.code_matches and self._warned_code != self.container_id:
            self._warned_code = self.container_id
            message = (f"zone 2 runs other fleetd code ({self.image}: {theirs or 'unknown'}) than this daemon "
                       f"({code_fingerprint()}). {STALE_IMAGE_HINT}")
            log.warning("%s", message)
            self.store.add_event("zone2_code_mismatch", message, None, {"image": self.image, "zone2": theirs,
                                                                        "daemon": code_fingerprint()})

    def _logs_tail(self) -> str:
        try:
            return bytes(self.runtime.api.logs(self.runtime.zone2_name, tail=5)).decode(errors="replace")
        except Exception:
            return "(no logs)"

    async def ready(self) -> None:
        """Make sure zone 2 serves (after a teardown, bring it back)."""
        self.suspended = False
        if not self.healthy:
            await self.ensure()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_PERIOD)
            if self.suspended:
                continue
            if self.healthy and await self.health() is not None:
                self._agents_see(await self.serving_agents())
                continue
            try:
                await self.ensure()
            except FleetdError as exc:
                log.warning("zone 2: %s", exc.message)

    async def serving_agents(self) -> bool:
        """Does zone 2 answer on the agents' port, as an agent would reach it, within AGENT_PROBE_TIMEOUT? Its control
        socket may answer while that port is starved (one agent holding every descriptor, say)."""
        if self.ip is None:
            return False
        if self._probe_session is None:
            self._probe_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=AGENT_PROBE_TIMEOUT))
        try:
            async with self._probe_session.get(f"http://{self.ip}:{GATEWAY_PORT}/fleetd/health") as response:
                await response.read()
                return True  # any answer in time (a zone 2 older than this route answers 403: as good)
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def answering(self, timeout: float = 1.0) -> bool:
        """Does zone 2 answer, within ``timeout`` seconds, its control socket and the agents' port (what a heartbeat
        goes through)?"""
        try:
            return (await asyncio.wait_for(self.health(), timeout) is not None
                    and await asyncio.wait_for(self.serving_agents(), timeout))
        except TimeoutError:
            return False

    def _agents_see(self, serving: bool) -> None:
        """Pause the heartbeat watchdog while agents cannot reach zone 2 (two probes in a row failed: one may be a
        blip); resume it, every agent's window counted afresh, once they can. Zone 2 is not restarted for this:
        a restart would cut every agent's calls, and what starves it is one agent's load, which zone 2 sheds."""
        if serving:
            self._missed_probes = 0
            if self.starved:
                self.starved = False
                self.store.add_event("zone2_serving", "zone 2 answers agents again")
            self.watchdog.resume()
            return
        self._missed_probes += 1
        if self._missed_probes >= 2 and not self.starved:
            self.starved = True
            self.store.add_event("zone2_starved", f"zone 2 does not answer on the agents' port within "
                                 f"{AGENT_PROBE_TIMEOUT:g} s (its control socket does): heartbeats cannot arrive")
            self.watchdog.pause("zone 2 does not answer on the agents' port")

    def _unhealthy(self) -> None:
        if self.healthy:
            self.watchdog.pause("zone 2 is down")
        self.healthy = False

    def on_exit(self) -> None:
        """Docker says zone 2 died: restart it now rather than at the next health check."""
        if not self.started:
            return  # start() brings it up
        self._unhealthy()
        if not self.suspended:
            self.background.start(self._ensure_logged(), "bringing zone 2 back after its exit")

    async def _ensure_logged(self) -> None:
        try:
            await self.ensure()
        except FleetdError as exc:
            log.warning("zone 2: %s", exc.message)

    async def teardown(self) -> int:
        """Stop keeping zone 2 alive and remove the firewall rules (the container goes with the rest)."""
        self.suspended = True
        self.healthy = False
        return int(await self.call(self.firewall.remove))

    def status(self) -> dict[str, Any]:
        health = self.control.last_health
        return {"healthy": self.healthy, "serving_agents": self.healthy and not self.starved,
                "container_id": self.container_id, "address": self.ip, "restarts": self.restarts,
                "agents_registered": health and health.agents, "credentials": health and health.creds,
                "ledger_error": health and health.ledger_error, "code_matches": self.code_matches}
