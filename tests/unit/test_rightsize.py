"""fleetd.rightsize: the report's figures, its recommendation and its flags, over rows as fleetd.peaks.finished
reads them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from fleetd.models import iso, utcnow
from fleetd.rightsize import MIN_SAMPLES, OVERSIZED, percentile, recommended_memory, report, spread

MIB = 1 << 20


def row(peak: int | None, cpu_seconds: float | None = None, ran: float | None = 60.0, peak_cores: float | None = None,
        reason: str = "exited") -> dict[str, Any]:
    start = utcnow() - timedelta(hours=1)
    return {"id": "x", "peak_memory_bytes": peak, "cpu_ns": None if cpu_seconds is None else int(cpu_seconds * 1e9),
            "peak_cpu_cores": peak_cores, "started_at": iso(start),
            "finished_at": None if ran is None else iso(start + timedelta(seconds=ran)), "reason": reason}


def test_percentiles_are_nearest_rank_values_seen() -> None:
    twenty = list(range(1, 21))
    assert (percentile(twenty, 50), percentile(twenty, 95)) == (10, 19)
    assert percentile([1, 2, 3, 4, 5], 95) == 5  # below 20 values the p95 is the highest
    assert percentile([7], 50) == percentile([7], 95) == 7
    assert spread([3, 1, 2]) == {"p50": 2, "p95": 3, "max": 3}
    assert spread([]) is None


def test_the_recommendation_is_twice_the_p95_peak_in_whole_mib() -> None:
    agents = [row(n * 10 * MIB) for n in range(1, 21)]  # 10 MiB .. 200 MiB
    out = report(agents, 512 * MIB, None)
    assert out["memory_bytes"] == {"p50": 100 * MIB, "p95": 190 * MIB, "max": 200 * MIB}
    assert out["recommendation"] == {"memory": 380 * MIB}
    assert (out["agents"], out["measured"], out["flags"], out["note"]) == (20, 20, [], None)
    assert recommended_memory(100 * MIB + 1) == 201 * MIB  # rounded up, never down
    assert recommended_memory(MIB) == 6 * MIB  # Docker's minimum


def test_too_few_measured_agents_get_a_note_instead_of_a_recommendation() -> None:
    agents = [row(100 * MIB) for _ in range(MIN_SAMPLES - 1)] + [row(None), row(None)]
    out = report(agents, 64 * 1024 * MIB, None)
    assert (out["agents"], out["measured"], out["recommendation"]) == (MIN_SAMPLES + 1, MIN_SAMPLES - 1, None)
    assert out["note"] == f"{MIN_SAMPLES - 1} of {MIN_SAMPLES + 1} finished agents have a measured peak: a " \
                          f"recommendation needs {MIN_SAMPLES}"
    assert out["flags"] == []  # a limit 640 x the p95 of four is not called oversized on so little
    assert out["memory_bytes"] == {"p50": 100 * MIB, "p95": 100 * MIB, "max": 100 * MIB}
    enough = report([*agents, row(100 * MIB)], 64 * 1024 * MIB, None)
    assert enough["recommendation"] == {"memory": 200 * MIB} and enough["note"] is None
    assert report([], None, None)["note"] == f"0 of 0 finished agents have a measured peak: a recommendation " \
                                             f"needs {MIN_SAMPLES}"


@pytest.mark.parametrize(("limit", "flagged"), [(OVERSIZED * 100 * MIB, True), (OVERSIZED * 100 * MIB - 1, False),
                                                (None, False)])
def test_a_limit_four_times_the_p95_or_more_is_oversized(limit: int | None, flagged: bool) -> None:
    out = report([row(100 * MIB) for _ in range(MIN_SAMPLES)], limit, None)
    assert ("oversized" in out["flags"]) is flagged
    assert out["limits"]["memory"] == limit


def test_oom_kills_are_counted_and_flagged_whatever_the_sample() -> None:
    agents = [row(256 * MIB, reason="oom_killed"), row(100 * MIB), row(None, reason="oom_killed")]
    out = report(agents, 256 * MIB, None)
    assert (out["oom_killed"], out["flags"], out["recommendation"]) == (2, ["oom"], None)
    assert report([row(100 * MIB)] * 5, 256 * MIB, None)["flags"] == []


def test_cpu_figures_are_the_run_average_and_the_peak_rate_with_no_recommendation() -> None:
    agents = [row(MIB, cpu_seconds=30, ran=60, peak_cores=1.5), row(MIB, cpu_seconds=90, ran=60, peak_cores=2.0),
              row(MIB, cpu_seconds=6, ran=60), row(MIB, cpu_seconds=None, peak_cores=0.25),
              row(MIB, cpu_seconds=10, ran=None), row(MIB, cpu_seconds=10, ran=0)]
    out = report(agents, None, 500_000_000)
    assert out["cpu_cores"] == {"p50": 0.5, "p95": 1.5, "max": 1.5}  # 0.1, 0.5, 1.5: the others ran no known time
    assert out["peak_cpu_cores"] == {"p50": 1.5, "p95": 2.0, "max": 2.0}
    assert out["limits"] == {"memory": None, "cpus": 0.5}
    assert set(out["recommendation"]) == {"memory"}
    assert report([], None, None)["limits"]["cpus"] is None
