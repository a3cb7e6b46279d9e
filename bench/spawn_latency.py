"""Spawn latency: the ``fleetd spawn`` CLI process vs ``docker run -d`` with the same image, command and flags.

Each round runs, in an order that rotates from round to round:
  - fleetd CLI   ``fleetd spawn ...`` until the process exits (the container is running then);
  - docker run   ``docker run -d`` with the flags fleetd applies (the baseline);
  - fleetd API   the same spawn as one in-process ``POST /v1/agents`` (no CLI start-up): a breakdown;
plus ``fleetd --version`` (Python start-up and CLI imports, no daemon call). The containers are
removed after each round so every round starts from the same number of running containers.

Target: median over rounds of (fleetd CLI / docker run) <= 1.10.
Run: .venv/bin/python bench/spawn_latency.py [--n 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import IMAGE, Bench, summary, table, timed_run, verdict

TARGET = 1.10
MEMORY, CPUS, PIDS = "256m", "0.25", 256


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="rounds (pairs) measured (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first (default 2)")
    args = parser.parse_args()

    with Bench() as bench:
        print(f"instance {bench.instance}, daemon pid {bench.pid}, image {IMAGE}, {args.n} rounds")
        times: dict[str, list[float]] = {"fleetd CLI": [], "docker run": [], "fleetd API": [], "CLI start-up": []}
        ratios: list[float] = []
        order = ["fleetd CLI", "docker run", "fleetd API"]
        for round_ in range(args.warmup + args.n):
            agents: list[str] = []
            measured: dict[str, float] = {}
            rotation = order[round_ % 3 :] + order[: round_ % 3]
            for method in rotation:
                if method == "fleetd CLI":
                    cmd = bench.spawn_cmd("--ttl", "600", "--memory", MEMORY, "--cpus", CPUS, "--pids-limit", str(PIDS))
                    elapsed, result = timed_run(cmd, bench.env)
                    check(result, cmd)
                    agents.append(result.stdout.strip())
                elif method == "docker run":
                    cmd = bench.docker_run_cmd(MEMORY, CPUS, PIDS)
                    elapsed, result = timed_run(cmd)
                    check(result, cmd)
                else:
                    body = {
                        "image": IMAGE,
                        "command": ["sleep", "300"],
                        "ttl": 600,
                        "memory": MEMORY,
                        "cpus": CPUS,
                        "pids_limit": PIDS,
                    }
                    start = time.perf_counter()
                    agent = bench.client().call("POST", "/v1/agents", body)
                    elapsed = time.perf_counter() - start
                    agents.append(agent["id"])
                measured[method] = elapsed
            startup, result = timed_run([bench.exe, "--version"], bench.env)
            check(result, ["fleetd", "--version"])
            measured["CLI start-up"] = startup
            # Remove this round's containers before the next one (kill waits for the exit to be recorded).
            bench.fleetd("kill", *agents)
            bench.remove_all_containers()
            if round_ < args.warmup:
                continue
            for method, elapsed in measured.items():
                times[method].append(elapsed)
            ratios.append(measured["fleetd CLI"] / measured["docker run"])
            print(
                f"round {round_ - args.warmup + 1:>3}: "
                + "  ".join(f"{m} {v * 1000:7.1f} ms" for m, v in measured.items()),
                flush=True,
            )

        rows = []
        for method, values in times.items():
            s = summary(values)
            rows.append([method, s["n"], s["min"] * 1000, s["median"] * 1000, s["p90"] * 1000, s["max"] * 1000])
        print()
        print(table(["method", "n", "min ms", "median ms", "p90 ms", "max ms"], rows))
        median_ratio = statistics.median(ratios)
        ratio_of_medians = statistics.median(times["fleetd CLI"]) / statistics.median(times["docker run"])
        api_ratio = statistics.median(times["fleetd API"]) / statistics.median(times["docker run"])
        print()
        print(
            table(
                ["ratio", "value"],
                [
                    ["median of per-round fleetd CLI / docker run", median_ratio],
                    ["median fleetd CLI / median docker run", ratio_of_medians],
                    ["median fleetd API / median docker run", api_ratio],
                    ["median CLI start-up (fleetd --version) ms", statistics.median(times["CLI start-up"]) * 1000],
                ],
            )
        )
        print()
        verdict(
            median_ratio <= TARGET,
            f"median spawn ratio fleetd CLI / docker run = {median_ratio:.3f} (target <= {TARGET:.2f})",
        )
    return 0


def check(result: subprocess.CompletedProcess[str], cmd: list[str]) -> None:
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")


if __name__ == "__main__":
    sys.exit(main())
