"""Zone 2's lifetime counters (since it started), for the daemon's Prometheus metrics: tokens metered, answers
refused by code, upstream answers by status, circuit breaker trips. Instance-wide, so bounded whatever the fleet."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fleetd.zone2.llm import Usage

TOKEN_KINDS = ("input", "cached_input", "cache_write", "output", "reasoning")
MAX_CODES = 64  # distinct refusal codes and upstream statuses kept (zone 2 has ~30 codes; HTTP ~60 statuses)


@dataclass
class Counts:
    tokens: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    upstream: Counter[str] = field(default_factory=Counter)  # status code, or "none" when no answer came
    breaker_trips: int = 0

    def metered(self, usage: Usage) -> None:
        for kind, value in zip(TOKEN_KINDS, (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens,
                                             usage.output_tokens, usage.reasoning_tokens), strict=True):
            self.tokens[kind] += value

    def refused(self, code: str) -> None:
        _count(self.refusals, code)

    def answered(self, status: int | None) -> None:
        _count(self.upstream, str(status) if status is not None else "none")

    def to_json(self) -> dict[str, Any]:
        return {"tokens": {k: self.tokens[k] for k in TOKEN_KINDS}, "refusals": dict(self.refusals),
                "upstream_status": dict(self.upstream), "breaker_trips": self.breaker_trips}


def _count(counter: Counter[str], key: str) -> None:
    if key in counter or len(counter) < MAX_CODES:
        counter[key] += 1
    else:
        counter["other"] += 1
