"""Zone 2's forward proxy (fleetd.zone2.forward_proxy, issue 18) over real sockets on 127.0.0.1.

The test's resolver maps test names to 127.0.0.1 (where the test's upstreams listen) or to 127.0.0.2 (a "forbidden"
listener that must never see a connection); the test's refusal check refuses 127.0.0.2 in place of the real one,
which refuses all of loopback. Every test also checks that each connection yielded exactly one record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web
from cryptography import x509

from fleetd.egress import parse_egress
from fleetd.zone2.egress_log import EgressLog
from fleetd.zone2.forward_proxy import AgentEgress, EgressProxy, EgressRecord
from tests.unit.loopback import self_signed, serve

FORBIDDEN = "127.0.0.2"
ALLOWED = "allowed.example.test"


@dataclass
class Rig:
    proxy: EgressProxy
    port: int  # the proxy's
    web: int  # the plain HTTP upstream's
    tls: int  # the TLS echo server's
    forbidden: int  # the listener on 127.0.0.2's
    records: list[EgressRecord]
    seen: list[dict[str, Any]]  # requests the plain upstream answered
    forbidden_hits: list[int]
    tls_sessions: list[int]
    resolved: list[str]
    client_tls: ssl.SSLContext
    clock: list[float]
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def records_settled(self, count: int) -> list[EgressRecord]:
        """The records, once ``count`` are in and no more follow: each connection yields exactly one."""
        for _ in range(200):
            if len(self.records) >= count:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert len(self.records) == count, self.records
        return self.records


def tls_contexts(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context for allowed.example.test and a client context that trusts only it."""
    return self_signed(tmp, ALLOWED, x509.DNSName(ALLOWED))


def upstream_app(seen: list[dict[str, Any]], release: asyncio.Event) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append({"line": f"{request.method} {request.path_qs} HTTP/{request.version.major}."
                             f"{request.version.minor}", "headers": list(request.headers.items()), "body": body})
        return web.Response(body=b"echo:" + body, headers={"X-Upstream": "yes"})

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.query["n"])
        response = web.StreamResponse(headers={"Content-Length": str(size)})
        await response.prepare(request)
        for _ in range(size // 8192):
            await response.write(b"d" * 8192)
        return response

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"x")
        await release.wait()
        return response

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/big", big)
    app.router.add_get("/stall", stall)
    return app


@asynccontextmanager
async def rig(tmp: Path, *, agent: bool = True, cap: int | None = None,
              resolve: Callable[[str, int], Awaitable[list[str]]] | None = None,
              **options: Any) -> AsyncIterator[Rig]:
    """The proxy with its upstreams: plain HTTP, TLS echo, and the forbidden listener on 127.0.0.2."""
    seen: list[dict[str, Any]] = []
    release = asyncio.Event()
    forbidden_hits: list[int] = []
    tls_sessions: list[int] = []
    server_tls, client_tls = tls_contexts(tmp)

    async def tls_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls_sessions.append(1)
        while line := await reader.readline():
            writer.write(b"tls:" + line)
        writer.close()

    async def forbidden(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        forbidden_hits.append(1)
        writer.close()

    tls_server = await asyncio.start_server(tls_echo, "127.0.0.1", 0, ssl=server_tls)
    forbidden_server = await asyncio.start_server(forbidden, FORBIDDEN, 0)
    async with serve(upstream_app(seen, release)) as url:
        web_port = int(url.rsplit(":", 1)[1])
        tls_port = tls_server.sockets[0].getsockname()[1]
        forbidden_port = forbidden_server.sockets[0].getsockname()[1]
        names = {ALLOWED: ["127.0.0.1"], "other.example.test": ["127.0.0.1"], "inside.example.test": [FORBIDDEN],
                 "mixed.example.test": ["127.0.0.1", FORBIDDEN]}
        resolved: list[str] = []

        async def test_resolve(host: str, port: int) -> list[str]:
            resolved.append(host)
            if resolve is not None:
                return await resolve(host, port)
            return names[host]

        policy = parse_egress(",".join(f"{name}:{port}" for port in (web_port, tls_port, forbidden_port)
                                       for name in (ALLOWED, "inside.example.test", "mixed.example.test")))
        records: list[EgressRecord] = []
        clock = [1_700_000_000.0]
        proxy = EgressProxy(lambda ip: AgentEgress("a1", policy, cap) if agent and ip == "127.0.0.1" else None,
                            resolve=test_resolve, on_record=records.append, clock=lambda: clock[0],
                            refuse=lambda ip: f"{ip} is forbidden by the test" if ip == FORBIDDEN else None,
                            **options)
        server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        try:
            yield Rig(proxy, server.sockets[0].getsockname()[1], web_port, tls_port, forbidden_port, records, seen,
                      forbidden_hits, tls_sessions, resolved, client_tls, clock, release)
        finally:
            release.set()
            server.close()
            await proxy.close()
            tls_server.close()
            forbidden_server.close()


async def exchange(port: int, *pieces: bytes) -> bytes:
    """Send ``pieces`` (apart, so that the proxy reads them apart) and read the answer to the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def parsed(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def error_of(answer: bytes, status: int) -> dict[str, str]:
    """The JSON error of a refusal, checked for its status and shape."""
    got, headers, body = parsed(answer)
    assert got == status, answer
    assert headers["content-type"] == "application/json"
    error: dict[str, str] = json.loads(body)["error"]
    assert error["type"] == error["code"]
    assert b"Traceback" not in body
    return error


def get(url: str, *headers: str) -> bytes:
    host = url.split("/")[2]
    return "\r\n".join([f"GET {url} HTTP/1.1", f"Host: {host}", *headers, "", ""]).encode()


async def open_tunnel(rig: Rig, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    return reader, writer, await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)


LOOP = ["asyncio"]


@pytest.fixture(autouse=True)
def asyncio_loop() -> None:
    LOOP[0] = "asyncio"


def run(check: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await check()

    if LOOP[0] == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())


# --- plain HTTP --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_an_allowed_get_goes_in_origin_form_without_hop_by_hop_headers(tmp_path: Path, loop: str) -> None:
    LOOP[0] = loop

    async def check() -> None:
        async with rig(tmp_path) as r:
            url = f"http://{ALLOWED}:{r.web}/echo?q=1"
            answer = await exchange(r.port, get(url, "Proxy-Connection: keep-alive", "Proxy-Authorization: Basic x",
                                                "Connection: keep-alive, X-Private", "X-Private: 1", "Keep-Alive: 5",
                                                "TE: trailers", "Trailer: X-T", "Upgrade: h2c", "X-Kept: yes"))
            status, headers, body = parsed(answer)
            assert (status, body, headers["x-upstream"]) == (200, b"echo:", "yes")
            [request] = r.seen
            assert request["line"] == "GET /echo?q=1 HTTP/1.1"
            sent = {key.lower(): value for key, value in request["headers"]}
            assert sent["host"] == f"{ALLOWED}:{r.web}"
            assert sent["connection"] == "close"
            assert sent["x-kept"] == "yes"
            for dropped in ("proxy-connection", "proxy-authorization", "x-private", "keep-alive", "te", "trailer",
                            "upgrade"):
                assert dropped not in sent
            [record] = await r.records_settled(1)
            assert (record.agent_id, record.host, record.port, record.method) == ("a1", ALLOWED, r.web, "GET")
            assert (record.decision, record.reason, record.address) == ("allowed", None, "127.0.0.1")
            assert record.bytes_in == len(answer)
            assert 0 < record.bytes_out < len(get(url))  # the head sent on is shorter: hop-by-hop headers went
            assert record.started_at == r.clock[0]
            stats = r.proxy.stats()["a1"]
            assert (stats.allowed, stats.denied, stats.bytes_in, stats.open_connections) == (1, 0, len(answer), 0)

    run(check)


def test_bodies_go_both_ways_also_chunked(tmp_path: Path) -> None:
    async def check() -> None:
        async with rig(tmp_path) as r:
            url = f"http://{ALLOWED}:{r.web}/echo"
            head = f"POST {url} HTTP/1.1\r\nHost: {ALLOWED}:{r.web}\r\n"
            answer = await exchange(r.port, (head + "Content-Length: 5\r\n\r\nhello").encode())
            assert parsed(answer)[2] == b"echo:hello"
            answer = await exchange(r.port, (head + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n").encode(),
                                    b"4\r\ndefg\r\n", b"0\r\n\r\n")
            assert parsed(answer)[2] == b"echo:abcdefg"
            assert r.seen[1]["body"] == b"abcdefg"
            assert ("Transfer-Encoding", "chunked") in r.seen[1]["headers"]
            records = await r.records_settled(2)
            assert [x.decision for x in records] == ["allowed", "allowed"]

    run(check)


def test_a_host_outside_the_policy_is_denied_by_name(tmp_path: Path) -> None:
    async def check() -> None:
        async with rig(tmp_path) as r:
            error = error_of(await exchange(r.port, get(f"http://other.example.test:{r.web}/echo")), 403)
            assert error["type"] == "egress_denied"
            assert f"other.example.test:{r.web}" in error["message"]
            for literal in ("127.0.0.1", "[::1]"):
                error = error_of(await exchange(r.port, get(f"http://{literal}:{r.web}/echo")), 403)
                assert "IP addresses are not allowed" in error["message"]
            assert r.seen == [] and r.resolved == []  # refused before any lookup
            records = await r.records_settled(3)
            assert [x.decision for x in records] == ["denied"] * 3
            assert records[0].reason is not None and records[0].reason.startswith("not allowed")
            assert r.proxy.stats()["a1"].denied == 3

    run(check)


def test_an_unknown_source_address_is_denied(tmp_path: Path) -> None:
    async def check() -> None:
        async with rig(tmp_path, agent=False) as r:
            error = error_of(await exchange(r.port, get(f"http://{ALLOWED}:{r.web}/echo")), 403)
            assert error["type"] == "egress_denied" and ALLOWED in error["message"]
            [record] = await r.records_settled(1)
            assert (record.agent_id, record.decision) == (None, "denied")
            assert r.seen == [] and r.proxy.stats() == {}  # no state for an address that is no agent

    run(check)


def test_a_credential_handle_anywhere_is_refused(tmp_path: Path) -> None:
    async def check() -> None:
        async with rig(tmp_path) as r:
            url = f"http://{ALLOWED}:{r.web}/echo"
            post = f"POST {url} HTTP/1.1\r\nHost: {ALLOWED}:{r.web}\r\n"
            attempts = [
                [get(url, "Authorization: Bearer $CRED{openai}")],
                [get(url + "?key=%24CRED%7Bopenai%7D")],
                [(post + "Content-Length: 22\r\n\r\n{\"k\": \"$CR").encode(), b"ED{openai}\"}"],
                # split across two chunks: each alone holds no handle
                [(post + "Transfer-Encoding: chunked\r\n\r\n4\r\nx$CR\r\n").encode(), b"9\r\nED{openai\r\n0\r\n\r\n"],
            ]
            for pieces in attempts:
                error = error_of(await exchange(r.port, *pieces), 403)
                assert error["type"] == "credential_handle_refused"
            assert r.seen == []  # no request reached the upstream whole
            records = await r.records_settled(len(attempts))
            assert all(x.decision == "denied" and (x.reason or "").startswith("credential handle") for x in records)

    run(check)


def test_requests_that_are_not_proxy_requests_get_400_without_a_traceback(tmp_path: Path) -> None:
    async def check() -> None:
        async with rig(tmp_path) as r:
            for request, status in [
                (b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", 400),
                (get(f"https://{ALLOWED}/echo"), 400),
                (get(f"ftp://{ALLOWED}/echo"), 400),
                (f"GET http://{ALLOWED}:{r.web}/echo HTTP/1.1\r\nHost: other.example.test\r\n\r\n".encode(), 400),
                (b"\x16\x03\x01\x00\x05hello\r\n\r\n", 400),
                (b"GET http://a b c\r\n\r\n", 400),
                (get(f"http://{ALLOWED}:{r.web}/echo", "X-Big: " + "a" * (70 << 10)), 431),
            ]:
                error_of(await exchange(r.port, request), status)
            reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
            writer.write(b"CONNECT allowed.example.test HTTP/1.1\r\n\r\n")  # no port
            answer = await reader.read()
            writer.close()
            assert answer.startswith(b"HTTP/1.1 400 ") and b"names no port" in answer
            records = await r.records_settled(8)
            assert all(x.decision == "denied" and x.reason != "internal error" for x in records)
            assert r.seen == [] and r.resolved == []

    run(check)


# --- addresses ---------------------------------------------------------------------------------------------------


def test_a_name_resolving_to_a_refused_address_is_denied_and_never_connected(tmp_path: Path) -> None:
    async def check() -> None:
        async with rig(tmp_path) as r:
            for name, port in (("inside.example.test", r.forbidden), ("mixed.example.test", r.web)):
                error = error_of(await exchange(r.port, get(f"http://{name}:{port}/echo")), 403)
                assert error["type"] == "egress_denied"
                assert name in error["message"] and FORBIDDEN in error["message"]
            _, writer, head = await open_tunnel(r, f"inside.example.test:{r.forbidden}")
            writer.close()
            assert head.startswith(b"HTTP/1.1 403 ")
            records = await r.records_settled(3)
            assert [(x.decision, x.address) for x in records] == [("denied", FORBIDDEN)] * 3
            assert r.forbidden_hits == [] and r.seen == []  # any one refused address denies the name

    run(check)


def test_the_name_is_resolved_once_and_the_checked_address_connected(tmp_path: Path) -> None:
    calls: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:  # a checked answer first, loopback's neighbour after
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else [FORBIDDEN]

    async def check() -> None:
        async with rig(tmp_path, resolve=rebinding) as r:
            answer = await exchange(r.port, get(f"http://{ALLOWED}:{r.web}/echo"))
            assert parsed(answer)[0] == 200
            assert calls == [ALLOWED]
            assert r.forbidden_hits == []
            [record] = await r.records_settled(1)
            assert record.address == "127.0.0.1"

    run(check)


def test_unreachable_and_unresolvable_upstreams_get_502_and_504(tmp_path: Path) -> None:
    async def slow(host: str, port: int) -> list[str]:
        if host == ALLOWED:
            await asyncio.sleep(5)
        raise OSError("no such name")

    async def check() -> None:
        async with rig(tmp_path, resolve=slow, connect_timeout=0.2) as r:
            error = error_of(await exchange(r.port, get(f"http://{ALLOWED}:{r.web}/echo")), 504)
            assert error["type"] == "upstream_timeout"
            error = error_of(await exchange(r.port, get(f"http://mixed.example.test:{r.web}/echo")), 502)
            assert "does not resolve" in error["message"]
        async with rig(tmp_path) as r:
            r.seen.clear()
            closed = r.forbidden  # a port nobody listens on at 127.0.0.1
            _, writer, head = await open_tunnel(r, f"{ALLOWED}:{closed}")
            writer.close()
            assert head.startswith(b"HTTP/1.1 502 ")
            [record] = await r.records_settled(1)
            assert (record.decision, record.address) == ("denied", "127.0.0.1")

    run(check)


def test_an_agent_holds_few_lookups_also_those_it_gave_up_on(tmp_path: Path) -> None:
    """Zone 2's resolver has a few threads for every agent (libuv's 4 under uvloop), and a lookup the proxy stops
    waiting for keeps its thread until the resolver gives up: an agent asking for names that never answer must not
    hold them all, so its lookups count until they end, not until its connection gives up on them."""
    hung = asyncio.Event()
    started: list[str] = []

    async def hanging(host: str, port: int) -> list[str]:
        started.append(host)
        await hung.wait()  # a thread stuck in getaddrinfo
        return ["127.0.0.1"]

    async def check() -> None:
        async with rig(tmp_path, resolve=hanging, connect_timeout=0.2, max_lookups=2) as r:
            for _ in range(5):
                error = error_of(await exchange(r.port, get(f"http://{ALLOWED}:{r.web}/echo")), 504)
                assert error["type"] == "upstream_timeout"
            assert len(started) == 2  # the two given up on still run: the others waited for them, in vain
            hung.set()
            await asyncio.sleep(0.05)
            assert parsed(await exchange(r.port, get(f"http://{ALLOWED}:{r.web}/echo")))[0] == 200
            assert len(started) == 3
            await r.records_settled(6)

    run(check)


# --- CONNECT -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_tunnel_carries_tls_to_the_host_its_sni_names(tmp_path: Path, loop: str) -> None:
    LOOP[0] = loop

    async def check() -> None:
        async with rig(tmp_path) as r:
            reader, writer, head = await open_tunnel(r, f"{ALLOWED}:{r.tls}")
            assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
            await writer.start_tls(r.client_tls, server_hostname=ALLOWED)
            writer.write(b"ping\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"tls:ping\n"
            writer.close()
            [record] = await r.records_settled(1)
            assert (record.method, record.host, record.port, record.decision) == ("CONNECT", ALLOWED, r.tls,
                                                                                  "allowed")
            assert record.bytes_out > 5 and record.bytes_in > 5 and record.reason is None

    run(check)


def test_a_tunnel_whose_sni_names_another_host_is_closed(tmp_path: Path) -> None:
    async def check() -> None:
        async with rig(tmp_path) as r:
            _, writer, head = await open_tunnel(r, f"{ALLOWED}:{r.tls}")
            assert head.startswith(b"HTTP/1.1 200 ")
            trusting = ssl.create_default_context()  # accepts any certificate: only the proxy can stop this
            trusting.check_hostname, trusting.verify_mode = False, ssl.CERT_NONE
            with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
                await writer.start_tls(trusting, server_hostname="other.example.test")
            writer.close()
            [record] = await r.records_settled(1)
            assert record.decision == "denied" and (record.reason or "").startswith("sni mismatch")
            assert record.bytes_out == 0 and r.tls_sessions == []

    run(check)


def test_a_tunnel_that_does_not_start_with_tls_is_closed(tmp_path: Path) -> None:
    async def check() -> None:
        async with rig(tmp_path) as r:
            reader, writer, head = await open_tunnel(r, f"{ALLOWED}:{r.web}")  # the plain HTTP upstream
            assert head.startswith(b"HTTP/1.1 200 ")
            writer.write(f"GET /echo HTTP/1.1\r\nHost: {ALLOWED}\r\n\r\n".encode())
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing relayed
            writer.close()
            [record] = await r.records_settled(1)
            assert record.decision == "denied" and (record.reason or "").startswith("not tls")
            assert r.seen == []

    run(check)


def test_connect_to_a_host_outside_the_policy_gets_a_text_403(tmp_path: Path) -> None:
    async def check() -> None:
        async with rig(tmp_path) as r:
            for target in (f"other.example.test:{r.tls}", f"127.0.0.1:{r.tls}"):
                reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
                writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
                status, headers, body = parsed(await reader.read())
                writer.close()
                assert status == 403 and headers["content-type"].startswith("text/plain")
                assert target.split(":")[0].encode() in body
            await r.records_settled(2)
            assert r.tls_sessions == []

    run(check)


# --- limits ------------------------------------------------------------------------------------------------------


def test_connections_beyond_the_agents_cap_are_refused(tmp_path: Path) -> None:
    async def check() -> None:
        async with rig(tmp_path, max_tunnels=2) as r:
            first = await open_tunnel(r, f"{ALLOWED}:{r.tls}")
            second = await open_tunnel(r, f"{ALLOWED}:{r.tls}")
            assert r.proxy.stats()["a1"].open_connections == 2
            reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
            writer.write(f"CONNECT {ALLOWED}:{r.tls} HTTP/1.1\r\n\r\n".encode())
            status, _, body = parsed(await reader.read())
            writer.close()
            assert status == 429 and b"2 egress connections open" in body
            [refused] = await r.records_settled(1)
            assert refused.reason is not None and refused.reason.startswith("tunnel cap")
            first[1].close()
            await r.records_settled(2)
            reader, writer, head = await open_tunnel(r, f"{ALLOWED}:{r.tls}")  # a slot is free again
            assert head.startswith(b"HTTP/1.1 200 ")
            await writer.start_tls(r.client_tls, server_hostname=ALLOWED)
            writer.close()
            second[1].close()
            await r.records_settled(4)

    run(check)


def test_the_daily_byte_cap_cuts_a_download_and_refuses_new_connections(tmp_path: Path) -> None:
    cap = 50_000

    async def check() -> None:
        async with rig(tmp_path, cap=cap) as r:
            answer = await exchange(r.port, get(f"http://{ALLOWED}:{r.web}/big?n=200000"))
            [cut] = await r.records_settled(1)
            assert (cut.decision, cut.reason) == ("allowed", "byte cap")
            assert cut.bytes_in + cut.bytes_out == cap  # reached exactly, never passed
            assert len(answer) == cut.bytes_in < 200_000
            error = error_of(await exchange(r.port, get(f"http://{ALLOWED}:{r.web}/echo")), 429)
            assert error["type"] == "egress_limit"
            assert r.proxy.stats()["a1"].bytes_today == cap
            r.clock[0] += 86400  # the next UTC day
            assert r.proxy.stats()["a1"].bytes_today == 0
            assert parsed(await exchange(r.port, get(f"http://{ALLOWED}:{r.web}/echo")))[0] == 200
            records = await r.records_settled(3)
            assert records[1].reason is not None and records[1].reason.startswith("byte cap")
            assert records[2].decision == "allowed"

    run(check)


def test_a_restarted_proxy_keeps_the_days_bytes_from_the_log(tmp_path: Path) -> None:
    """Zone 2 restarting gives no agent a fresh byte cap: the day's bytes come back from the egress log."""
    cap = 50_000
    log = EgressLog(tmp_path / "egress.db")

    async def check() -> None:
        async with rig(tmp_path, cap=cap, counted=log.day_bytes) as first:
            first.proxy._on_record = lambda record: (first.records.append(record), log.write(record))  # type: ignore[method-assign]
            await exchange(first.port, get(f"http://{ALLOWED}:{first.web}/big?n=32768"))
            [record] = await first.records_settled(1)
            moved = record.bytes_in + record.bytes_out
            assert 30_000 < moved < cap
            day = int(first.clock[0] // 86400)
        assert log.day_bytes("a1", day) == moved
        async with rig(tmp_path, cap=cap, counted=log.day_bytes) as second:  # zone 2 again, the same day
            answer = await exchange(second.port, get(f"http://{ALLOWED}:{second.web}/big?n=200000"))
            [cut] = await second.records_settled(1)
            assert cut.reason == "byte cap" and cut.bytes_in + cut.bytes_out == cap - moved
            assert len(answer) == cut.bytes_in
            assert second.proxy.stats()["a1"].bytes_today == cap
            assert log.day_bytes("a2", day) == 0  # an agent it never saw

    run(check)
    log.close()


def test_a_connection_idle_both_ways_is_closed(tmp_path: Path) -> None:
    async def check() -> None:
        async with rig(tmp_path, idle_timeout=0.3) as r:
            started = asyncio.get_running_loop().time()
            answer = await exchange(r.port, get(f"http://{ALLOWED}:{r.web}/stall"))
            assert 0.25 < asyncio.get_running_loop().time() - started < 3
            assert parsed(answer)[0] == 200
            [record] = await r.records_settled(1)
            assert (record.decision, record.reason) == ("allowed", "idle")

    run(check)


# --- state -------------------------------------------------------------------------------------------------------


def test_forget_closes_the_agents_connections_and_drops_its_state(tmp_path: Path) -> None:
    async def check() -> None:
        async with rig(tmp_path) as r:
            reader, writer, _ = await open_tunnel(r, f"{ALLOWED}:{r.tls}")
            assert "a1" in r.proxy.stats()
            r.proxy.forget("a1")
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            [record] = await r.records_settled(1)
            assert record.reason == "closed by zone 2"
            assert r.proxy.stats() == {}

    run(check)


def test_close_ends_every_connection_with_its_record(tmp_path: Path) -> None:
    async def check() -> None:
        async with rig(tmp_path) as r:
            tunnels = [await open_tunnel(r, f"{ALLOWED}:{r.tls}") for _ in range(2)]
            idle = await asyncio.open_connection("127.0.0.1", r.port)  # no request yet
            await asyncio.sleep(0.05)
            await r.proxy.close()
            records = await r.records_settled(3)
            assert sorted(x.reason or "" for x in records) == ["closed by zone 2"] * 3
            assert r.proxy.stats()["a1"].open_connections == 0
            for _, writer, _ in tunnels:
                writer.close()
            idle[1].close()

    run(check)


def client_hello(server_hostname: str) -> bytes:
    """A TLS ClientHello naming ``server_hostname``, as a client's first bytes in a tunnel."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_tunnel_whose_client_resets_as_the_upstream_closes_ends_as_lost(
        tmp_path: Path, loop: str, caplog: pytest.LogCaptureFixture) -> None:
    """Both sides gone at once (a client aborting a failed handshake): the half-close to a client transport that
    is already closed ends the connection as lost, not as an internal error with a traceback (uvloop's write_eof
    raises RuntimeError on a closed transport, where asyncio's returns)."""
    LOOP[0] = loop

    async def check() -> None:
        running = asyncio.get_running_loop()
        with socket.create_server(("127.0.0.1", 0)) as upstream:
            upstream.setblocking(False)
            port = upstream.getsockname()[1]
            records: list[EgressRecord] = []
            proxy = EgressProxy(lambda ip: AgentEgress("a1", parse_egress(f"{ALLOWED}:{port}"), None),
                                resolve=lambda host, port: asyncio.sleep(0, ["127.0.0.1"]),
                                on_record=records.append, refuse=lambda ip: None)
            server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
            client = socket.create_connection(server.sockets[0].getsockname())
            client.setblocking(False)
            try:
                await running.sock_sendall(client, f"CONNECT {ALLOWED}:{port} HTTP/1.1\r\n\r\n".encode())
                accepted, _ = await asyncio.wait_for(running.sock_accept(upstream), 5)
                assert (await asyncio.wait_for(running.sock_recv(client, 1024), 5)).startswith(b"HTTP/1.1 200 ")
                hello = client_hello(ALLOWED)
                await running.sock_sendall(client, hello)
                got = b""
                while len(got) < len(hello):
                    got += await asyncio.wait_for(running.sock_recv(accepted, 65536), 5)
                # Without letting the loop run: the client resets, the upstream closes; zone 2 sees both at once.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                accepted.close()
                time.sleep(0.1)
                for _ in range(200):
                    if records:
                        break
                    await asyncio.sleep(0.01)
                [record] = records
                assert record.decision == "allowed" and record.reason == "connection lost: ConnectionResetError"
            finally:
                client.close()
                server.close()
                await proxy.close()

    with caplog.at_level(logging.ERROR, logger="fleetd.zone2"):
        run(check)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
