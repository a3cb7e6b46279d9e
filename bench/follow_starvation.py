"""Extra check: do interrupted ``fleetd logs -f`` sessions starve the daemon's Docker thread pool?

Found while investigating deadline precision. The daemon streams logs by running ``next(stream)``
on its shared Docker thread pool (64 threads); on a quiet agent that call blocks until the agent
prints. When the reader hangs up (Ctrl-C), nothing unblocks it. This check spawns a quiet agent and
a "victim" agent whose deadline is ~15 s away, runs ``--followers`` (default 64, the pool size)
``fleetd logs -f`` on the quiet agent and interrupts them all with SIGINT, then measures:
  - the wall time of one ``fleetd spawn`` (up to 20 s);
  - whether the victim got its SIGTERM at its deadline (the daemon's "signal" event);
  - how long the daemon takes to exit on SIGTERM.

Target: the spawn takes < 5 s and the victim's SIGTERM goes out within 1 s of its deadline.
Run: .venv/bin/python bench/follow_starvation.py [--followers 64]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import IMAGE, Bench, table, verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--followers", type=int, default=64, help="interrupted logs -f sessions (default 64)")
    args = parser.parse_args()

    # A background job may have SIGINT ignored, and children would inherit that: give them Python's default.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with Bench() as bench:
        print(f"instance {bench.instance}, daemon pid {bench.pid}, {args.followers} interrupted followers")
        quiet = bench.fleetd("spawn", "--ttl", "600", IMAGE, "sleep", "600").stdout.strip()
        victim = bench.fleetd("spawn", "--ttl", "15", "--grace", "1", IMAGE, "sleep", "600").stdout.strip()
        deadline = datetime.fromisoformat(bench.client().call("GET", f"/v1/agents/{victim}")["deadline"]).timestamp()
        followers = [
            subprocess.Popen(
                [bench.exe, "logs", "-f", quiet], env=bench.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            for _ in range(args.followers)
        ]
        time.sleep(3)
        for follower in followers:
            follower.send_signal(signal.SIGINT)
        for follower in followers:
            try:
                follower.wait(timeout=30)
            except subprocess.TimeoutExpired:
                follower.kill()  # still starting up when SIGINT came? it hangs up all the same
                follower.wait()
        time.sleep(1)

        start = time.perf_counter()
        try:
            subprocess.run(bench.spawn_cmd("--ttl", "600"), env=bench.env, capture_output=True, timeout=20)
            spawn_time: float | None = time.perf_counter() - start
        except subprocess.TimeoutExpired:
            spawn_time = None
        time.sleep(max(0.0, deadline + 5 - time.time()))
        record = bench.client(timeout=10).call("GET", f"/v1/agents/{victim}")
        events = bench.client(timeout=10).call("GET", "/v1/events", query={"agent": victim})
        sigterm = [datetime.fromisoformat(e["time"]).timestamp() for e in events if e["type"] == "signal"]
        late = sigterm[0] - deadline if sigterm else None
        exit_time = bench.stop_daemon(timeout=15)

        print()
        print(
            table(
                ["measure", "value"],
                [
                    ["fleetd spawn wall time s", "blocked > 20 s" if spawn_time is None else spawn_time],
                    ["victim state 5 s after its deadline", f"{record['state']}/{record['reason']}"],
                    ["victim SIGTERM sent, s after deadline", "never" if late is None else late],
                    ["daemon exit after SIGTERM s", "> 15 s (SIGKILLed)" if exit_time is None else exit_time],
                ],
            )
        )
        print()
        ok = spawn_time is not None and spawn_time < 5 and late is not None and late <= 1
        verdict(
            ok,
            f"after {args.followers} interrupted `logs -f`: spawn "
            f"{'blocked' if spawn_time is None else f'{spawn_time:.2f} s'}, victim SIGTERM "
            f"{'never sent' if late is None else f'{late:.2f} s after its deadline'}",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
