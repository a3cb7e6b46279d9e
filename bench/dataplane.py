"""How much of zone 2's added streaming TTFB is its HTTP stack: zone 2 vs simpler relays, side by side.

One LLM simulator (``fleetd llm-sim --latency-ms 0 --chunk-delay-ms 50``) and three relays in front of it,
each a process of its own on uvloop (``bench/relays.py``):

- **zone2**: zone 2's real agent-facing app (``init_gateway``: aiohttp's server, zone 2's own httptools
  upstream client), with a registry, prices and a ledger on disk, as zone 2 runs it;
- **aioclient**: the same app with aiohttp's client for its upstream calls, as zone 2 was before its own
  client (``fleetd.zone2.upstream``): the baseline for that change;
- **bare**: the same per-request work (target and handle checks, credential scope, header forwarding,
  request parsing, budget admission, breaker, stream meter, redactor, ledger row) on a bare asyncio
  protocol parsed with httptools. A measuring floor, **not a data plane**: no limits, timeouts, TLS,
  pipelining, flow control or error handling;
- **bytes**: bytes copied between an agent's connection and an upstream one: the least any relay does.

``fleetd loadgen --stream`` runs against the simulator directly and through each relay, the order rotating
every round; the table gives each one's TTFB p50 (first server-sent event) and the difference to direct
(median over rounds of the per-round difference). Two topologies:

- loopback (default): every process on 127.0.0.1;
- ``--docker``: the topology of bench/gateway.py without fleetd: the simulator on an egress bridge
  network, each relay a container (image fleetd/zone2) on it and on an agents' bridge network, the load
  generator a container (1 CPU, 512m) on the agents' network (or on the egress network, for direct).

The gap between zone2 and bare is what the HTTP stack costs on a request's way to its first byte; bare
is roughly the floor for Python with zone 2's checks in the path, bytes the floor for any relay in that
topology. Target (issue 3): added TTFB p50 <= 1 ms, judged here for zone2 only.

For --docker, the image fleetd/zone2 built from this
tree. Run: .venv/bin/python bench/dataplane.py [--docker] [--rounds 5] [--modes zone2,aioclient,bare,bytes]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BASELINE_LABEL, LOG_OPTS, code_version, fleetd_exe, remove_containers, run_to_end, table, verdict
from relays import SECRET, SERVERS

from fleetd import __version__

IMAGE = f"fleetd/zone2:{__version__}"
RELAYS = Path(__file__).resolve().parent / "relays.py"
PATH = "/v1/chat/completions"
BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello, briefly."}], "stream": True},
    separators=(",", ":"),
)
TARGET_TTFB_ADDED_MS = 1.0


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


def loadgen_args(url: str, mode: str, concurrency: int, duration: float) -> list[str]:
    # The byte relay passes the request as it is, so it carries the real key; the others swap the handle.
    auth = SECRET if mode in ("direct", "bytes") else "$CRED{sim}"
    return ["loadgen", url, "--header", f"Authorization: Bearer {auth}", "--body", BODY, "--stream",
            "--concurrency", str(concurrency), "--duration", f"{duration:g}", "--warmup", "1"]  # fmt: skip


def ttfb_p50(output: str, where: str) -> float:
    result = json.loads(output.strip().splitlines()[-1])
    if result["errors"]:
        raise SystemExit(f"loadgen saw errors {where}: {result['errors']}")
    return float(result["ttfb_ms"]["p50"])


class Loopback:
    """Every process on 127.0.0.1 of this machine."""

    def __init__(self, modes: list[str]) -> None:
        self.modes = modes
        self.ports = {"direct": free_port(), **{m: free_port() for m in modes if m != "direct"}}
        self.scratch = tempfile.TemporaryDirectory(prefix="fleetd-dataplane-")
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        sim = ["llm-sim", "--host", "127.0.0.1", "--port", str(self.ports["direct"]), "--latency-ms", "0",
               "--chunk-delay-ms", "50"]  # fmt: skip
        self.procs.append(subprocess.Popen([fleetd_exe(), *sim], stdout=subprocess.DEVNULL))
        wait_port(self.ports["direct"], self.procs[0])
        for mode in self.modes:
            if mode == "direct":
                continue
            self.procs.append(subprocess.Popen(
                [sys.executable, str(RELAYS), "--serve", mode, "--upstream", f"http://127.0.0.1:{self.ports['direct']}",
                 "--host", "127.0.0.1", "--port", str(self.ports[mode]),
                 "--ledger", f"{self.scratch.name}/{mode}.db"]))  # fmt: skip
            wait_port(self.ports[mode], self.procs[-1])

    def run(self, mode: str, concurrency: int, duration: float) -> float:
        url = f"http://127.0.0.1:{self.ports[mode]}{PATH}"
        out = subprocess.run([fleetd_exe(), *loadgen_args(url, mode, concurrency, duration)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        return ttfb_p50(out.stdout, f"at {url}")

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.scratch.cleanup()


class Docker:
    """The bench's topology in containers, without fleetd: the simulator on an egress network; each relay a
    container (image fleetd/zone2) on that network and on an agents' network; the load generator a container
    (1 CPU, 512m, as in bench/gateway.py) on the agents' network, or on the egress network for direct."""

    def __init__(self, modes: list[str]) -> None:
        self.modes = modes
        self.hex = secrets.token_hex(4)
        self.prefix = f"fleetd-dataplane-{self.hex}"
        self.label = f"{BASELINE_LABEL}={self.hex}"
        self.agents, self.egress = f"{self.prefix}-agents", f"{self.prefix}-egress"
        self.seq = 0

    def _docker(self, *args: str) -> str:
        out = subprocess.run(["docker", *args], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"docker {' '.join(args[:3])}...: {out.stderr.strip()}")
        return out.stdout.strip()

    def start(self) -> None:
        for network in (self.agents, self.egress):
            self._docker("network", "create", "--label", self.label, network)
        self._docker(
            "run",
            "-d",
            "--name",
            f"{self.prefix}-sim",
            "--label",
            self.label,
            "--network",
            self.egress,
            *LOG_OPTS,
            IMAGE,
            "llm-sim",
            "--port",
            "8000",
            "--latency-ms",
            "0",
            "--chunk-delay-ms",
            "50",
        )
        bench_dir = Path(__file__).resolve().parent
        for mode in self.modes:
            if mode == "direct":
                continue
            name = f"{self.prefix}-{mode}"
            self._docker(
                "run", "-d", "--name", name, "--label", self.label, "--network", self.agents, *LOG_OPTS,
                "--memory", "256m", "--cpus", "2", "--read-only", "--tmpfs", "/tmp",
                "-v", f"{bench_dir}:/bench:ro", "--entrypoint", "python3", IMAGE, "/bench/relays.py", "--serve", mode,
                "--upstream", f"http://{self.prefix}-sim:8000", "--host", "0.0.0.0", "--port", "8080",
                "--ledger", f"/tmp/{mode}.db")  # fmt: skip
            self._docker("network", "connect", self.egress, name)
        time.sleep(3)
        for mode in ("direct", *[m for m in self.modes if m != "direct"]):
            self.run(mode, 1, 2.0)  # the relays listen and the path works before anything is measured

    def run(self, mode: str, concurrency: int, duration: float) -> float:
        self.seq += 1
        name = f"{self.prefix}-load-{self.seq}"
        url = f"http://{self.prefix}-sim:8000{PATH}" if mode == "direct" else f"http://{self.prefix}-{mode}:8080{PATH}"
        network = self.egress if mode == "direct" else self.agents
        args = ["--label", self.label, "--network", network, *LOG_OPTS, "--memory", "512m", "--cpus", "1", IMAGE,
                *loadgen_args(url, mode, concurrency, duration)]  # fmt: skip
        logs = run_to_end(name, args)
        return ttfb_p50(logs.stdout, f"in {name} ({logs.stderr.strip()[-300:]})")

    def stop(self) -> None:
        remove_containers(f"label={self.label}")
        for network in (self.agents, self.egress):
            subprocess.run(["docker", "network", "rm", network], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    parser.add_argument("--concurrency", default="1,100", help="streams in flight, one scenario each")
    parser.add_argument("--docker", action="store_true", help="containers and bridge networks instead of loopback")
    parser.add_argument("--modes", default="zone2,aioclient,bare,bytes", help="the relays to run (comma-separated), "
                        "besides direct, which is always run")
    args = parser.parse_args()
    modes = ["direct", *(m for m in args.modes.split(",") if m != "direct")]
    unknown = set(modes) - {"direct", *SERVERS}
    if unknown:
        parser.error(f"unknown relays: {', '.join(sorted(unknown))}")
    topology: Loopback | Docker = Docker(modes) if args.docker else Loopback(modes)
    where = "containers on bridge networks" if args.docker else "loopback"
    print(
        f"dataplane bench ({where}): code {code_version()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}; {args.rounds} rounds of {args.duration:g} s per mode"
    )
    try:
        topology.start()
        rows, ok = [], True
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            ttfb: dict[str, list[float]] = {m: [] for m in modes}
            for round_ in range(args.rounds):
                order = modes[round_ % len(modes) :] + modes[: round_ % len(modes)]
                got = {mode: topology.run(mode, concurrency, args.duration) for mode in order}
                for mode, value in got.items():
                    ttfb[mode].append(value)
                print(
                    f"  c{concurrency} round {round_ + 1}: " + ", ".join(f"{m} {v:.3f} ms" for m, v in got.items()),
                    flush=True,
                )
            # added: the median over rounds of (relay - direct) in the same round
            added = {m: statistics.median(t - d for t, d in zip(ttfb[m], ttfb["direct"], strict=True))
                     for m in modes[1:]}  # fmt: skip
            rows.append([f"stream c{concurrency}", *(statistics.median(ttfb[m]) for m in modes),
                         *(added[m] for m in modes[1:])])  # fmt: skip
            ok = ok and added.get("zone2", 0.0) <= TARGET_TTFB_ADDED_MS
        print()
        print(table(["scenario", *(f"{m} ttfb p50" for m in modes), *(f"added {m}" for m in modes[1:])], rows))
        verdict(
            ok,
            f"zone 2's relay adds <= {TARGET_TTFB_ADDED_MS:g} ms TTFB p50 ({where}; aioclient is the "
            "baseline, bare and bytes floors, not judged)",
        )
    finally:
        topology.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
