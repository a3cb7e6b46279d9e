"""Deadline and housekeeping timers on APScheduler 3.x, on the daemon's event loop.

Timers live in memory; what they fire for (deadline, kill_at) lives on disk,
so the daemon re-arms them from the store when it starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger


class Timers:
    """Named one-shot and repeating timers; re-arming a name replaces it."""

    def __init__(self) -> None:
        self.scheduler = AsyncIOScheduler(
            timezone=UTC,
            # A timer that fires late (daemon was down, loop was busy) still fires.
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        )

    def start(self) -> None:
        self.scheduler.start()

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def at(self, key: str, when: datetime, func: Callable[..., Any], *args: Any) -> None:
        """Run ``func(*args)`` at ``when`` (at once if that has passed)."""
        self.scheduler.add_job(
            func, DateTrigger(run_date=when, timezone=UTC), args=args, id=key, replace_existing=True
        )

    def every(self, key: str, seconds: float, func: Callable[..., Any]) -> None:
        self.scheduler.add_job(
            func, IntervalTrigger(seconds=seconds, timezone=UTC), id=key, replace_existing=True
        )

    def cancel(self, key: str) -> None:
        with contextlib.suppress(JobLookupError):
            self.scheduler.remove_job(key)

    def when(self, key: str) -> datetime | None:
        job = self.scheduler.get_job(key)
        return job.next_run_time if job else None
