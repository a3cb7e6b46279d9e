"""Zone 2's guarded server (fleetd.zone2.guard) on loopback: one agent's connections, half requests and slow
bodies cost it alone. Two agents on two loopback addresses: 127.0.0.1 attacks, 127.0.0.2 stands by."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from fleetd.zone2.contract import Registration, Upstream
from fleetd.zone2.guard import LINGER, Guard, Timeouts, serve_guarded, stop_guarded
from fleetd.zone2.proxy import init_gateway
from fleetd.zone2.registry import Registry
from fleetd.zone2.shares import Limits
from tests.unit.loopback import SECRET, serve, upstream_app

ATTACKER, BYSTANDER = "127.0.0.1", "127.0.0.2"
TIMEOUTS = Timeouts(head=0.5, idle=1.0, body_stall=0.5, body=2.0, write=1.0, sweep=0.1)
LIMITS = Limits(connections_per_agent=8, connections=64, bytes_per_agent=3 << 20, bytes=4 << 20,
                small_reserve=1 << 20)
HEARTBEAT = b"POST /fleetd/heartbeat HTTP/1.1\r\nHost: zone2\r\nContent-Type: application/json\r\n"
AUTH = b"Authorization: Bearer $CRED{openai}\r\n"


@asynccontextmanager
async def gateway(limits: Limits = LIMITS) -> AsyncIterator[tuple[int, Guard]]:
    async with serve(upstream_app([])) as upstream:
        registry = Registry()
        registry.set_creds([Upstream("openai", upstream, SECRET)])
        for ip in (ATTACKER, BYSTANDER):
            registry.register(Registration(f"agent-{ip}", ip, "default", frozenset({"openai"})))

        async def whois(ip: str) -> Registration | None:
            return None

        async def relay(agent_id: str, progress: dict[str, Any] | None) -> bool:
            return True

        guard = Guard(limits, TIMEOUTS)
        runner = web.AppRunner(init_gateway(registry, whois, relay=relay, guard=guard), access_log=None,
                               auto_decompress=False, lingering_time=LINGER)
        await runner.setup()
        listener, sweeper = await serve_guarded(runner, guard, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        try:
            yield port, guard
        finally:
            await stop_guarded(listener, sweeper)
            await runner.cleanup()


async def connect(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def ask(port: int, source: str, data: bytes) -> bytes:
    """One request on a new connection from ``source``: the answer's first bytes (b"" when cut)."""
    reader, writer = await connect(port, source)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 5)
    except (ConnectionResetError, BrokenPipeError):
        return b""
    finally:
        writer.close()


def beat(body: bytes = b"{}") -> bytes:
    return HEARTBEAT + b"Content-Length: %d\r\n\r\n" % len(body) + body


async def bystander_ok(port: int) -> float:
    """The bystander's heartbeat: it must succeed; returns how long it took."""
    start = time.monotonic()
    answer = await ask(port, BYSTANDER, beat())
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    return time.monotonic() - start


def run(check: Callable[[int, Guard], Awaitable[None]], limits: Limits = LIMITS) -> None:
    async def main() -> None:
        async with gateway(limits) as (port, guard):
            await check(port, guard)

    asyncio.run(main())


def test_one_agents_connections_are_capped_and_the_others_keep_theirs() -> None:
    async def check(port: int, guard: Guard) -> None:
        held = [await connect(port, ATTACKER) for _ in range(8)]
        refused = await ask(port, ATTACKER, beat())
        assert refused == b"" or (refused.startswith(b"HTTP/1.1 503") and b"zone2_busy" in refused), refused
        assert guard.refused_connections == 1 and guard.shares.connections[ATTACKER] == 8
        await bystander_ok(port)
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.2)
        assert ATTACKER not in guard.shares.connections  # given back when they close
        assert (await ask(port, ATTACKER, beat())).startswith(b"HTTP/1.1 200")

    run(check)


def test_a_head_sent_slowly_or_never_finished_is_dropped_and_idle_connections_close() -> None:
    async def check(port: int, guard: Guard) -> None:
        slow_reader, slow = await connect(port, ATTACKER)
        slow.write(HEARTBEAT[:20])  # a head begun and never finished (slowloris)
        idle_reader, idle = await connect(port, ATTACKER)  # a connection that never sends anything
        await slow.drain()
        start = time.monotonic()
        assert await asyncio.wait_for(slow_reader.read(), 5) == b""  # closed by zone 2
        assert TIMEOUTS.head <= time.monotonic() - start < TIMEOUTS.head + 1
        assert await asyncio.wait_for(idle_reader.read(), 5) == b""
        slow.close()
        idle.close()
        assert guard.dropped_slow == 2 and ATTACKER not in guard.shares.connections
        # a kept-alive connection serves one request after another while they come in time
        reader, writer = await connect(port, BYSTANDER)
        for _ in range(3):
            writer.write(beat())
            assert (await asyncio.wait_for(reader.readuntil(b"}"), 5)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(TIMEOUTS.idle / 2)
        writer.close()

    run(check)


def test_a_heartbeat_announcing_a_large_body_is_refused_before_a_byte_is_read() -> None:
    """The reproduction: 13 heartbeats declaring 10 MB each and sending all but the last byte OOM-killed zone 2."""
    async def check(port: int, guard: Guard) -> None:
        head = HEARTBEAT + b"Content-Length: 10485000\r\n\r\n"
        answers = await asyncio.gather(*(ask(port, ATTACKER, head + b"[{}," * 1000) for _ in range(8)))
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 413") and b"heartbeat bodies are limited to 64 KiB" in answer
        assert guard.shares.total_held == 0
        await bystander_ok(port)

    run(check)


def call(length: int) -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: zone2\r\nContent-Type: application/json\r\n" + AUTH
            + b"Content-Length: %d\r\n\r\n" % length)


def test_bodies_are_held_only_within_the_agents_share_and_dropped_when_they_stall() -> None:
    async def check(port: int, guard: Guard) -> None:
        size = 900 << 10  # under the large-body size: read side by side
        # three bodies announced and trickling in hold 2.7 MiB: a fourth is over the agent's 3 MiB
        trickling = [await connect(port, ATTACKER) for _ in range(3)]
        for _, writer in trickling:
            writer.write(call(size) + b"{")
            await writer.drain()
        await asyncio.sleep(0.1)
        fourth = await ask(port, ATTACKER, call(size) + b"{")
        assert fourth.startswith(b"HTTP/1.1 503") and b"zone2_busy" in fourth, fourth[:300]
        assert guard.shares.held.get(ATTACKER) == 3 * size
        await bystander_ok(port)  # the bystander's share is its own
        # they stall: dropped with a 408, their share given back
        for reader, writer in trickling:
            answer = await asyncio.wait_for(reader.read(65536), 5)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
            writer.close()
        await asyncio.sleep(0.1)
        assert guard.shares.total_held == 0

    run(check)


def test_an_agents_large_bodies_are_read_one_at_a_time() -> None:
    """Reading and parsing a large body takes zone 2's one thread: an agent's next one waits for its turn."""
    async def check(port: int, guard: Guard) -> None:
        first_reader, first = await connect(port, ATTACKER)
        first.write(call(2 << 20) + b"{")
        await first.drain()
        await asyncio.sleep(0.1)
        second_reader, second = await connect(port, ATTACKER)
        second.write(call(2 << 20) + b"[" * 1000)
        await second.drain()
        await asyncio.sleep(0.2)
        assert guard.shares.held == {ATTACKER: 2 << 20}  # the second waits, holding nothing
        await bystander_ok(port)
        assert (await asyncio.wait_for(first_reader.read(65536), 5)).startswith(b"HTTP/1.1 408")
        assert (await asyncio.wait_for(second_reader.read(65536), 5)).startswith(b"HTTP/1.1 408")  # then its turn
        first.close()
        second.close()
        await asyncio.sleep(0.1)
        assert guard.shares.total_held == 0 and not guard._large

    run(check)


def test_the_daemons_probe_gets_an_answer_from_the_agent_port() -> None:
    async def check(port: int, guard: Guard) -> None:
        answer = await ask(port, "127.0.0.3", b"GET /fleetd/health HTTP/1.1\r\nHost: zone2\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200") and json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"ok": True}

    run(check)


def test_answers_an_agent_does_not_read_stay_in_its_share_and_are_dropped_in_time() -> None:
    """Buffered answers (up to 8 MiB each) were given back to the agent's share before aiohttp wrote them: 40
    connections that never read took zone 2 to 590 MiB while the guard counted nothing."""
    import socket

    async def check(port: int, guard: Guard) -> None:
        loop = asyncio.get_running_loop()
        stuck = []
        for _ in range(8):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read
            sock.bind((ATTACKER, 0))
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, b"GET /big HTTP/1.1\r\nHost: zone2\r\n" + AUTH + b"\r\n")
            stuck.append(sock)
        await asyncio.sleep(0.5)
        held = guard.shares.held.get(ATTACKER, 0)
        assert held == 16 << 20  # two 8 MiB answers counted while written; past the share, streamed through
        await bystander_ok(port)
        await asyncio.sleep(TIMEOUTS.write + 0.5)  # nobody read: each write gave up, its connection dropped
        assert guard.shares.total_held == 0 and ATTACKER not in guard.shares.connections
        for sock in stuck:
            sock.close()

    run(check, Limits(bytes_per_agent=20 << 20, bytes=64 << 20))


def test_a_head_past_64_kib_is_dropped_and_a_large_body_is_not_taken_for_one() -> None:
    """A head of ~1 MB (aiohttp allows 128 fields of 8 KiB) on each of an agent's 64 connections was held in memory
    uncounted: two agents took zone 2 past its 256 MiB."""
    async def check(port: int, guard: Guard) -> None:
        fields = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 8000) for i in range(20))
        answer = await ask(port, ATTACKER, HEARTBEAT + fields + b"Content-Length: 2\r\n\r\n{}")
        assert answer == b"" and guard.dropped_slow == 1
        # a body sent in the same write as its head is a body, not a head
        body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * (2 << 20)}]}).encode()
        answer = await ask(port, BYSTANDER, call(len(body)) + body)
        assert answer.startswith(b"HTTP/1.1 "), answer[:100]
        assert guard.dropped_slow == 1
        await bystander_ok(port)

    run(check)


def test_heavy_bodies_of_one_agent_do_not_stall_the_others() -> None:
    """A Gemini body of 180,000 empty objects (0.5 MiB, within the parse budget) took zone 2's one thread ~0.7 s
    each, parsed before any budget check: four at a time held a bystander's heartbeat for 2.5-5 s."""
    async def check(port: int, guard: Guard) -> None:
        body = b'{"contents":[' + b"{}," * 180_000 + b"{}]}"
        head = (b"POST /v1beta/models/m:generateContent HTTP/1.1\r\nHost: zone2\r\nContent-Type: application/json\r\n"
                + AUTH + b"Content-Length: %d\r\n\r\n" % len(body))
        attack = asyncio.gather(*(ask(port, ATTACKER, head + body) for _ in range(6)))
        await asyncio.sleep(0.05)
        slowest = max([await bystander_ok(port) for _ in range(10)])
        answers = await attack
        assert all(a.startswith(b"HTTP/1.1 4") for a in answers), [a[:60] for a in answers]
        assert slowest < 1.0, f"a bystander's heartbeat waited {slowest:.2f} s"

    run(check, Limits(bytes_per_agent=24 << 20, bytes=64 << 20))
