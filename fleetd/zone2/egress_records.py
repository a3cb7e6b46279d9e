"""What zone 2 does with each connection its forward proxy ends (``forward_proxy.EgressRecord``): a row of the egress
log, the lifetime counters behind the daemon's Prometheus metrics, and, for a denied one, an ``egress_denied`` event.

Events are throttled: at most one per agent per DENIED_EVENT_EVERY seconds, the next one saying how many more were
denied meanwhile. A prompt-injected agent probing hosts in a loop makes one event a minute, not thousands (the log and
the counters still have every attempt). The throttle keeps one entry per agent that was denied, dropped with the
agent (``forget``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fleetd.zone2.counters import Counts
from fleetd.zone2.egress_log import EgressLog, Record

DENIED_EVENT_EVERY = 60.0
Emit = Callable[[str, str | None, str, dict[str, Any]], None]


class EgressRecords:
    def __init__(self, log: EgressLog | None, counts: Counts, emit: Emit,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.counts = counts
        self.emit = emit
        self.monotonic = monotonic
        self._denied: dict[str | None, tuple[float, int]] = {}  # agent -> (last event, denials not told since)

    def record(self, record: Record) -> None:
        if self.log is not None:
            self.log.write(record)
        self.counts.egress(record.decision, record.bytes_out, record.bytes_in)
        if record.decision == "denied":
            self._tell(record)

    def forget(self, agent_id: str) -> None:
        self._denied.pop(agent_id, None)

    def _tell(self, record: Record) -> None:
        now = self.monotonic()
        last, untold = self._denied.get(record.agent_id, (-DENIED_EVENT_EVERY, 0))
        if now - last < DENIED_EVENT_EVERY:
            self._denied[record.agent_id] = (last, untold + 1)
            return
        self._denied[record.agent_id] = (now, 0)
        where = f"{record.host}:{record.port}"
        more = f" ({untold} more denied in the last minute)" if untold else ""
        self.emit("egress_denied", record.agent_id, f"egress to {where} denied: {record.reason}{more}",
                  {"host": record.host, "port": record.port, "method": record.method, "reason": record.reason,
                   "address": record.address, "untold": untold})
