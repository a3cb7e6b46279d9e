"""What the agent lifecycle needs of zone 2, the agents' only way out (``fleetd.gateway.Zone2`` in the daemon, an
in-memory fake in unit tests): where agents find it, and to know who each agent is."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from fleetd.models import AgentSpec


class Zone2Port(Protocol):
    @property
    def ip(self) -> str | None:
        """Zone 2's address on the agents' network (None until it is up)."""
        ...

    def agent_env(self, spec: AgentSpec | None = None) -> dict[str, str]:
        """The environment that points an agent's SDKs at zone 2 (and its HTTP clients at zone 2's forward proxy
        when ``spec``'s egress allows any host); InvalidRequest when ``spec --egress`` widens its role's list."""
        ...

    async def ready(self) -> None:
        """Zone 2 serves (brought back after a teardown): before an agent starts."""
        ...

    async def register(self, agent_id: str, ip: str) -> None:
        """A live agent at ``ip``: its role, credentials and caps go to zone 2."""
        ...

    async def unregister(self, agent_id: str) -> None:
        ...

    def on_exit(self) -> None:
        """The engine says zone 2's container died: bring it back now."""
        ...

    async def answering(self, timeout: float = 1.0) -> bool:
        """Does zone 2 answer as an agent's heartbeat would reach it?"""
        ...

    async def teardown(self) -> int:
        """Stop keeping zone 2 alive (until the next spawn); the firewall rules removed (their count)."""
        ...

    def status(self) -> dict[str, Any]:
        ...
