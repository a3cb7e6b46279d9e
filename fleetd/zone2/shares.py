"""Each agent's share of zone 2: connections and bytes held in memory. Pure: no I/O, no clock.

Zone 2 serves every agent from one process with a memory limit and a file-descriptor limit. One agent must not
be able to take either for itself: a connection or a buffer of bytes is granted to an address only within its own
cap, and, when zone 2 as a whole runs short, within its fair share of what is left (the whole divided by the
addresses holding some), so that an agent that asks for little always gets it. A refusal goes to the agent that
asked (503 ``zone2_busy``); nobody else is affected.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    connections_per_agent: int = 64
    # all addresses together: each costs ~10 KiB, its head up to 64 KiB and its read-ahead 32 KiB of memory, and two
    # descriptors (its own and an upstream's)
    connections: int = 1024
    bytes_per_agent: int = 24 << 20  # request bodies and buffered answers held at once (a 10 MiB body fits twice)
    bytes: int = 64 << 20  # all addresses together (zone 2 itself needs ~60 MB of its 256 MiB)
    small: int = 64 << 10  # a take this small is granted within the agent's cap even when the whole is short
    small_reserve: int = 32 << 20  # ... as is one within the agent's fair share, up to this much beyond ``bytes``


class Shares:
    """What each address holds now. ``open``/``close`` a connection, ``take``/``give`` bytes."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.connections: dict[str, int] = {}
        self.held: dict[str, int] = {}
        self.total_connections = 0
        self.total_held = 0

    def open(self, ip: str) -> bool:
        """Grant ``ip`` one more connection, or refuse it."""
        mine = self.connections.get(ip, 0)
        limits = self.limits
        if mine >= limits.connections_per_agent:
            return False
        if self.total_connections >= limits.connections and mine >= self._fair(limits.connections,
                                                                                  len(self.connections), mine):
            return False
        self.connections[ip] = mine + 1
        self.total_connections += 1
        return True

    def close(self, ip: str) -> None:
        mine = self.connections.get(ip, 0)
        if mine <= 0:
            return
        self.total_connections -= 1
        if mine == 1:
            del self.connections[ip]
        else:
            self.connections[ip] = mine - 1

    def take(self, ip: str, n: int) -> bool:
        """Grant ``ip`` ``n`` more bytes to hold, or refuse them.

        Within the agent's cap, granted while the whole is under ``bytes``; beyond that only a small take, or one
        that keeps the agent within its fair share, out of ``small_reserve``: the whole never exceeds ``bytes +
        small_reserve``.
        """
        if n <= 0:
            return True
        mine = self.held.get(ip, 0)
        limits = self.limits
        if mine + n > limits.bytes_per_agent:
            return False
        if self.total_held + n > limits.bytes:
            if self.total_held + n > limits.bytes + limits.small_reserve:
                return False
            if n > limits.small and mine + n > self._fair(limits.bytes, len(self.held), mine):
                return False
        self.held[ip] = mine + n
        self.total_held += n
        return True

    def give(self, ip: str, n: int) -> None:
        """``ip`` no longer holds ``n`` of its bytes."""
        mine = self.held.get(ip, 0)
        n = min(n, mine)
        if n <= 0:
            return
        self.total_held -= n
        if mine == n:
            del self.held[ip]
        else:
            self.held[ip] = mine - n

    @staticmethod
    def _fair(whole: int, holders: int, mine: int) -> int:
        """An address's fair share of ``whole``: an equal part among those holding some (itself included)."""
        return whole // max(1, holders + (0 if mine else 1))
