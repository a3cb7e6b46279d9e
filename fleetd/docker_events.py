"""Consume the Docker event stream in a thread; reconnect with backoff when dockerd restarts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from fleetd.decisions import Backoff
from fleetd.runtime import DockerRuntime

log = logging.getLogger(__name__)


class DockerEventWatcher:
    """Hands each container event of this instance to ``on_event`` on the loop.

    After a reconnect, ``on_reconnect`` runs on the loop too: events lost while
    the engine was away (its buffer does not survive a restart) are recovered by
    a full resync there, not by trusting the stream.
    """

    def __init__(
        self,
        runtime: DockerRuntime,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[dict[str, Any]], None],
        on_reconnect: Callable[[], None],
        on_disconnect: Callable[[str], None],
    ) -> None:
        self.runtime = runtime
        self.loop = loop
        self.on_event = on_event
        self.on_reconnect = on_reconnect
        self.on_disconnect = on_disconnect
        self.connected = threading.Event()
        self._stopping = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name="docker-events", daemon=True)

    def start(self, since: int) -> None:
        self._since: int | None = since
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = Backoff()
        first = True
        while not self._stopping.is_set():
            try:
                self._stream = self.runtime.events(self._since)
                self.connected.set()
                if not first:
                    log.info("docker event stream reconnected")
                    self.loop.call_soon_threadsafe(self.on_reconnect)
                first = False
                backoff.reset()
                for event in self._stream:
                    if "time" in event:
                        self._since = event["time"]
                    self.loop.call_soon_threadsafe(self.on_event, event)
                reason = "event stream ended"
            except Exception as exc:
                reason = str(exc) or type(exc).__name__
            if self._stopping.is_set():
                break
            if self.connected.is_set():
                self.connected.clear()
                log.warning("lost the docker event stream: %s", reason)
                self.loop.call_soon_threadsafe(self.on_disconnect, reason)
            self._stopping.wait(backoff.next())
