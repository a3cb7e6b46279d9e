"""What every handler of the control API reads a request with: its JSON body, query flags and numbers, and the
daemon's parts."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from fleetd.errors import InvalidRequest
from fleetd.services import Services

SERVICES = web.AppKey("services", Services)
MAX_BODY = 1 << 20


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
