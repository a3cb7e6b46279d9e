"""Daemon memory: resident size of the fleetd daemon idle, with 200 running agents, and after ps/events.

Reads VmRSS (resident now) and VmHWM (resident peak) from /proc/PID/status of the daemon:
  1. idle, 0 agents (after one status call);
  2. after spawning N agents (default 200, ``sleep 600``, 32m memory, 0.05 CPUs) through the API,
     ``--concurrency`` requests in flight;
  3. after ``fleetd ps`` and ``fleetd events`` (CLI, each run twice, plus ``ps -a --json``).

Target: VmRSS and VmHWM <= 80 MB with 200 agents (the peak covers every step above).
Run: .venv/bin/python bench/daemon_memory.py [--agents 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import IMAGE, Bench, process_memory, table, verdict

TARGET_MB = 80.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=10, help="spawn requests in flight")
    args = parser.parse_args()

    with Bench() as bench:
        print(f"instance {bench.instance}, daemon pid {bench.pid}, {args.agents} agents")
        rows = []

        def sample(step: str) -> dict[str, int]:
            live = len(bench.live_agents())
            mem = process_memory(bench.pid)
            rows.append([step, live, mem["VmRSS"] / 1024, mem["VmHWM"] / 1024, mem["RssAnon"] / 1024, mem["Threads"]])
            print(f"{step}: VmRSS {mem['VmRSS'] / 1024:.1f} MB, VmHWM {mem['VmHWM'] / 1024:.1f} MB", flush=True)
            return mem

        time.sleep(2)
        sample("idle, 0 agents")
        body = {
            "image": IMAGE,
            "command": ["sleep", "600"],
            "ttl": 900,
            "memory": "32m",
            "cpus": "0.05",
            "pids_limit": 32,
        }
        start = time.time()
        results = bench.spawn_api_many([body] * args.agents, args.concurrency)
        failed = [r for r in results if not isinstance(r, dict)]
        print(f"spawned {args.agents - len(failed)} agents in {time.time() - start:.1f} s ({len(failed)} failed)")
        for error in failed[:5]:
            print(f"  spawn failed: {error}")
        time.sleep(2)
        sample(f"{args.agents} agents running")
        for _ in range(2):
            bench.fleetd("ps")
            bench.fleetd("events")
        bench.fleetd("ps", "-a", "--json")
        bench.fleetd("events", "--json")
        final = sample(f"{args.agents} agents, after ps and events")

        print()
        print(table(["step", "live agents", "VmRSS MB", "VmHWM MB", "RssAnon MB", "threads"], rows))
        rss, hwm = final["VmRSS"] / 1024, final["VmHWM"] / 1024
        print()
        ok = rss <= TARGET_MB and hwm <= TARGET_MB and not failed
        verdict(
            ok, f"daemon with {args.agents} agents: VmRSS {rss:.1f} MB, VmHWM {hwm:.1f} MB (target <= {TARGET_MB:g} MB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
