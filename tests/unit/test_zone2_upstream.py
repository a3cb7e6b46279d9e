"""Zone 2's upstream client against raw servers the tests start on loopback: framing, reuse, limits, TLS."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509

from fleetd.zone2.upstream import BadRequestHead, Response, UpstreamError, Upstreams, replayable
from tests.unit.loopback import self_signed

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(serve: Serve, tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[str, list[int]]]:
    """A server speaking whatever ``serve`` writes; yields its address and a list of accepted connection ids."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(len(accepted))
        try:
            await serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", accepted
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request: its head and its body (Content-Length framed)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


async def fetch(pool: Upstreams, method: str, url: str, headers: dict[str, str] | None = None,
                body: bytes = b"") -> tuple[Response, bytes]:
    """One request: its answer, read to the end and released, and the body."""
    response = await pool.request(method, url, headers or {}, body)
    try:
        return response, await response.read()
    finally:
        response.release()


def answer(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


@pytest.fixture(params=["asyncio", "uvloop"], autouse=True)
def loop_kind(request: pytest.FixtureRequest) -> str:
    """Each test on asyncio's loop and on uvloop, which zone 2 runs on."""
    LOOP[0] = request.param
    return str(request.param)


LOOP = ["asyncio"]


def run(check: Callable[[Upstreams], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        pool = Upstreams(**options)
        try:
            await check(pool)
        finally:
            await pool.close()

    if LOOP[0] == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())


def test_a_kept_alive_connection_carries_the_next_requests() -> None:
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_request(reader)
            heads.append(head)
            writer.write(answer(b"echo:" + body))

    async def check(pool: Upstreams) -> None:
        async with raw_server(serve) as (url, accepted):
            for i in range(3):
                response, body = await fetch(pool, "POST", url + f"/v1/x?i={i}", {"X-Key": "k"}, b"hi")
                assert response.status == 200 and response.reason == "OK"
                assert body == b"echo:hi"
            assert accepted == [0] and pool.idle_count() == 1
        assert heads[2].startswith(b"POST /v1/x?i=2 HTTP/1.1\r\n")
        assert f"Host: {url.removeprefix('http://')}".encode() in heads[0]
        assert b"X-Key: k\r\n" in heads[0] and b"Content-Length: 2\r\n" in heads[0]

    run(check)


def test_an_answer_not_read_to_its_end_closes_its_connection() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(b"x" * 1000))

    async def check(pool: Upstreams) -> None:
        async with raw_server(serve) as (url, accepted):
            (await pool.request("GET", url, {}, b"")).release()  # released unread
            assert len((await fetch(pool, "GET", url))[1]) == 1000
            assert accepted == [0, 1] and pool.idle_count() == 1

    run(check)


def test_an_upstream_closing_idle_connections_costs_no_request() -> None:
    """It answers with keep-alive but closes the connection right after: the next POST takes a new one."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"once"))
        await writer.drain()
        await asyncio.sleep(0.05)  # then closed, as an upstream's idle timeout does

    async def check(pool: Upstreams) -> None:
        async with raw_server(serve) as (url, accepted):
            for _ in range(2):
                assert (await fetch(pool, "POST", url, body=b"{}"))[1] == b"once"
                await asyncio.sleep(0.2)
            assert accepted == [0, 1]

    run(check)


def test_connection_close_chunked_and_eof_delimited_bodies() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        if b"/chunked" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        else:  # no length, no chunking: the body ends with the connection
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
            await writer.drain()

    async def check(pool: Upstreams) -> None:
        async with raw_server(serve) as (url, _):
            assert (await fetch(pool, "GET", url + "/chunked"))[1] == b"hello world"
            assert (await fetch(pool, "GET", url + "/eof"))[1] == b"until the end"
            assert pool.idle_count() == 0  # Connection: close is not kept

    run(check)


def test_trailers_and_bytes_past_the_end_do_not_touch_the_answer() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            if b"/trailer" in head:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
                             b"2\r\nok\r\n0\r\nX-Trailer: t\r\n\r\n")
            else:  # one answer, then the start of another nobody asked for, in the same write
                writer.write(answer(b"ok", "X-A: 1\r\n") + b"HTTP/1.1 200 OK\r\nX-B: 2\r\nContent-Length: 2\r\n")

    async def check(pool: Upstreams) -> None:
        async with raw_server(serve) as (url, accepted):
            for path in ("/trailer", "/extra", "/after"):
                response, body = await fetch(pool, "GET", url + path)
                assert body == b"ok"
                assert dict(response.headers) in ({"Transfer-Encoding": "chunked", "X-A": "1"},
                                                  {"Content-Length": "2", "X-A": "1"}), path
            assert accepted == [0, 1]  # the connection that carried extra bytes was not reused

    run(check)


def test_head_interim_answers_and_no_content() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")  # the length GET would have
            elif b"/hints" in head:
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + answer(b"final", "X-Final: 1\r\n"))
            else:
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    async def check(pool: Upstreams) -> None:
        async with raw_server(serve) as (url, _):
            response, body = await fetch(pool, "HEAD", url)
            assert response.headers["Content-Length"] == "1234" and body == b""
            response, body = await fetch(pool, "GET", url + "/hints")
            assert (response.status, response.headers.get("X-Final"), "Link" in response.headers) == (200, "1", False)
            assert body == b"final"
            response, body = await fetch(pool, "DELETE", url)
            assert response.status == 204 and body == b""

    run(check)


def test_compressed_bodies_are_decoded_and_a_corrupt_one_breaks() -> None:
    text = b"data: the key sk-123 echoed\n\n" * 50

    def deflate(raw: bool) -> bytes:
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
        return packer.compress(text) + packer.flush()

    gz = zlib.compressobj(wbits=31)
    bodies = {"/gzip": ("gzip", gz.compress(text) + gz.flush()), "/zlib": ("deflate", deflate(raw=False)),
              "/raw": ("deflate", deflate(raw=True)), "/corrupt": ("gzip", b"\x1f\x8b\x08\x00garbage" * 10)}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            encoding, body = bodies[head.split(b" ")[1].decode()]
            writer.write(answer(body, f"Content-Encoding: {encoding}\r\n"))

    async def check(pool: Upstreams) -> None:
        async with raw_server(serve) as (url, _):
            for path in ("/gzip", "/zlib", "/raw"):
                assert (await fetch(pool, "GET", url + path))[1] == text, path
            response = await pool.request("GET", url + "/corrupt", {}, b"")
            with pytest.raises(UpstreamError, match="corrupt"):
                await response.read()
            response.release()

    run(check)


def test_silence_times_out_before_and_after_the_headers() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        if b"/midway" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await asyncio.sleep(5)

    async def check(pool: Upstreams) -> None:
        async with raw_server(serve) as (url, _):
            with pytest.raises(UpstreamError) as caught:
                await pool.request("POST", url + "/never", {}, b"{}")
            assert caught.value.kind == "timeout"
            response = await pool.request("POST", url + "/midway", {}, b"{}")
            parts = []
            with pytest.raises(UpstreamError) as caught:
                async for part in response.chunks():
                    parts.append(part)
            assert parts == [b"hello"] and caught.value.kind == "timeout"
            response.release()

    run(check, read_timeout=0.3)


def test_a_stalled_tls_handshake_is_a_connect_timeout() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)  # accepts the TCP connection, never speaks TLS

    async def check(pool: Upstreams) -> None:
        async with raw_server(serve) as (url, _):
            with pytest.raises(UpstreamError) as caught:
                await pool.request("GET", url.replace("http:", "https:"), {}, b"")
            assert caught.value.kind == "timeout"

    run(check, connect_timeout=0.3)


def test_nothing_listening_is_a_connect_error() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return None

    async def check(pool: Upstreams) -> None:
        async with raw_server(serve) as (url, _):
            pass  # closed: its port is free now
        with pytest.raises(UpstreamError) as caught:
            await pool.request("GET", url, {}, b"")
        assert caught.value.kind == "connect"

    run(check)


def test_a_reader_slower_than_the_upstream_holds_reading_back() -> None:
    """20 MB streamed to a reader that takes its time: what waits in zone 2 stays bounded."""
    chunk = b"x" * 65536

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(320):
            writer.write(b"10000\r\n" + chunk + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def check(pool: Upstreams) -> None:
        async with raw_server(serve) as (url, _):
            response = await pool.request("GET", url, {}, b"")
            total = biggest = 0
            async for part in response.chunks():
                total += len(part)
                biggest = max(biggest, len(part))
                await asyncio.sleep(0.002)
            response.release()
            assert total == 320 * 65536
            assert biggest < 2 << 20  # without the pause, the whole 20 MB piles up between two reads

    run(check)


def test_an_oversized_head_and_garbage_break_the_answer() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        if b"/huge" in head:
            writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * (300 << 10) + b"\r\n\r\n")
        else:
            writer.write(b"\x00\x01 not http at all\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async def check(pool: Upstreams) -> None:
        async with raw_server(serve) as (url, _):
            for path, message in (("/huge", "headers are over"), ("/garbage", "not valid HTTP")):
                with pytest.raises(UpstreamError, match=message):
                    await pool.request("GET", url + path, {}, b"")

    run(check)


def test_headers_that_would_split_the_request_are_refused() -> None:
    async def check(pool: Upstreams) -> None:
        for headers in ({"X-A": "v\r\nX-Injected: 1"}, {"X-A": "v\nX"}, {"X-A": "nul\0"}, {"X A": "v"}, {"X:A": "v"}):
            with pytest.raises(BadRequestHead):
                await pool.request("GET", "http://127.0.0.1:9/", headers, b"")

    run(check)


def test_only_idempotent_requests_are_replayed() -> None:
    assert replayable("GET", {}) and replayable("DELETE", {})
    assert not replayable("POST", {"Authorization": "x"})
    assert replayable("POST", {"Idempotency-Key": "abc"}) and replayable("PATCH", {"x-idempotency-key": "abc"})


def test_idle_connections_are_closed_after_keepalive() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(b"ok"))

    async def check(pool: Upstreams) -> None:
        async with raw_server(serve) as (url, _):
            responses = await asyncio.gather(*(pool.request("GET", url, {}, b"") for _ in range(5)))
            for response in responses:
                await response.read()
                response.release()
            assert pool.idle_count() == 5
            await asyncio.sleep(0.5)
            assert pool.idle_count() == 0

    run(check, keepalive=0.2)


def tls_contexts(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context for 127.0.0.1 and a client context that trusts only it."""
    return self_signed(tmp, "fleetd test upstream", x509.IPAddress(ipaddress.ip_address("127.0.0.1")))


def test_tls_upstream_is_verified(tmp_path: Path) -> None:
    server_tls, client_tls = tls_contexts(tmp_path)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(b"over tls"))

    async def trusted(pool: Upstreams) -> None:
        async with raw_server(serve, server_tls) as (url, accepted):
            for _ in range(2):
                assert (await fetch(pool, "GET", url + "/x"))[1] == b"over tls"
            assert accepted == [0]

    async def untrusted(pool: Upstreams) -> None:  # the system's CAs do not know the test's certificate
        async with raw_server(serve, server_tls) as (url, _):
            with pytest.raises(UpstreamError) as caught:
                await pool.request("GET", url + "/x", {}, b"")
            assert caught.value.kind == "connect"

    run(trusted, ssl_context=client_tls)
    run(untrusted)
