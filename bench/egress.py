"""Zone 2's forward proxy (issue 18): a fetch through it against the same fetch straight from the egress network.

One upstream container (image fleetd/agent-python, label ``fleetd-bench=<hex>``) sits on the instance's egress
network under the alias ``host.example.test``: a Python HTTP server on port 8080 and the same server behind TLS
(a self-signed certificate made for the run) on 8443. The role ``bench`` may reach both ports
(``fleetd role set bench --egress host.example.test:8080,host.example.test:8443``). The same client script
(``python3 -c``, raw sockets, 1 CPU and 512m) runs two ways:

- **proxied**: a fleetd agent of the role (``fleetd spawn --role bench ...``), so through the proxy its
  environment names (``HTTP_PROXY=http://zone2:3128``): agent -> zone 2 -> upstream; figures read from
  ``fleetd logs``;
- **direct**: a plain ``docker run`` (fleetd's agent flags) on the egress network, straight to the upstream.

Each run makes, after a few unmeasured fetches:

- ``--small`` (300) sequential plain HTTP fetches of a 1 KiB body, each a new connection (resolve, connect, request
  with ``Connection: close``, read to the end): proxied plain HTTP is one request per connection, so this is what
  every proxied fetch costs; proxied, the request is in absolute form (``GET http://host.example.test:8080/small``);
- ``--small-tls`` (100) sequential HTTPS fetches of the same body, each a new connection and TLS handshake
  (proxied: ``CONNECT host.example.test:8443`` first, then TLS inside the tunnel);
- ``--reps`` (3) downloads of ``--large-mib`` (64 MiB) over plain HTTP, then as many over HTTPS (proxied: through a
  CONNECT tunnel); MB/s = 10^6 bytes of body per second, from the connect to the last byte.

Rounds (``--rounds``, default 5) run both, alternating which goes first. While each runs, the CPU time of zone 2's
process and of the upstream server is sampled from /proc (every 0.1 s) and matched to each phase's wall-clock bounds
(the containers share the host's clock); the client reports its own CPU time per phase. After each proxied run,
zone 2's egress log for the agent (``GET /v1/egress/log``) is summed up: the connections it recorded, by outcome.

No targets: the script prints every run and a side-by-side table (medians over rounds; "added" = median of the
per-round differences proxied - direct; ratio = proxied / direct). The client, the upstream, zone 2 and dockerd
share this machine's CPUs. Traffic goes only between containers this run made and zone 2.

Run: .venv/bin/python bench/egress.py [--rounds 5] [--small 300] [--small-tls 100] [--large-mib 64] [--reps 3]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway import Sampler, engine_up, main_pid, wait_until
from harness import BASELINE_LABEL, IMAGE, LOG_OPTS, Bench, percentile, remove_containers, run_to_end, table

HOST = "host.example.test"
HTTP_PORT = 8080
TLS_PORT = 8443
LIMITS = ("--memory", "512m", "--cpus", "1")
PHASES = ("small", "small_tls", "large", "large_tls")

# The upstream: one process, a threaded HTTP server on HTTP_PORT and the same behind TLS on TLS_PORT.
# GET /small answers 1 KiB in one write; GET /large/N answers N bytes, written 1 MiB at a time.
SERVER = r"""
import http.server, os, socket, ssl, sys, tempfile, threading
cert_pem, key_pem, http_port, tls_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
CHUNK = memoryview(b"y" * (1 << 20))
def head(size):
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % size)
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    def do_GET(self):
        self.close_connection = True
        if self.path == "/small":
            self.wfile.write(head(1024) + b"x" * 1024)
        elif self.path.startswith("/large/"):
            left = int(self.path[7:])
            self.wfile.write(head(left))
            while left > 0:
                n = min(left, len(CHUNK))
                self.wfile.write(CHUNK[:n])
                left -= n
        else:
            self.send_error(404)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
plain = Server(("0.0.0.0", http_port), Handler)
secure = Server(("0.0.0.0", tls_port), Handler)
with tempfile.TemporaryDirectory() as tmp:
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    open(cert, "w").write(cert_pem)
    open(key, "w").write(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
secure.socket = context.wrap_socket(secure.socket, server_side=True)
threading.Thread(target=secure.serve_forever, daemon=True).start()
print("ready", flush=True)
plain.serve_forever()
"""

# The client: the same script direct and proxied (proxied: the proxy its environment names, as pip or curl would).
# Prints one JSON line: per phase its wall-clock bounds, its CPU seconds and its figures.
CLIENT = r"""
import json, os, socket, ssl, sys, time
from urllib.parse import urlsplit
mode, host, http_port, tls_port, n_small, n_tls, large, reps, cert_pem = sys.argv[1:10]
http_port, tls_port, n_small, n_tls, large, reps = map(int, (http_port, tls_port, n_small, n_tls, large, reps))
proxy = None
if mode == "proxied":
    url = urlsplit(os.environ["HTTP_PROXY"])
    if os.environ.get("HTTPS_PROXY") != os.environ["HTTP_PROXY"]:
        raise SystemExit("HTTPS_PROXY is not HTTP_PROXY: " + repr(os.environ.get("HTTPS_PROXY")))
    proxy = (url.hostname, url.port)
context = ssl.create_default_context(cadata=cert_pem)
VIEW = memoryview(bytearray(1 << 20))

def answer(sock):
    data = bytearray()
    while (end := data.find(b"\r\n\r\n")) < 0:
        n = sock.recv_into(VIEW)
        if not n:
            raise RuntimeError("closed before the answer's head: " + repr(bytes(data[:200])))
        data += VIEW[:n]
    lines = bytes(data[:end]).decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(x.split(":", 1)[1]) for x in lines[1:] if x.lower().startswith("content-length:"))
    got = len(data) - end - 4
    while got < length:
        n = sock.recv_into(VIEW)
        if not n:
            raise RuntimeError(f"closed after {got} of {length} bytes")
        got += n
    if status != 200:
        raise RuntimeError(f"status {status}: " + bytes(data[end + 4:end + 504]).decode("latin-1"))
    return got

def fetch(path, tls, parts=None):
    port = tls_port if tls else http_port
    start = time.perf_counter()
    family, kind, proto, _, address = socket.getaddrinfo(*(proxy or (host, port)), type=socket.SOCK_STREAM)[0]
    marks = [("dns", time.perf_counter())]
    sock = socket.socket(family, kind, proto)
    try:
        sock.connect(address)
        marks.append(("connect", time.perf_counter()))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        target = f"http://{host}:{port}{path}" if proxy and not tls else path
        if tls:
            if proxy:
                sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
                reply = b""
                while b"\r\n\r\n" not in reply:
                    piece = sock.recv(4096)
                    if not piece:
                        raise RuntimeError("CONNECT: closed: " + repr(reply))
                    reply += piece
                if not reply.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError("CONNECT refused: " + reply.decode("latin-1"))
                marks.append(("tunnel", time.perf_counter()))
            sock = context.wrap_socket(sock, server_hostname=host)
            marks.append(("tls", time.perf_counter()))
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: fleetd-bench\r\n"
                     f"Connection: close\r\n\r\n".encode())
        size = answer(sock)
        marks.append(("answer", time.perf_counter()))
    finally:
        sock.close()
    if parts is not None:
        previous = start
        for name, mark in marks:
            parts.setdefault(name, []).append(mark - previous)
            previous = mark
    return time.perf_counter() - start, size

deadline = time.monotonic() + 20  # warm-up; retried while zone 2 may not know this agent yet
while True:
    try:
        for _ in range(3):
            fetch("/small", False)
            fetch("/small", True)
        break
    except (OSError, RuntimeError) as exc:
        if time.monotonic() > deadline:
            raise
        print("warm-up:", exc, file=sys.stderr, flush=True)
        time.sleep(0.5)

out = {"mode": mode, "proxy": os.environ.get("HTTP_PROXY")}
def phase(name, count, path, tls, rate):
    time.sleep(0.5)  # idle between phases: the host's CPU samples around a phase hold only its work
    wall, cpu = time.time(), time.process_time()
    values, parts = [], {}
    for _ in range(count):
        seconds, size = fetch(path, tls, parts)
        values.append(round(size / seconds / 1e6, 2) if rate else round(seconds * 1000, 3))
    out[name] = {"t": [wall, time.time()], "cpu": time.process_time() - cpu, "values": values,
                 "parts_ms": {k: round(1000 * sorted(v)[len(v) // 2], 3) for k, v in parts.items()}}
phase("small", n_small, "/small", False, False)
phase("small_tls", n_tls, "/small", True, False)
phase("large", reps, f"/large/{large}", False, True)
phase("large_tls", reps, f"/large/{large}", True, True)
time.sleep(0.5)
print(json.dumps(out, separators=(",", ":")), flush=True)
"""


@dataclass
class Run:
    round: int
    mode: str  # direct | proxied
    result: dict[str, Any]
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> process -> CPU seconds

    def values(self, phase: str) -> list[float]:
        return [float(v) for v in self.result[phase]["values"]]

    def p(self, phase: str, pct: float) -> float:
        return percentile(self.values(phase), pct)

    def rate(self, phase: str) -> float:
        return statistics.median(self.values(phase))

    def seconds(self, phase: str) -> float:
        start, end = self.result[phase]["t"]
        return float(end - start)


def self_signed() -> tuple[str, str]:
    """A certificate for HOST (its own issuer, so the client trusts it as its only CA) and its key, in PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


class EgressBench:
    def __init__(self, bench: Bench, args: argparse.Namespace) -> None:
        self.bench = bench
        self.args = args
        self.egress = f"fleetd-{bench.instance}-egress"
        self.zone2 = f"fleetd-{bench.instance}-zone2"
        self.upstream = f"fleetd-bench-{bench.hex}-upstream"
        self.cert, self.key = self_signed()
        self.seq = 0
        self.zone2_pid = self.upstream_pid = 0

    def setup(self) -> None:
        wait_until(lambda: bool(_out(["docker", "network", "ls", "-q", "--filter", f"name=^{self.egress}$"])),
                   30, "the egress network")  # fmt: skip
        subprocess.run(
            ["docker", "run", "-d", "--name", self.upstream, "--label", f"{BASELINE_LABEL}={self.bench.hex}",
             "--init", "--network", self.egress, "--network-alias", HOST, *LOG_OPTS,
             IMAGE, "python3", "-c", SERVER, self.cert, self.key, str(HTTP_PORT), str(TLS_PORT)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        wait_until(lambda: "ready" in _out(["docker", "logs", self.upstream]), 30, "the upstream server")
        egress = f"{HOST}:{HTTP_PORT},{HOST}:{TLS_PORT}"
        self.bench.fleetd("role", "set", "bench", "--egress", egress, "--egress-max-bytes", "100g")
        self.refresh_pids()
        print(f"upstream {self.upstream} as {HOST} (:{HTTP_PORT} HTTP, :{TLS_PORT} HTTPS) on {self.egress}; "
              f"role bench --egress {egress}; zone 2 pid {self.zone2_pid}", flush=True)  # fmt: skip

    def refresh_pids(self) -> None:
        self.zone2_pid = main_pid(self.zone2)
        self.upstream_pid = main_pid(self.upstream)

    def client_args(self, mode: str) -> list[str]:
        a = self.args
        return ["python3", "-c", CLIENT, mode, HOST, str(HTTP_PORT), str(TLS_PORT), str(a.small), str(a.small_tls),
                str(a.large_mib << 20), str(a.reps), self.cert]  # fmt: skip

    def run(self, round_: int, mode: str) -> Run:
        self.refresh_pids()  # zone 2 may have been restarted by the daemon
        sampler = Sampler({"zone2": self.zone2_pid, "upstream": self.upstream_pid}, self.zone2_pid, None, 0.1)
        with sampler:
            result = self._direct() if mode == "direct" else self._proxied()
        run = Run(round_, mode, result)
        for phase in PHASES:
            start, end = result[phase]["t"]
            run.cpu[phase] = phase_cpu(sampler.samples, start, end)
            run.cpu[phase]["client"] = result[phase]["cpu"]
        return run

    def timeout(self) -> float:
        # generous: at 5 MB/s the large phases still finish
        return 300.0 + int(self.args.reps) * int(self.args.large_mib) / 5

    def _direct(self) -> dict[str, Any]:
        self.seq += 1
        name = f"fleetd-bench-{self.bench.hex}-direct-{self.seq}"
        args = [
            "--label", f"{BASELINE_LABEL}={self.bench.hex}",
            "--memory", "512m", "--memory-swap", "512m", "--cpus", "1", "--pids-limit", "256", "--init",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true", "--network", self.egress, *LOG_OPTS,
            IMAGE, *self.client_args("direct"),
        ]  # fmt: skip
        logs = run_to_end(name, args, self.timeout())
        return parse_result(logs.stdout + logs.stderr, name)

    def _proxied(self) -> dict[str, Any]:
        args = ["spawn", "--role", "bench", *LIMITS, "--ttl", "1800", IMAGE, *self.client_args("proxied")]
        agent_id = self.bench.fleetd(*args).stdout.strip()
        deadline = time.monotonic() + self.timeout()
        while self.bench.client().call("GET", f"/v1/agents/{agent_id}")["state"] in ("created", "running", "stopping"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the client agent {agent_id} did not finish in {self.timeout():g} s")
            time.sleep(0.2)
        logs = self.bench.fleetd("logs", agent_id)
        result = parse_result(logs.stdout + logs.stderr, f"agent {agent_id}")
        result["egress_log"] = self.egress_log(agent_id)
        return result

    def egress_log(self, agent_id: str) -> dict[str, Any]:
        """What zone 2 recorded of the agent's connections: how many, by outcome, and the bytes it relayed in."""
        rows: list[dict[str, Any]] = self.bench.client().call(
            "GET", "/v1/egress/log", query={"agent": agent_id, "limit": 1000}
        )
        outcomes: dict[str, int] = {}
        for row in rows:
            outcome = row["decision"] + (f" ({row['reason']})" if row["reason"] else "")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        return {"connections": len(rows), "outcomes": outcomes, "bytes_in": sum(r["bytes_in"] for r in rows)}


def phase_cpu(samples: list[tuple[float, dict[str, float], float, float]], start: float, end: float,
              ) -> dict[str, float]:
    """CPU seconds each sampled process used from the last sample before ``start`` to the first after ``end``.

    The client idles 0.5 s before and after each phase, so that span holds the phase's work and a little idle.
    """
    before = [s for s in samples if s[0] <= start]
    after = [s for s in samples if s[0] >= end]
    if not before or not after:
        return {}
    first, last = before[-1][1], after[0][1]
    return {name: last[name] - first[name] for name in first if name in last}


def parse_result(logs: str, who: str) -> dict[str, Any]:
    for line in reversed(logs.splitlines()):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    raise RuntimeError(f"no result from the client ({who}):\n{logs[-3000:]}")


def _out(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()


# -- reporting --------------------------------------------------------------------
def med(values: list[float]) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")


def paired(runs: list[Run], metric: Any) -> tuple[float, float, float]:
    """Median over rounds of direct, of proxied, and of the per-round difference (proxied - direct)."""
    direct, proxied, added = [], [], []
    for n in sorted({r.round for r in runs}):
        d = next(r for r in runs if r.round == n and r.mode == "direct")
        p = next(r for r in runs if r.round == n and r.mode == "proxied")
        direct.append(metric(d))
        proxied.append(metric(p))
        added.append(metric(p) - metric(d))
    return med(direct), med(proxied), med(added)


def report(runs: list[Run], args: argparse.Namespace) -> None:
    nan = float("nan")
    print()
    print("Every run (ms per fetch, a new connection each; MB/s = 10^6 body bytes per second, median of the reps):")
    headers = ["round", "mode", "http p50", "http p95", "https p50", "https p95", "http MB/s", "https MB/s"]
    rows = [[r.round, r.mode, r.p("small", 50), r.p("small", 95), r.p("small_tls", 50), r.p("small_tls", 95),
             r.rate("large"), r.rate("large_tls")] for r in runs]  # fmt: skip
    print(table(headers, rows))

    print()
    print("Side by side (medians over rounds; added = median of per-round proxied - direct; ratio = proxied / direct):")
    side: list[list[Any]] = []

    def row(label: str, metric: Any, unit: str) -> None:
        d, p, a = paired(runs, metric)
        side.append([label, f"{d:.2f} {unit}", f"{p:.2f} {unit}", f"{a:+.2f} {unit}", f"{p / d:.2f}" if d else "-"])

    row(f"plain HTTP fetch, 1 KiB, p50 (n={args.small})", lambda r: r.p("small", 50), "ms")
    row(f"plain HTTP fetch, 1 KiB, p95 (n={args.small})", lambda r: r.p("small", 95), "ms")
    row(f"HTTPS fetch (CONNECT + TLS), 1 KiB, p50 (n={args.small_tls})", lambda r: r.p("small_tls", 50), "ms")
    row(f"HTTPS fetch (CONNECT + TLS), 1 KiB, p95 (n={args.small_tls})", lambda r: r.p("small_tls", 95), "ms")
    row(f"plain HTTP download, {args.large_mib} MiB", lambda r: r.rate("large"), "MB/s")
    row(f"HTTPS download, {args.large_mib} MiB (proxied: CONNECT tunnel)", lambda r: r.rate("large_tls"), "MB/s")
    print(table(["figure", "direct", "proxied", "added", "ratio"], side))

    print()
    print("Where a fetch's time goes, as the client sees it (ms, p50 of each step, medians over rounds): dns = the "
          "client's lookup (of zone2 when proxied), connect = TCP connect, tunnel = CONNECT sent to 200 received "
          "(zone 2's checks, its lookup of the host and its connect upstream), tls = handshake, answer = request "
          "sent to last byte")  # fmt: skip
    steps: list[list[Any]] = []
    for phase, label in (("small", "plain HTTP"), ("small_tls", "HTTPS")):
        for step in ("dns", "connect", "tunnel", "tls", "answer"):
            values = {m: med([r.result[phase]["parts_ms"].get(step, nan) for r in runs if r.mode == m])
                      for m in ("direct", "proxied")}  # fmt: skip
            if any(v == v for v in values.values()):
                steps.append([f"{label}: {step}", *(f"{values[m]:.2f}" if values[m] == values[m] else "-"
                                                     for m in ("direct", "proxied"))])  # fmt: skip
    print(table(["step", "direct", "proxied"], steps))

    print()
    print("CPU (medians over rounds, from /proc and the client's own process time): ms per fetch, s per GB of body")
    cpu_rows: list[list[Any]] = []
    for phase, label, per in (("small", "plain HTTP fetch, ms", 1000 / args.small),
                              ("small_tls", "HTTPS fetch, ms", 1000 / args.small_tls),
                              ("large", "plain HTTP download, s/GB", None),
                              ("large_tls", "HTTPS download, s/GB", None)):  # fmt: skip
        cells: list[Any] = [label]
        for mode in ("direct", "proxied"):
            for proc in ("client", "upstream", "zone2"):
                if mode == "direct" and proc == "zone2":
                    continue
                shares: list[float] = []
                for r in runs:
                    if r.mode != mode:
                        continue
                    seconds = r.cpu[phase].get(proc, nan)
                    gb = args.reps * (args.large_mib << 20) / 1e9
                    shares.append(seconds * per if per is not None else seconds / gb)
                cells.append(f"{med(shares):.2f}")
        cpu_rows.append(cells)
    print(table(["", "direct client", "direct upstream", "proxied client", "proxied upstream", "proxied zone2"],
                cpu_rows))  # fmt: skip
    print("NOTE: every fetch is a new connection (proxied plain HTTP is one request per connection, Connection: "
          "close); latencies include the client's name lookup, connect, (CONNECT and) TLS handshake and the answer. "
          f"The {os.cpu_count()} CPUs are shared by the client (capped at 1 CPU), the upstream, zone 2 and dockerd "
          "(and by whatever else runs: see the load average on the first line).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds (each: direct and proxied, order alternating)")
    parser.add_argument("--small", type=int, default=300, help="sequential plain HTTP fetches of 1 KiB per run")
    parser.add_argument("--small-tls", type=int, default=100, help="sequential HTTPS fetches of 1 KiB per run")
    parser.add_argument("--large-mib", type=int, default=64, help="size of each large download, MiB")
    parser.add_argument("--reps", type=int, default=3, help="large downloads per protocol per run")
    args = parser.parse_args()

    with Bench() as bench:
        eb = EgressBench(bench, args)
        try:
            print(f"instance {bench.instance}; image {IMAGE}; {args.rounds} rounds; per run {args.small} HTTP and "
                  f"{args.small_tls} HTTPS fetches of 1 KiB, {args.reps} x {args.large_mib} MiB over each",
                  flush=True)  # fmt: skip
            eb.setup()
            runs: list[Run] = []
            for n in range(1, args.rounds + 1):
                for mode in ("direct", "proxied") if n % 2 else ("proxied", "direct"):
                    run = eb.run(n, mode)
                    runs.append(run)
                    print(f"round {n} {mode:7}: http p50 {run.p('small', 50):.2f} ms, https p50 "
                          f"{run.p('small_tls', 50):.2f} ms, http {run.rate('large'):.0f} MB/s, https "
                          f"{run.rate('large_tls'):.0f} MB/s", flush=True)  # fmt: skip
                    if "egress_log" in run.result:
                        seen = run.result["egress_log"]
                        print(f"  zone 2's egress log for the agent: {seen['connections']} connections, "
                              f"{seen['bytes_in'] / 1e6:.0f} MB in; {seen['outcomes']}", flush=True)
            report(runs, args)
        finally:
            with contextlib.suppress(RuntimeError):
                wait_until(engine_up, 60, "dockerd")
            # The upstream sits on the egress network: remove it before the daemon's teardown removes the network.
            remove_containers(f"label={BASELINE_LABEL}={bench.hex}")
            bench.fleetd("teardown", check=False)  # also removes this instance's iptables rules
    return 0


if __name__ == "__main__":
    sys.exit(main())
