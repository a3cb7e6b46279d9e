"""Bad input to the gateway: a clear 4xx or a closed connection; never a crash, a stall of others, or a leak."""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp

from fleetd.zone2.contract import Registration, Upstream
from fleetd.zone2.proxy import init_gateway
from fleetd.zone2.registry import Registry
from tests.unit.loopback import SECRET, serve, upstream_app

AUTH = b"Authorization: Bearer $CRED{openai}\r\n"


async def exchange(gw: str, data: bytes, delay: float = 0.0) -> bytes:
    host, port = gw.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        if delay:
            for byte in data:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(delay)
        else:
            writer.write(data)
            await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 10)
    except (ConnectionResetError, BrokenPipeError):
        return b""
    finally:
        writer.close()


def gateway_run(check):  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with serve(upstream_app([])) as upstream:
            registry = Registry()
            registry.set_creds([Upstream("openai", upstream, SECRET)])
            registry.register(Registration("agent1", "127.0.0.1", "default", frozenset({"openai"})))

            async def whois(ip: str) -> Registration | None:
                return None

            async with serve(init_gateway(registry, whois)) as gw, aiohttp.ClientSession() as client:
                await check(gw, client)

    asyncio.run(main())


def test_malformed_input_gets_4xx_or_a_closed_connection() -> None:
    async def check(gw: str, client: aiohttp.ClientSession) -> None:
        cases = {
            "garbage": b"\x00\xff\xfe garbage \r\n\r\n",
            "huge header": b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + AUTH + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n",
            "huge line": b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            "open handle": b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $CRED{\r\n\r\n",
            "bad handle": b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $CRED{a b}\r\n\r\n",
            "query handle": b"GET /v1/models?k=%24CRED%7B HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n",
            "bad length": b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n" + AUTH + b"\r\n",
            "big declared body": b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n" + AUTH + b"\r\n",
        }
        for name, data in cases.items():
            reply = await exchange(gw, data)
            status = reply[9:12]
            assert reply == b"" or status.startswith(b"4"), (name, reply[:100])
        async with client.get(f"{gw}/v1/models", headers={"Authorization": "Bearer $CRED{openai}"}) as r:
            assert r.status == 200  # still serving

    gateway_run(check)


def test_a_slow_client_does_not_stall_others() -> None:
    async def check(gw: str, client: aiohttp.ClientSession) -> None:
        slow = asyncio.create_task(exchange(gw, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + AUTH, delay=0.05))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        for _ in range(20):
            async with client.get(f"{gw}/v1/models", headers={"Authorization": "Bearer $CRED{openai}"}) as r:
                assert r.status == 200
        assert time.monotonic() - started < 5  # served while the slow one dribbles
        assert not slow.done()
        slow.cancel()

    gateway_run(check)


def test_no_descriptor_leak_from_bad_connections() -> None:
    async def check(gw: str, client: aiohttp.ClientSession) -> None:
        await exchange(gw, b"garbage\r\n\r\n")
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(200):
            await exchange(gw, b"\xff\xff\r\n\r\n")
        await asyncio.sleep(0.2)
        assert len(os.listdir("/proc/self/fd")) <= before + 5

    gateway_run(check)
