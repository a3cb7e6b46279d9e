"""A fake fleetd daemon for the CLI's unit tests: an aiohttp app on a Unix socket, served from a thread, that records
each request and answers from a table the test fills. The CLI under test is the real one, over its real client: what
the tests see is what goes over the socket (paths, query strings, JSON bodies).

Not a test module itself (pytest collects only test_*.py).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Seen:
    """A request as the fake daemon received it."""

    method: str
    path: str
    query: dict[str, str]
    body: Any  # the parsed JSON body; None without one


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    delay: float = 0.0  # seconds before answering (a slow wait)


def error(status: int, code: str, message: str) -> Answer:
    """An answer in the API's error shape."""
    return Answer(status, {"error": {"type": code, "code": code, "message": message}})


class FakeDaemon:
    """Answers ``(method, path)`` from ``answers``; a list there is answered in order, one item a request. An
    unexpected request gets 599 and stays in ``seen``, so that a test's assertion on ``seen`` names it."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.seen: list[Seen] = []
        self.answers: dict[tuple[str, str], Answer | list[Answer]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-fleetd", daemon=True)
        self._runner: web.AppRunner | None = None

    def answer(self, method: str, path: str, body: Any, status: int = 200) -> None:
        self.answers[(method, path)] = Answer(status, body)

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.seen.append(Seen(request.method, request.path, dict(request.query.items()),
                              json.loads(raw) if raw else None))
        found = self.answers.get((request.method, request.path))
        if isinstance(found, list):
            found = found.pop(0) if found else None
        if found is None:
            found = error(599, "http_error", f"the fake daemon has no answer for {request.method} {request.path}")
        if found.delay:
            await asyncio.sleep(found.delay)
        return web.json_response(found.body, status=found.status)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.socket_path)).start()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@contextmanager
def fake_daemon() -> Iterator[FakeDaemon]:
    """A started fake daemon on a socket in a short /tmp directory (a Unix socket path has at most 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="fleetd-cli-", dir="/tmp") as tmp:
        daemon = FakeDaemon(Path(tmp) / "fleetd.sock")
        daemon.start()
        try:
            yield daemon
        finally:
            daemon.stop()
