"""The relays that bench/dataplane.py compares, each run as a process of its own (or in a container).

- ``zone2``: zone 2's real agent-facing app (``init_gateway``: aiohttp's server, zone 2's own upstream client),
  with a registry, prices and a ledger on disk, as zone 2 runs it;
- ``aioclient``: the same app with its upstream calls made by aiohttp's client, as zone 2 made them before
  ``fleetd.zone2.upstream`` (the baseline that client is measured against);
- ``bare``: the same per-request work (target and handle checks, credential scope, header forwarding, request
  parsing, budget admission, breaker, stream meter, redactor, ledger row) on a bare asyncio protocol parsed with
  httptools, with one kept-alive upstream connection per request in flight. A measuring floor, **not a data
  plane**: no limits, timeouts, TLS, pipelining, flow control or error handling;
- ``bytes``: one upstream connection per agent connection, bytes copied both ways: the least any relay does.

Any caller is taken as the one agent (role ``bench``, credential ``sim``). Run:
python3 bench/relays.py --serve MODE --upstream URL [--host H] --port P --ledger FILE
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

SECRET = "sk-bench-dataplane-0123456789"


def _gateway_parts(upstream: str, ledger: Path) -> tuple[Any, Any, Any]:
    """Registry, cost tracker and whois of a relay: any caller is taken as the one agent of role bench."""
    from fleetd.zone2.breaker import RetrySettings
    from fleetd.zone2.budget import Caps
    from fleetd.zone2.contract import Registration, Upstream, Zone2Policy
    from fleetd.zone2.costs import CostTracker
    from fleetd.zone2.ledger import Ledger
    from fleetd.zone2.pricing import PriceTable
    from fleetd.zone2.registry import Registry

    registry = Registry()
    registry.set_creds([Upstream("sim", upstream, SECRET)])
    costs = CostTracker(Ledger(ledger), lambda *e: None)
    costs.configure(Zone2Policy(tuple(PriceTable.builtin().all()), retry=RetrySettings(max_retries=0)))

    async def whois(ip: str) -> Registration:
        return Registration("bench", ip, "bench", frozenset({"sim"}), Caps(), False)

    return registry, costs, whois


async def serve_zone2(upstream: str, host: str, port: int, ledger: Path) -> None:
    from aiohttp import web

    from fleetd.zone2.proxy import init_gateway

    registry, costs, whois = _gateway_parts(upstream, ledger)
    runner = web.AppRunner(init_gateway(registry, whois, costs), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    await asyncio.Event().wait()


async def serve_bytes(upstream: str, host: str, port: int, ledger: Path) -> None:
    """The least any relay does: each agent connection gets its own upstream connection, bytes copied both ways."""
    from yarl import URL

    url = URL(upstream)
    target = (url.host or "", url.port or 80)
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[Any]] = set()

    class Pipe(asyncio.Protocol):
        def __init__(self, peer: Pipe | None = None) -> None:
            self.peer = peer
            self.transport: Any = None
            self.backlog: list[bytes] = []

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            if self.peer is None:  # an agent's connection: open the upstream one
                task = loop.create_task(loop.create_connection(lambda: Pipe(self), *target))
                connecting.add(task)
                task.add_done_callback(connecting.discard)
            else:  # the upstream connection: take over what the agent sent meanwhile
                self.peer.peer = self
                for data in self.peer.backlog:
                    transport.write(data)

        def data_received(self, data: bytes) -> None:
            if self.peer is None or self.peer.transport is None:
                self.backlog.append(data)
            else:
                self.peer.transport.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.peer is not None and self.peer.transport is not None:
                self.peer.transport.close()

    await loop.create_server(Pipe, host, port)
    await asyncio.Event().wait()


async def serve_bare(upstream: str, host: str, port: int, ledger: Path) -> None:
    import httptools
    from multidict import CIMultiDict
    from yarl import URL

    from fleetd.zone2.handles import Redactor, request_handles
    from fleetd.zone2.meters import StreamMeter
    from fleetd.zone2.providers import classify
    from fleetd.zone2.proxy import Upcall, forward_headers, response_headers
    from fleetd.zone2.targets import path_segments, safe_path

    registry, costs, whois = _gateway_parts(upstream, ledger)
    loop = asyncio.get_running_loop()
    idle: dict[tuple[str, int], list[Any]] = {}
    running: set[asyncio.Task[None]] = set()

    class Answer:
        def __init__(self) -> None:
            self.headers: CIMultiDict[str] = CIMultiDict()
            self.status = 0
            self.parts: list[bytes] = []
            self.done = False
            self.wake: asyncio.Future[None] | None = None

        def _poke(self) -> None:
            if self.wake is not None and not self.wake.done():
                self.wake.set_result(None)

        async def chunks(self) -> Any:
            while True:
                if self.parts:
                    out, self.parts = b"".join(self.parts), []
                    yield out
                elif self.done:
                    return
                else:
                    self.wake = loop.create_future()
                    await self.wake

    class Client(asyncio.Protocol):
        def __init__(self, key: tuple[str, int]) -> None:
            self.key = key
            self.parser = httptools.HttpResponseParser(self)
            self.answer = Answer()
            self.head: asyncio.Future[Answer] = loop.create_future()

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_header(self, name: bytes, value: bytes) -> None:
            self.answer.headers.add(name.decode("latin-1"), value.decode("latin-1"))

        def on_headers_complete(self) -> None:
            self.answer.status = self.parser.get_status_code()
            self.head.set_result(self.answer)

        def on_body(self, body: bytes) -> None:
            self.answer.parts.append(body)
            self.answer._poke()

        def on_message_complete(self) -> None:
            self.answer.done = True
            self.answer._poke()
            idle.setdefault(self.key, []).append(self)

    async def send(call: Upcall, body: bytes) -> Answer:
        url = URL(call.url)
        key = (url.host or "", url.port or 80)
        conns = idle.get(key)
        client: Client
        if conns:
            client = conns.pop()
            client.answer, client.head = Answer(), loop.create_future()
        else:
            _, client = await loop.create_connection(lambda: Client(key), *key)
        head = [f"{call.method} {url.raw_path_qs} HTTP/1.1\r\nHost: {key[0]}:{key[1]}\r\n"]
        head += [f"{k}: {v}\r\n" for k, v in call.headers.items()]
        head.append(f"Content-Length: {len(body)}\r\n\r\n")
        client.transport.write("".join(head).encode("latin-1") + body)
        return await client.head

    class Server(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.ip = transport.get_extra_info("peername")[0]

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_begin(self) -> None:
            self.headers: CIMultiDict[str] = CIMultiDict()
            self.body: list[bytes] = []

        def on_url(self, url: bytes) -> None:
            self.target = url.decode("latin-1")

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.add(name.decode("latin-1"), value.decode("latin-1"))

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            method = self.parser.get_method().decode()
            task = loop.create_task(self.handle(method, self.target, self.headers, b"".join(self.body)))
            running.add(task)
            task.add_done_callback(running.discard)

        async def handle(self, method: str, target: str, headers: Any, body: bytes) -> None:
            reg = registry.by_ip.get(self.ip)
            if reg is None:
                reg = await whois(self.ip)
                registry.register(reg)
            path, query = safe_path(target)
            creds = registry.resolve(reg, request_handles(headers.items(), query))
            assert creds is not None
            secrets = {c.name: c.secret for c in creds}
            base = creds[0].upstream
            redactor = Redactor.for_secrets(secrets.values())
            call = Upcall(method, base + path, forward_headers(headers, secrets), body, base, redactor)
            api = classify(method, path)
            assert api is not None
            llm = api.parse(body, path_segments(path))
            ticket = costs.admit(reg, "sim", llm)
            admission = costs.breaker_admit(reg.agent_id, base)
            answer = await send(call, llm.body)
            costs.breaker_record(reg.agent_id, base, answer.status, admission.probe)
            meter = StreamMeter(api, llm.usage_injected)
            head = [f"HTTP/1.1 {answer.status} OK\r\n"]
            head += [f"{k}: {v}\r\n" for k, v in response_headers(answer.headers, call.redactor)]
            head.append("Transfer-Encoding: chunked\r\n\r\n")
            self.transport.write("".join(head).encode("latin-1"))
            async for chunk in answer.chunks():
                out = call.redactor.feed(meter.feed(chunk))
                if out:
                    self.transport.write(b"%x\r\n%b\r\n" % (len(out), out))
            tail = call.redactor.feed(meter.flush()) + call.redactor.flush()
            if tail:
                self.transport.write(b"%x\r\n%b\r\n" % (len(tail), tail))
            self.transport.write(b"0\r\n\r\n")
            costs.settle(ticket, answer.status, meter.usage, 1)

    await loop.create_server(Server, host, port)
    await asyncio.Event().wait()


async def serve_aioclient(upstream: str, host: str, port: int, ledger: Path) -> None:
    """Zone 2's app with its upstream calls made by aiohttp's client, as zone 2 made them before its own client
    (``fleetd.zone2.upstream``): the same session settings, adapted to the Response the proxy reads."""
    import aiohttp
    from aiohttp import web

    from fleetd.zone2 import proxy
    from fleetd.zone2.upstream import UpstreamError

    registry, costs, whois = _gateway_parts(upstream, ledger)
    timeout = aiohttp.ClientTimeout(total=None, connect=proxy.CONNECT_TIMEOUT, sock_read=proxy.IDLE_TIMEOUT)
    session = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60),
                                    auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar())

    class Adapted:
        def __init__(self, inner: aiohttp.ClientResponse) -> None:
            self.inner, self.status, self.reason, self.headers = inner, inner.status, inner.reason, inner.headers
            self.content_type = inner.content_type

        async def chunks(self) -> Any:
            try:
                async for chunk in self.inner.content.iter_any():
                    yield chunk
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise UpstreamError("broken", str(exc)) from None

        async def read(self) -> bytes:
            return b"".join([c async for c in self.chunks()])

        def release(self) -> None:
            self.inner.release()

    async def send(self: Any, call: Any, body: bytes) -> Any:
        inner = await session.request(call.method, call.url, headers=call.headers, data=body or None,
                                      allow_redirects=False)
        return Adapted(inner)

    proxy.Gateway.send = send  # type: ignore[method-assign]
    runner = web.AppRunner(proxy.init_gateway(registry, whois, costs), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    await asyncio.Event().wait()


SERVERS = {"zone2": serve_zone2, "aioclient": serve_aioclient, "bare": serve_bare, "bytes": serve_bytes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", choices=sorted(SERVERS), required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ledger", type=Path, required=True)
    args = parser.parse_args()
    import uvloop

    uvloop.run(SERVERS[args.serve](args.upstream, args.host, args.port, args.ledger))
    return 0


if __name__ == "__main__":
    sys.exit(main())
