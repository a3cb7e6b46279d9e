"""Deadline precision: when does an agent get SIGTERM relative to its deadline, 200 deadlines in ~3 s?

Spawns N agents (default 200; 32m memory, 0.05 CPUs) through the API, ``--concurrency`` at a time.
Each one's ``ttl`` is computed just before its request from one absolute target, so that all the
deadlines land in a window of ``--window`` seconds about ``--lead`` seconds after the start. Each
agent runs::

    sh -c 'trap "date +%s.%N; exit 0" TERM; sleep infinity & wait'

so its log holds the moment it received SIGTERM (the containers share the host's clock). After
every agent has ended, the benchmark reads each agent's record (``deadline``, and the time of its
``running -> stopping`` transition, i.e. when the daemon's timer acted) and its logs
(``fleetd logs ID``), and the ``signal`` events, and reports

    lateness = SIGTERM received - deadline

Target: every agent received SIGTERM no earlier than its deadline and at most 1 s after it.

``--baseline`` then repeats the experiment without fleetd, in the same run: N plain ``docker run``
containers (same image, command and limits) get SIGTERM at scheduled times in the same kind of
window, from a 64-thread pool like fleetd's, (a) through the Docker API (``POST /containers/ID/kill``,
what fleetd does) and (b) with ``pidfd_send_signal`` on the container's init process (no dockerd in
the path). It tells how much of the lateness is the engine's and how much is fleetd's.

Run: .venv/bin/python bench/deadline_precision.py [--agents 200] [--lead 75] [--window 3] [--baseline]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import IMAGE, Bench, process_memory, summary, table, verdict

TRAP = 'trap "date +%s.%N; exit 0" TERM; sleep infinity & wait'
LATE_LIMIT = 1.0


def epoch(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--lead", type=float, default=75.0, help="seconds from start to the first deadline")
    parser.add_argument("--window", type=float, default=3.0, help="seconds the deadlines are spread over")
    parser.add_argument("--concurrency", type=int, default=10, help="spawn requests in flight")
    parser.add_argument("--grace", type=int, default=10, help="the agents' grace period (SIGKILL after)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the daemon's log")
    parser.add_argument("--baseline", action="store_true", help="also measure plain docker (see above)")
    args = parser.parse_args()

    # Keep every exited agent's container (the default keeps 100): its log holds the measurement.
    with Bench(keep_logs=args.keep_logs, config={"max_exited": args.agents + 100}) as bench:
        run(bench, args)
        if args.baseline:
            for method in ("docker API kill", "pidfd_send_signal"):
                bench.remove_all_containers()
                baseline(bench, args, method)
    return 0


def baseline(bench: Bench, args: argparse.Namespace, method: str) -> None:
    """SIGTERM plain containers at scheduled times, without fleetd; print the lateness table."""
    print(f"\n-- baseline without fleetd: {args.agents} docker run containers, SIGTERM by {method} --", flush=True)
    cmds = [bench.docker_run_cmd("32m", "0.05", 32, command=("sh", "-c", TRAP)) for _ in range(args.agents)]
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        ids = [r.stdout.strip() for r in pool.map(lambda c: subprocess.run(c, capture_output=True, text=True), cmds)]
    ids = [i for i in ids if i]
    api = docker.from_env(max_pool_size=64).api
    pidfds = (
        {cid: os.pidfd_open(api.inspect_container(cid)["State"]["Pid"]) for cid in ids} if "pidfd" in method else {}
    )
    start = time.time() + 5
    targets = [start + args.window * i / max(1, len(ids) - 1) for i in range(len(ids))]
    began: dict[str, float] = {}

    def send(cid: str) -> None:
        began[cid] = time.time()
        if pidfds:
            signal.pidfd_send_signal(pidfds[cid], signal.SIGTERM)
        else:
            api.kill(cid, signal="SIGTERM")

    with ThreadPoolExecutor(max_workers=64) as pool:  # fleetd's Docker pool size
        for cid, target in zip(ids, targets, strict=True):
            time.sleep(max(0.0, target - time.time()))
            pool.submit(send, cid)
    for fd in pidfds.values():
        os.close(fd)
    time.sleep(5)
    lateness, queued = [], []
    for cid, target in zip(ids, targets, strict=True):
        lines = api.logs(cid).decode().split()
        if lines:
            lateness.append(float(lines[-1]) - target)
        queued.append(began[cid] - target)
    rows = [
        [label, *[summary(v)[k] for k in ("n", "min", "median", "p90", "p99", "max")]]
        for label, v in (("SIGTERM received - target", lateness), ("signal call began - target", queued))
    ]
    print(table(["seconds", "n", "min", "median", "p90", "p99", "max"], rows))
    late = sum(1 for x in lateness if x > LATE_LIMIT)
    print(
        f"baseline {method}: {late} of {len(ids)} late by more than {LATE_LIMIT:g} s, "
        f"{len(ids) - len(lateness)} without a SIGTERM time; load average {os.getloadavg()[0]:.1f}"
    )


def run(bench: Bench, args: argparse.Namespace) -> None:
    print(
        f"instance {bench.instance}, daemon pid {bench.pid}, {args.agents} agents, deadlines in a "
        f"{args.window:g} s window ~{args.lead:g} s after start"
    )
    start = time.time()
    first_deadline = start + args.lead

    def request(index: int) -> Any:
        def build() -> dict[str, Any]:
            target = first_deadline + args.window * index / max(1, args.agents - 1)
            return {
                "image": IMAGE,
                "command": ["sh", "-c", TRAP],
                "ttl": max(1, round(target - time.time())),
                "memory": "32m",
                "cpus": "0.05",
                "pids_limit": 32,
                "grace": args.grace,
                "name": f"dl-{index:03d}",
            }

        return build

    results = bench.spawn_api_many([request(i) for i in range(args.agents)], args.concurrency)
    spawned = time.time()
    agents = [r for r in results if isinstance(r, dict)]
    failed = [r for r in results if not isinstance(r, dict)]
    deadlines = [epoch(a["deadline"]) or 0.0 for a in agents]
    print(
        f"spawned {len(agents)} agents in {spawned - start:.1f} s ({len(failed)} failed); deadlines "
        f"from +{min(deadlines) - start:.1f} s to +{max(deadlines) - start:.1f} s "
        f"(spread {max(deadlines) - min(deadlines):.2f} s)",
        flush=True,
    )
    for error in failed[:5]:
        print(f"  spawn failed: {error}")
    if spawned > min(deadlines):
        print("  note: spawning overran the first deadline; raise --lead for a clean run")
    memory_loaded = process_memory(bench.pid)

    # Wait for every deadline, the agents' exits and a margin.
    wait_until = max(deadlines) + 2
    while time.time() < wait_until:
        time.sleep(min(5.0, wait_until - time.time()))
    live = bench.wait_no_live_agents(timeout=args.grace + 60)
    print(f"all deadlines passed; {live} agents still live", flush=True)

    def collect(agent: dict[str, Any]) -> dict[str, Any]:
        record = bench.client().call("GET", f"/v1/agents/{agent['id']}")
        logs = bench.fleetd("logs", agent["id"], check=False)
        received = None
        for line in logs.stdout.split():
            try:
                received = float(line)
            except ValueError:
                continue
        stopping = next((t["at"] for t in record["transitions"] if t["to_state"] == "stopping"), None)
        return {
            "id": agent["id"],
            "deadline": epoch(record["deadline"]),
            "received": received,
            "stopping": epoch(stopping),
            "state": record["state"],
            "reason": record["reason"],
            "exit_code": record["exit_code"],
        }

    with ThreadPoolExecutor(max_workers=10) as pool:
        rows = list(pool.map(collect, agents))
    events = bench.client().call("GET", "/v1/events", query={"limit": 100000})
    signal_at = {
        e["agent_id"]: epoch(e["time"])
        for e in events
        if e["type"] == "signal" and e["data"].get("signal") == "SIGTERM"
    }

    measured = [r for r in rows if r["received"] is not None and r["deadline"] is not None]
    missing = [r for r in rows if r["received"] is None]
    lateness = [r["received"] - r["deadline"] for r in measured]
    fired = [r["stopping"] - r["deadline"] for r in measured if r["stopping"]]
    event_lag = [signal_at[r["id"]] - r["deadline"] for r in measured if r["id"] in signal_at]
    delivery = [r["received"] - r["stopping"] for r in measured if r["stopping"]]

    print()
    table_rows = []
    for label, values in (
        ("SIGTERM received - deadline", lateness),
        ("daemon acted (-> stopping) - deadline", fired),
        ("'signal' event logged - deadline", event_lag),
        ("SIGTERM received - daemon acted", delivery),
    ):
        if values:
            s = summary(values)
            table_rows.append([label, s["n"], s["min"], s["median"], s["p90"], s["p99"], s["max"]])
    print(table(["seconds", "n", "min", "median", "p90", "p99", "max"], table_rows))

    late = [x for x in lateness if x > LATE_LIMIT]
    early = [x for x in lateness if x < 0]
    reasons: dict[str, int] = {}
    for r in rows:
        key = f"{r['state']}/{r['reason']}/exit {r['exit_code']}"
        reasons[key] = reasons.get(key, 0) + 1
    memory_after = process_memory(bench.pid)
    print()
    print(
        table(
            ["summary", "value"],
            [
                ["agents spawned", len(agents)],
                ["spawn failures", len(failed)],
                ["agents with no SIGTERM time in their log", len(missing)],
                [f"late by more than {LATE_LIMIT:g} s", len(late)],
                ["early (before the deadline)", len(early)],
                ["deadline spread (s)", max(deadlines) - min(deadlines)],
                *[[f"final state {k}", v] for k, v in sorted(reasons.items())],
                ["daemon VmRSS MB with all agents running", memory_loaded["VmRSS"] / 1024],
                ["daemon VmHWM MB at the end", memory_after["VmHWM"] / 1024],
            ],
        )
    )
    if late:
        worst = sorted(measured, key=lambda r: r["received"] - r["deadline"])[-5:]
        print("\nlatest agents:")
        print(
            table(
                ["agent", "deadline", "acted +s", "received +s"],
                [
                    [
                        r["id"],
                        datetime.fromtimestamp(r["deadline"]).strftime("%H:%M:%S.%f")[:-3],
                        (r["stopping"] or 0) - r["deadline"],
                        r["received"] - r["deadline"],
                    ]
                    for r in worst
                ],
            )
        )
    print()
    ok = bool(lateness) and not late and not early and not missing and not failed
    verdict(
        ok,
        f"{len(measured) - len(late) - len(early)}/{len(agents)} agents got SIGTERM within [0, {LATE_LIMIT:g}] s "
        "of the deadline "
        f"(max lateness {max(lateness, default=float('nan')):.3f} s, {len(late)} late, {len(early)} early)",
    )


if __name__ == "__main__":
    sys.exit(main())
