"""An agent's output, streamed from the engine: also after it exited, until its retention ends.

A log stream blocks on a quiet agent, so each reader gets a thread of its own (at most ``MAX_LOG_STREAMS``), never
one of the engine-call pool's (``fleetd.blocking``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fleetd.agent_runtime import AgentRuntime
from fleetd.blocking import BlockingCalls
from fleetd.errors import NotFound
from fleetd.models import State

MAX_LOG_STREAMS = 256


class LogStreams:
    def __init__(self, runtime: AgentRuntime, calls: BlockingCalls) -> None:
        self.runtime = runtime
        self.calls = calls
        self.executor = ThreadPoolExecutor(max_workers=MAX_LOG_STREAMS, thread_name_prefix="logs")
        self.open = 0  # streams open now (follow readers included): `fleetd status` shows it

    async def stream(self, agent: dict[str, Any], follow: bool, tail: int | None, since: float | None = None,
                     timestamps: bool = False) -> AsyncIterator[bytes]:
        """The chunks of ``agent``'s output. Errors (its container gone) are raised here, before any byte."""
        if agent["state"] == State.REMOVED or not agent["container_id"]:
            raise NotFound(f"no logs for agent {agent['id']}: its container is gone ({agent['state']})")
        stream = await self.calls.call(self.runtime.logs, agent["container_id"], follow, tail, since, timestamps)
        return self._chunks(stream)

    async def _chunks(self, stream: Any) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        self.open += 1
        try:
            while True:
                chunk = await loop.run_in_executor(self.executor, next, stream, b"")
                if not chunk:
                    break
                yield chunk
        finally:
            self.open -= 1
            stream.close()  # unblocks the thread still waiting in next()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
