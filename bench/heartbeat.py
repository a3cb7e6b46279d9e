"""Heartbeat watchdog: how soon after 2 x interval of silence does an agent get SIGTERM, and what do
200 agents heartbeating every 5 s cost the daemon?

Two batches of N agents (``--agents``, default 200; 32m memory, 0.05 CPUs, pids 32, grace 2 s), spawned
through the API ``--concurrency`` at a time, one batch after the other, all running the same script::

    python3 -c AGENT   # heartbeat() every FLEETD_HEARTBEAT_INTERVAL s until SIGUSR1; exit 0 on SIGTERM

1. **baseline**: ``heartbeat_interval 0`` (no heartbeats, no watchdog; the script only sleeps) and a
   long ttl. Once all run (and ``--settle`` s more), the daemon's CPU time (utime + stime from
   /proc/PID/stat, all threads) and zone 2's are sampled over ``--measure`` s. Then every agent's
   deadline is moved (``POST /v1/agents/ID/extend``) so that the deadlines land in a window of
   ``--window`` s: the daemon's own TTL timer, the yardstick for the watchdog below.
2. **heartbeat**: ``heartbeat_interval 5`` (``--interval``). Once every agent's ``last_heartbeat`` is
   set (and ``--settle`` s more), the same CPU sampling over ``--measure`` s. Then each agent is
   told to stop beating (SIGUSR1 through the Docker API, at moments spread over ``--window`` s) and
   goes on running silently, so the watchdog must condemn it 2 x interval after its last beat.

Measured from the daemon's own records and events (ISO times with ms; the containers, zone 2 and the
daemon share the host clock), with ``due`` = the agent's ``last_heartbeat`` (the moment the daemon
took the beat) + 2 x interval, or its ``deadline`` for the baseline:

    lateness = time of the SIGTERM 'signal' event - due

(the event is written when the signal call returned), and the ``heartbeat_lost`` event and the
``running -> stopping`` transition (when the daemon acted) against the same ``due``.

Targets: every silent agent gets SIGTERM no earlier than 2 x interval after its last heartbeat and
at most 1 s after it (p50, p99 and max reported next to the TTL deadline's); the daemon uses
<= 2% of one core with N agents heartbeating every 5 s (the baseline without heartbeats beside it).

Run: .venv/bin/python bench/heartbeat.py [--agents 200] [--interval 5] [--measure 60] [--window 30]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import IMAGE, ApiError, Bench, process_cpu, summary, table, verdict

# The agent: beats from its main loop (so a SIGUSR1 between beats silences it for good), sleeps on,
# exits 0 at once on SIGTERM. Nothing is printed or written.
AGENT = """\
import os, signal, time
import fleetd_agent
quiet = False
def hush(*_):
    global quiet
    quiet = True
signal.signal(signal.SIGUSR1, hush)
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
interval = float(os.environ.get("FLEETD_HEARTBEAT_INTERVAL") or 0)
while interval > 0 and not quiet:
    fleetd_agent.heartbeat()
    time.sleep(interval)
while True:
    signal.pause()
"""
LATE_LIMIT = 1.0
CPU_TARGET = 2.0  # % of one core
FIGURES = ("SIGTERM 'signal' event - due", "daemon acted (-> stopping) - due", "'heartbeat_lost' event - due")


def epoch(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def stamp(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%H:%M:%S.%f")[:-3]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=200, help="agents per batch")
    parser.add_argument("--interval", type=float, default=5.0, help="the heartbeat interval (s)")
    parser.add_argument("--measure", type=float, default=60.0, help="seconds of CPU sampling per batch")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between 'all running' and sampling")
    parser.add_argument("--window", type=float, default=30.0, help="seconds the silences / deadlines are spread over")
    parser.add_argument("--concurrency", type=int, default=10, help="spawn requests in flight")
    parser.add_argument("--grace", type=int, default=2, help="the agents' grace period (SIGKILL after)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the daemon's log")
    args = parser.parse_args()

    # Keep every exited agent's container until the batch is read (the default keeps 100).
    bench = Bench(keep_logs=args.keep_logs, config={"max_exited": 2 * args.agents + 100})
    try:
        with bench:
            print(
                f"instance {bench.instance}, daemon pid {bench.pid}, {args.agents} agents per batch, heartbeat "
                f"interval {args.interval:g} s, CPU sampled over {args.measure:g} s, silences/deadlines spread over "
                f"{args.window:g} s"
            )
            api = docker.from_env(max_pool_size=16).api
            base = batch(bench, args, api, heartbeats=False)
            bench.remove_all_containers()  # the baseline's exited containers: off the engine during the next batch
            beat = batch(bench, args, api, heartbeats=True)
            report(bench, args, base, beat)
    finally:
        remove_volumes(bench.instance)
    return 0


def remove_volumes(instance: str) -> None:
    """The agents' checkpoint volumes, should the daemon's teardown (in the harness's cleanup) have missed any."""
    out = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", f"label=fleetd.instance={instance}"],
        capture_output=True,
        text=True,
    )
    names = out.stdout.split()
    for start in range(0, len(names), 50):
        subprocess.run(["docker", "volume", "rm", "-f", *names[start : start + 50]], capture_output=True)
    if names:
        print(f"(removed {len(names)} leftover volume(s) of {instance})")


# -- one batch ------------------------------------------------------------------
def batch(bench: Bench, args: argparse.Namespace, api: Any, heartbeats: bool) -> dict[str, Any]:
    kind = "heartbeat" if heartbeats else "baseline"
    interval = args.interval if heartbeats else 0
    print(f"\n-- {kind}: {args.agents} agents, heartbeat interval {interval:g} --", flush=True)
    body = {
        "image": IMAGE,
        "command": ["python3", "-c", AGENT],
        "ttl": 3600,
        "memory": "32m",
        "cpus": "0.05",
        "pids_limit": 32,
        "grace": args.grace,
        "heartbeat_interval": interval,
    }
    start = time.time()
    results = bench.spawn_api_many(
        [{**body, "name": f"{'hb' if heartbeats else 'ttl'}-{i:03d}"} for i in range(args.agents)], args.concurrency
    )
    agents = [r for r in results if isinstance(r, dict)]
    failed = [r for r in results if not isinstance(r, dict)]
    print(f"spawned {len(agents)} agents in {time.time() - start:.1f} s ({len(failed)} failed)", flush=True)
    for error in failed[:5]:
        print(f"  spawn failed: {error}")
    out: dict[str, Any] = {"kind": kind, "agents": agents, "failed": failed, "never_beat": []}
    if heartbeats:
        out["never_beat"] = wait_beating(bench, agents, timeout=90.0)
    time.sleep(args.settle)
    out["cpu"] = sample_cpu(bench, args.measure)
    live = {a["id"]: a for a in bench.live_agents()}
    ended = [a["id"] for a in agents if a["id"] not in live]
    stale = [
        i for i, a in live.items() if heartbeats and (a["heartbeat_age"] is None or a["heartbeat_age"] > 2 * interval)
    ]
    print(
        f"sampled {args.measure:g} s: daemon {out['cpu']['daemon %']:.2f}% of one core, zone 2 "
        f"{out['cpu']['zone 2 %']:.2f}%; {len(live)} live, {len(ended)} ended meanwhile"
        + (f", {len(stale)} with a heartbeat older than 2 x interval" if heartbeats else ""),
        flush=True,
    )
    out["ended_early"] = ended
    alive = [a for a in agents if a["id"] in live]
    if heartbeats:
        out["told"] = silence(api, alive, args.window)
        wait_until = max(out["told"].values(), default=time.time()) + 2 * interval + 2
    else:
        out["extended"] = move_deadlines(bench, alive, args.window, args.concurrency)
        wait_until = max((epoch(a["deadline"]) or 0.0 for a in out["extended"].values()), default=time.time()) + 2
    while time.time() < wait_until:
        time.sleep(min(5.0, wait_until - time.time()))
    left = bench.wait_no_live_agents(timeout=args.grace + 60)
    print(f"all {'silences' if heartbeats else 'deadlines'} due; {left} agents still live", flush=True)
    out["rows"] = collect(bench, agents, interval)
    return out


def wait_beating(bench: Bench, agents: list[dict[str, Any]], timeout: float) -> list[str]:
    """Wait until every agent of the batch has a ``last_heartbeat``; return those that never beat."""
    ids = {a["id"] for a in agents}
    start = time.monotonic()
    while True:
        live = {a["id"]: a for a in bench.live_agents() if a["id"] in ids}
        pending = [i for i, a in live.items() if not a["last_heartbeat"]]
        gone = ids - set(live)
        if not pending or time.monotonic() - start > timeout:
            print(
                f"{len(ids) - len(pending) - len(gone)} agents beating after {time.monotonic() - start:.1f} s "
                f"({len(pending)} not yet, {len(gone)} ended)",
                flush=True,
            )
            return pending + sorted(gone)
        time.sleep(1.0)


def zone2_pid(bench: Bench) -> int | None:
    """Host pid of zone 2's main process (past docker-init)."""
    name = f"fleetd-{bench.instance}-zone2"
    out = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", name], capture_output=True, text=True)
    pid = int(out.stdout.strip() or 0)
    if not pid:
        return None
    if Path(f"/proc/{pid}/comm").read_text().strip() == "docker-init":
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
    return pid


def sample_cpu(bench: Bench, seconds: float) -> dict[str, float]:
    """CPU seconds of the daemon and of zone 2 over ``seconds`` of wall time, and in % of one core."""
    z2 = zone2_pid(bench)
    load = os.getloadavg()[0]
    begin = time.monotonic()
    d0, z0 = process_cpu(bench.pid), process_cpu(z2) if z2 else 0.0
    time.sleep(seconds)
    d1 = process_cpu(bench.pid)
    z2_after = zone2_pid(bench)
    z1 = process_cpu(z2) if z2 and z2_after == z2 else float("nan")  # nan: zone 2 restarted meanwhile
    wall = time.monotonic() - begin
    return {
        "wall": wall,
        "daemon s": d1 - d0,
        "daemon %": 100 * (d1 - d0) / wall,
        "zone 2 s": z1 - z0,
        "zone 2 %": 100 * (z1 - z0) / wall,
        "load": (load + os.getloadavg()[0]) / 2,
    }


def silence(api: Any, agents: list[dict[str, Any]], window: float) -> dict[str, float]:
    """SIGUSR1 to each agent (it stops beating) at moments spread over ``window`` s; return when each was sent."""
    start = time.time() + 1
    targets = [start + window * i / max(1, len(agents) - 1) for i in range(len(agents))]
    told: dict[str, float] = {}

    def send(agent: dict[str, Any]) -> None:
        api.kill(agent["container_id"], signal="SIGUSR1")
        told[agent["id"]] = time.time()

    with ThreadPoolExecutor(max_workers=8) as pool:
        for agent, target in zip(agents, targets, strict=True):
            time.sleep(max(0.0, target - time.time()))
            pool.submit(send, agent)
    return told


def move_deadlines(
    bench: Bench, agents: list[dict[str, Any]], window: float, concurrency: int
) -> dict[str, dict[str, Any]]:
    """Extend each agent so that the deadlines land ~5 s from now, spread over ``window`` s."""
    first = time.time() + 5 + len(agents) * 0.02
    targets = {a["id"]: first + window * i / max(1, len(agents) - 1) for i, a in enumerate(agents)}

    def one(agent_id: str) -> tuple[str, dict[str, Any] | None]:
        ttl = max(1, round(targets[agent_id] - time.time()))
        try:
            return agent_id, bench.client().call("POST", f"/v1/agents/{agent_id}/extend", {"ttl": ttl})
        except ApiError as exc:
            print(f"  extend {agent_id}: {exc}")
            return agent_id, None

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        done = dict(pool.map(one, list(targets)))
    extended = {i: a for i, a in done.items() if a is not None}
    deadlines = [epoch(a["deadline"]) or 0.0 for a in extended.values()]
    if deadlines:
        print(
            f"deadlines moved: {len(extended)} from {stamp(min(deadlines))} to {stamp(max(deadlines))}"
            + (" (the first came before the last extend returned)" if min(deadlines) < time.time() else ""),
            flush=True,
        )
    return extended


def collect(bench: Bench, agents: list[dict[str, Any]], interval: float) -> list[dict[str, Any]]:
    """Each agent's record (deadline, last heartbeat, -> stopping) and its events."""
    events = bench.client().call("GET", "/v1/events", query={"limit": 100000})
    by_agent: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_agent.setdefault(e["agent_id"], []).append(e)

    def one(agent: dict[str, Any]) -> dict[str, Any]:
        record = bench.client().call("GET", f"/v1/agents/{agent['id']}")
        mine = by_agent.get(agent["id"], [])
        sigterm = next((e for e in mine if e["type"] == "signal" and e["data"].get("signal") == "SIGTERM"), None)
        lost = next((e for e in mine if e["type"] == "heartbeat_lost"), None)
        stopping = next((t["at"] for t in record["transitions"] if t["to_state"] == "stopping"), None)
        last = epoch(record["last_heartbeat"])
        due = (last + 2 * interval if last else None) if interval else epoch(record["deadline"])
        return {
            "id": agent["id"],
            "name": record["name"],
            "last_heartbeat": last,
            "due": due,
            "sigterm": epoch(sigterm["time"]) if sigterm else None,
            "via": sigterm["data"].get("via") if sigterm else None,
            "lost": epoch(lost["time"]) if lost else None,
            "lost_message": lost["message"] if lost else None,
            "stopping": epoch(stopping),
            "state": record["state"],
            "reason": record["reason"],
            "exit_code": record["exit_code"],
        }

    with ThreadPoolExecutor(max_workers=10) as pool:
        return list(pool.map(one, agents))


# -- the report -----------------------------------------------------------------
def figures(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    timed = [r for r in rows if r["due"] is not None]
    return {
        FIGURES[0]: [r["sigterm"] - r["due"] for r in timed if r["sigterm"] is not None],
        FIGURES[1]: [r["stopping"] - r["due"] for r in timed if r["stopping"] is not None],
        FIGURES[2]: [r["lost"] - r["due"] for r in timed if r["lost"] is not None],
    }


def report(bench: Bench, args: argparse.Namespace, base: dict[str, Any], beat: dict[str, Any]) -> None:
    n = args.agents
    hb, ttl = figures(beat["rows"]), figures(base["rows"])
    print()
    print(f"due = last heartbeat + 2 x {args.interval:g} s (heartbeat), the deadline (TTL baseline); seconds")
    table_rows = []
    for figure in FIGURES:
        for label, values in (("heartbeat lost", hb[figure]), ("TTL deadline", ttl[figure])):
            if values:
                s = summary(values)
                table_rows.append([label, figure, s["n"], s["min"], s["median"], s["p90"], s["p99"], s["max"]])
    print(table(["watch", "seconds", "n", "min", "p50", "p90", "p99", "max"], table_rows))

    cb, ch = base["cpu"], beat["cpu"]
    print()
    print(
        table(
            ["CPU", "daemon s", "daemon % of a core", "zone 2 s", "zone 2 % of a core", "over s", "load avg"],
            [
                [
                    f"{n} agents, no heartbeats (baseline)",
                    cb["daemon s"],
                    cb["daemon %"],
                    cb["zone 2 s"],
                    cb["zone 2 %"],
                    cb["wall"],
                    cb["load"],
                ],
                [
                    f"{n} agents, a heartbeat every {args.interval:g} s",
                    ch["daemon s"],
                    ch["daemon %"],
                    ch["zone 2 s"],
                    ch["zone 2 %"],
                    ch["wall"],
                    ch["load"],
                ],
                [
                    "difference (heartbeats - baseline)",
                    ch["daemon s"] - cb["daemon s"],
                    ch["daemon %"] - cb["daemon %"],
                    ch["zone 2 s"] - cb["zone 2 s"],
                    ch["zone 2 %"] - cb["zone 2 %"],
                    "",
                    "",
                ],
            ],
        )
    )

    rows = beat["rows"]
    told = beat.get("told", {})
    # Condemned while still beating: its heartbeat_lost came before it was told to stop.
    wrongly = [r for r in rows if r["lost"] is not None and (r["id"] not in told or r["lost"] < told[r["id"]])]
    lateness = hb[FIGURES[0]]
    late = [r for r in rows if r["due"] and r["sigterm"] and r["sigterm"] - r["due"] > LATE_LIMIT]
    early = [r for r in rows if r["due"] and r["sigterm"] and r["sigterm"] < r["due"]]
    no_sigterm = [r for r in rows if r["sigterm"] is None or r["due"] is None]
    not_lost = [r for r in rows if r["reason"] != "heartbeat_lost"]
    base_wrong = [r for r in base["rows"] if r["reason"] != "ttl_expired"]
    all_events = bench.client().call("GET", "/v1/events", query={"limit": 100000})
    paused = [e for e in all_events if e["type"] in ("watchdog_paused", "watchdog_resumed", "zone2_restarted")]

    def states(batch_rows: list[dict[str, Any]]) -> list[list[Any]]:
        counts: dict[str, int] = {}
        for r in batch_rows:
            key = f"{r['state']}/{r['reason']}/exit {r['exit_code']}"
            counts[key] = counts.get(key, 0) + 1
        return [[k, v] for k, v in sorted(counts.items())]

    print()
    print(
        table(
            ["summary", "heartbeat", "baseline"],
            [
                ["agents spawned", len(beat["agents"]), len(base["agents"])],
                ["spawn failures", len(beat["failed"]), len(base["failed"])],
                ["agents that never beat (heartbeat batch)", len(beat["never_beat"]), ""],
                ["agents ended during CPU sampling", len(beat["ended_early"]), len(base["ended_early"])],
                ["condemned before told to stop beating", len(wrongly), ""],
                ["ended for another reason than heartbeat_lost / ttl_expired", len(not_lost), len(base_wrong)],
                [
                    "no SIGTERM event or no due time",
                    len(no_sigterm),
                    len([r for r in base["rows"] if not r["sigterm"]]),
                ],
                [
                    f"SIGTERM late by more than {LATE_LIMIT:g} s",
                    len(late),
                    len([x for x in ttl[FIGURES[0]] if x > LATE_LIMIT]),
                ],
                ["SIGTERM early (before due)", len(early), len([x for x in ttl[FIGURES[0]] if x < 0])],
                ["watchdog_paused / resumed, zone2_restarted events", len(paused), ""],
            ],
        )
    )
    print()
    print(
        table(
            ["final state/reason/exit", "agents"],
            [[f"heartbeat {k}", v] for k, v in states(rows)] + [[f"baseline {k}", v] for k, v in states(base["rows"])],
        )
    )
    for e in paused[:10]:
        print(f"  event {e['time']} {e['type']}: {e['message']}")
    suspects = sorted({r["id"]: r for r in wrongly + late + early + not_lost}.values(), key=lambda r: r["name"])
    if suspects:
        print("\nagents off target (times relative to due):")
        print(
            table(
                ["agent", "name", "last beat", "told +s", "lost +s", "SIGTERM +s", "reason"],
                [
                    [
                        r["id"],
                        r["name"],
                        stamp(r["last_heartbeat"]) if r["last_heartbeat"] else "never",
                        told[r["id"]] - r["due"] if r["due"] and r["id"] in told else "",
                        r["lost"] - r["due"] if r["due"] and r["lost"] else "",
                        r["sigterm"] - r["due"] if r["due"] and r["sigterm"] else "",
                        r["reason"],
                    ]
                    for r in suspects[:10]
                ],
            )
        )
        for r in suspects[:3]:
            if r["lost_message"]:
                print(f"  {r['id']} heartbeat_lost: {r['lost_message']}")

    print()
    h_sum = summary(lateness) if lateness else None
    t_sum = summary(ttl[FIGURES[0]]) if ttl[FIGURES[0]] else None
    ok = bool(lateness) and not (late or early or wrongly or no_sigterm or not_lost or beat["failed"])
    verdict(
        ok,
        f"{len(lateness) - len(late) - len(early)}/{len(beat['agents'])} silent agents got SIGTERM within "
        f"[0, {LATE_LIMIT:g}] s of last heartbeat + 2 x {args.interval:g} s"
        + (f" (p50 {h_sum['median']:.3f}, p99 {h_sum['p99']:.3f}, max {h_sum['max']:.3f} s" if h_sum else " (none")
        + (
            f"; TTL deadline p50 {t_sum['median']:.3f}, p99 {t_sum['p99']:.3f}, max {t_sum['max']:.3f} s)"
            if t_sum
            else ")"
        )
        + (f", {len(wrongly)} condemned while beating" if wrongly else ""),
    )
    ok = ch["daemon %"] <= CPU_TARGET and not beat["never_beat"] and not beat["failed"]
    verdict(
        ok,
        f"daemon CPU with {len(beat['agents']) - len(beat['never_beat'])} agents heartbeating every "
        f"{args.interval:g} s: {ch['daemon %']:.2f}% of one core (target <= {CPU_TARGET:g}%; without heartbeats "
        f"{cb['daemon %']:.2f}%, difference {ch['daemon %'] - cb['daemon %']:+.2f})",
    )


if __name__ == "__main__":
    sys.exit(main())
