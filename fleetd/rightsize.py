"""Right-sizing (issue 16): what the finished agents of a role or a deployment used, and the memory limit to give
them. Pure: the rows are ``fleetd.peaks.finished``'s, the limits come from a spec.

- Each agent's figures (``fleetd.peaks``): ``memory_bytes``, its peak (page cache included, as the cgroup counts it
  and as the limit applies); ``cpu_cores``, its average over its last run, ``cpu_ns / (finished_at - started_at)``
  (from the last sample, up to 10 s before the end); ``peak_cpu_cores``, its highest average over about 10 s.
- Percentiles are nearest-rank: p of n values is the ceil(p / 100 * n)-th smallest, always a value an agent had (the
  p95 of fewer than 20 agents is the highest). Agents without a figure (one that ran for less than a sample's period,
  a daemon that cannot read the host's cgroups) are left out of that figure's.
- ``recommendation.memory`` is the seed's rule: the p95 peak x 2, rounded up to a whole MiB (at least Docker's 6 MiB),
  given once ``MIN_SAMPLES`` agents have a measured peak: fewer say more about those few than about the pool, and a
  ``note`` says so instead.
- Flags: ``oom`` when agents were OOM-killed (their last exit's reason is ``oom_killed``): the limit was hit, and
  their peak is the limit rather than what they needed, so the p95 understates the need. ``oversized`` when the
  memory limit is ``OVERSIZED`` x the p95 peak or more (with ``MIN_SAMPLES`` measured, as the recommendation).
- No CPU recommendation. A CPU limit that is too low throttles an agent, it does not kill it; the peaks are 10-second
  averages that smooth out the bursts a limit throttles; and fleetd reads no throttling figures (``cpu.stat``
  ``nr_throttled``) that a CPU limit could be checked against. Doubling a p95 of such averages would have nothing
  behind it of what the memory rule has (staying clear of the OOM killer): the CPU figures are shown for a person to
  judge, beside the limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fleetd.models import Reason, parse_iso
from fleetd.units import MIN_MEMORY

MIN_SAMPLES = 5  # agents with a measured peak before a recommendation
HEADROOM = 2  # --memory = p95 peak x HEADROOM
OVERSIZED = 4  # a memory limit this many times the p95 peak, or more, is flagged
MIB = 1 << 20


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest rank: the ceil(p / 100 * n)-th smallest of ``ordered`` (sorted, not empty)."""
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def spread(values: Iterable[float], digits: int | None = None) -> dict[str, Any] | None:
    """``p50``, ``p95`` and ``max`` of ``values`` (rounded to ``digits`` when given); None without any."""
    ordered = sorted(values)
    if not ordered:
        return None
    found = {"p50": percentile(ordered, 50), "p95": percentile(ordered, 95), "max": ordered[-1]}
    return found if digits is None else {k: round(v, digits) for k, v in found.items()}


def average_cores(agent: Mapping[str, Any]) -> float | None:
    """CPU time over run time: the agent's average in cores over its last run (None when either is unknown)."""
    started, ended = parse_iso(agent["started_at"]), parse_iso(agent["finished_at"])
    if agent["cpu_ns"] is None or started is None or ended is None or ended <= started:
        return None
    return float(agent["cpu_ns"]) / 1e9 / (ended - started).total_seconds()


def recommended_memory(p95: int) -> int:
    """The seed's rule: p95 x 2, rounded up to a whole MiB, at least Docker's minimum."""
    return max(MIN_MEMORY, math.ceil(p95 * HEADROOM / MIB) * MIB)


def report(agents: Iterable[Mapping[str, Any]], memory_limit: int | None, nano_cpus: int | None) -> dict[str, Any]:
    """The right-sizing report over finished agents' rows (``fleetd.peaks.finished``), against the limits in force
    (a spec's ``memory`` in bytes and ``nano_cpus``; None: no limit)."""
    rows = list(agents)
    peaks = [row["peak_memory_bytes"] for row in rows if row["peak_memory_bytes"] is not None]
    memory = spread(peaks)
    oom = sum(1 for row in rows if row["reason"] == Reason.OOM_KILLED)
    flags = ["oom"] if oom else []
    recommendation, note = None, None
    if memory is None or len(peaks) < MIN_SAMPLES:
        note = (f"{len(peaks)} of {len(rows)} finished agents have a measured peak: a recommendation needs "
                f"{MIN_SAMPLES}")
    else:
        recommendation = {"memory": recommended_memory(memory["p95"])}
        if memory_limit is not None and memory_limit >= OVERSIZED * memory["p95"]:
            flags.append("oversized")
    return {
        "agents": len(rows),
        "measured": len(peaks),
        "memory_bytes": memory,
        "cpu_cores": spread((c for row in rows if (c := average_cores(row)) is not None), 3),
        "peak_cpu_cores": spread((row["peak_cpu_cores"] for row in rows if row["peak_cpu_cores"] is not None), 3),
        "limits": {"memory": memory_limit, "cpus": nano_cpus / 1e9 if nano_cpus else None},
        "oom_killed": oom,
        "flags": flags,
        "recommendation": recommendation,
        "min_samples": MIN_SAMPLES,
        "note": note,
    }
