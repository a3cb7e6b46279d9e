"""Zone 2's HTTP/1.1 client for upstreams: kept-alive pooled connections, parsed by httptools, bodies streamed.

Zone 2 sends every agent call on through here. It replaces aiohttp's client on that path because the
client was most of what zone 2 added to a stream's time to first byte: in ``bench/dataplane.py --docker``
zone 2's aiohttp app with this kind of client (the ``hybrid`` relay) added about what a bare relay adds
(see bench/README.md). The agent-facing server stays aiohttp.

What it does, as HTTP clients do (aiohttp's, Go's net/http):

- one request per connection at a time (no pipelining); a connection goes back to its pool when its answer
  was read to the end and both sides keep it alive, and is closed after ``keepalive`` s idle or when the
  upstream closes it;
- TLS with the system's CAs and SNI for ``https``;
- a connect timeout (DNS, TCP and TLS handshake), and a read timeout: the longest silence while an answer
  is awaited (not counted while the reader holds data back because the agent reads slowly);
- flow control: reading from the upstream pauses while more than ``HIGH_WATER`` bytes wait for the reader;
- ``gzip`` and ``deflate`` bodies decoded (zone 2 asks for identity; an upstream may compress anyway); any
  other encoding is left to the caller to refuse;
- a request on a reused connection that the upstream closed before answering a byte is sent again once on a
  new connection when it is idempotent (by method or an ``Idempotency-Key`` header), as Go's client does;
  anything else fails as ``UpstreamError``, never retried here.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import httptools
from multidict import CIMultiDict
from yarl import URL

HIGH_WATER = 256 << 10  # bytes waiting for the reader before the upstream connection stops being read
MAX_HEAD = 256 << 10  # status line and headers of an answer
DEFAULT_PORTS = {"http": 80, "https": 443}
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # no Content-Length: 0 without a body
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
FORBIDDEN_IN_HEAD = ("\r", "\n", "\0")
SEPARATE_BODY = 64 << 10  # a body this large is written after the head, not joined to it


class UpstreamError(Exception):
    """The upstream could not be reached, broke off, sent no valid HTTP or fell silent.

    ``kind`` is ``connect``, ``timeout`` or ``broken``. ``sent``: the request had gone out (the upstream may have
    acted on it, and billed it, without answering).
    """

    def __init__(self, kind: str, message: str, sent: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.sent = sent


class BadRequestHead(ValueError):
    """A header or target that cannot go on the wire (a line break, a NUL)."""


class Response:
    """An upstream's answer: status and headers at once, the body as it arrives."""

    def __init__(self, conn: _Connection, method: str) -> None:
        self._conn = conn
        self.method = method
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.head: asyncio.Future[None] = conn.loop.create_future()
        self._parts: list[bytes] = []
        self._buffered = 0
        self._wake: asyncio.Future[None] | None = None
        self.complete = False
        self.error: UpstreamError | None = None
        self._decoder: Any = None
        self._released = False

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()

    # -- fed by the connection ----------------------------------------------------------------------
    def _data(self, data: bytes) -> None:
        self._parts.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
            self._conn.pause()
        self._poke()

    def _finish(self, error: UpstreamError | None = None) -> None:
        if self.complete or self.error is not None:
            return
        if error is None:
            self.complete = True
        else:
            self.error = error
            if not self.head.done():
                self.head.set_exception(error)
                self.head.exception()  # retrieved: a caller gone meanwhile must not leave it unobserved
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    # -- read by the caller -------------------------------------------------------------------------
    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, decoded, in the pieces it arrives in (several pieces that arrived together as one)."""
        while True:
            if self._parts:
                data, self._parts, self._buffered = b"".join(self._parts), [], 0
                self._conn.resume()
                if self._decoder is not None:
                    data = self._decode(data)
                    if not data:
                        continue
                yield data
            elif self.error is not None:
                raise self.error
            elif self.complete:
                if self._decoder is not None:
                    tail = self._decoder.flush()
                    self._decoder = None
                    if tail:
                        yield tail
                return
            else:
                self._wake = self._conn.loop.create_future()
                await self._wake

    async def read(self) -> bytes:
        return b"".join([part async for part in self.chunks()])

    def release(self) -> None:
        """Give the connection back for reuse if the answer was read to its end, else close it."""
        if self._released:
            return
        self._released = True
        self._conn.done(reusable=self.complete and not self._parts and self.error is None)

    # -- decoding -----------------------------------------------------------------------------------
    def _start_decoding(self) -> None:
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        if encoding == "gzip":
            self._decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = _Deflate()

    def _decode(self, data: bytes) -> bytes:
        try:
            out: bytes = self._decoder.decompress(data)
            return out
        except zlib.error as exc:
            self.error = UpstreamError("broken", f"the upstream's compressed body is corrupt: {exc}")
            raise self.error from None


class _Deflate:
    """``Content-Encoding: deflate`` is meant as zlib-wrapped, and sent raw by some servers: accept both."""

    def __init__(self) -> None:
        self._inner: Any = None
        self._first = b""

    def decompress(self, data: bytes) -> bytes:
        if self._inner is None:
            self._first += data
            if len(self._first) < 2:
                return b""
            data, self._first = self._first, b""
            zlib_wrapped = (data[0] & 0x0F) == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self._inner = zlib.decompressobj(wbits=zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)
        out: bytes = self._inner.decompress(data)
        return out

    def flush(self) -> bytes:
        if self._inner is None:
            return zlib.decompress(self._first, -zlib.MAX_WBITS) if self._first else b""
        out: bytes = self._inner.flush()
        return out


class _Connection(asyncio.Protocol):
    """One connection to an upstream, carrying one exchange at a time."""

    def __init__(self, pool: Upstreams, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.response: Response | None = None
        self.parser: Any = None
        self.head_bytes = 0
        self.got_bytes = False
        self.headers_done = False
        self.keep_alive = False
        self.paused = False
        self.last_read = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None or response.complete:  # nothing asked: an upstream talking out of turn
            self.close()
            return
        self.got_bytes = True
        self.last_read = self.loop.time()
        if not self.headers_done:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD:
                self.fail(UpstreamError("broken", f"the upstream's headers are over {MAX_HEAD >> 10} KiB"))
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(UpstreamError("broken", "the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self.fail(UpstreamError("broken", f"the upstream's answer is not valid HTTP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        self.pool.forget(self)
        response = self.response
        if response is None or response.complete:
            return
        if self.headers_done and eof_delimited(response.headers):
            response._finish()  # a body without a length ends where the connection does
        elif not self.got_bytes:
            response._finish(UpstreamError("broken", "the upstream closed the connection without answering"))
        else:
            response._finish(UpstreamError("broken", "the upstream closed the connection mid-answer"))

    # -- httptools callbacks ------------------------------------------------------------------------
    # Once the answer's headers are in, whatever else looks like a head is not the answer's: trailers of a
    # chunked body (dropped, as aiohttp's client drops them), or bytes past its end (the connection is not reused).
    def on_message_begin(self) -> None:
        if self.headers_done:
            self.keep_alive = False
        elif self.response is not None:
            self.response.headers = CIMultiDict()

    def on_status(self, status: bytes) -> None:
        if not self.headers_done and self.response is not None:
            self.response.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.headers_done and self.response is not None:
            self.response.headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        response = self.response
        if response is None or self.headers_done:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # interim (100 Continue, 103 Early Hints): the answer comes after it
            response.reason = ""
            return
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()
        response.status = status
        response._start_decoding()
        response.head.set_result(None)
        if response.method == "HEAD":  # no body follows, whatever Content-Length says
            self.keep_alive = False
            response._finish()

    def on_body(self, body: bytes) -> None:
        if self.response is not None and not self.response.complete:
            self.response._data(body)
        else:
            self.keep_alive = False

    def on_message_complete(self) -> None:
        if self.headers_done and self.response is not None:
            self._stop_timer()
            self.response._finish()

    # -- used by the pool and the response ----------------------------------------------------------
    def start(self, method: str, head: bytes, body: bytes) -> Response:
        assert self.transport is not None
        self.response = Response(self, method)
        self.parser = httptools.HttpResponseParser(self)
        self.head_bytes = 0
        self.got_bytes = self.headers_done = self.keep_alive = False
        self.last_read = self.loop.time()
        self.timer = self.loop.call_later(self.pool.read_timeout, self._check_silence)
        if len(body) < SEPARATE_BODY:
            self.transport.write(head + body)
        else:  # not copied into one buffer with the head
            self.transport.write(head)
            self.transport.write(body)
        return self.response

    def _check_silence(self) -> None:
        self.timer = None
        if self.response is None or self.response.complete or self.closed:
            return
        if self.paused:  # the agent reads slowly: not the upstream's silence
            self.timer = self.loop.call_later(self.pool.read_timeout, self._check_silence)
            return
        quiet = self.loop.time() - self.last_read
        if quiet >= self.pool.read_timeout:
            self.fail(UpstreamError("timeout", f"the upstream sent nothing for {self.pool.read_timeout:g} s"))
        else:
            self.timer = self.loop.call_later(self.pool.read_timeout - quiet, self._check_silence)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.last_read = self.loop.time()
            self.transport.resume_reading()

    def fail(self, error: UpstreamError) -> None:
        if self.response is not None:
            self.response._finish(error)
        self.close()

    def close(self) -> None:
        self._stop_timer()
        if self.transport is not None:
            self.transport.abort()
        self.closed = True
        self.pool.forget(self)

    def done(self, reusable: bool) -> None:
        self._stop_timer()
        self.response = None
        self.parser = None
        if reusable and self.keep_alive and not self.closed:
            self.resume()
            self.pool.put_back(self)
        else:
            self.close()


class Upstreams:
    """The connection pools to every upstream zone 2 calls, keyed by scheme, host and port."""

    def __init__(self, connect_timeout: float = 10.0, read_timeout: float = 300.0, keepalive: float = 15.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self.ssl_context = ssl_context
        self.loop = asyncio.get_running_loop()
        self.idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self.sweeper: asyncio.TimerHandle | None = None
        self.is_closed = False

    async def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Send one request and wait for the answer's status and headers.

        Raises UpstreamError (unreachable, broke off, silent) or BadRequestHead (nothing sent).
        """
        target = URL(url)
        scheme = target.scheme
        if scheme not in DEFAULT_PORTS or not target.raw_host:
            raise UpstreamError("connect", f"not an http(s) URL: {scheme}://...")
        port = target.port or DEFAULT_PORTS[scheme]
        key = (scheme, target.raw_host, port)
        head = request_head(method, target, port, headers, body)
        conn = self._take(key)
        reused = conn is not None
        if conn is None:
            conn = await self._connect(key)
        try:
            response = conn.start(method, head, body)
            try:
                await response.head
            except UpstreamError as exc:
                lost_idle = reused and conn.closed and not conn.got_bytes and exc.kind == "broken"
                if not (lost_idle and replayable(method, headers)):
                    exc.sent = True
                    raise
                conn = await self._connect(key)  # the upstream had closed the idle connection: once more
                response = conn.start(method, head, body)
                try:
                    await response.head
                except UpstreamError as again:
                    again.sent = True
                    raise
            return response
        except BaseException:
            conn.close()
            raise

    def _take(self, key: tuple[str, str, int]) -> _Connection | None:
        conns = self.idle.get(key)
        now = self.loop.time()
        while conns:
            conn = conns.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive:
                return conn
            conn.close()
        return None

    async def _connect(self, key: tuple[str, str, int]) -> _Connection:
        if self.is_closed:
            raise UpstreamError("connect", "zone 2 is shutting down")
        scheme, host, port = key
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            tls = self.ssl_context or ssl.create_default_context()
            self.ssl_context = tls
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self, key), host.strip("[]"), port, ssl=tls,
                    server_hostname=host.strip("[]") if tls is not None else None)
        except TimeoutError:
            raise UpstreamError("timeout", f"connecting to the upstream took over {self.connect_timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError("connect", f"cannot reach the upstream: {type(exc).__name__}") from None
        return conn

    def put_back(self, conn: _Connection) -> None:
        if self.is_closed:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        self.idle.setdefault(conn.key, []).append(conn)
        if self.sweeper is None:
            self.sweeper = self.loop.call_later(self.keepalive, self._sweep)

    def forget(self, conn: _Connection) -> None:
        conns = self.idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)

    def _sweep(self) -> None:
        """Close connections idle for ``keepalive`` s (oldest first in each list)."""
        self.sweeper = None
        now = self.loop.time()
        for conns in list(self.idle.values()):
            while conns and now - conns[0].idle_since >= self.keepalive:
                conns.pop(0).close()
        if any(self.idle.values()):
            self.sweeper = self.loop.call_later(self.keepalive / 2, self._sweep)

    def idle_count(self) -> int:
        return sum(len(conns) for conns in self.idle.values())

    async def close(self) -> None:
        self.is_closed = True
        if self.sweeper is not None:
            self.sweeper.cancel()
        for conns in list(self.idle.values()):
            for conn in list(conns):
                conn.close()
        self.idle.clear()


def eof_delimited(headers: CIMultiDict[str]) -> bool:
    """An answer's body without a length of its own ends where the connection does."""
    return "Content-Length" not in headers and "chunked" not in headers.get("Transfer-Encoding", "").lower()


def replayable(method: str, headers: Mapping[str, str]) -> bool:
    """May be sent again after a connection was lost before any answer (Go's net/http rule)."""
    return method in IDEMPOTENT_METHODS or any(
        key.lower() in ("idempotency-key", "x-idempotency-key") for key in headers)


def request_head(method: str, target: URL, port: int, headers: Mapping[str, str], body: bytes) -> bytes:
    """The request line and headers, with Host and Content-Length of zone 2's own."""
    host = target.raw_host or ""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if port != DEFAULT_PORTS[target.scheme]:
        host = f"{host}:{port}"
    lines = [f"{method} {target.raw_path_qs} HTTP/1.1", f"Host: {host}"]
    for key, value in headers.items():
        lines.append(f"{key}: {value}")
    if body or method not in BODYLESS_METHODS:
        lines.append(f"Content-Length: {len(body)}")
    if any(c in line for line in lines for c in FORBIDDEN_IN_HEAD) or any(
            c in key for key in headers for c in ": \t"):
        raise BadRequestHead("a header name or value holds a character that cannot be sent (line break, NUL)")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n\r\n"
