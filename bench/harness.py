"""Shared helpers for the benchmarks: a throwaway daemon, cleanup that always runs, stats, tables.

The daemon and the CLI run from the working tree, or, when the environment variable
``FLEETD_BENCH_REF`` names a git ref (e.g. ``HEAD``), from a snapshot of that commit (``git archive``
into the run's temp dir, put first on ``PYTHONPATH``): the working tree may be mid-edit.

Every run gets a random hex id. The daemon runs as instance ``bench-<hex>`` with its state in a
temp dir and its socket at ``/tmp/fb-<hex>.sock`` (Unix socket paths are limited to ~100 bytes).
Baseline ``docker run`` containers carry the label ``fleetd-bench=<hex>``. Cleanup removes only
objects carrying those two labels, and runs on normal exit, on exceptions, on SIGINT and SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import http.client
import json
import os
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fleetd.loadgen import percentile as sorted_percentile

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cli.client import ApiError, Client  # noqa: E402 - needs the repo on sys.path first
from fleetd.disks import Disks  # noqa: E402

IMAGE = "fleetd/agent-python"
CLEANUP_TRIES = 30  # seconds, one try each, to remove a run's containers and networks
BASELINE_LABEL = "fleetd-bench"
LOG_OPTS = ("--log-driver", "json-file", "--log-opt", "max-size=10m", "--log-opt", "max-file=3")


def fleetd_exe() -> str:
    """The venv's ``fleetd`` console script (next to the interpreter running the benchmark)."""
    beside = Path(sys.executable).parent / "fleetd"
    if beside.exists():
        return str(beside)
    found = shutil.which("fleetd")
    if not found:
        raise SystemExit("cannot find the fleetd console script: run with .venv/bin/python")
    return found


class Bench:
    """One fleetd daemon for one benchmark run, and everything needed to clean up after it.

    Use as a context manager::

        with Bench() as b:
            b.fleetd("spawn", IMAGE, "sleep", "300")
    """

    def __init__(self, keep_logs: bool = False, config: dict[str, Any] | None = None) -> None:
        self.hex = secrets.token_hex(4)
        self.instance = f"bench-{self.hex}"
        self.network = f"fleetd-{self.instance}-agents"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"fleetd-{self.instance}-"))
        self.state_dir = self.tmp / "state"
        self.socket = Path(f"/tmp/fb-{self.hex}.sock")
        self.log_path = self.tmp / "daemon.log"
        self.keep_logs = keep_logs
        self.config = config or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, "FLEETD_SOCKET": str(self.socket)}
        self.ref = os.environ.get("FLEETD_BENCH_REF") or None
        self.exe = fleetd_exe()
        self._cleaned = False
        self._baseline_seq = 0

    # -- lifecycle ----------------------------------------------------------
    def __enter__(self) -> Bench:
        atexit.register(self.cleanup)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _raise_exit)
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def start(self, timeout: float = 30.0) -> None:
        if self.ref:
            self.env["PYTHONPATH"] = str(snapshot(self.ref, self.tmp / "src"))
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"code: {code_version(self.ref)}; python {sys.version.split()[0]}; docker {docker_version()}; "
            f"{os.cpu_count()} CPUs, load average {load}"
        )
        cmd = [self.exe, "daemon", "--state-dir", str(self.state_dir), "--socket", str(self.socket)]
        cmd += ["--instance", self.instance]
        if self.config:
            config_file = self.tmp / "config.toml"
            top = "".join(f"{k} = {json.dumps(v)}\n" for k, v in self.config.items() if not isinstance(v, dict))
            tables = "".join(f"\n[{k}]\n" + "".join(f"{kk} = {json.dumps(vv)}\n" for kk, vv in v.items())
                             for k, v in self.config.items() if isinstance(v, dict))
            config_file.write_text(top + tables)
            cmd += ["--config", str(config_file)]
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the daemon process
        self.proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}:\n{self.daemon_log_tail()}")
            try:
                self.client().call("GET", "/v1/status")
                return
            except ApiError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon did not answer in {timeout}s:\n{self.daemon_log_tail()}") from None
                time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def daemon_log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no daemon log)"

    def stop_daemon(self, timeout: float = 15.0) -> float | None:
        """SIGTERM the daemon; SIGKILL it after ``timeout``. Return how long it took to exit (None: killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"(the daemon did not exit {timeout:g} s after SIGTERM: SIGKILL)")
            self.proc.kill()
            self.proc.wait()
            return None
        return time.monotonic() - start

    def cleanup(self) -> None:
        """SIGTERM the daemon, then remove every container and network of this run. Idempotent."""
        if self._cleaned:
            return
        self._cleaned = True
        # Baseline containers first: they sit on the instance's network and would block its removal.
        remove_containers(f"label={BASELINE_LABEL}={self.hex}")
        remove_containers(f"label=fleetd.instance={self.instance}")  # faster than teardown's one by one
        if self.proc is not None and self.proc.poll() is None:
            try:  # the daemon's own teardown also removes what it made outside Docker (firewall rules)
                self.client(timeout=120).call("POST", "/v1/teardown")
            except (ApiError, OSError) as exc:
                print(f"(fleetd teardown failed: {exc}; sweeping by label)")
        self.stop_daemon()
        remove_firewall_rules(self.instance)
        # dockerd may hold a removed container's endpoint on the network for a while ("has active endpoints"):
        # once it took longer than 3 s (bench/README, fleet.py run 3), so keep trying for up to 30 s.
        for attempt in range(CLEANUP_TRIES):
            left = remove_containers(f"label={BASELINE_LABEL}={self.hex}")
            left += remove_containers(f"label=fleetd.instance={self.instance}")
            networks = _lines(["docker", "network", "ls", "-q", "--filter", f"label=fleetd.instance={self.instance}"])
            if networks:
                result = subprocess.run(["docker", "network", "rm", *networks], capture_output=True, text=True)
                if result.returncode != 0 and attempt == CLEANUP_TRIES - 1:
                    print(f"warning: could not remove network(s) of {self.instance}: {result.stderr.strip()}")
            if not left and not networks:
                break
            time.sleep(1)
        volumes = _lines(["docker", "volume", "ls", "-q", "--filter", f"label=fleetd.instance={self.instance}"])
        if volumes:
            subprocess.run(["docker", "volume", "rm", "-f", *volumes], capture_output=True, text=True)
        Disks(self.state_dir / "disks").remove_all()  # agents' disk images: their loop devices too
        with contextlib.suppress(OSError):
            self.socket.unlink()
        if self.keep_logs:
            print(f"(daemon log kept in {self.log_path})")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- talking to the daemon -----------------------------------------------
    def client(self, timeout: float = 300.0) -> Client:
        return Client(str(self.socket), timeout=timeout)

    def fleetd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the fleetd CLI against this daemon."""
        result = subprocess.run([self.exe, *args], capture_output=True, text=True, env=self.env, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"fleetd {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def spawn_cmd(self, *options: str, command: Sequence[str] = ("sleep", "300"), image: str = IMAGE) -> list[str]:
        return [self.exe, "spawn", *options, image, *command]

    def docker_run_cmd(
        self, memory: str, cpus: str, pids_limit: int, command: Sequence[str] = ("sleep", "300"), image: str = IMAGE
    ) -> list[str]:
        """``docker run -d`` with the flags fleetd applies to an agent, labelled as this run's baseline."""
        self._baseline_seq += 1
        return [
            "docker", "run", "-d",
            "--name", f"fleetd-bench-{self.hex}-{self._baseline_seq}",
            "--label", f"{BASELINE_LABEL}={self.hex}",
            "--memory", memory, "--memory-swap", memory, "--cpus", cpus, "--pids-limit", str(pids_limit),
            "--init", "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
            "--network", self.network, *LOG_OPTS,
            image, *command,
        ]  # fmt: skip

    def live_agents(self) -> list[dict[str, Any]]:
        agents: list[dict[str, Any]] = self.client().call("GET", "/v1/agents")
        return agents

    def wait_no_live_agents(self, timeout: float = 120.0) -> int:
        """Wait until the daemon has no live agent; return how many were still live at the end."""
        deadline = time.monotonic() + timeout
        while True:
            live = len(self.live_agents())
            if live == 0 or time.monotonic() > deadline:
                return live
            time.sleep(0.5)

    def remove_all_containers(self) -> None:
        """Between rounds: drop the baseline containers and the agents' containers (docker rm -f).

        Only agents (label fleetd.kind=agent): the daemon's own containers (zone 2) stay, or the next
        spawn would wait for the daemon to bring zone 2 back.
        """
        remove_containers(f"label={BASELINE_LABEL}={self.hex}")
        remove_containers(f"label=fleetd.instance={self.instance}", "label=fleetd.kind=agent")

    def spawn_api_many(
        self, requests: Sequence[dict[str, Any] | Callable[[], dict[str, Any]]], concurrency: int = 10
    ) -> list[dict[str, Any] | Exception]:
        """POST /v1/agents for each request, ``concurrency`` at a time; a callable is built just in time."""

        def one(request: dict[str, Any] | Callable[[], dict[str, Any]]) -> dict[str, Any] | Exception:
            body = request() if callable(request) else request
            try:
                agent: dict[str, Any] = self.client().call("POST", "/v1/agents", body)
                return agent
            except ApiError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(one, requests))


class KeptConnection(http.client.HTTPConnection):
    """One connection to the daemon's socket kept open from request to request, as an HTTP client library's
    (requests' Session, httpx's Client, aiohttp's session) is, where ``Client`` (the CLI's) opens one per request."""

    def __init__(self, socket_path: Path | str) -> None:
        super().__init__("fleetd")
        self.socket_path = str(socket_path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.socket_path)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        payload = None if body is None else json.dumps(body)
        self.request(method, path, payload, {"Content-Type": "application/json"} if payload is not None else {})
        response = self.getresponse()
        raw = response.read()
        if response.status >= 400:
            raise ApiError(raw.decode(errors="replace"), response.status)
        return json.loads(raw or b"null")


def code_version(ref: str | None = None) -> str:
    """The code under test: a snapshot of ``ref``, or the working tree (is it ahead of its commit?)."""
    head = _lines(["git", "-C", str(REPO), "rev-parse", "--short", ref or "HEAD"])
    if ref:
        return f"snapshot of {ref} = commit {head[0] if head else '?'} (FLEETD_BENCH_REF)"
    dirty = _lines(["git", "-C", str(REPO), "status", "--porcelain", "--", "fleetd", "cli"])
    return f"working tree at commit {head[0] if head else '?'}" + (
        " + uncommitted changes in fleetd/ or cli/" if dirty else ""
    )


def snapshot(ref: str, into: Path) -> Path:
    """Extract fleetd/ and cli/ of a git ref into a directory; return it (for PYTHONPATH)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "fleetd", "cli"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def docker_version() -> str:
    out = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or "?"


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _lines(cmd: list[str]) -> list[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    return [line for line in out.split() if line]


def remove_firewall_rules(instance: str) -> int:
    """Safety net for a daemon that could not tear down: delete the iptables rules it tagged for ``instance``.

    fleetd/firewall.py tags each rule with the comment ``fleetd:<instance>`` and jumps to a chain
    ``FLEETD-<sha256(instance)[:12]>``; only those are touched.
    """
    iptables = shutil.which("iptables")
    if iptables is None or os.geteuid() != 0:
        return 0
    tag = f"fleetd:{instance}"
    removed = 0
    for chain in ("INPUT", "DOCKER-USER"):
        listing = subprocess.run([iptables, "-w", "-S", chain], capture_output=True, text=True).stdout
        for line in listing.splitlines():
            words = shlex.split(line)
            if words[:1] == ["-A"] and tag in words:
                subprocess.run([iptables, "-w", "-D", *words[1:]], capture_output=True)
                removed += 1
    own_chain = "FLEETD-" + hashlib.sha256(instance.encode()).hexdigest()[:12]
    subprocess.run([iptables, "-w", "-F", own_chain], capture_output=True)
    subprocess.run([iptables, "-w", "-X", own_chain], capture_output=True)
    return removed


def remove_containers(*filters: str) -> int:
    """``docker rm -f`` every container matching all the filters; return how many there were."""
    ids = _lines(["docker", "ps", "-aq", *(arg for f in filters for arg in ("--filter", f))])
    # Modest batches: mass parallel removal seems to provoke the engine's "has active endpoints" leak.
    for start in range(0, len(ids), 25):
        subprocess.run(["docker", "rm", "-f", *ids[start : start + 25]], capture_output=True, check=False)
    return len(ids)


def run_to_end(name: str, run_args: Sequence[str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """``docker run -d --name NAME RUN_ARGS``, wait for the container to exit and return ``docker logs`` of it
    (stdout and stderr); the container is removed either way."""
    for cmd in (["docker", "run", "-d", "--name", name, *run_args], ["docker", "wait", name]):
        started = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if started.returncode != 0:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)
            raise RuntimeError(f"{' '.join(cmd[:3])} {name}: {started.stderr.strip()}")
    try:
        return subprocess.run(["docker", "logs", name], capture_output=True, text=True, check=True)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


# -- measuring ----------------------------------------------------------------
def timed_run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall time of a process from launch until it exits."""
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    return time.perf_counter() - start, result


def process_memory(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM and thread count of a process, from /proc/PID/status (kB)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            out[key] = int(value.split()[0])
    return out


def process_cpu(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """User + system CPU seconds of this process's waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (pct in 0..100), the same as the load generator reports."""
    return sorted_percentile(sorted(values), pct)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min": min(values),
        "median": statistics.median(values),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table (right-aligned numbers)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    numeric = [[False] * len(headers)] + [[isinstance(v, int | float) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        padded = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric[index], strict=True)]
        lines.append("  ".join(padded).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def verdict(ok: bool, what: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'}: {what}")
