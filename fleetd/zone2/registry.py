"""What zone 2 holds in memory: credentials and agent registrations, sent by the daemon.

Nothing here touches disk. After zone 2 restarts, the daemon sends it all again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fleetd.zone2.budget import Caps
from fleetd.zone2.kinds import GENERIC


@dataclass(frozen=True)
class Upstream:
    name: str
    upstream: str  # scheme://host[:port][/base]
    secret: str
    kind: str = GENERIC  # the provider kind (kinds.KINDS): an LLM provider's calls are default-deny


@dataclass(frozen=True)
class Registration:
    """An agent as zone 2 knows it: the daemon sends it (PUT/POST /control/agents, GET /control/whois's answer)
    as :meth:`to_json`, zone 2 reads it with :meth:`from_json`: one contract for both sides."""

    agent_id: str
    ip: str
    role: str
    creds: frozenset[str] = field(default_factory=frozenset)
    caps: Caps = field(default_factory=Caps)
    allow_unpriced: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "ip": self.ip, "role": self.role, "creds": sorted(self.creds),
                "daily_nusd": self.caps.daily_nusd, "monthly_nusd": self.caps.monthly_nusd,
                "max_llm_calls": self.caps.max_llm_calls, "allow_unpriced": self.allow_unpriced}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Registration:
        caps = Caps(_optional_int(data.get("daily_nusd")), _optional_int(data.get("monthly_nusd")),
                    _optional_int(data.get("max_llm_calls")))
        return cls(str(data["agent_id"]), str(data["ip"]), str(data.get("role") or "default"),
                   frozenset(data.get("creds") or ()), caps, bool(data.get("allow_unpriced")))


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


class Registry:
    """Credentials by name, registrations by source address."""

    def __init__(self) -> None:
        self.creds: dict[str, Upstream] = {}
        self.by_ip: dict[str, Registration] = {}

    def set_creds(self, creds: list[Upstream]) -> None:
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

    def replace_agents(self, regs: list[Registration]) -> None:
        self.by_ip = {r.ip: r for r in regs}

    def resolve(self, reg: Registration, names: set[str]) -> list[Upstream] | None:
        """The credentials ``names`` for this agent, or None if any is unknown or out of scope.

        Unknown and out-of-scope look the same from outside: no probing of names.
        """
        if not names <= reg.creds:
            return None
        found = [self.creds[n] for n in names if n in self.creds]
        return found if len(found) == len(names) else None
