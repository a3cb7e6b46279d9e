"""Calls that reach zone 2 together go to the daemon as one request, as a database commits a group: the first at
once, and those that come while a group is on its way wait for it and go together right after. A lone call waits
for nobody; under load, one request (and one transaction in the daemon) carries as many calls as arrived during the
last round trip, up to ``most`` of them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupSend(Generic[Item, Result]):
    """``await group(item)``: ``send``'s result for ``item``. ``send`` gets a list of items and returns one result per
    item, in order (an exception as a result: that caller raises it); what it raises, every caller of its group
    raises. A caller that stops waiting does not take its
    item back: it goes, and its result is dropped (an answer relayed is recorded, whoever reads the outcome). Cancelled
    (zone 2 stops), the group on its way cancels its callers and those waiting behind it."""

    def __init__(self, send: Callable[[list[Item]], Awaitable[list[Result | Exception]]], most: int) -> None:
        self._send = send
        self.most = most
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._sending: asyncio.Task[None] | None = None

    async def __call__(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._sending is None:
            self._next()
        return await future

    def _next(self) -> None:
        group, self._waiting = self._waiting[:self.most], self._waiting[self.most:]
        self._sending = asyncio.get_running_loop().create_task(self._go(group))

    async def _go(self, group: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._send([item for item, _ in group])
            if len(results) != len(group):
                raise ValueError(f"{len(results)} results for {len(group)} calls")
        except Exception as exc:
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
        except BaseException:  # cancelled (zone 2 stops): so are its callers, and those behind them
            self._sending = None
            behind, self._waiting = self._waiting, []
            for _, future in group + behind:
                future.cancel()
            raise
        else:
            for (_, future), result in zip(group, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        self._sending = None
        if self._waiting:
            self._next()

    async def close(self) -> None:
        """Wait for the group on its way and those behind it."""
        while self._sending is not None:
            await asyncio.wait({self._sending})
