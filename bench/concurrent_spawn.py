"""Concurrent spawn: 50 ``fleetd spawn`` CLI processes at once vs 50 ``docker run -d`` at once (same flags).

A batch launches every process as fast as it can, then waits for all of them; its figure is the wall
time from the first launch to the last exit. Each round runs one batch of each kind, the order
alternating from round to round; every container is removed (and the daemon left with no live
agent) before the next batch.

Besides wall times it reports the CPU time the batch's client processes used (fleetd CLI or docker
CLI) and the CPU time of the fleetd daemon. ``--breakdown`` adds to each round a batch of the same
spawns made as in-process API calls from threads (no CLI process): fleetd's cost without the CLI.

Target: median fleetd batch time / median docker batch time <= 1.2.
Run: .venv/bin/python bench/concurrent_spawn.py [--concurrency 50] [--rounds 3] [--breakdown]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import IMAGE, ApiError, Bench, children_cpu, percentile, process_cpu, table, verdict

TARGET = 1.2
MEMORY, CPUS, PIDS = "256m", "0.25", 256


def run_batch(commands: list[list[str]], env: dict[str, str]) -> tuple[float, list[float], list[str], list[str]]:
    """Launch all commands, wait for all; return (batch wall time, per-process times, stdouts, errors)."""
    procs: list[tuple[float, subprocess.Popen[str]]] = []
    first = time.perf_counter()
    for cmd in commands:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        procs.append((time.perf_counter(), proc))

    def wait(item: tuple[float, subprocess.Popen[str]]) -> tuple[float, float, str, str, int]:
        launched, proc = item
        out, err = proc.communicate()
        ended = time.perf_counter()
        return ended, ended - launched, out.strip(), err.strip(), proc.returncode

    with ThreadPoolExecutor(max_workers=len(procs)) as pool:
        results = list(pool.map(wait, procs))
    last = max(r[0] for r in results)
    errors = [f"exit {r[4]}: {r[3]}" for r in results if r[4] != 0]
    return last - first, [r[1] for r in results], [r[2] for r in results if r[4] == 0], errors


def clean(bench: Bench, agent_ids: list[str]) -> None:
    """Kill this batch's agents through the API, remove every container, wait for a quiet daemon."""

    def kill(agent_id: str) -> None:
        try:
            bench.client().call("POST", f"/v1/agents/{agent_id}/kill", {"signal": "SIGKILL"})
        except Exception as exc:
            print(f"  (kill {agent_id}: {exc})")

    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(kill, agent_ids))
    bench.remove_all_containers()
    live = bench.wait_no_live_agents(60)
    if live:
        print(f"  warning: {live} agents still live after cleanup")
    time.sleep(2)  # let dockerd settle before the next batch


def api_batch(bench: Bench, count: int) -> tuple[float, list[float], list[str], list[str]]:
    """The same spawns as in-process POST /v1/agents from ``count`` threads: no CLI start-up (a breakdown)."""
    body = {"image": IMAGE, "command": ["sleep", "300"], "ttl": 600, "memory": MEMORY, "cpus": CPUS, "pids_limit": PIDS}
    barrier = threading.Barrier(count)

    def one(_: int) -> tuple[float, float, str]:
        barrier.wait()
        begin = time.perf_counter()
        try:
            agent = bench.client().call("POST", "/v1/agents", body)
        except ApiError as exc:
            return begin, time.perf_counter(), f"error: {exc}"
        return begin, time.perf_counter(), agent["id"]

    with ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(one, range(count)))
    first = min(r[0] for r in results)
    last = max(r[1] for r in results)
    ids = [r[2] for r in results if not r[2].startswith("error: ")]
    errors = [r[2] for r in results if r[2].startswith("error: ")]
    return last - first, [r[1] - r[0] for r in results], ids, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=50, help="processes per batch (default 50)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each one batch of each kind (default 3)")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also run each round a batch of in-process API spawns (threads, no CLI processes)",
    )
    parser.add_argument("--spare-namespaces", type=int, default=None,
                        help="the daemon's spare_namespaces (default: its default, 2): holders started ahead")
    args = parser.parse_args()

    config = {} if args.spare_namespaces is None else {"spare_namespaces": args.spare_namespaces}
    with Bench(config=config) as bench:
        print(
            f"instance {bench.instance}, daemon pid {bench.pid}, {args.concurrency} processes per batch, "
            f"{args.rounds} rounds"
        )
        kinds = ["fleetd spawn", "docker run"] + (["fleetd API"] if args.breakdown else [])
        walls: dict[str, list[float]] = {kind: [] for kind in kinds}
        rows = []
        failures = 0
        for round_ in range(args.rounds):
            shift = round_ % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                client_cpu, daemon_cpu = children_cpu(), process_cpu(bench.pid)
                if kind == "fleetd spawn":
                    cmds = [
                        bench.spawn_cmd("--ttl", "600", "--memory", MEMORY, "--cpus", CPUS, "--pids-limit", str(PIDS))
                        for _ in range(args.concurrency)
                    ]
                    wall, each, outs, errors = run_batch(cmds, bench.env)
                elif kind == "docker run":
                    cmds = [bench.docker_run_cmd(MEMORY, CPUS, PIDS) for _ in range(args.concurrency)]
                    wall, each, outs, errors = run_batch(cmds, bench.env)
                else:
                    wall, each, outs, errors = api_batch(bench, args.concurrency)
                client_cpu, daemon_cpu = children_cpu() - client_cpu, process_cpu(bench.pid) - daemon_cpu
                failures += len(errors) if kind != "fleetd API" else 0
                for error in errors[:3]:
                    print(f"  {kind} failed: {error}")
                walls[kind].append(wall)
                rows.append(
                    [
                        round_ + 1,
                        kind,
                        wall,
                        statistics.median(each),
                        percentile(each, 90),
                        max(each),
                        client_cpu,
                        daemon_cpu,
                        len(errors),
                    ]
                )
                print(f"round {round_ + 1} {kind:<12}: batch {wall:6.2f} s  ({len(errors)} failed)", flush=True)
                clean(bench, outs if kind != "docker run" else [])

        print()
        print(
            table(
                [
                    "round",
                    "kind",
                    "batch s",
                    "median proc s",
                    "p90 proc s",
                    "max proc s",
                    "client CPU s",
                    "daemon CPU s",
                    "failed",
                ],
                rows,
            )
        )
        medians = {kind: statistics.median(values) for kind, values in walls.items()}
        ratio = medians["fleetd spawn"] / medians["docker run"]
        summary_rows: list[list[object]] = [[f"median {kind} batch s", value] for kind, value in medians.items()]
        summary_rows.append(["ratio of medians (fleetd spawn / docker run)", ratio])
        if args.breakdown:
            summary_rows.append(
                ["ratio of medians (fleetd API / docker run)", medians["fleetd API"] / medians["docker run"]]
            )
        summary_rows.append(["failed processes", failures])
        print()
        print(table(["summary", "value"], summary_rows))
        print()
        verdict(
            ratio <= TARGET and failures == 0,
            f"concurrent spawn ratio fleetd / docker = {ratio:.3f} (target <= {TARGET}), {failures} failures",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
