"""A wait that ends when the client hangs up: aiohttp does not cancel a handler whose client left, and a quiet
agent (or an empty queue) would otherwise hold it to the end."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web

HANGUP_CHECK = 1.0
T = TypeVar("T")


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


