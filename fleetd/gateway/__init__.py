"""The daemon's side of zone 2: keep the gateway container alive and tell it what it must know.

Zone 2 holds credentials and agent registrations in memory only; whenever it (re)starts, everything is sent again.
Three parts, composed here: the keeper (``keeper``: the container, its address, firewall rules and health), the
control client (``control_client``: the daemon's messages to zone 2) and ``daemon_socket`` (zone 2's questions to
the daemon). What zone 2 must know (registrations, credentials, prices and caps) is decided here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from fleetd import __version__
from fleetd.egress import NO_EGRESS, EgressSettings, agent_egress, egress_settings, narrow
from fleetd.errors import NotFound, Unavailable
from fleetd.gateway.control_client import ControlClient
from fleetd.gateway.daemon_socket import DaemonSocket, HeartbeatWatch, TaskDoor
from fleetd.gateway.keeper import Keeper
from fleetd.host_addresses import host_addresses
from fleetd.models import LIVE_STATES, AgentSpec
from fleetd.netns import NOBODY
from fleetd.policy import BudgetCaps, Policy, merged_prices, nusd, price_entry, resolve_caps, zone2_policy
from fleetd.runtime import DockerRuntime
from fleetd.store import Store
from fleetd.vault import Vault
from fleetd.zone2.budget import Caps
from fleetd.zone2.contract import (
    AgentFigures,
    BudgetAnswer,
    Credentials,
    PoolCap,
    Registration,
    Registrations,
    TaskHold,
    Upstream,
)
from fleetd.zone2.egress_log import EGRESS_FILE
from fleetd.zone2.ledger import LEDGER_FILE
from fleetd.zone2.pricing import PriceTable
from fleetd.zone2.service import CONTROL_SOCKET, DAEMON_SOCKET, EGRESS_PORT, GATEWAY_PORT

ZONE2_IMAGE = f"fleetd/zone2:{__version__}"
CONTROL_DIR = "zone2"  # zone 2's control directory in the state dir: the two sockets and its ledger
GATEWAY_URL = f"http://zone2:{GATEWAY_PORT}"
PROXY_URL = f"http://zone2:{EGRESS_PORT}"
# What never goes through the proxy: zone 2's own API (the LLM and task calls) and the agent itself.
NO_PROXY = "zone2,localhost,127.0.0.1,::1"


def zone2_ledger(state_dir: Path) -> Path:
    """Zone 2's ledger (fleetd.zone2.ledger), which the daemon reads for the cost of tasks (fleetd.task_costs)."""
    return state_dir / CONTROL_DIR / LEDGER_FILE


def zone2_egress_log(state_dir: Path) -> Path:
    """Zone 2's egress log (fleetd.zone2.egress_log), which `fleetd egress log` reads."""
    return state_dir / CONTROL_DIR / EGRESS_FILE


def agent_env(egress: bool = False) -> dict[str, str]:
    """What an agent needs to reach zone 2 with unmodified OpenAI/Anthropic SDKs; with ``egress`` (its role allows
    some hosts), the proxy variables that pip, git, curl, requests and httpx read, in both cases (curl reads only
    the lowercase http_proxy)."""
    env = {
        "FLEETD_GATEWAY_URL": GATEWAY_URL,
        "OPENAI_BASE_URL": f"{GATEWAY_URL}/v1",
        "ANTHROPIC_BASE_URL": GATEWAY_URL,
    }
    if egress:
        for name, value in (("HTTP_PROXY", PROXY_URL), ("HTTPS_PROXY", PROXY_URL), ("NO_PROXY", NO_PROXY)):
            env[name] = env[name.lower()] = value
    return env


class Zone2:
    """Runs, watches and feeds the zone 2 gateway container (``fleetd.zone2_port.Zone2Port`` for the supervisor)."""

    def __init__(self, state_dir: Path, store: Store, vault: Vault, runtime: DockerRuntime,
                 call: Callable[..., Awaitable[Any]], watchdog: HeartbeatWatch, image: str = ZONE2_IMAGE,
                 policy: Policy | None = None, tasks: TaskDoor | None = None) -> None:
        self.control_dir = state_dir / CONTROL_DIR
        self.store = store
        self.vault = vault
        self.runtime = runtime
        self.call = call
        self.policy = policy or Policy()
        self.builtin_prices = PriceTable.builtin().to_list()
        self.control = ControlClient(self.control_dir / CONTROL_SOCKET)
        self.keeper = Keeper(runtime, call, self.control, store, watchdog, image, str(self.control_dir),
                             self.push_all)
        self.tasks = tasks
        # The spend pool of an agent (given its store record), which zone 2 caps its calls by with the others of the
        # pool (a canary version's agents: ``--canary-max-usd``); None: no pools. Set by the fleet controller.
        self.pools: Callable[[dict[str, Any]], PoolCap | None] | None = None
        self.questions = DaemonSocket(self.control_dir / DAEMON_SOCKET, store, self.whois, watchdog, tasks)

    # -- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        """Bring zone 2 up (before any spawn is accepted) and keep it up."""
        # The daemon owns the control dir (it binds daemon.sock there); zone 2, nobody, writes it as its group (its
        # socket, its ledger). Inside the state dir (0750), it keeps everyone else out. Owner first, then the mode
        # as that owner: CAP_CHOWN is all this needs, not CAP_FOWNER or CAP_DAC_OVERRIDE (systemd/fleetd.service).
        self.control_dir.mkdir(mode=0o770, exist_ok=True)
        os.chown(self.control_dir, os.getuid(), NOBODY)
        os.chmod(self.control_dir, 0o770)
        await self.questions.serve()
        self.control.open()
        await self.keeper.start()

    async def stop(self) -> None:
        """Stop watching; zone 2 itself keeps running for the agents (like the agents do)."""
        await self.keeper.stop()
        await self.control.close()
        await self.questions.close()

    # -- the keeper's, for the supervisor (fleetd.zone2_port) and the API ------
    @property
    def ip(self) -> str | None:
        return self.keeper.ip

    @property
    def healthy(self) -> bool:
        return self.keeper.healthy

    def agent_env(self, spec: AgentSpec | None = None) -> dict[str, str]:
        """The agent's environment; ``spec``'s egress checked against its role's (InvalidRequest if it widens it)."""
        if spec is None:
            return agent_env()
        self.check_egress(spec.role, spec.egress)
        return agent_env((self.egress(spec.role, spec.egress, spec.egress_max_bytes).policy or NO_EGRESS).enabled)

    def check_egress(self, role: str, patterns: object) -> None:
        """InvalidRequest when ``patterns`` (``spawn --egress``, a deployment's) would widen ``role``'s egress."""
        narrow(self.egress(role).policy or NO_EGRESS, patterns, "--egress", role)

    def egress(self, role: str, patterns: list[str] | None = None, max_bytes: int | None = None) -> EgressSettings:
        """What an agent of ``role`` may reach (spawned with ``patterns`` and ``max_bytes``, None: the role's): ``role
        set``'s, then the config's [roles.X], else none (fleetd.egress.agent_egress)."""
        levels = [egress_settings(self.store.role(role) or {}, f"role {role}"),
                  self.policy.egress.get(role, EgressSettings())]
        return agent_egress(levels, egress_settings({"egress": patterns, "egress_max_bytes": max_bytes}, None))

    async def ready(self) -> None:
        await self.keeper.ready()

    def on_exit(self) -> None:
        self.keeper.on_exit()

    async def answering(self, timeout: float = 1.0) -> bool:
        return await self.keeper.answering(timeout)

    async def teardown(self) -> int:
        return await self.keeper.teardown()

    def status(self) -> dict[str, Any]:
        return self.keeper.status()

    # -- what zone 2 must know ------------------------------------------------
    def prices(self) -> list[dict[str, Any]]:
        """The price table in force: built-in, then the config file, then `fleetd price set`."""
        return merged_prices(self.builtin_prices, self.policy, self.store.prices())

    async def push_policy(self) -> None:
        """Send prices, breaker and retry settings, the instance caps, and where the forward proxy never connects: the
        host's own addresses (as they are now: Docker adds one per network it makes) and the agents' network."""
        networks = await self.call(self.runtime.agent_networks)
        await self.control.put_policy(dataclasses.replace(zone2_policy(self.policy, self.prices()),
                                                          host_addresses=host_addresses(), agent_networks=networks))

    async def budget(self, agent_ids: list[str]) -> BudgetAnswer | None:
        return await self.control.budget(agent_ids)

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
        if not self.control.opened:
            return  # before start(), which sends them all
        await self.push_policy()
        await self.push_creds()
        addresses = await self.call(self.runtime.agent_addresses)
        holds = self.tasks.holds() if self.tasks is not None else {}
        regs = tuple(r for ip, agent_id in addresses.items()
                     if (r := self.registration(agent_id, ip, holds.get(agent_id))))
        await self.control.put_agents(Registrations(regs))

    async def push_creds(self) -> None:
        creds = Credentials(tuple(Upstream(c.name, c.upstream, c.secret, c.provider) for c in self.vault.open_all()))
        await self.control.put_creds(creds)

    async def register(self, agent_id: str, ip: str) -> None:
        reg = self.registration(agent_id, ip, self.held(agent_id))
        if reg:
            await self.control.post_agent(reg)

    async def unregister(self, agent_id: str) -> None:
        await self.control.delete_agent(agent_id)

    def registration(self, agent_id: str, ip: str, task: TaskHold | None = None) -> Registration | None:
        """What zone 2 must know of a live agent at ``ip``; ``task``, the task it holds (zone 2, when it restarts,
        has not seen its lease pass: it attributes and caps the agent's calls by this); its spend pool as
        :attr:`pools` answers."""
        agent = self.store.get(agent_id)
        if agent is None or agent["state"] not in LIVE_STATES:
            return None
        caps = self.caps(agent)
        spec = json.loads(agent["spec"])
        egress = self.egress(agent["role"], spec.get("egress"), spec.get("egress_max_bytes"))
        return Registration(agent_id, ip, agent["role"], frozenset(self.store.role_creds(agent["role"])),
                            Caps(nusd(caps.daily_usd), nusd(caps.monthly_usd), caps.max_llm_calls),
                            bool(caps.allow_unpriced), task, self.pools(agent) if self.pools is not None else None,
                            tuple((egress.policy or NO_EGRESS).to_json()), egress.max_bytes)

    def held(self, agent_id: str) -> TaskHold | None:
        return self.tasks.held(agent_id) if self.tasks is not None else None

    def caps(self, agent: dict[str, Any]) -> BudgetCaps:
        return resolve_caps(self.policy, agent["role"], self.store.role(agent["role"]), json.loads(agent["spec"]))

    async def whois(self, ip: str) -> Registration | None:
        """Zone 2 asks who ``ip`` is (an agent's first call may come before its registration)."""
        addresses = await self.call(self.runtime.agent_addresses)
        return self.registration(addresses[ip], ip, self.held(addresses[ip])) if ip in addresses else None


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
