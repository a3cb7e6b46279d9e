"""What every handler of the control API reads a request with: its JSON body, query flags and numbers, the daemon's
parts, and a wait that ends when the client hangs up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiohttp import web

from fleetd.errors import InvalidRequest
from fleetd.services import Services

SERVICES = web.AppKey("services", Services)
MAX_BODY = 1 << 20
HANGUP_CHECK = 1.0
T = TypeVar("T")


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def body(request: web.Request) -> dict[str, Any]:
    """The JSON object in the request body ({} when empty)."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"malformed JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the JSON body must be an object")
    return data


def flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "").lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise InvalidRequest(f"query parameter {name}: expected true or false, got {value!r}")


def number(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit()):
        raise InvalidRequest(f"query parameter {name}: expected a whole number >= 0, got {value!r}")
    return int(value)


async def until_hangup(request: web.Request, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable``, but give up when the client hangs up (a quiet agent never wakes us)."""
    task = asyncio.ensure_future(awaitable)
    while True:
        done, _ = await asyncio.wait({task}, timeout=HANGUP_CHECK)
        if done:
            return task.result()
        if request.transport is None or request.transport.is_closing():
            task.cancel()
            raise ConnectionResetError("client went away")


