"""Blocking calls (the Docker SDK, mke2fs, iptables) run in one thread pool, never on the event loop.

One pool per daemon, shared by the agent lifecycle, zone 2's keeper and the probes: its size bounds how many
engine calls are in flight at once (``fleetd.runtime.POOL_SIZE``, the Docker client's connection pool).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class BlockingCalls:
    def __init__(self, workers: int, name: str = "docker") -> None:
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    async def call(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` in the pool; the loop goes on meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
