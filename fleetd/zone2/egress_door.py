"""Zone 2's forward proxy listener (issue 18), composed: the proxy (``forward_proxy``) knows agents by the registry
(else by asking the daemon, ``whois``: an agent's first connection may come before its registration), refuses what
the daemon's policy says is the host's or the agents' (``Registry.host_addresses``, ``agent_networks``), and hands
each connection's record to ``egress_records``.

Connections are admitted before a byte is read within each address's share (``shares.Shares``, the gateway's rule
with the proxy's own numbers): an agent opening thousands of idle connections to the proxy port holds at most
PER_AGENT of them, and all agents together at most TOTAL, so zone 2's descriptors stay for the others and for the
LLM gateway. TOTAL is lowered to the descriptors the gateway leaves (``connection_cap``): each proxy connection may
hold two, out of the same process limit as the gateway's. Over its share a connection is closed at once (the proxy's
own ``max_tunnels`` refusal, 429 ``egress_limit``, needs a request head read first).

Until the daemon's policy has come (``Registry.policy_received``), every address is refused: zone 2 does not yet
know the host's addresses or the agents' networks, and an agent can be registered before then (its first LLM call
asks the daemon who it is), so an empty list there would let its allowed names reach the host.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
from collections.abc import Awaitable, Callable

from fleetd.egress import EgressPolicy, refused_address
from fleetd.zone2.contract import Registration
from fleetd.zone2.egress_records import EgressRecords
from fleetd.zone2.forward_proxy import AgentEgress, EgressProxy, Whois
from fleetd.zone2.guard import FD_HEADROOM, SharedConnection, connection_limit
from fleetd.zone2.registry import Registry
from fleetd.zone2.shares import Limits, Shares

log = logging.getLogger("fleetd.zone2")
MAX_TUNNELS = 16  # open connections per agent the proxy serves (more get 429 egress_limit)
PER_AGENT = 2 * MAX_TUNNELS  # connections per address admitted at all (a 429 needs its head read)
TOTAL = 512  # connections of all agents together, fairly shared when short


@functools.lru_cache(maxsize=256)
def _policy(patterns: tuple[str, ...]) -> EgressPolicy:
    """A registration's patterns, parsed once per distinct list (they are checked again here: zone 2 trusts no
    input, not even the daemon's)."""
    return EgressPolicy.from_json(list(patterns))


def lookup_in(registry: Registry) -> Callable[[str], AgentEgress | None]:
    """The agent at an address as the proxy needs it; None for an address no agent is registered at."""

    def lookup(ip: str) -> AgentEgress | None:
        reg = registry.by_ip.get(ip)
        return None if reg is None else _agent(reg)

    return lookup


def _agent(reg: Registration) -> AgentEgress:
    return AgentEgress(reg.agent_id, _policy(reg.egress), reg.egress_max_bytes)


def whois_of(ask: Callable[[str], Awaitable[Registration | None]]) -> Whois:
    """The agent at an address the registry does not know yet, as the daemon answers (``DaemonLink.whois``).

    The daemon starts an agent, then registers it: an agent whose first act is a download reaches the proxy before
    its registration does. The answer serves this connection only; the registry is the daemon's to fill (the
    gateway's ``identify`` does the same for the LLM path)."""

    async def whois(ip: str) -> AgentEgress | None:
        reg = await ask(ip)
        return None if reg is None else _agent(reg)

    return whois


def connection_cap(total: int = TOTAL) -> int:
    """All agents' proxy connections together, within the descriptors left once the gateway has its connections
    (``guard.connection_limit``, two descriptors each) and FD_HEADROOM is kept; at least one agent's share."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return total
    gateway = connection_limit(Limits()).connections
    return min(total, max(PER_AGENT, (soft - FD_HEADROOM - 2 * gateway) // 2))


def refusal_in(registry: Registry) -> Callable[[str], str | None]:
    """Why the proxy must not connect to an address (``fleetd.egress.refused_address`` with the daemon's lists),
    or None; every address is refused while the daemon's policy has not come."""

    def refuse(ip: str) -> str | None:
        if not registry.policy_received:
            return (f"{ip}, and zone 2 has not yet been told which addresses are the host's and the agents' "
                    "(it has just started): try again in a moment")
        return refused_address(ip, registry.host_addresses, registry.agent_networks)

    return refuse


class EgressDoor:
    """The proxy and its listener; ``forget`` an agent when it is unregistered."""

    def __init__(self, registry: Registry, records: EgressRecords, proxy: EgressProxy | None = None,
                 whois: Callable[[str], Awaitable[Registration | None]] | None = None) -> None:
        self.registry = registry
        self.records = records
        counted = None if records.log is None else records.log.day_bytes  # the byte cap across zone 2's restarts
        self.proxy = proxy or EgressProxy(lookup_in(registry), refuse=refusal_in(registry), on_record=records.record,
                                          max_tunnels=MAX_TUNNELS, counted=counted,
                                          whois=None if whois is None else whois_of(whois))
        self.shares = Shares(Limits(connections_per_agent=PER_AGENT, connections=connection_cap()))
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.Protocol:
            reader = asyncio.StreamReader(limit=64 << 10)
            return SharedConnection(self.shares, asyncio.StreamReaderProtocol(reader, self.proxy.handle))

        self.server = await loop.create_server(factory, host, port, reuse_address=True, backlog=1024)
        log.info("zone 2 forward proxy on %s:%d", host, port)

    def forget(self, agent_id: str) -> None:
        self.proxy.forget(agent_id)
        self.records.forget(agent_id)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        await self.proxy.close()
