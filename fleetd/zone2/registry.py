"""What zone 2 holds in memory: credentials and agent registrations, sent by the daemon.

Nothing here touches disk. After zone 2 restarts, the daemon sends it all again.
"""

from __future__ import annotations

from collections.abc import Iterable

from fleetd.zone2.contract import Registration, Upstream


class Registry:
    """Credentials by name, registrations by source address; and where the forward proxy never connects (the
    host's own addresses and the agents' networks, from the daemon's policy). ``policy_received`` says whether the
    daemon's policy has come since zone 2 started: until it has, the two lists are empty because they are not known
    yet, not because nothing is refused (an agent may be registered before it, through ``whois``)."""

    def __init__(self) -> None:
        self.creds: dict[str, Upstream] = {}
        self.by_ip: dict[str, Registration] = {}
        self.host_addresses: tuple[str, ...] = ()
        self.agent_networks: tuple[str, ...] = ()
        self.policy_received = False

    def set_creds(self, creds: Iterable[Upstream]) -> None:
        """Replace every credential at once (rotation takes effect on the next request)."""
        self.creds = {c.name: c for c in creds}

    def register(self, reg: Registration) -> None:
        for ip, old in list(self.by_ip.items()):
            if old.agent_id == reg.agent_id and ip != reg.ip:
                del self.by_ip[ip]
        self.by_ip[reg.ip] = reg

    def unregister(self, agent_id: str) -> None:
        for ip, reg in list(self.by_ip.items()):
            if reg.agent_id == agent_id:
                del self.by_ip[ip]

    def replace_agents(self, regs: Iterable[Registration]) -> None:
        self.by_ip = {r.ip: r for r in regs}

    def pools(self) -> set[str]:
        """The keys of the capped spend pools the registrations name (the cost tracker keeps these pools' spend)."""
        return {reg.pool.key for reg in self.by_ip.values() if reg.pool is not None and reg.pool.cap_nusd is not None}

    def resolve(self, reg: Registration, names: set[str]) -> list[Upstream] | None:
        """The credentials ``names`` for this agent, or None if any is unknown or out of scope.

        Unknown and out-of-scope look the same from outside: no probing of names.
        """
        if not names <= reg.creds:
            return None
        found = [self.creds[n] for n in names if n in self.creds]
        return found if len(found) == len(names) else None
