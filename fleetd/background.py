"""Tasks the daemon starts in the background (from Docker events, timers, a spawn's aftermath).

asyncio keeps only a weak reference to a task: one nobody holds may be collected before it ends, and an exception
inside one nobody awaits is reported, if at all, when it is collected. Every background task is started here: kept
until it ends, and its failure logged with what it was doing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("fleetd")


class Background:
    """The background tasks of one component."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def start(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; ``what`` names it in the log if it fails."""
        task = asyncio.get_running_loop().create_task(coro, name=what)
        self.tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("background task failed: %s", task.get_name(), exc_info=error)

    async def cancel(self) -> None:
        """Cancel every task still running and wait for them to end."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
