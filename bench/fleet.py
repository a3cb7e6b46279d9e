"""Fleets of workers: how fast a task reaches a warm agent, how many tasks a pool gets through, how fast it grows.

Three figures, each beside its baseline in the same run, on one daemon with workers built on the SDK
(``fleetd_agent.tasks()``, through zone 2):

1. Task start latency, submit (``POST /v1/tasks``) to the worker holding the task (the worker reads the wall
   clock when ``tasks()`` hands it the task; one host, one clock), ``--latency-tasks`` tasks one after another,
   with a warm pool. Baseline: a cold start, the same work as one agent per task (``POST /v1/agents`` to the
   agent's first line of Python). Target (issue 16): warm p50 <= 20 ms and p99 <= 100 ms.
2. Queue throughput: ``--tasks`` no-op tasks submitted at once (``--submitters`` threads) to ``--workers``
   ready agents; end to end, first submit to last completion. Target: >= 1,000 tasks/s. Three times: one task
   per ``POST /v1/tasks`` over a connection each (the CLI's client; no target: a program submitting a thousand
   tasks a second keeps its connection open, as requests' Session, httpx and aiohttp do), then over a connection
   kept open per thread, then ``--batch`` per ``POST /v1/tasks/batch``. Beside them: each run's submit rate (the
   API's side), and the pool's rate alone (every task queued before the workers first poll). The workers loop
   with ``tasks(prefetch=True)``: each answer brings the next task (``?next=0``), one round trip per task.
3. Scale-up reaction: ``--burst`` tasks submitted at once (one per request, then ``--batch`` per request) to a
   deployment with no agent and ``--max`` of them; time until all ``--max`` are running. Each task holds its
   worker 2 s, as one waiting on an LLM does (a no-op task would have the first agents burn the CPU the others
   need to start). Baseline: ``--max`` agents spawned at once through the API, to running, each starting Python
   and importing the SDK as a worker does (``BASELINE_AGENT``). Target: at most 1 s more than the baseline
   (container start time).

Run: .venv/bin/python bench/fleet.py [--latency-tasks 200] [--tasks 10000] [--workers 20] [--batch 100] [--burst 500]
[--max 20] [--parts latency,throughput,scale]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import IMAGE, Bench, KeptConnection, summary, table, verdict

WORKER = """
import time, fleetd_agent
for task in fleetd_agent.tasks(wait=30, prefetch=True):
    got = time.time()
    if isinstance(task.input, dict):
        time.sleep(task.input.get("sleep", 0))
    task.complete({"got": got})
"""
BURST_TASK = {"sleep": 2}  # as an agent waiting on an LLM: no CPU taken from the agents still starting
FIRST_LINE = "import time; print(time.time(), flush=True)"
# The scale-up baseline's agents do what a pool's do once started (start Python, import the SDK), without a task
# queue to poll: the CPU the first ones take from the containers still starting is the same on both sides.
BASELINE_AGENT = "import time, fleetd_agent; time.sleep(300)"
# (label, batched, kept connections): one task per request over a connection each (the CLI's client: no target, a
# program submitting a thousand tasks a second keeps its connection), then kept connections, then batches.
THROUGHPUT_RUNS = (("one task per request, a connection each", False, False),
                   ("one task per request, kept connections", False, True),
                   ("{batch} tasks per request", True, False))
LIMITS = {"memory": "64m", "cpus": "0.25", "pids_limit": 32, "ttl": 3600}


def deploy(bench: Bench, name: str, **options: Any) -> None:
    body = {"image": IMAGE, "command": ["python3", "-c", WORKER], **LIMITS, **options}
    bench.client().call("PUT", f"/v1/deployments/{name}", body)


def replicas(bench: Bench, name: str) -> dict[str, int]:
    view: dict[str, Any] = bench.client().call("GET", f"/v1/deployments/{name}")
    return dict(view["replicas"]) | {"succeeded": view["queue"]["succeeded"]}


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.05) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


def remove(bench: Bench, name: str) -> None:
    bench.client().call("DELETE", f"/v1/deployments/{name}")
    wait_until(lambda: not [d for d in bench.client().call("GET", "/v1/deployments") if d["name"] == name], 120,
               f"deployment {name} to go")


def submit(bench: Bench, name: str, payload: Any = None) -> tuple[float, str]:
    sent = time.time()
    task: dict[str, Any] = bench.client().call("POST", "/v1/tasks", {"deployment": name, "input": payload})
    return sent, task["id"]


def warm_latency(bench: Bench, count: int) -> list[float]:
    deploy(bench, "warm", min=2, max=2)
    wait_until(lambda: replicas(bench, "warm")["idle"] == 2, 120, "two warm agents")
    client = bench.client()
    latencies = []
    for _ in range(count):
        sent, task_id = submit(bench, "warm")
        done = client.call("POST", f"/v1/tasks/{task_id}/wait?timeout=30")
        latencies.append((done["output"]["got"] - sent) * 1000)
    remove(bench, "warm")
    return latencies


def cold_latency(bench: Bench, count: int) -> list[float]:
    latencies = []
    client = bench.client()
    for _ in range(count):
        sent = time.time()
        agent = client.call("POST", "/v1/agents", {"image": IMAGE, "command": ["python3", "-c", FIRST_LINE],
                                                   **LIMITS})
        client.call("POST", f"/v1/agents/{agent['id']}/wait")
        first = bench.fleetd("logs", agent["id"]).stdout.split()[0]
        latencies.append((float(first) - sent) * 1000)
        client.call("DELETE", f"/v1/agents/{agent['id']}?force=true")
    return latencies


def submit_all(bench: Bench, name: str, tasks: int, submitters: int, batch: int, payload: Any = None,
               kept: bool = False) -> None:
    """``tasks`` tasks of ``payload`` (None: no-op), from ``submitters`` threads: one per request (``batch`` 1),
    else ``batch`` per ``POST /v1/tasks/batch``; over a connection per request (the CLI's), or with ``kept`` one
    kept open per thread (an HTTP client library's)."""
    local = threading.local()
    opened: list[KeptConnection] = []

    def call(path: str, body: dict[str, Any]) -> Any:
        if not kept:
            return bench.client().call("POST", path, body)
        if not hasattr(local, "connection"):
            local.connection = KeptConnection(bench.socket)
            opened.append(local.connection)
        return local.connection.call("POST", path, body)

    if batch <= 1:
        bodies = [{"deployment": name, "input": payload}] * tasks
        path = "/v1/tasks"
    else:
        bodies = [{"deployment": name, "tasks": [{"input": payload}] * min(batch, tasks - start)}
                  for start in range(0, tasks, batch)]
        path = "/v1/tasks/batch"
    try:
        with ThreadPoolExecutor(max_workers=submitters) as pool:
            list(pool.map(lambda body: call(path, body), bodies))
    finally:
        for connection in opened:
            connection.close()


def throughput(bench: Bench, tasks: int, workers: int, submitters: int, batch: int, kept: bool) -> dict[str, float]:
    name = f"bulk{batch}{'k' if kept else 'c'}"  # one of its own: another run's tasks, kept, would count as done
    deploy(bench, name, min=workers, max=workers, tasks_per_agent=10_000)
    wait_until(lambda: replicas(bench, name)["idle"] == workers, 300, f"{workers} ready agents", 0.5)
    started = time.monotonic()
    submit_all(bench, name, tasks, submitters, batch, kept=kept)
    submitted = time.monotonic() - started
    wait_until(lambda: replicas(bench, name)["succeeded"] >= tasks, 600, f"{tasks} tasks done", 0.1)
    elapsed = time.monotonic() - started
    remove(bench, name)
    return {"submit/s": tasks / submitted, "tasks/s": tasks / elapsed, "seconds": elapsed}


def drain_rate(bench: Bench, tasks: int, workers: int, submitters: int, hold: float, batch: int) -> float:
    """Tasks/s of the pool alone: its workers wait ``hold`` s before their first poll, while every task is
    submitted (``batch`` per request); timed from the first task leased to the last one done."""
    name = "held"
    late = f"import time; time.sleep({hold})\n" + WORKER
    body = {"image": IMAGE, "command": ["python3", "-c", late], **LIMITS, "min": workers, "max": workers,
            "tasks_per_agent": 10_000}
    bench.client().call("PUT", f"/v1/deployments/{name}", body)
    wait_until(lambda: replicas(bench, name)["live"] == workers, 300, f"{workers} agents", 0.5)
    started = time.monotonic()
    submit_all(bench, name, tasks, submitters, batch)
    if time.monotonic() - started > hold:
        raise SystemExit(f"submitting took longer than the workers' {hold:g} s hold: raise --hold")
    wait_until(lambda: bench.client().call("GET", f"/v1/deployments/{name}")["queue"]["leased"] > 0, 120,
               "the first lease", 0.01)
    first = time.monotonic()
    wait_until(lambda: replicas(bench, name)["succeeded"] >= tasks, 600, f"{tasks} tasks done", 0.1)
    rate = tasks / (time.monotonic() - first)
    remove(bench, name)
    return rate


def scale_up(bench: Bench, burst: int, most: int, submitters: int, batch: int) -> tuple[float, float, float]:
    """Seconds to ``most`` running after ``burst`` tasks, submitted one per request and then ``batch`` per
    request; and the baseline, ``most`` agents spawned at once."""
    reactions = []
    for per_request in (1, batch):
        name = f"burst{per_request}"
        deploy(bench, name, min=0, max=most, tasks_per_agent=5)
        started = time.monotonic()
        submit_all(bench, name, burst, submitters, per_request, BURST_TASK)
        wait_until(lambda name=name: replicas(bench, name)["live"] >= most and running(bench, name) >= most,
                   300, f"{most} agents running")
        reactions.append(time.monotonic() - started)
        remove(bench, name)
        bench.wait_no_live_agents(300)
    started = time.monotonic()
    requests = [{"image": IMAGE, "command": ["python3", "-c", BASELINE_AGENT], **LIMITS} for _ in range(most)]
    answers = bench.spawn_api_many(requests, concurrency=most)
    failed = [a for a in answers if isinstance(a, Exception)]
    if failed:
        raise SystemExit(f"baseline spawns failed: {failed[:3]}")
    baseline = time.monotonic() - started
    bench.remove_all_containers()
    return reactions[0], reactions[1], baseline


def running(bench: Bench, name: str) -> int:
    return sum(1 for a in bench.live_agents() if a["name"].startswith(f"{name}-") and a["state"] == "running")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-tasks", type=int, default=200)
    parser.add_argument("--cold-tasks", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--submitters", type=int, default=16)
    parser.add_argument("--batch", type=int, default=100, help="tasks per POST /v1/tasks/batch in the second run")
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--max", type=int, default=20)
    parser.add_argument("--hold", type=float, default=45.0, help="s the drain run's workers wait before polling")
    parser.add_argument("--parts", default="latency,throughput,scale", help="which figures to measure")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    results: dict[str, Any] = {}
    with Bench() as bench:
        if "latency" in parts:
            warm = results["warm"] = summary(warm_latency(bench, args.latency_tasks))
            cold = results["cold"] = summary(cold_latency(bench, args.cold_tasks))
            print(table(["START LATENCY MS", "N", "MIN", "P50", "P90", "P99", "MAX"],
                        [[label, int(s["n"]), s["min"], s["median"], s["p90"], s["p99"], s["max"]]
                         for label, s in (("warm pool (task to worker)", warm),
                                          ("cold (spawn to first line)", cold))]), flush=True)
        if "throughput" in parts:
            rows = []
            for label, batch, kept in THROUGHPUT_RUNS:
                label = label.format(batch=args.batch)
                batch = args.batch if batch else 1
                flow = results[label] = throughput(bench, args.tasks, args.workers, args.submitters, batch, kept)
                rows.append([label, args.tasks, args.workers, flow["submit/s"], flow["tasks/s"], flow["seconds"]])
            drained = results["pool alone"] = drain_rate(bench, args.tasks, args.workers, args.submitters,
                                                         args.hold, args.batch)
            rows.append(["pool alone: all queued first", args.tasks, args.workers, "", drained, ""])
            print(table(["THROUGHPUT, NO-OP TASKS", "TASKS", "WORKERS", "SUBMIT/S", "TASKS/S END TO END", "SECONDS"],
                        rows), flush=True)
        if "scale" in parts:
            reaction, batched, baseline = results["scale_up"] = scale_up(bench, args.burst, args.max,
                                                                          args.submitters, args.batch)
            print(table(["SCALE UP", f"SECONDS TO {args.max} RUNNING"],
                        [[f"{args.burst} tasks submitted at once, one per request", reaction],
                         [f"{args.burst} tasks submitted at once, {args.batch} per request", batched],
                         [f"baseline: {args.max} spawned at once", baseline]]), flush=True)
    if "latency" in parts:
        verdict(warm["median"] <= 20 and warm["p99"] <= 100,
                f"warm start p50 {warm['median']:.1f} ms (<= 20), p99 {warm['p99']:.1f} ms (<= 100); cold p50 "
                f"{cold['median']:.0f} ms")
    if "throughput" in parts:
        for label, batch, kept in THROUGHPUT_RUNS:
            label = label.format(batch=args.batch)
            rate = results[label]["tasks/s"]
            if kept or batch:
                verdict(rate >= 1000, f"{rate:.0f} tasks/s end to end (>= 1000), {label}")
            else:
                print(f"(no target) {rate:.0f} tasks/s end to end, {label}")
    if "scale" in parts:
        for label, seconds in (("one per request", reaction), (f"{args.batch} per request", batched)):
            verdict(seconds <= baseline + 1, f"scale up {seconds:.2f} s ({label}) vs {baseline:.2f} s to start the "
                                             "agents alone (at most 1 s more)")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
