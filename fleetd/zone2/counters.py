"""Zone 2's lifetime counters (since it started), for the daemon's Prometheus metrics: tokens metered, answers
refused by code, upstream answers by status, circuit breaker trips, egress connections by decision and their bytes.
Instance-wide, so bounded whatever the fleet."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from fleetd.zone2.contract import Counters
from fleetd.zone2.llm import Usage

TOKEN_KINDS = ("input", "cached_input", "cache_write", "output", "reasoning")
MAX_CODES = 64  # distinct refusal codes and upstream statuses kept (zone 2 has ~30 codes; HTTP ~60 statuses)


@dataclass
class Counts:
    tokens: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    upstream: Counter[str] = field(default_factory=Counter)  # status code, or "none" when no answer came
    breaker_trips: int = 0
    egress_connections: Counter[str] = field(default_factory=Counter)  # allowed / denied
    egress_bytes: Counter[str] = field(default_factory=Counter)  # out (agent to host) / in

    def egress(self, decision: str, bytes_out: int, bytes_in: int) -> None:
        """A connection of the forward proxy ended."""
        _count(self.egress_connections, decision)
        self.egress_bytes["out"] += bytes_out
        self.egress_bytes["in"] += bytes_in

    def metered(self, usage: Usage) -> None:
        for kind, value in zip(TOKEN_KINDS, (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens,
                                             usage.output_tokens, usage.reasoning_tokens), strict=True):
            self.tokens[kind] += value

    def refused(self, code: str) -> None:
        _count(self.refusals, code)

    def answered(self, status: int | None) -> None:
        _count(self.upstream, str(status) if status is not None else "none")

    def snapshot(self) -> Counters:
        """The counts now, as the daemon reads them (in GET /control/budget's answer)."""
        return Counters({k: self.tokens[k] for k in TOKEN_KINDS}, dict(self.refusals), dict(self.upstream),
                        self.breaker_trips, dict(self.egress_connections), dict(self.egress_bytes))


def _count(counter: Counter[str], key: str) -> None:
    if key in counter or len(counter) < MAX_CODES:
        counter[key] += 1
    else:
        counter["other"] += 1
