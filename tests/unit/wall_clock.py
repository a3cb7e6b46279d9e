"""A wall clock a test sets and moves (aware UTC datetimes, as fleetd.models.utcnow gives): for the store-backed
parts that take a ``clock`` (the task queue, deployments)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class WallClock:
    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
