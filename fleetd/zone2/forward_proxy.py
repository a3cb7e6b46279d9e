"""Zone 2's forward proxy (issue 18): agents reach the hosts their role allows, by name, and nothing else.

Agents get ``HTTP_PROXY``/``HTTPS_PROXY`` pointing here, so pip, git, curl and the SDKs use it unmodified. Per
connection, ``EgressProxy.handle`` reads one request head (``fleetd.zone2.forward_request``) and:

1. knows the agent by its source address (``lookup``, else ``whois``: an agent's registration may trail its
   first connection by a moment; an address neither knows is refused: zone 2 attributes every byte to one
   agent), refuses a credential handle (handles are only resolved on the credential path), and asks
   the agent's ``EgressPolicy`` whether the host and port are allowed (IP literals never are: a policy names hosts);
2. checks the agent's limits: concurrent connections (``max_tunnels``) and bytes per UTC day;
3. resolves the name once (at most ``max_lookups`` lookups of an agent's running at once, counting those it gave up
   waiting for: the resolver's threads are few and shared by every agent) and refuses the connection if any address
   it resolves to is refused (``fleetd.egress.refused_address``: loopback, link-local and metadata, the host's own,
   the agents' network), then connects to an address it checked, never looking the name up again (a second lookup
   is DNS rebinding);
4. plain HTTP (``GET http://host/path``): sends the request in origin form with hop-by-hop headers dropped and
   ``Connection: close``, relays the body (scanned for handles, also across pieces), pipes the answer back;
   ``CONNECT host:port``: answers 200, reads the client's TLS ClientHello and opens the tunnel only when its SNI,
   if any, names the CONNECT host. Tunnels carry TLS only: a plain protocol inside would let an allowed name on a
   shared CDN front any other site of that CDN unchecked.

Refusals before the upstream answers get 403/429/400/502/504: zone 2's JSON error body for plain HTTP, a plain-text
body for CONNECT (curl prints it). Open transfers are cut when the agent's bytes of the day reach its cap and after
``idle_timeout`` without a byte either way. Every connection, whatever happens to it, ends with exactly one
``EgressRecord`` handed to ``on_record``. Reads are 64 KiB at most and every write is drained before the next read:
a connection holds a bounded amount of memory however fast one side sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fleetd.egress import EgressPolicy, canonical_host, refused_address
from fleetd.errors import InvalidRequest
from fleetd.zone2.forward_request import MarkerScan, ProxyRequest, Refused, bad_request, credential_refused
from fleetd.zone2.sni import Incomplete, MalformedClientHello, server_name

log = logging.getLogger("fleetd.zone2")
MAX_HEAD = 64 << 10  # a request head longer than this is refused (431)
READ_SIZE = 64 << 10  # the most read from either side at once
DAY = 86400.0
LINGER = 2.0  # after a refusal, how long unread request bytes are drained so that the answer is not reset away
LINGER_BYTES = 1 << 20
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
Resolve = Callable[[str, int], Awaitable[list[str]]]
Whois = Callable[[str], Awaitable["AgentEgress | None"]]


@dataclass(frozen=True)
class AgentEgress:
    """What the proxy needs to know of the agent behind a source address."""

    agent_id: str
    policy: EgressPolicy
    max_bytes_per_day: int | None  # in + out bytes per UTC day; None: unlimited


@dataclass(frozen=True)
class EgressRecord:
    """One connection's outcome, handed to ``on_record`` once, when the connection ends.

    ``reason`` says why a connection was denied (``not allowed: ...``, ``sni mismatch: ...``) or why an allowed one
    was cut (``byte cap``, ``idle``); None for an allowed connection that ended normally. ``bytes_out`` went from
    the agent to the upstream, ``bytes_in`` the other way (the proxy's own answers are not counted).
    """

    agent_id: str | None
    host: str
    port: int
    method: str  # "CONNECT" or the HTTP method; "" when no request head arrived
    decision: str  # "allowed" | "denied"
    reason: str | None
    address: str | None  # the address connected to, or the one refused
    bytes_out: int
    bytes_in: int
    started_at: float  # clock() when the connection was accepted
    duration_s: float


@dataclass(frozen=True)
class EgressStats:
    """One agent's counters, for Prometheus: connections since the proxy started, bytes, and what is open now."""

    allowed: int
    denied: int
    bytes_out: int
    bytes_in: int
    open_connections: int
    bytes_today: int  # counted against max_bytes_per_day


class AgentUse:
    """One agent's counters and its bytes of the current UTC day; the proxy keeps one per agent it has seen."""

    def __init__(self, max_lookups: int = 1) -> None:
        self.allowed = self.denied = self.bytes_out = self.bytes_in = self.open = 0
        self.day = -1
        self.today = 0
        # name lookups running: released when the lookup ends, not when the connection stops waiting for it
        self.lookups = asyncio.Semaphore(max_lookups)

    def spent(self, day: int) -> int:
        """Bytes counted on ``day`` (days since the epoch, UTC): a new day starts from zero."""
        if day != self.day:
            self.day, self.today = day, 0
        return self.today

    def spend(self, day: int, size: int, outbound: bool) -> None:
        self.today = self.spent(day) + size
        if outbound:
            self.bytes_out += size
        else:
            self.bytes_in += size

    def stats(self) -> EgressStats:
        return EgressStats(self.allowed, self.denied, self.bytes_out, self.bytes_in, self.open, self.today)


class Cut(Exception):
    """An allowed connection ended early; ``reason`` goes to its record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Connection:
    """One client connection's facts, filled in as the proxy learns them, and its record at the end."""

    def __init__(self, agent: AgentEgress | None, use: AgentUse | None, started_at: float, now: float) -> None:
        self.agent, self.use = agent, use
        self.started_at, self.last_active = started_at, now
        self.host, self.port, self.method = "", 0, ""
        self.address: str | None = None
        self.bytes_out = self.bytes_in = 0
        self.decision = "denied"
        self.reason: str | None = "no request"
        self.answered = False  # bytes went to the client: no refusal can be written any more
        self.holds_slot = False

    def record(self, end: float) -> EgressRecord:
        return EgressRecord(self.agent.agent_id if self.agent else None, self.host, self.port, self.method,
                            self.decision, self.reason, self.address, self.bytes_out, self.bytes_in,
                            self.started_at, max(0.0, end - self.started_at))


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, through the loop's resolver (the system's), without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class EgressProxy:
    """The forward proxy; ``handle`` serves one client connection (give it to ``asyncio.start_server``).

    Collaborators are injected: ``lookup`` maps a source address to its agent (``whois``, when given, is asked for
    an address ``lookup`` does not know: the daemon starts an agent before it registers it), ``resolve`` a name to
    addresses, ``refuse`` an address to why it is never connected to (default: ``refused_address`` with the host's
    own addresses and the agents' networks, asked afresh per connection), ``clock`` gives wall time for records and
    the UTC day of the byte cap. ``head_timeout`` bounds the wait for a request head and for a tunnel's ClientHello.
    """

    def __init__(self, lookup: Callable[[str], AgentEgress | None], resolve: Resolve | None = None,
                 host_addresses: Callable[[], Iterable[str]] = tuple,
                 agent_networks: Callable[[], Iterable[str]] = tuple,
                 on_record: Callable[[EgressRecord], None] = lambda record: None,
                 max_tunnels: int = 16, idle_timeout: float = 300.0, connect_timeout: float = 10.0,
                 clock: Callable[[], float] = time.time, refuse: Callable[[str], str | None] | None = None,
                 head_timeout: float = 30.0, max_lookups: int = 2,
                 counted: Callable[[str, int], int] | None = None, whois: Whois | None = None) -> None:
        self._lookup, self._whois = lookup, whois
        self._resolve, self._on_record = resolve or system_resolve, on_record
        # Bytes an agent moved on a UTC day before this proxy started (egress_log.EgressLog.day_bytes): a zone 2
        # restart does not give an agent a fresh byte cap. Asked once per agent, when the proxy first meets it.
        self._counted = counted
        self._refuse = refuse or (lambda ip: refused_address(ip, host_addresses(), agent_networks()))
        self._max_tunnels, self._idle_timeout = max_tunnels, idle_timeout
        self._connect_timeout, self._head_timeout, self._clock = connect_timeout, head_timeout, clock
        self._max_lookups = max_lookups
        self._agents: dict[str, AgentUse] = {}
        self._open: dict[asyncio.Task[Any], str | None] = {}  # each connection's task and its agent

    def stats(self) -> dict[str, EgressStats]:
        """Each agent's counters (agents seen since start or since ``forget``), by agent id."""
        day = int(self._clock() // DAY)
        for use in self._agents.values():
            use.spent(day)  # a new UTC day shows zero bytes today, also before the agent's next byte
        return {agent_id: use.stats() for agent_id, use in self._agents.items()}

    def _use(self, agent_id: str) -> AgentUse:
        use = self._agents.get(agent_id)
        if use is None:
            use = self._agents[agent_id] = AgentUse(self._max_lookups)
            if self._counted is not None:
                day = int(self._clock() // DAY)
                try:
                    use.day, use.today = day, self._counted(agent_id, day)
                except Exception:  # the log unreadable: this proxy's own count from zero, as before
                    log.exception("egress proxy: reading agent %s's bytes of the day failed", agent_id)
        return use

    def forget(self, agent_id: str) -> None:
        """The agent is gone: close its connections and drop its counters (state is bounded by live agents)."""
        self._agents.pop(agent_id, None)
        for task, owner in list(self._open.items()):
            if owner == agent_id:
                task.cancel()

    async def close(self) -> None:
        """Close every open connection; each still yields its record."""
        tasks = list(self._open)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection to its end; never raises, always records (also when cancelled)."""
        loop = asyncio.get_running_loop()
        peer = writer.get_extra_info("peername")
        conn = _Connection(None, None, self._clock(), loop.time())
        task = asyncio.current_task()
        if task is not None:
            self._open[task] = None
        upstream: list[asyncio.StreamWriter] = []
        try:
            await self._identify(conn, peer, task)
            await self._serve_and_answer(conn, reader, writer, upstream)
        except asyncio.CancelledError:  # close() or forget(); not raised on: asyncio's server logs a cancelled
            conn.reason = "closed by zone 2"  # connection task as an error (streams.py's connection_made callback)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
            conn.reason = f"connection lost: {type(exc).__name__}"
        except Exception:
            log.exception("egress proxy: connection from %s to %s:%s failed", peer, conn.host, conn.port)
            conn.reason = "internal error"
        finally:
            for stream in (*upstream, writer):
                stream.close()
            self._finish(conn, task)

    async def _identify(self, conn: _Connection, peer: object, task: asyncio.Task[Any] | None) -> None:
        """Attribute the connection to the agent behind the peer address, taking one of its slots if one is free."""
        agent = await self._agent_at(peer)
        if agent is None:
            return
        conn.agent = agent
        conn.use = use = self._use(agent.agent_id)
        if task is not None and task in self._open:
            self._open[task] = agent.agent_id
        if use.open < self._max_tunnels:
            use.open += 1
            conn.holds_slot = True

    async def _agent_at(self, peer: object) -> AgentEgress | None:
        """The agent behind the peer address, from ``lookup``, else ``whois``; a lookup that fails counts as an
        unknown address (refused)."""
        if not isinstance(peer, tuple) or not peer:
            return None
        ip = str(peer[0])
        try:
            agent = self._lookup(ip)
            if agent is None and self._whois is not None:
                agent = await self._whois(ip)
            return agent
        except Exception:
            log.exception("egress proxy: looking up the agent at %s failed", ip)
            return None

    async def _serve_and_answer(self, conn: _Connection, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter, upstream: list[asyncio.StreamWriter]) -> None:
        """Serve the connection; a refusal is recorded and, while the client has had no byte yet, answered."""
        try:
            await self._serve(conn, reader, writer, upstream)
        except Refused as refusal:
            conn.decision, conn.reason = "denied", f"{refusal.reason}: {refusal.message}"
            if not conn.answered:
                await self._answer(reader, writer, refusal, conn.method == "CONNECT")
        except Cut as cut:
            conn.reason = cut.reason

    def _finish(self, conn: _Connection, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._open.pop(task, None)
        if conn.use is not None:
            if conn.holds_slot:
                conn.use.open -= 1
            if conn.decision == "allowed":
                conn.use.allowed += 1
            else:
                conn.use.denied += 1
        try:
            self._on_record(conn.record(self._clock()))
        except Exception:
            log.exception("egress proxy: recording a connection failed")

    async def _serve(self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     upstream: list[asyncio.StreamWriter]) -> None:
        request = await self._read_head(conn, reader)
        conn.method = request.method
        host, port, path = request.target()
        conn.host, conn.port = host, port
        name = self._check(conn, request, host, port)
        up_reader, up_writer = await self._connect(conn, name, port)
        upstream.append(up_writer)
        conn.decision, conn.reason = "allowed", None
        if request.method == "CONNECT":
            await self._tunnel(conn, request, name, reader, writer, up_reader, up_writer)
        else:
            await self._send(conn, up_writer, request.origin_head(host, port, path), outbound=True)
            await self._relay(conn, [self._pipe(conn, up_reader, writer, outbound=False)],
                              [self._relay_body(conn, request, reader, up_writer)])

    async def _read_head(self, conn: _Connection, reader: asyncio.StreamReader) -> ProxyRequest:
        request = ProxyRequest()
        received = 0
        try:
            async with asyncio.timeout(self._head_timeout):
                while not request.head_done:
                    data = await reader.read(READ_SIZE)
                    if not data:
                        raise Cut("no request") if not received else bad_request("bad request", "incomplete head")
                    received += len(data)
                    request.feed(data)
                    if request.head_size > MAX_HEAD or (not request.head_done and received >= MAX_HEAD):
                        raise Refused(431, "bad_request", "head too large",
                                      f"the request head is over {MAX_HEAD >> 10} KiB")
        except TimeoutError:
            raise Refused(408, "bad_request", "no request", f"no complete request head within "
                                                            f"{self._head_timeout:g} s") from None
        conn.method = request.method
        return request

    def _check(self, conn: _Connection, request: ProxyRequest, host: str, port: int) -> str:
        """The canonical name once the agent, its policy and its limits allow the request; raises ``Refused``."""
        agent, use = conn.agent, conn.use
        what = f"{host}:{port}"
        if agent is None or use is None:
            raise Refused(403, "egress_denied", "unknown agent",
                          f"egress to {what} denied: this source address is not an agent zone 2 knows")
        request.check_credentials()
        if not agent.policy.enabled:
            raise Refused(403, "egress_denied", "no egress",
                          f"egress to {what} denied: agent {agent.agent_id}'s role allows no egress")
        try:
            name = canonical_host(host)
        except InvalidRequest as exc:
            raise Refused(403, "egress_denied", "not a host name",
                          f"egress to {host[:100]!r} denied: {exc.message}") from None
        if not agent.policy.allows(name, port):
            raise Refused(403, "egress_denied", "not allowed",
                          f"egress to {name}:{port} denied: not in agent {agent.agent_id}'s egress policy "
                          f"({agent.policy})")
        if not conn.holds_slot:
            raise Refused(429, "egress_limit", "tunnel cap",
                          f"egress to {name}:{port} refused: agent {agent.agent_id} already has "
                          f"{self._max_tunnels} egress connections open")
        now = self._clock()
        if agent.max_bytes_per_day is not None and use.spent(int(now // DAY)) >= agent.max_bytes_per_day:
            reset = int(DAY - now % DAY) + 1
            raise Refused(429, "egress_limit", "byte cap",
                          f"egress to {name}:{port} refused: agent {agent.agent_id} used its "
                          f"{agent.max_bytes_per_day} bytes of egress for today (UTC)",
                          [("Retry-After", str(reset)), ("x-should-retry", "false")])
        return name

    async def _connect(self, conn: _Connection, name: str, port: int,
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to an address ``name`` resolves to, every one of them checked first; one lookup only."""
        what = f"{name}:{port}"
        use = conn.use
        assert use is not None  # only connections of known agents get this far
        try:
            async with asyncio.timeout(self._connect_timeout):
                await use.lookups.acquire()
                lookup = asyncio.ensure_future(self._resolve(name, port))
                lookup.add_done_callback(lambda done: _lookup_ended(done, use.lookups))
                addresses = list(await asyncio.shield(lookup))  # a lookup given up on keeps its slot till it ends
        except TimeoutError:
            raise Refused(504, "upstream_timeout", "resolve timeout",
                          f"{name} did not resolve within {self._connect_timeout:g} s") from None
        except OSError as exc:
            raise Refused(502, "upstream_unreachable", "unresolvable", f"{name} does not resolve: {exc}") from None
        if not addresses:
            raise Refused(502, "upstream_unreachable", "unresolvable", f"{name} resolves to no address")
        for address in addresses:
            why = self._refuse(address)
            if why is not None:
                conn.address = address
                raise Refused(403, "egress_denied", "refused address",
                              f"egress to {what} denied: {name} resolves to {why}")
        failures = []
        try:
            async with asyncio.timeout(self._connect_timeout):
                for address in addresses:
                    conn.address = address
                    try:
                        return await asyncio.open_connection(address, port, limit=READ_SIZE)
                    except OSError as exc:
                        failures.append(f"{address}: {exc.strerror or exc}")
        except TimeoutError:
            raise Refused(504, "upstream_timeout", "connect timeout",
                          f"{what} ({conn.address}) did not accept a connection within "
                          f"{self._connect_timeout:g} s") from None
        raise Refused(502, "upstream_unreachable", "unreachable", f"{what} unreachable ({'; '.join(failures)})")

    async def _tunnel(self, conn: _Connection, request: ProxyRequest, name: str, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, up_reader: asyncio.StreamReader,
                      up_writer: asyncio.StreamWriter) -> None:
        """Answer 200, check the ClientHello's SNI against ``name``, then pipe both ways."""
        conn.answered = True
        writer.write(ESTABLISHED)
        await writer.drain()
        hello = await self._client_hello(conn, reader, request.early, name)
        await self._send(conn, up_writer, hello, outbound=True)
        await self._relay(conn, [self._pipe(conn, reader, up_writer, outbound=True),
                                 self._pipe(conn, up_reader, writer, outbound=False)])

    async def _client_hello(self, conn: _Connection, reader: asyncio.StreamReader, early: bytes, name: str) -> bytes:
        """The tunnel's first bytes, read until they hold a whole ClientHello naming ``name`` (or no name)."""
        hello = bytearray(early)
        try:
            async with asyncio.timeout(self._head_timeout):
                while isinstance(asked := server_name(hello), Incomplete):
                    data = await reader.read(min(READ_SIZE, asked.needed - len(hello)))
                    if not data:
                        raise Refused(403, "egress_denied", "not tls",
                                      f"the tunnel to {name} closed before a TLS ClientHello")
                    hello += data
        except MalformedClientHello as exc:
            raise Refused(403, "egress_denied", "not tls",
                          f"tunnels carry TLS only, and the tunnel to {name} did not start with a ClientHello "
                          f"({exc})") from None
        except TimeoutError:
            raise Refused(408, "egress_denied", "not tls",
                          f"no TLS ClientHello within {self._head_timeout:g} s in the tunnel to {name}") from None
        if asked is not None and asked.removesuffix(".") != name:
            raise Refused(403, "egress_denied", "sni mismatch",
                          f"the TLS ClientHello names {asked}, not the CONNECT host {name}")
        return bytes(hello)

    async def _relay_body(self, conn: _Connection, request: ProxyRequest, reader: asyncio.StreamReader,
                          upstream: asyncio.StreamWriter) -> None:
        """Send the request's body upstream as it arrives, in the framing announced, refusing a credential handle."""
        scan = MarkerScan()
        while True:
            for piece in request.take_body():
                if scan.found(piece):
                    raise credential_refused("request body")
                await self._send(conn, upstream, b"%x\r\n%b\r\n" % (len(piece), piece) if request.chunked else piece,
                                 outbound=True)
            if request.complete:
                if request.chunked:
                    await self._send(conn, upstream, b"0\r\n\r\n", outbound=True)
                return  # bytes past the request (a second one) are not read: one request per connection
            data = await reader.read(READ_SIZE)
            if not data:
                raise Cut("client closed mid-body")
            conn.last_active = asyncio.get_running_loop().time()
            request.feed(data)

    async def _pipe(self, conn: _Connection, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    outbound: bool) -> None:
        """Copy ``source`` to ``sink`` until end of file, then pass the end on (a tunnel's half-close)."""
        while data := await source.read(READ_SIZE):
            await self._send(conn, sink, data, outbound)
        if sink.can_write_eof() and not sink.is_closing():  # closing: its peer is gone (uvloop would raise)
            with contextlib.suppress(OSError):
                sink.write_eof()

    async def _send(self, conn: _Connection, sink: asyncio.StreamWriter, data: bytes, outbound: bool) -> None:
        """Write ``data`` on, counted against the agent's bytes of the day; past the cap, the connection is cut."""
        loop = asyncio.get_running_loop()
        conn.last_active = loop.time()
        cap = conn.agent.max_bytes_per_day if conn.agent else None
        use = conn.use
        assert use is not None  # only connections of known agents get this far
        day = int(self._clock() // DAY)
        over = cap is not None and use.spent(day) + len(data) > cap
        if cap is not None and over:
            data = data[:max(0, cap - use.spent(day))]  # the cap is reached exactly, never passed
        if data:
            if not outbound:
                conn.answered = True
            sink.write(data)
            use.spend(day, len(data), outbound)
            if outbound:
                conn.bytes_out += len(data)
            else:
                conn.bytes_in += len(data)
        if over:
            raise Cut("byte cap")
        await sink.drain()
        conn.last_active = loop.time()

    async def _relay(self, conn: _Connection, needed: list[Coroutine[Any, Any, None]],
                     others: Iterable[Coroutine[Any, Any, None]] = ()) -> None:
        """Run the copies until every ``needed`` one ends, one fails, or nothing moves for ``idle_timeout``."""
        tasks = [asyncio.ensure_future(job) for job in needed]
        everything = [*tasks, *(asyncio.ensure_future(job) for job in others),
                      asyncio.ensure_future(self._watch_idle(conn))]
        try:
            waiting = set(everything)
            while not all(task.done() for task in tasks):
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if not task.cancelled() and (exc := task.exception()) is not None:
                        raise exc
        finally:
            for task in everything:
                task.cancel()
            await asyncio.gather(*everything, return_exceptions=True)

    async def _watch_idle(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        while (left := conn.last_active + self._idle_timeout - loop.time()) > 0:
            await asyncio.sleep(left)
        raise Cut("idle")

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, refusal: Refused,
                      connect: bool) -> None:
        """Write the refusal (JSON for plain HTTP, text for CONNECT), then drain what the client still sends for a
        moment, so that closing with unread bytes does not reset the connection before the client reads it."""
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            writer.write(refusal_bytes(refusal, connect))
            async with asyncio.timeout(LINGER):
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                drained = 0
                while drained < LINGER_BYTES and (data := await reader.read(READ_SIZE)):
                    drained += len(data)


def _lookup_ended(lookup: asyncio.Future[list[str]], slots: asyncio.Semaphore) -> None:
    slots.release()
    if not lookup.cancelled():
        lookup.exception()  # retrieved: a lookup nobody waits for any more fails quietly


def refusal_bytes(refusal: Refused, connect: bool) -> bytes:
    """A refusal as an HTTP answer: zone 2's error shape in JSON, or the message as text for a CONNECT client."""
    if connect:
        body, kind = (refusal.message + "\n").encode(), "text/plain; charset=utf-8"
    else:
        error = {"type": refusal.code, "code": refusal.code, "message": refusal.message}
        body, kind = json.dumps({"error": error}).encode(), "application/json"
    head = [f"HTTP/1.1 {refusal.status} {HTTPStatus(refusal.status).phrase}", f"Content-Type: {kind}",
            f"Content-Length: {len(body)}", "Connection: close", *(f"{k}: {v}" for k, v in refusal.headers)]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body
