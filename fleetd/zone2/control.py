"""What both control sockets (zone 2's ``zone2.sock``, the daemon's ``daemon.sock``) do with the contract's messages
(zone2.contract): read one off a request, and answer one that cannot be read.

Apart from the contract so that the messages stay plain data, which the daemon's config can build without aiohttp.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from fleetd.zone2.contract import ContractError, Message

M = TypeVar("M", bound=Message)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def received(request: web.Request, message: type[M]) -> M:
    """The body of ``request`` read as ``message``: ContractError when it is not JSON or not that message."""
    try:
        data = await request.json()
    except ValueError as exc:
        raise ContractError(f"the body is not JSON: {exc}") from None
    return message.from_json(data)


@web.middleware
async def refuse_malformed(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A message its class cannot read is answered 400 {"error": why}, in one place for every handler of both
    sockets: the sender is another fleetd version, or broken, and a 500 would say the receiver is."""
    try:
        return await handler(request)
    except ContractError as exc:
        return web.json_response({"error": str(exc)}, status=400)
