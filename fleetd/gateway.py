"""The daemon's side of zone 2: keep the gateway container alive and tell it what it must know.

Zone 2 holds credentials and agent registrations in memory only; whenever it
(re)starts, everything is sent again. It asks back, over ``daemon.sock``, who
an address it does not know yet belongs to, so an agent's first call never
races its registration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
from aiohttp import web

from fleetd import __version__
from fleetd.background import Background
from fleetd.errors import FleetdError, NotFound, RuntimeFailure, Unavailable
from fleetd.fingerprint import code_fingerprint
from fleetd.firewall import Firewall
from fleetd.models import LIVE_STATES
from fleetd.policy import BudgetCaps, Policy, merged_prices, nusd, price_entry, resolve_caps, zone2_policy
from fleetd.runtime import DockerRuntime
from fleetd.store import Store
from fleetd.vault import Vault
from fleetd.zone2.budget import Caps
from fleetd.zone2.contract import (
    AgentFigures,
    BudgetAnswer,
    ContractError,
    Credentials,
    Event,
    Health,
    HeartbeatAnswer,
    HeartbeatBatch,
    Message,
    Registration,
    Registrations,
    Upstream,
)
from fleetd.zone2.control import received, refuse_malformed
from fleetd.zone2.pricing import PriceTable
from fleetd.zone2.service import CONTROL_SOCKET, DAEMON_SOCKET, GATEWAY_PORT

Answer = TypeVar("Answer", bound=Message)  # what Zone2._ask reads

log = logging.getLogger(__name__)
NOBODY = 65534
HEALTH_PERIOD = 1.0
AGENT_PROBE_TIMEOUT = 1.0  # s: zone 2 answering agents slower than this is starved (their p99 target is 0.1 s)
START_TIMEOUT = 20.0
ZONE2_IMAGE = f"fleetd/zone2:{__version__}"
GATEWAY_URL = f"http://zone2:{GATEWAY_PORT}"
STALE_IMAGE_HINT = ("When its image was built from other fleetd code than this daemon runs (an upgrade without a "
                    "rebuild), run `fleetd images build`, then restart the daemon.")


def agent_env() -> dict[str, str]:
    """What an agent needs to reach zone 2 with unmodified OpenAI/Anthropic SDKs."""
    return {
        "FLEETD_GATEWAY_URL": GATEWAY_URL,
        "OPENAI_BASE_URL": f"{GATEWAY_URL}/v1",
        "ANTHROPIC_BASE_URL": GATEWAY_URL,
    }


class HeartbeatWatch(Protocol):
    """The heartbeat watchdog (``fleetd.liveness.Liveness``): zone 2 relays the agents' beats to it, and pauses it
    while the beats cannot arrive."""

    def beat(self, agent_id: str, progress: dict[str, Any] | None) -> bool: ...

    def pause(self, why: str) -> None: ...

    def resume(self) -> None: ...


class Zone2:
    """Runs, watches and feeds the zone 2 gateway container."""

    def __init__(self, state_dir: Path, store: Store, vault: Vault, runtime: DockerRuntime,
                 call: Callable[..., Awaitable[Any]], watchdog: HeartbeatWatch, image: str = ZONE2_IMAGE,
                 policy: Policy | None = None) -> None:
        self.control_dir = state_dir / "zone2"
        self.store = store
        self.vault = vault
        self.runtime = runtime
        self.call = call
        self.image = image
        self.policy = policy or Policy()
        self.builtin_prices = PriceTable.builtin().to_list()
        self.firewall = Firewall(runtime.instance)
        self.container_id: str | None = None
        self.ip: str | None = None
        self.healthy = False
        self.restarts = 0
        self.last_health: Health | None = None
        self.code_matches: bool | None = None  # zone 2 runs the daemon's code (None: not known yet)
        self._warned_code: str | None = None  # the container warned about
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.background = Background()
        self.suspended = False  # after teardown, until the next spawn
        self.watchdog = watchdog  # paused while zone 2 is down
        self.starved = False  # the control socket answers, the agents' port does not
        self._missed_probes = 0
        self._probe_session: aiohttp.ClientSession | None = None

    # -- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        """Bring zone 2 up (before any spawn is accepted) and keep it up."""
        # The daemon owns the control dir (it binds daemon.sock there); zone 2, nobody, writes it as its group (its
        # socket, its ledger). Inside the state dir (0750), it keeps everyone else out. Owner first, then the mode
        # as that owner: CAP_CHOWN is all this needs, not CAP_FOWNER or CAP_DAC_OVERRIDE (systemd/fleetd.service).
        self.control_dir.mkdir(mode=0o770, exist_ok=True)
        os.chown(self.control_dir, os.getuid(), NOBODY)
        os.chmod(self.control_dir, 0o770)
        await self._serve_daemon_socket()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.control_dir / CONTROL_SOCKET)),
            timeout=aiohttp.ClientTimeout(total=5),
        )
        await self.ensure()
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        """Stop watching; zone 2 itself keeps running for the agents (like the agents do)."""
        if self._task is not None:
            self._task.cancel()
        for session in (self._session, self._probe_session):
            if session is not None:
                await session.close()
        if self._runner is not None:
            await self._runner.cleanup()

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
        return str(await self.call(self.runtime.run_zone2, self.image, str(self.control_dir)))

    async def _adopt(self, data: dict[str, Any] | None) -> None:
        assert data is not None
        self.container_id = data["Id"]
        self.ip = (data["NetworkSettings"]["Networks"].get(self.runtime.network) or {}).get("IPAddress")
        if not self.ip:
            raise RuntimeFailure("zone 2 has no address on the agents' network")
        self._check_code()
        bridge = await self.call(self.runtime.agents_bridge)
        await self.call(self.firewall.apply, bridge, self.ip)
        await self.push_all()
        self.healthy = True
        self.store.add_event("zone2_ready", f"zone 2 serving agents at {self.ip}:{GATEWAY_PORT}")
        # The watchdog resumes when the agents' port answers (the next watch, within HEALTH_PERIOD), so that every
        # agent's window starts when its heartbeats can arrive again, not when the control socket did.

    def _check_code(self) -> None:
        """Warn (log, event, status) when zone 2 runs other fleetd code than the daemon: its image is stale."""
        theirs = self.last_health.code if self.last_health else None
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

    def agent_env(self) -> dict[str, str]:
        return agent_env()

    def on_exit(self) -> None:
        """Docker says zone 2 died: restart it now rather than at the next health check."""
        if self._session is None:
            return  # not started yet: start() brings it up
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

    # -- talking to zone 2 ----------------------------------------------------
    async def _ask(self, path: str, answer: type[Answer]) -> Answer | None:
        """Zone 2's answer to GET ``path``, read as ``answer``; None when it does not answer 200 with one (an answer
        this daemon cannot read is logged: zone 2 runs other fleetd code)."""
        status, result = await self._request("GET", path)
        if status != 200:
            return None
        try:
            return answer.from_json(result)
        except ContractError as exc:
            log.warning("zone 2's answer to %s cannot be read (%s). %s", path, exc, STALE_IMAGE_HINT)
            return None

    async def _request(self, method: str, path: str, message: Message | None = None
                       ) -> tuple[int | None, dict[str, Any] | None]:
        """(status, JSON object) of a control call; (None, None) when zone 2 does not answer."""
        if self._session is None:
            return None, None  # before start(): what is said now is sent again by start()'s push_all
        body = None if message is None else message.to_json()
        try:
            async with self._session.request(method, f"http://zone2{path}", json=body) as response:
                try:
                    result = await response.json()
                except (aiohttp.ContentTypeError, ValueError):
                    result = None
                return response.status, result if isinstance(result, dict) else None
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None, None

    async def answering(self, timeout: float = 1.0) -> bool:
        """Does zone 2 answer, within ``timeout`` seconds, its control socket and the agents' port (what a heartbeat
        goes through)?"""
        try:
            return (await asyncio.wait_for(self.health(), timeout) is not None
                    and await asyncio.wait_for(self.serving_agents(), timeout))
        except TimeoutError:
            return False

    async def health(self) -> Health | None:
        result = await self._ask("/control/health", Health)
        if result is not None:
            self.last_health = result
        return result

    def prices(self) -> list[dict[str, Any]]:
        """The price table in force: built-in, then the config file, then `fleetd price set`."""
        return merged_prices(self.builtin_prices, self.policy, self.store.prices())

    async def push_policy(self) -> None:
        """Send prices, breaker and retry settings and the instance caps. A zone 2 that refuses them (one built from
        older code, which does not know a field) would meter nothing right: that is an error, not a warning."""
        status, result = await self._request("PUT", "/control/policy", zone2_policy(self.policy, self.prices()))
        if status == 400:
            raise RuntimeFailure(f"zone 2 refused the price table and budget policy ({(result or {}).get('error')}). "
                                 f"{STALE_IMAGE_HINT}")

    async def budget(self, agent_ids: list[str]) -> BudgetAnswer | None:
        """Spend, reservations and calls as zone 2 counts them (None when zone 2 does not answer)."""
        query = "&".join(f"agent={agent_id}" for agent_id in agent_ids)
        return await self._ask(f"/control/budget?{query}", BudgetAnswer)

    async def set_price(self, model: str, data: dict[str, Any]) -> dict[str, Any]:
        entry = price_entry(model, {k: v for k, v in data.items() if v is not None}, f"price {model}")
        entry.setdefault("source", "fleetd price set")
        self.store.set_price(model, entry)
        await self.push_policy()
        self.store.add_event("price_set", f"price of {model}: ${entry['input']}/M input, ${entry['output']}/M output",
                             None, entry)
        return next(p for p in self.prices() if p["model"] == model)

    async def remove_price(self, model: str) -> None:
        if not self.store.remove_price(model):
            raise NotFound(f"no price set with `fleetd price set` for {model!r} (built-in prices stay)")
        await self.push_policy()
        self.store.add_event("price_removed", f"price of {model} removed", None, {"model": model})

    async def budget_report(self, agents: list[dict[str, Any]]) -> dict[str, Any]:
        """Each agent's spend against its caps, plus the instance's: the body of GET /v1/budget."""
        counted = await self.budget([a["id"] for a in agents])
        if counted is None:
            raise Unavailable("zone 2 is not answering: budgets are counted there (try again in a moment)")
        report = [budget_view(agent, self.caps(agent), counted.agents.get(agent["id"], AgentFigures()))
                  for agent in agents]
        instance = counted.instance
        return {"agents": report, "counters": instance.counters.to_json(), "instance": {
            "spent_today_usd": usd(instance.spent_today_nusd),
            "spent_month_usd": usd(instance.spent_month_nusd),
            "reserved_usd": usd(instance.reserved_nusd),
            "daily_cap_usd": _float(self.policy.instance_daily_usd),
            "monthly_cap_usd": _float(self.policy.instance_monthly_usd),
            "llm_calls": instance.llm_calls,
        }}

    async def push_all(self) -> None:
        """Send the policy, every credential and every live agent's registration."""
        if self._session is None:
            return  # before start(), which sends them all
        await self.push_policy()
        await self.push_creds()
        addresses = await self.call(self.runtime.agent_addresses)
        regs = tuple(r for ip, agent_id in addresses.items() if (r := self.registration(agent_id, ip)))
        await self._request("PUT", "/control/agents", Registrations(regs))

    async def push_creds(self) -> None:
        creds = Credentials(tuple(Upstream(c.name, c.upstream, c.secret, c.provider) for c in self.vault.open_all()))
        await self._request("PUT", "/control/creds", creds)

    async def register(self, agent_id: str, ip: str) -> None:
        reg = self.registration(agent_id, ip)
        if reg:
            await self._request("POST", "/control/agents", reg)

    async def unregister(self, agent_id: str) -> None:
        await self._request("DELETE", f"/control/agents/{agent_id}")

    def registration(self, agent_id: str, ip: str) -> Registration | None:
        """What zone 2 must know of a live agent at ``ip``."""
        agent = self.store.get(agent_id)
        if agent is None or agent["state"] not in LIVE_STATES:
            return None
        caps = self.caps(agent)
        return Registration(agent_id, ip, agent["role"], frozenset(self.store.role_creds(agent["role"])),
                            Caps(nusd(caps.daily_usd), nusd(caps.monthly_usd), caps.max_llm_calls),
                            bool(caps.allow_unpriced))

    def caps(self, agent: dict[str, Any]) -> BudgetCaps:
        return resolve_caps(self.policy, agent["role"], self.store.role(agent["role"]), json.loads(agent["spec"]))

    # -- daemon.sock: zone 2 asks the daemon ----------------------------------
    def daemon_app(self) -> web.Application:
        """The API zone 2 calls on ``daemon.sock``: who an address is, heartbeats to relay, events to record. Each
        handler reads its message with the contract's class."""
        app = web.Application(middlewares=[refuse_malformed])

        async def whois(request: web.Request) -> web.Response:
            ip = request.query.get("ip", "")
            addresses = await self.call(self.runtime.agent_addresses)
            reg = self.registration(addresses[ip], ip) if ip in addresses else None
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

    async def _serve_daemon_socket(self) -> None:
        self._runner = web.AppRunner(self.daemon_app(), access_log=None)
        await self._runner.setup()
        path = self.control_dir / DAEMON_SOCKET
        if path.exists():
            path.unlink()
        await web.UnixSite(self._runner, str(path)).start()
        os.chmod(path, 0o666)  # zone 2 connects as nobody; the control dir is what keeps others out

    def status(self) -> dict[str, Any]:
        health = self.last_health
        return {"healthy": self.healthy, "serving_agents": self.healthy and not self.starved,
                "container_id": self.container_id, "address": self.ip, "restarts": self.restarts,
                "agents_registered": health and health.agents, "credentials": health and health.creds,
                "ledger_error": health and health.ledger_error, "code_matches": self.code_matches}


def _float(amount: Decimal | None) -> float | None:
    return None if amount is None else float(amount)


def usd(nusd: int) -> float:
    return round(nusd / 1e9, 9)


def budget_view(agent: dict[str, Any], caps: BudgetCaps, figures: AgentFigures) -> dict[str, Any]:
    """One agent's line of `fleetd budget` (the keys DESIGN.md promises, and a few more)."""
    return {
        "id": agent["id"], "name": agent["name"], "role": agent["role"], "state": agent["state"],
        "spent_today_usd": usd(figures.spent_today_nusd),
        "spent_month_usd": usd(figures.spent_month_nusd),
        "reserved_usd": usd(figures.reserved_nusd),
        "daily_cap_usd": _float(caps.daily_usd), "monthly_cap_usd": _float(caps.monthly_usd),
        "llm_calls": figures.llm_calls, "max_llm_calls": caps.max_llm_calls,
        "calls_in_flight": figures.inflight_calls,
        "allow_unpriced": bool(caps.allow_unpriced),
        "breakers": {upstream: breaker.to_json() for upstream, breaker in figures.breakers.items()},
    }
