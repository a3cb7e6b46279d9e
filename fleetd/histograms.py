"""Prometheus-style histograms kept in memory: buckets counted as values are observed, so that a scrape reads a few
numbers rather than the records they came from (fleetd.metrics renders them)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# A finished task's LLM cost (USD) and its time from its first lease to its end (s): a task's ttl is 1 s to 7 days.
TASK_COST_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 50.0, 100.0)
TASK_DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
                         604800.0)


@dataclass
class Histogram:
    bounds: tuple[float, ...]  # the buckets' upper bounds, ascending; +Inf is implied
    counts: list[int] = field(default_factory=list)  # observations per bucket (not cumulative), +Inf's last
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs, +Inf last: what prometheus_client's HistogramMetricFamily takes."""
        out, running = [], 0
        for bound, count in zip((*(repr(b) for b in self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.total)
