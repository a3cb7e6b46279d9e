"""One hostile agent against zone 2, while a bystander agent beats and calls an LLM: this code and a baseline.

For each attack of tests/integration/hostile_agents.py (``body``: 20 heartbeats announcing 10 MB and sending all
but the last byte; ``json``: LLM calls whose 9.7 MB body is ``[{},{},...]``; ``connections``: as many idle
connections as one agent can open; ``slowloris``: 60 request heads a byte a second), a fresh daemon runs zone 2
from each image under test, a bystander agent makes a heartbeat and a small chat call every 100 ms for the attack's
length plus 4 s, and the attacker attacks for ``--seconds``. Reported per attack and image: the bystander's calls
that failed, its heartbeat and chat latencies (p50, p99, max), whether the bystander was stopped (heartbeat_lost),
zone 2's restarts, and the peak of zone 2's memory cgroup (its limit is 256 MiB).

Target (the issue's): during each attack the bystander's calls and heartbeats all succeed with p99 under 100 ms,
zone 2 is not restarted, and its memory stays under its limit.

The baseline is an image of zone 2 built from other code: ``--baseline-image IMAGE`` (already built), or
``--baseline-ref REF``, which builds ``fleetd/zone2`` from that commit (a git worktree) and tags it
``fleetd/zone2:bench-baseline``, then builds this tree's images again; the baseline's daemon runs that commit's
code too (FLEETD_BENCH_REF), as an older zone 2 refuses a policy with newer fields. Both together: that image,
already built, with that commit's daemon.

Run: .venv/bin/python bench/hostile.py [--baseline-ref 1ce5586 | --baseline-image fleetd/zone2:bench-baseline]
     [--seconds 15] [--only body,json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BASELINE_LABEL, REPO, Bench, percentile, table, verdict  # also puts the repository on the path

from fleetd import __version__
from tests.integration.hostile_agents import (
    ATTACKS,
    attacker_command,
    bystander_command,
    reported,
    reset_peak_memory,
    zone2_peak_memory,
)

CURRENT = f"fleetd/zone2:{__version__}"
AGENT = "fleetd/agent-python"
LIMIT_MB = 256
P99_TARGET_MS = 100.0


def build(tree: Path) -> None:
    """``fleetd images build`` from the source tree ``tree`` (it tags fleetd/zone2:VERSION and latest)."""
    code = "from fleetd.images import build_images\nfor line in build_images(None): print(line)"
    subprocess.run([sys.executable, "-c", code], cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
                   check=True, capture_output=True, text=True)


def build_baseline(ref: str) -> str:
    """Build zone 2 from ``ref`` and tag it, then this tree's images again; the baseline's tag."""
    tag = "fleetd/zone2:bench-baseline"
    with tempfile.TemporaryDirectory(prefix="fleetd-baseline-") as tmp:
        tree = Path(tmp) / "src"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), ref], check=True,
                       capture_output=True)
        try:
            print(f"building zone 2 from {ref} ...", flush=True)
            build(tree)
            subprocess.run(["docker", "tag", CURRENT, tag], check=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False,
                           capture_output=True)
    print("building this tree's images again ...", flush=True)
    build(REPO)
    return tag


def sim_ready(ip: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{ip}:8000/v1/models", timeout=1):
            return True
    except OSError:
        return False


def one_run(image: str, attack: str, seconds: float, ref: str | None = None) -> dict[str, Any]:
    """One attack against a fresh daemon whose zone 2 runs ``image``; the daemon's code is ``ref``'s when given
    (a zone 2 refuses a policy with fields newer than its code)."""
    saved = os.environ.get("FLEETD_BENCH_REF")
    if ref is not None:
        os.environ["FLEETD_BENCH_REF"] = ref
    try:
        bench = Bench(config={"zone2_image": image})
    finally:
        if saved is None:
            os.environ.pop("FLEETD_BENCH_REF", None)
        else:
            os.environ["FLEETD_BENCH_REF"] = saved
    with bench:
        egress = f"fleetd-{bench.instance}-egress"
        sim = f"fleetd-bench-{bench.hex}-sim"
        for _ in range(100):  # the egress network comes with zone 2
            if subprocess.run(["docker", "network", "inspect", egress], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        subprocess.run(["docker", "run", "-d", "--name", sim, "--label", f"{BASELINE_LABEL}={bench.hex}", "--network",
                        egress, CURRENT, "llm-sim", "--port", "8000", "--chunk-delay-ms", "0"],
                       check=True, capture_output=True)
        ip = subprocess.run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                             sim], check=True, capture_output=True, text=True).stdout.strip()
        for _ in range(100):
            if sim_ready(ip):
                break
            time.sleep(0.2)
        kind = [] if ref is not None else ["--provider", "openai"]  # older code has no provider kinds
        subprocess.run([bench.exe, "cred", "set", "openai", "--upstream", f"http://{sim}:8000", *kind],
                       input="sk-bench", text=True, check=True, capture_output=True, env=bench.env)
        bench.fleetd("role", "set", "worker", "--creds", "openai")
        status = bench.client().call("GET", "/v1/status")["zone2"]
        reset_peak_memory(status["container_id"])
        restarts = status["restarts"]
        bystander = bench.fleetd("spawn", "--role", "worker", "--heartbeat-interval", "1", AGENT,
                                 *bystander_command(seconds + 4)).stdout.strip()
        time.sleep(1.5)
        attacker = bench.fleetd("spawn", "--role", "worker", AGENT, *attacker_command(attack, seconds)).stdout.strip()
        deadline = time.monotonic() + seconds + 120
        while time.monotonic() < deadline:
            states = [bench.client().call("GET", f"/v1/agents/{a}")["state"] for a in (bystander, attacker)]
            if all(s not in ("created", "running", "stopping") for s in states):
                break
            time.sleep(0.5)
        record = bench.client().call("GET", f"/v1/agents/{bystander}")
        status = bench.client().call("GET", "/v1/status")["zone2"]
        calls = reported(bench.fleetd("logs", bystander).stdout, "BYSTANDER") or []
        report = reported(bench.fleetd("logs", attacker).stdout, "ATTACK")
        peak = zone2_peak_memory(status["container_id"] or "")
        return {"calls": calls, "attacker": report, "reason": record["reason"],
                "restarts": status["restarts"] - restarts, "peak_mb": None if peak is None else peak / 2**20}


def latencies(calls: list[list[Any]], kind: str) -> list[float]:
    return sorted(c[2] for c in calls if c[0] == kind and c[1] == 200)


def row(label: str, attack: str, result: dict[str, Any]) -> tuple[list[Any], bool]:
    calls = result["calls"]
    failed = sum(1 for c in calls if c[1] != 200)
    beats, chats = latencies(calls, "heartbeat"), latencies(calls, "chat")
    p99 = max((percentile(v, 99) for v in (beats, chats) if v), default=float("nan"))
    ok = (bool(calls) and failed == 0 and p99 < P99_TARGET_MS and result["restarts"] == 0
          and result["reason"] != "heartbeat_lost" and (result["peak_mb"] or 0) < LIMIT_MB)

    def fig(values: list[float], pct: float) -> str:
        return f"{percentile(values, pct):.1f}" if values else "-"

    return [attack, label, len(calls), failed, fig(beats, 50), fig(beats, 99), fig(chats, 50), fig(chats, 99),
            f"{max(beats + chats, default=0):.0f}", result["reason"], result["restarts"],
            "-" if result["peak_mb"] is None else f"{result['peak_mb']:.0f}",
            json.dumps(result["attacker"], sort_keys=True)[:70]], ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--only", default=",".join(ATTACKS))
    parser.add_argument("--baseline-image")
    parser.add_argument("--baseline-ref")
    args = parser.parse_args()
    images: list[tuple[str, str, str | None]] = [("this code", CURRENT, None)]
    baseline = args.baseline_image or (build_baseline(args.baseline_ref) if args.baseline_ref else None)
    if baseline:
        images.insert(0, ("baseline", baseline, args.baseline_ref))
    rows, all_ok = [], True
    for attack in args.only.split(","):
        for label, image, ref in images:
            print(f"{attack}: {label} ({image}) ...", flush=True)
            cells, ok = row(label, attack, one_run(image, attack, args.seconds, ref))
            rows.append(cells)
            if label == "this code":
                all_ok &= ok
    print(table(["ATTACK", "ZONE 2", "CALLS", "FAILED", "BEAT P50", "BEAT P99", "CHAT P50", "CHAT P99", "MAX MS",
                 "BYSTANDER END", "RESTARTS", "PEAK MB", "ATTACKER SAW"], rows))
    verdict(all_ok, f"this code: every bystander call succeeds with p99 < {P99_TARGET_MS:g} ms, no zone 2 restart, "
                    f"zone 2's memory under {LIMIT_MB} MiB, during each attack")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
