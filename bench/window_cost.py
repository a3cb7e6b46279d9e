"""Window cost: does a metrics scrape's read of the store grow with the records the retention windows keep?

The windows keep a week of removed agents' records and a month of events by default: at the soak's pace (three
lifecycles a second) that is ~1.8 M agents and ~8 M events. This fills a state.db with ``--sizes`` agents' full
lifecycles (created, running, a probe failure, a restart, exited, removed: 7 transitions and 5 events each) and
times, median of ``--repeat``, what a scrape and ``fleetd status`` read from it: ``Store.counts()`` (the lifetime
counters) and ``Store.state_counts()``. Side by side: this tree, and the baseline commit (``--baseline-ref``, default
the last commit before the counters were kept by triggers), each in its own process on its own file.

Target: this tree's figures flat across sizes (within 1.2x of the smallest, or within 0.01 ms of it: these are
microseconds), whatever the baseline's do.

Run: .venv/bin/python bench/window_cost.py [--sizes 1000,10000,100000] [--baseline-ref 2aa0a24]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import table, verdict

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.2

# Run in a child process with the tree under test first on sys.path: fills a store, prints the medians (ms).
PROBE = r"""
import json, statistics, sys, time
from datetime import timedelta
from pathlib import Path
from fleetd.models import Reason, State, iso, utcnow
from fleetd.store import Store

path, size, repeat = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
store = Store(path)
conn = store.conn
old = iso(utcnow() - timedelta(days=1))
conn.execute("BEGIN")
for n in range(size):
    agent_id = f"{n:012x}"
    conn.execute("INSERT INTO agents (id, name, image, role, state, reason, created_at, finished_at, deadline, spec) "
                 "VALUES (?, ?, 'img', 'default', 'removed', 'exited', ?, ?, ?, '{}')",
                 (agent_id, agent_id, old, old, old))
    for before, after, reason in ((None, "created", None), ("created", "running", None),
                                  ("running", "restarting", "liveness_failed"), ("restarting", "running", None),
                                  ("running", "stopping", "ttl_expired"), ("stopping", "exited", "ttl_expired"),
                                  ("exited", "removed", "ttl_expired")):
        conn.execute("INSERT INTO transitions (agent_id, at, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?)",
                     (agent_id, old, before, after, reason))
    for kind, data in (("created", "{}"), ("probe_failed", '{"probe": "liveness"}'), ("restarted", "{}"),
                       ("signal", '{"signal": "SIGTERM"}'), ("state", "{}")):
        conn.execute("INSERT INTO events (at, agent_id, type, message, data) VALUES (?, ?, ?, 'm', ?)",
                     (old, agent_id, kind, data))
conn.execute("COMMIT")

def median_ms(work):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000

counts = store.counts()
print(json.dumps({"counts": median_ms(store.counts), "state_counts": median_ms(store.state_counts),
                  "spawns": counts["spawns"]}))
"""


def measure(tree: Path, size: int, repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="fleetd-window-") as tmp:
        # cwd too: ``python -c`` puts the working directory before PYTHONPATH on sys.path.
        out = subprocess.run([sys.executable, "-c", PROBE, str(Path(tmp) / "state.db"), str(size), str(repeat)],
                             cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, check=True,
                             capture_output=True, text=True).stdout
    figures: dict[str, float] = json.loads(out)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--baseline-ref", default="2aa0a24")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    current: dict[str, list[float]] = {"counts": [], "state_counts": []}
    with tempfile.TemporaryDirectory(prefix="fleetd-baseline-") as tmp:
        tree = Path(tmp) / "src"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.baseline_ref],
                       check=True, capture_output=True)
        try:
            for size in sizes:
                base = measure(tree, size, args.repeat)
                this = measure(REPO, size, args.repeat)
                assert base["spawns"] == this["spawns"] == size, (base, this)
                for key, figures in current.items():
                    figures.append(this[key])
                rows.append([f"{size:,}", f"{base['counts']:.3f}", f"{this['counts']:.3f}",
                             f"{base['state_counts']:.3f}", f"{this['state_counts']:.3f}"])
                print(table(["AGENTS IN WINDOW", "counts() BASELINE ms", "counts() THIS ms",
                             "state_counts() BASELINE ms", "state_counts() THIS ms"], rows[-1:]), flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False,
                           capture_output=True)
    print(table(["AGENTS IN WINDOW", "counts() BASELINE ms", "counts() THIS ms", "state_counts() BASELINE ms",
                 "state_counts() THIS ms"], rows))
    flat = {key: max(f) <= max(TARGET * f[0], f[0] + 0.01) for key, f in current.items()}
    worst = ", ".join(f"{key} {max(f) / f[0]:.2f}x" for key, f in current.items())
    verdict(all(flat.values()), f"this tree's counts() and state_counts() flat from {sizes[0]:,} to {sizes[-1]:,} "
                                f"agents in the window (worst: {worst})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
