"""How much of zone 2's added streaming TTFB is its HTTP stack: aiohttp vs a bare relay, side by side.

All on loopback, no Docker: one LLM simulator (``fleetd llm-sim --latency-ms 0 --chunk-delay-ms 50``)
and two relays in front of it, each in a process of its own on uvloop:

- **aiohttp**: zone 2's real agent-facing app (``init_gateway``: aiohttp server and client), with a
  registry, prices and a ledger on disk, as zone 2 runs it;
- **bare**: the same per-request work (identify, target and handle checks, credential scope,
  header forwarding, request parsing, budget admission, breaker, stream meter, redactor, ledger
  row) on a bare asyncio protocol parsed with httptools, with one kept-alive upstream connection
  per request in flight. It is a measuring floor, **not a data plane**: no limits, timeouts, TLS,
  pipelining, flow control or error handling.

``fleetd loadgen --stream`` runs against the simulator directly and through each relay, the order
rotating every round; the table gives each one's TTFB p50 (first server-sent event) and the
difference to direct, median over rounds. The gap between the two relays is what the HTTP stack
costs on a request's way to its first byte; the bare relay's figure is roughly the floor for
Python on this machine with zone 2's checks in the path. Target (issue 3): added TTFB p50 <= 1 ms.

Needs httptools (``pip install -e '.[bench]'``). Run: .venv/bin/python bench/dataplane.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import fleetd_exe, table, verdict

SECRET = "sk-bench-dataplane-0123456789"
PATH = "/v1/chat/completions"
BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello, briefly."}], "stream": True},
    separators=(",", ":"),
)
TARGET_TTFB_ADDED_MS = 1.0


# -- the relays (run as subprocesses of this script) ----------------------------------------------
def _gateway_parts(upstream: str, ledger: Path) -> tuple[Any, Any]:
    from fleetd.zone2.budget import Caps
    from fleetd.zone2.costs import CostTracker
    from fleetd.zone2.ledger import Ledger
    from fleetd.zone2.pricing import PriceTable
    from fleetd.zone2.registry import Registration, Registry, Upstream

    registry = Registry()
    registry.set_creds([Upstream("sim", upstream, SECRET)])
    registry.register(Registration("bench", "127.0.0.1", "bench", frozenset({"sim"}), Caps(), False))
    costs = CostTracker(Ledger(ledger), lambda *e: None)
    costs.configure({"prices": PriceTable.builtin().to_list(), "retry": {"max_retries": 0}})
    return registry, costs


async def serve_aiohttp(upstream: str, port: int, ledger: Path) -> None:
    from aiohttp import web

    from fleetd.zone2.proxy import init_gateway

    registry, costs = _gateway_parts(upstream, ledger)

    async def whois(ip: str) -> None:
        return None

    runner = web.AppRunner(init_gateway(registry, whois, costs), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def serve_bare(upstream: str, port: int, ledger: Path) -> None:
    import httptools
    from multidict import CIMultiDict
    from yarl import URL

    from fleetd.zone2.handles import Redactor, request_handles, safe_path
    from fleetd.zone2.proxy import Upcall, forward_headers, response_headers
    from fleetd.zone2.usage import StreamMeter, classify, parse_request

    registry, costs = _gateway_parts(upstream, ledger)
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
            reg = registry.by_ip[self.ip]
            path, query = safe_path(target)
            creds = registry.resolve(reg, request_handles(headers.items(), query))
            assert creds is not None
            secrets = {c.name: c.secret for c in creds}
            base = creds[0].upstream
            call = Upcall(
                method, base + path, forward_headers(headers, secrets), body, base, Redactor(secrets.values())
            )
            api = classify(method, path)
            assert api is not None
            llm = parse_request(api, body)
            ticket = costs.admit(reg, "sim", llm)
            admission = costs.breaker_admit(reg.agent_id, base)
            answer = await send(call, llm.body)
            costs.breaker_record(reg.agent_id, base, answer.status, admission.probe)
            meter = StreamMeter(api, hide_usage_chunk=llm.usage_injected)
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

    await loop.create_server(Server, "127.0.0.1", port)
    await asyncio.Event().wait()


# -- the benchmark ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a bench process exited early: {proc.args!r}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def loadgen(port: int, auth: str, concurrency: int, duration: float) -> float:
    out = subprocess.run(
        [fleetd_exe(), "loadgen", f"http://127.0.0.1:{port}{PATH}", "--header", f"Authorization: Bearer {auth}",
         "--body", BODY, "--stream", "--concurrency", str(concurrency), "--duration", f"{duration:g}",
         "--warmup", "1"], capture_output=True, text=True, check=True)  # fmt: skip
    result = json.loads(out.stdout)
    if result["errors"]:
        raise SystemExit(f"loadgen saw errors through 127.0.0.1:{port}: {result['errors']}")
    return float(result["ttfb_ms"]["p50"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    parser.add_argument("--concurrency", default="1,100", help="streams in flight, one scenario each")
    parser.add_argument("--serve", choices=["aiohttp", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ledger", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvloop

        uvloop.run((serve_aiohttp if args.serve == "aiohttp" else serve_bare)(args.upstream, args.port, args.ledger))
        return 0
    try:
        import httptools  # noqa: F401
    except ImportError:
        print("bench/dataplane.py needs httptools: .venv/bin/pip install -e '.[bench]'", file=sys.stderr)
        return 2

    ports = {"sim": free_port(), "aiohttp": free_port(), "bare": free_port()}
    print(f"dataplane bench: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, loopback ports {ports}")
    scratch = tempfile.TemporaryDirectory(prefix="fleetd-dataplane-")
    procs = [
        subprocess.Popen(
            [
                fleetd_exe(),
                "llm-sim",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["sim"]),
                "--latency-ms",
                "0",
                "--chunk-delay-ms",
                "50",
            ],
            stdout=subprocess.DEVNULL,
        )
    ]
    try:
        wait_port(ports["sim"], procs[0])
        for relay in ("aiohttp", "bare"):
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--serve", relay, "--upstream", f"http://127.0.0.1:{ports['sim']}",
                 "--port", str(ports[relay]), "--ledger", f"{scratch.name}/{relay}.db"]))  # fmt: skip
            wait_port(ports[relay], procs[-1])
        rows, ok = [], True
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            modes = ["direct", "aiohttp", "bare"]
            ttfb: dict[str, list[float]] = {m: [] for m in modes}
            added: dict[str, list[float]] = {m: [] for m in modes[1:]}
            for round_ in range(args.rounds):
                got = {}
                for mode in modes[round_ % 3 :] + modes[: round_ % 3]:
                    auth = SECRET if mode == "direct" else "$CRED{sim}"
                    got[mode] = loadgen(ports["sim" if mode == "direct" else mode], auth, concurrency, args.duration)
                    ttfb[mode].append(got[mode])
                for mode in modes[1:]:
                    added[mode].append(got[mode] - got["direct"])
                print(f"  c{concurrency} round {round_ + 1}: " + ", ".join(f"{m} {v:.3f} ms" for m, v in got.items()))
            rows.append(
                [
                    f"stream c{concurrency}",
                    statistics.median(ttfb["direct"]),
                    statistics.median(ttfb["aiohttp"]),
                    statistics.median(ttfb["bare"]),
                    statistics.median(added["aiohttp"]),
                    statistics.median(added["bare"]),
                ]
            )
            ok = ok and statistics.median(added["aiohttp"]) <= TARGET_TTFB_ADDED_MS
        print()
        print(table(["scenario", "direct ttfb p50", "aiohttp", "bare", "added aiohttp", "added bare"], rows))
        verdict(
            ok,
            f"zone 2's aiohttp relay adds <= {TARGET_TTFB_ADDED_MS:g} ms TTFB p50 on loopback "
            "(the bare relay is a floor for comparison, not judged)",
        )
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
