"""Zone 2's own answers to agents, as exceptions: raised where a request is refused, rendered once, by the guard's
middleware (fleetd.zone2.guard.guard_middleware), in the OpenAI error shape the official SDKs parse. Zone 2's twin
of fleetd.errors: a status, a code, a message, and the headers the answer needs."""

from __future__ import annotations

import json

from aiohttp import web


class Zone2Error(Exception):
    """A request zone 2 answers itself, with ``status`` and ``{"error": {"type", "code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


class UpstreamFailed(Zone2Error):
    """No usable answer came from upstream (unreachable, timed out, broken, unreadable)."""

    def __init__(self, status: int, code: str, message: str, sent: bool = False) -> None:
        super().__init__(status, code, message)
        self.sent = sent  # the request had gone out: the upstream may have billed what it never answered


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The answer itself, as the guard's middleware writes it."""
    body = {"error": {"type": code, "code": code, "message": message}}
    return web.Response(text=json.dumps(body), status=status, headers=headers, content_type="application/json")
