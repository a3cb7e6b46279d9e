"""Soak: many agent lifecycles on one daemon; does every command stay as fast, and the daemon as small?

Spawns agents that exit at once (``true``), through the API, ``--concurrency`` at a time, until ``--lifecycles``
have run; the daemon removes each exited container (log_retention 5 s, max_exited 50) and, after the retention
window (``--records-retention`` 120 s, ``--events-retention`` 240 s: short, so that a run sees it work and the
windows are full by the first checkpoint), their
records. At each checkpoint (``--checkpoints``, counts of lifecycles) spawning pauses until no agent is live, then
it measures, median of ``--repeat`` runs each:

- the CLI's wall time for ``fleetd status``, ``fleetd ps``, ``fleetd ps -a``, ``fleetd events -n 100``;
- a Prometheus scrape (``GET /metrics`` on the daemon's metrics listener; median of 51), and the daemon's own time for
  one (``fleetd_scrape_duration_seconds``);
- one spawn (``POST /v1/agents``, the API call, to running);
- the daemon's resident memory (VmRSS) and the size of state.db (with its WAL).

Target: at every checkpoint, each latency and the RSS within 1.2 x its figure at the first checkpoint, and state.db
bounded by the retention window (not growing with the lifecycles run).

Run: .venv/bin/python bench/soak.py [--lifecycles 20000] [--checkpoints 1000,5000,10000,20000] [--concurrency 6]

On a machine that does other work during the hours of a run, ``--quiet-lock FILE`` takes an exclusive flock on
FILE for each checkpoint's measurement: run the other work under ``flock -s FILE CMD`` and the two never overlap.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import socket
import sqlite3
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import IMAGE, Bench, table, timed_run, verdict

TARGET = 1.2
SETTLE = 12.0  # s after the last exit: the janitor removes the exited containers (log_retention 5 s) first
AGENT = {"image": IMAGE, "command": ["true"], "ttl": 600, "memory": "32m", "cpus": "0.05", "pids_limit": 32,
         "disk": "16m"}
SCRAPES = 51  # scrapes per checkpoint (median)
# Figures reported, not held to the 1.2x target: what explains the others.
SHOWN_ONLY = ("state.db MB", "open fds", "scrape KB", "records", "cli start ms", "db free MB", "db rows")
COMMANDS = {"status": ["status"], "ps": ["ps"], "ps -a": ["ps", "-a"], "events -n 100": ["events", "-n", "100"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def db_mb(state_dir: Path) -> float:
    return sum(p.stat().st_size for p in state_dir.glob("state.db*")) / (1 << 20)


def db_inside(state_dir: Path) -> tuple[float, float]:
    """state.db's free pages (MB: space SQLite keeps for reuse, not data) and its rows in the tables retention
    bounds (agents, transitions, events, tasks), read-only beside the daemon."""
    with sqlite3.connect(f"file:{state_dir / 'state.db'}?mode=ro", uri=True, timeout=5) as conn:
        free = conn.execute("PRAGMA freelist_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
        rows = sum(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                   for table in ("agents", "transitions", "events", "tasks"))
    return free / (1 << 20), float(rows)


class Spawner:
    """``concurrency`` threads that spawn agents through the API until told to pause or the total is reached."""

    def __init__(self, bench: Bench, concurrency: int) -> None:
        self.bench = bench
        self.done = 0
        self.failed = 0
        self.target = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)]
        self.stop = False
        self._inflight = 0

    def run_until(self, target: int) -> None:
        """Until ``target`` agents have been spawned (a failed spawn is not a lifecycle: it is counted apart)."""
        self.target = target
        if not self.threads[0].is_alive():
            for thread in self.threads:
                thread.start()
        last = time.monotonic()
        while True:
            with self.lock:
                if self.done >= target:
                    return
            if time.monotonic() - last >= 300:
                last = time.monotonic()
                print(f"{time.strftime('%H:%M:%S')} {self.done} lifecycles, {self.failed} failed", flush=True)
            time.sleep(0.2)

    def _take(self) -> bool:
        with self.lock:
            if self.stop or self.done + self._inflight >= self.target:
                return False
            self._inflight += 1
            return True

    def _run(self) -> None:
        client = self.bench.client()
        while not self.stop:
            if not self._take():
                time.sleep(0.05)
                continue
            try:
                client.call("POST", "/v1/agents", AGENT)
                ok = True
            except Exception as exc:  # a failed spawn is counted and reported, the soak goes on
                print(f"{time.strftime('%H:%M:%S')} spawn failed: {exc}", flush=True)
                ok = False
                time.sleep(1.0)  # e.g. the engine restarting: wait for it rather than spin through the target
            with self.lock:
                self._inflight -= 1
                if ok:
                    self.done += 1
                else:
                    self.failed += 1


def median_time(run: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure(bench: Bench, metrics_url: str, repeat: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    # The control: the CLI starting and exiting without a word to the daemon. Every CLI figure includes it; when it
    # moves, the machine moved (page cache, CPU), not the daemon.
    figures["cli start ms"] = statistics.median(timed_run([bench.exe, "--version"], bench.env)[0]
                                                for _ in range(repeat)) * 1000
    for label, args in COMMANDS.items():
        figures[label] = statistics.median(timed_run([bench.exe, *args], bench.env)[0] for _ in range(repeat)) * 1000

    body = b""

    def scrape() -> None:
        nonlocal body
        with urllib.request.urlopen(metrics_url, timeout=30) as response:
            body = response.read()

    # A scrape takes ~2 ms: a median of a handful is noise at that scale, so of SCRAPES of them; and the daemon's own
    # time for one (fleetd_scrape_duration_seconds, the median over those scrapes) apart from the HTTP round trip.
    own: list[float] = []

    def scrape_and_read() -> None:
        scrape()
        own.extend(float(line.split()[-1]) for line in body.decode().splitlines()
                   if line.startswith("fleetd_scrape_duration_seconds "))

    figures["metrics scrape"] = median_time(scrape_and_read, max(repeat, SCRAPES))
    figures["scrape (daemon) ms"] = statistics.median(own) * 1000 if own else 0.0
    spawned: list[str] = []

    def spawn() -> None:
        spawned.append(bench.client().call("POST", "/v1/agents", {**AGENT, "command": ["sleep", "60"]})["id"])

    figures["spawn (API)"] = median_time(spawn, repeat)
    bench.fleetd("kill", *spawned)
    figures["daemon RSS MB"] = rss_mb(bench.pid)
    figures["state.db MB"] = db_mb(bench.state_dir)
    # What a growing scrape would read more of: the daemon's open fds (the process collector lists them) and the
    # exposition's size. Shown, not held to the target.
    figures["open fds"] = len(os.listdir(f"/proc/{bench.pid}/fd"))
    figures["scrape KB"] = len(body) / 1024
    # The rows `ps -a` lists: every record the window keeps (rate x the records retention, up to a purge's period
    # more): `ps -a` follows them, not the lifecycles run.
    figures["records"] = float(len(bench.client().call("GET", "/v1/agents?all=1")))
    figures["db free MB"], figures["db rows"] = db_inside(bench.state_dir)
    return figures


@contextlib.contextmanager
def quiet(path: str | None) -> Any:
    """Hold an exclusive flock on ``path`` (when given): other work run under ``flock -s`` waits, and is waited for."""
    if not path:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lifecycles", type=int, default=20000)
    parser.add_argument("--checkpoints", default="1000,5000,10000,20000")
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure at a checkpoint (median)")
    # Windows that fill before the first checkpoint (1,000 lifecycles take ~4 minutes): else `ps -a` at 1,000 lists
    # fewer records than the full window does later, and reads as growth.
    parser.add_argument("--records-retention", type=int, default=120, help="seconds (the daemon's default: 7 days)")
    parser.add_argument("--events-retention", type=int, default=240, help="seconds (the daemon's default: 30 days)")
    parser.add_argument("--quiet-lock", help="a file to flock exclusively while measuring (see above)")
    args = parser.parse_args()
    checkpoints = sorted({int(c) for c in args.checkpoints.split(",") if int(c) <= args.lifecycles})
    port = free_port()
    config = {"log_retention": 5, "max_exited": 50, "metrics": f"127.0.0.1:{port}",
              "retention": {"records": args.records_retention, "events": args.events_retention}}
    rows: list[list[Any]] = []
    first: dict[str, float] | None = None
    worst: dict[str, float] = {}
    with Bench(config=config) as bench:
        print(f"instance {bench.instance}, daemon pid {bench.pid}, {args.lifecycles} lifecycles, "
              f"{args.concurrency} at a time, checkpoints {checkpoints}", flush=True)
        spawner = Spawner(bench, args.concurrency)
        started = time.monotonic()
        for checkpoint in checkpoints:
            spawner.run_until(checkpoint)
            live = bench.wait_no_live_agents(timeout=300)
            time.sleep(SETTLE)
            elapsed = time.monotonic() - started
            with quiet(args.quiet_lock):
                figures = measure(bench, f"http://127.0.0.1:{port}/metrics", args.repeat)
            first = first or figures
            ratios = {k: v / first[k] if first[k] else 1.0 for k, v in figures.items() if k not in SHOWN_ONLY}
            for key, ratio in ratios.items():
                worst[key] = max(worst.get(key, 0.0), ratio)
            rows.append([checkpoint, f"{elapsed:.0f}", spawner.failed, live,
                         *(f"{figures[k]:.1f}" for k in figures)])
            print(table(["LIFECYCLES", "ELAPSED S", "FAILED", "LIVE LEFT", *figures], rows[-1:]), flush=True)
        spawner.stop = True
        db_sizes = [float(r[4 + list(first or {}).index("state.db MB")]) for r in rows]
    assert first is not None
    print(table(["LIFECYCLES", "ELAPSED S", "FAILED", "LIVE LEFT", *first], rows))
    print(table(["FIGURE", "WORST / FIRST CHECKPOINT"], [[k, f"{v:.2f}"] for k, v in worst.items()]))
    bounded = len(db_sizes) < 2 or max(db_sizes[1:]) <= 1.2 * max(db_sizes[0], 1.0) + 1
    ok = all(v <= TARGET for v in worst.values()) and bounded
    verdict(ok, f"every latency and the RSS within {TARGET}x of the first checkpoint's; state.db "
                f"{'bounded' if bounded else 'growing'} ({', '.join(f'{s:.1f}' for s in db_sizes)} MB)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
