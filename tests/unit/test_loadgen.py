"""The load generator's schedule (pure)."""

from __future__ import annotations

from collections import Counter

from fleetd.loadgen import start_offsets


def test_closed_loop_starts_fall_in_no_lockstep_groups() -> None:
    offsets = start_offsets(100, 1.0)
    assert len(offsets) == 100 and all(0.0 <= o < 1.0 for o in offsets)
    assert len(set(offsets)) == 100
    # Phases against a 50 ms period (the simulator's chunk delay): in 10 bins of 5 ms, 10 starts each on
    # average; an even 10 ms step would put all 100 into 5 exact phases, 20 each.
    for period in (0.05, 0.1, 0.02):
        bins = Counter(int((o % period) / period * 10) for o in offsets)
        assert len(bins) == 10 and max(bins.values()) <= 15, (period, bins)


def test_no_warmup_starts_every_connection_at_once() -> None:
    assert start_offsets(3, 0.0) == [0.0, 0.0, 0.0]
