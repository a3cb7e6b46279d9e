"""Zone 2's agent-facing server, guarded: no agent can hold more than its share of it, nor hold it forever.

An agent is hostile code: it can open thousands of connections, send half a request and wait, or announce ten
megabytes and send them a byte a second. Each connection is wrapped (:class:`GuardedConnection`) so that

- an address gets a connection only within its share (``shares.Shares``); over it, a short 503 ``zone2_busy``
  and the connection closes, before a byte of it is read;
- a request's head must arrive whole within ``Timeouts.head`` of its first byte, and an idle kept-alive
  connection closes after ``Timeouts.idle``;
- a body is read (:func:`read_body`) only within the address's share of memory, up to a limit checked before
  reading, and dropped when the client stalls for ``Timeouts.body_stall`` or takes over ``Timeouts.body``;
- what the handler buffered is given back when the request ends (:func:`guard_middleware`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from fleetd.zone2.contract import GatewayLoad
from fleetd.zone2.counters import Counts
from fleetd.zone2.errors import Zone2Error, error_response
from fleetd.zone2.shares import Limits, Shares


@dataclass(frozen=True)
class Timeouts:
    head: float = 10.0  # s from a request's first byte to its whole head
    idle: float = 30.0  # s a kept-alive connection may wait for its next request
    body_stall: float = 10.0  # s a body may stall
    body: float = 60.0  # s a whole body may take
    write: float = 30.0  # s an answer's write may wait for the agent to read (a client that never reads)
    sweep: float = 1.0  # s between two sweeps for late heads and idle connections


IDLE_TIMEOUT = Timeouts.idle
FD_HEADROOM = 512  # descriptors kept for upstream connections, the ledger and the control socket
BUSY = "zone2_busy"

# A refusal sent before the request is read: the client reads it as the answer to what it sends.
_BUSY_BODY = json.dumps({"error": {"type": BUSY, "code": BUSY, "message":
                                   "zone 2: this agent has as many connections open as it may: close some"}})
BUSY_RESPONSE = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                 f"Connection: close\r\nContent-Length: {len(_BUSY_BODY)}\r\n\r\n{_BUSY_BODY}").encode()

GUARD: web.AppKey[Guard] = web.AppKey("guard")
HELD = web.RequestKey("held", int)  # bytes a request holds of its address's share
LARGE = web.RequestKey("large", bool)  # the request holds its address's turn for a large body
LARGE_BODY = 1 << 20  # bytes from which a body waits for its address's turn (``Guard.one_large_body``)
# Bytes a request's head may take (what arrives before it is handled: pipelined bodies too). Real heads are a few KiB;
# aiohttp alone allows 128 fields of 8 KiB, ~1 MB a connection, which 64 connections of an agent would hold unseen.
MAX_HEAD = 64 << 10
READ_BUFFER = 16 << 10  # aiohttp reads a body ahead of the handler up to twice this, per connection
LINGER = 1.0  # s aiohttp waits for the rest of a request whose body was not read before it closes the connection


class Refused(Zone2Error):
    """A request over its address's share, too large, or too slow, refused before its body was read: the rest of
    the body is dropped unread."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(status, code, message, {"Retry-After": str(retry_after)} if retry_after is not None else {})
        self.retry_after = retry_after




def connection_limit(limits: Limits) -> Limits:
    """``limits`` with the connection cap lowered to what the process's descriptor limit allows: each agent
    connection may hold an upstream connection too, and some descriptors are kept for the rest."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limits
    allowed = max(64, (soft - FD_HEADROOM) // 2)
    return Limits(**{**limits.__dict__, "connections": min(limits.connections, allowed)})


class Guard:
    """The connections of the agent-facing server and their shares."""

    def __init__(self, limits: Limits | None = None, timeouts: Timeouts | None = None,
                 clock: Callable[[], float] = time.monotonic, counts: Counts | None = None) -> None:
        self.shares = Shares(connection_limit(limits or Limits()))
        self.timeouts = timeouts or Timeouts()
        self.clock = clock
        self.connections: dict[Any, GuardedConnection] = {}  # by transport
        self.refused_connections = 0
        self.counts = counts or Counts()  # refusals counted here; tokens, upstream statuses, trips: costs
        self.dropped_slow = 0
        self._large: dict[str, asyncio.Lock] = {}  # an address's turn to read and parse a large body
        self._large_waiting: dict[str, int] = {}

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` that guards the connections ``factory`` serves."""
        return lambda: GuardedConnection(self, factory())

    def connection(self, transport: Any) -> GuardedConnection | None:
        return self.connections.get(transport)

    def sweep(self) -> None:
        """Close connections whose head is late or that idled too long."""
        now = self.clock()
        for connection in list(self.connections.values()):
            if connection.overdue(now):
                self.dropped_slow += 1
                connection.abort()

    async def sweeping(self) -> None:
        while True:
            await asyncio.sleep(self.timeouts.sweep)
            self.sweep()

    async def one_large_body(self, request: web.Request) -> None:
        """Wait until no other large body of this address is being read or parsed, then hold that turn until the
        request ends: reading and parsing a large body takes zone 2's one thread for tens of milliseconds, and an
        agent sending them back to back must not take it from the others."""
        if request.get(LARGE):
            return  # it has its turn already
        ip = request.remote or ""
        lock = self._large.get(ip)
        if lock is None:
            lock = self._large[ip] = asyncio.Lock()
        self._large_waiting[ip] = self._large_waiting.get(ip, 0) + 1
        try:
            await lock.acquire()
        finally:
            self._large_waiting[ip] -= 1
        request[LARGE] = True

    def end_large_body(self, request: web.Request) -> None:
        if not request.get(LARGE):
            return
        ip = request.remote or ""
        self._large[ip].release()
        if not self._large_waiting.get(ip):
            del self._large[ip]
            self._large_waiting.pop(ip, None)

    def take(self, request: web.Request, n: int) -> bool:
        """Hold ``n`` more bytes for ``request``, within its address's share (given back when it ends)."""
        if not self.shares.take(request.remote or "", n):
            return False
        request[HELD] = request.get(HELD, 0) + n
        return True

    def give(self, request: web.Request, n: int) -> None:
        n = min(n, request.get(HELD, 0))
        self.shares.give(request.remote or "", n)
        request[HELD] = request.get(HELD, 0) - n

    def status(self) -> GatewayLoad:
        shares = self.shares
        return GatewayLoad(shares.total_connections, shares.limits.connections, shares.total_held,
                           len(shares.connections), self.refused_connections, self.dropped_slow)


class SharedConnection(asyncio.Protocol):
    """A server's own protocol behind its address's share of ``shares``: the share is taken when the connection is
    made (over it, ``refuse`` closes the connection before the inner protocol sees it) and given back when it is
    lost. The gateway's connections (GuardedConnection) and the forward proxy's (egress_door) are these."""

    def __init__(self, shares: Shares, inner: asyncio.Protocol) -> None:
        self.shares = shares
        self.inner: asyncio.Protocol | None = inner
        self.ip = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.ip = str(peer[0]) if peer else ""
        if not self.shares.open(self.ip):
            self.inner = None
            self.refuse(transport)
            return
        self.admitted(transport)
        assert self.inner is not None
        self.inner.connection_made(transport)

    def refuse(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]  # a stream transport (uvloop's is no subclass)

    def admitted(self, transport: asyncio.BaseTransport) -> None:
        """The connection got its share (before the inner protocol hears of it)."""

    def released(self) -> None:
        """The connection is lost: its share is given back next."""

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is None:
            return
        self.released()
        self.shares.close(self.ip)
        inner, self.inner = self.inner, None
        inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class GuardedConnection(SharedConnection):
    """One agent connection: the server's own protocol behind a share check and the head and idle timers."""

    def __init__(self, guard: Guard, inner: asyncio.Protocol) -> None:
        super().__init__(guard.shares, inner)
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a request is being handled
        self.since = guard.clock()  # idle since (not busy, no byte of a next request yet)
        self.head_since: float | None = None  # the first byte of a request not yet handled arrived then
        self.discarding = False  # its request was refused: what it sends is dropped unread
        self.head_bytes = 0  # of the request whose head is arriving
        self.head_tail = b""  # its last bytes (the end of a head may span two reads)
        self.head_done = False  # its head has arrived whole: what follows is its body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's is no subclass)
        super().connection_made(transport)

    def refuse(self, transport: asyncio.BaseTransport) -> None:
        self.guard.refused_connections += 1
        self.guard.counts.refused(BUSY)
        transport.write(BUSY_RESPONSE)  # type: ignore[attr-defined]
        transport.close()

    def admitted(self, transport: asyncio.BaseTransport) -> None:
        self.guard.connections[transport] = self

    def released(self) -> None:
        self.guard.connections.pop(self.transport, None)

    def data_received(self, data: bytes) -> None:
        if self.inner is None or self.discarding:
            return
        if not self.busy and not self.head_done:
            if self.head_since is None:
                self.head_since, self.head_bytes, self.head_tail = self.guard.clock(), 0, b""
            seen = self.head_tail + data
            end = min((i for i in (seen.find(b"\r\n\r\n"), seen.find(b"\n\n")) if i != -1), default=-1)
            self.head_bytes += len(data) if end == -1 else end - len(self.head_tail)
            if self.head_bytes > MAX_HEAD:  # a head the parser would hold for up to Timeouts.head
                self.guard.dropped_slow += 1
                self.abort()
                return
            self.head_done, self.head_tail = end != -1, seen[-3:]
        self.inner.data_received(data)

    # -- the timers, driven by the middleware and the sweep -------------------------------------------------
    def started(self) -> None:
        """A request's head arrived whole: it is being handled."""
        self.busy, self.head_since = True, None

    def finished(self) -> None:
        self.busy, self.since, self.head_done = False, self.guard.clock(), False

    def overdue(self, now: float) -> bool:
        if self.busy:
            return False
        timeouts = self.guard.timeouts
        if self.head_since is not None:
            return now - self.head_since > timeouts.head
        return now - self.since > timeouts.idle

    def discard(self) -> None:
        """Drop whatever else this connection sends (its request was refused: it closes after the answer)."""
        self.discarding = True
        if self.transport is not None:
            with contextlib.suppress(RuntimeError, AttributeError):
                self.transport.resume_reading()  # the server may have paused it while the body waited

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


@web.middleware
async def guard_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    """Mark the connection busy while its request is handled; give back what the request held when it ends."""
    guard = request.app[GUARD]
    connection = guard.connection(request.transport)
    if connection is not None:
        connection.started()
    try:
        response = await handler(request)
        if not response.prepared:
            # Send it here, while the request still holds its bytes: aiohttp would write it after this returns,
            # when the share is given back, and hold it for as long as the agent does not read.
            await answer(request, response)
        return response
    except Zone2Error as exc:  # every answer of zone 2's own is rendered here, once
        guard.counts.refused(exc.code)
        headers = dict(exc.headers)
        if isinstance(exc, Refused):
            if exc.status in (408, 413):
                headers["Connection"] = "close"  # the rest of the body is not read
            if connection is not None and exc.status in (408, 413, 503):
                # The rest of the body is dropped as it comes, unparsed, for the second aiohttp lingers before it
                # closes (so that a client that sends its whole body before reading reads the answer, not a reset)
                connection.discard()
        return error_response(exc.status, exc.code, exc.message, headers)
    finally:
        guard.give(request, request.get(HELD, 0))
        guard.end_large_body(request)
        if connection is not None:
            connection.finished()


async def answer(request: web.Request, response: web.StreamResponse) -> None:
    """Write a whole answer, giving up (and closing the connection) when the agent does not read it in time."""
    async def send() -> None:
        await response.prepare(request)
        await response.write_eof()

    if not await in_time(request, send()):
        response.force_close()


async def in_time(request: web.Request, write: Awaitable[None]) -> bool:
    """Await a write to the agent within ``Timeouts.write``; False when the agent went away or stalled (then its
    connection is dropped: the bytes waiting for it go)."""
    try:
        await asyncio.wait_for(write, request.app[GUARD].timeouts.write)
        return True
    except (ConnectionResetError, ConnectionError):
        return False
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()
        return False


async def read_body(request: web.Request, limit: int, what: str = "request bodies",
                    feed: Callable[[bytes], None] | None = None) -> bytes:
    """The request's body, at most ``limit`` bytes (a declared length over it is refused before a byte is read),
    held within its address's share of memory and read in time; else :class:`Refused`. ``feed`` sees each chunk
    as it arrives."""
    if not request.body_exists:  # a GET, a DELETE: no length, not chunked
        return b""
    guard = request.app[GUARD]
    declared = request.content_length
    too_large = Refused(413, "request_too_large", f"{what} are limited to {_size(limit)}")
    if declared is not None and declared > limit:
        raise too_large
    if declared is None or declared >= LARGE_BODY:
        await guard.one_large_body(request)
    if declared and not guard.take(request, declared):
        raise busy()
    chunks: list[bytes] = []
    size = 0
    loop = asyncio.get_running_loop()
    timeouts = guard.timeouts
    deadline = loop.time() + timeouts.body
    while True:
        left = deadline - loop.time()
        try:
            chunk = await asyncio.wait_for(request.content.readany(), min(timeouts.body_stall, max(left, 0.001)))
        except TimeoutError:
            raise Refused(408, "request_timeout", "the request body arrived too slowly") from None
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise too_large
        if declared is None and not guard.take(request, len(chunk)):
            raise busy()
        if feed is not None:
            feed(chunk)
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def busy() -> Refused:
    return Refused(503, BUSY, "zone 2 holds as much of this agent's data as it may: retry when its other calls "
                              "are done", retry_after=1)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


async def serve_guarded(runner: web.AppRunner, guard: Guard, host: str, port: int, backlog: int = 1024
                        ) -> tuple[asyncio.AbstractServer, asyncio.Task[None]]:
    """Listen on host:port with ``runner``'s application behind ``guard``; returns the server and its sweeper."""
    server = runner.server
    assert server is not None, "runner.setup() first"
    listener = await asyncio.get_running_loop().create_server(guard.wrap(server), host, port, backlog=backlog,
                                                              reuse_address=True)
    sweeper = asyncio.get_running_loop().create_task(guard.sweeping())
    return listener, sweeper


async def stop_guarded(listener: asyncio.AbstractServer, sweeper: asyncio.Task[None]) -> None:
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    listener.close()
