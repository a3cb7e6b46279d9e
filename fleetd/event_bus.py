"""The daemon's live event feed: every event the store records, handed to each follower (``fleetd events -f``)."""

from __future__ import annotations

import asyncio
from typing import Any

Event = dict[str, Any]
MAX_BEHIND = 10_000  # events a follower may fall behind before it is told to stop


class EventBus:
    def __init__(self) -> None:
        self._followers: set[asyncio.Queue[Event | None]] = set()

    def subscribe(self) -> asyncio.Queue[Event | None]:
        """A queue of new events; ``None`` in it means: you fell behind, stop."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=MAX_BEHIND)
        self._followers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        self._followers.discard(queue)

    def publish(self, event: Event) -> None:
        for queue in list(self._followers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # A reader this far behind is told to stop rather than silently miss events.
                self._followers.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)
