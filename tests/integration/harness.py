"""Run the real daemon and the real CLI against the real Docker engine, and clean up after."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors

from cli.client import ApiError, Client
from fleetd.disks import Disks
from fleetd.firewall import Firewall

FLEETD = str(Path(sys.executable).with_name("fleetd"))
AGENT_IMAGE = "fleetd/agent-python"
# An agent that reports when SIGTERM arrives, then exits 0 (dash runs the trap as soon as wait returns).
TRAP_TERM = ["sh", "-c", "trap 'echo TERM $(date +%s.%N); exit 0' TERM; echo started; sleep infinity & wait"]
# An agent that ignores SIGTERM: only SIGKILL ends it.
IGNORE_TERM = ["sh", "-c", "trap 'echo TERM ignored' TERM; echo started; while :; do sleep 0.2; done"]


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1, what: str = "") -> Any:
    """Poll until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def remove_instance_objects(instance: str, state_dir: Path | None = None) -> None:
    """Remove every container, network, volume and firewall rule of ``instance`` (and its disks in ``state_dir``)."""
    Firewall(instance).remove()
    client = docker.from_env()
    label = {"label": f"fleetd.instance={instance}"}
    for container in client.containers.list(all=True, filters=label, ignore_removed=True):
        with contextlib.suppress(docker.errors.NotFound):  # gone meanwhile (a daemon still running removed it)
            container.remove(force=True, v=True)
    for network in client.networks.list(filters=label):
        network.remove()
    for volume in client.volumes.list(filters=label):
        volume.remove(force=True)
    client.close()
    if state_dir is not None:
        Disks(state_dir / "disks").remove_all()  # their loop devices would outlive the deleted image files


class Daemon:
    """A fleetd daemon subprocess with its own instance name, state dir and socket."""

    def __init__(self, root: Path | None = None, instance: str | None = None, args: tuple[str, ...] = (),
                 config: str | None = None, env: dict[str, str] | None = None,
                 wrapper: Callable[[list[str]], list[str]] | None = None) -> None:
        # Unix socket paths are limited to ~100 bytes: keep the dir short.
        self.root = root or Path(tempfile.mkdtemp(prefix="fl-", dir="/tmp"))
        self.instance = instance or f"t-{secrets.token_hex(4)}"
        self.state_dir = self.root / "state"
        self.socket = self.root / "sock"
        self.log_path = self.root / "daemon.log"
        self.args = args
        self.env = env
        self.wrapper = wrapper  # runs the daemon's command line under something (tests/integration/sandbox.py)
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = self.root / "config.toml"
            self.config_path.write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None
        self.api = Client(str(self.socket), timeout=120)

    def command(self) -> list[str]:
        cmd = [FLEETD, "daemon", "--state-dir", str(self.state_dir), "--socket", str(self.socket),
               "--instance", self.instance, *self.args]
        if self.config_path:
            cmd += ["--config", str(self.config_path)]
        return cmd

    def start(self, wait: bool = True) -> Daemon:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        env = {**os.environ, **(self.env or {})}
        command = self.command() if self.wrapper is None else self.wrapper(self.command())
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log.close()
        if wait:
            wait_for(self._ready, 30, what=f"daemon ready; log:\n{self.log()}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
        try:
            self.api.call("GET", "/v1/status")
            return True
        except ApiError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        remove_instance_objects(self.instance, self.state_dir)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- the real CLI --------------------------------------------------------
    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([FLEETD, "--socket", str(self.socket), *args], capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"fleetd {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def spawn(self, *args: str) -> str:
        return self.cli("spawn", *args).stdout.strip()

    def agent(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.cli("inspect", ref).stdout)
        return result

    def agents(self, all_: bool = True) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = json.loads(self.cli("ps", *(["-a"] if all_ else []), "--json").stdout)
        return result

    def events(self, agent: str | None = None) -> list[dict[str, Any]]:
        args = ["events", "--json"] + (["--agent", agent] if agent else [])
        return [json.loads(line) for line in self.cli(*args).stdout.splitlines() if line.strip()]

    def wait_state(self, ref: str, state: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(lambda: (a := self.agent(ref))["state"] == state and a, timeout,
                        what=f"agent {ref} to be {state}")  # type: ignore[no-any-return]

    def logs(self, ref: str) -> str:
        return self.cli("logs", ref).stdout


def term_time(logs: str) -> float:
    """When the TRAP_TERM agent saw SIGTERM (epoch seconds)."""
    for line in logs.splitlines():
        if line.startswith("TERM "):
            return float(line.split()[1])
    raise AssertionError(f"no SIGTERM in logs: {logs!r}")


def containers(instance: str, kinds: tuple[str, ...] = ("zone2", "netns")) -> list[Any]:
    """The instance's containers, leaving out infrastructure (zone 2, agents' namespace holders) unless asked."""
    client = docker.from_env()
    # ignore_removed: the daemon's janitor may remove one between docker-py's list and its inspect of it
    found = client.containers.list(all=True, filters={"label": f"fleetd.instance={instance}"}, ignore_removed=True)
    client.close()
    return [c for c in found if c.labels.get("fleetd.kind") not in kinds]


def agent_address(engine: docker.DockerClient, instance: str, agent_id: str) -> str:
    """An agent's address on the agents' network: its namespace holder's (fleetd.netns)."""
    holder = engine.containers.get(f"fleetd-{instance}-{agent_id}-netns")
    return str(holder.attrs["NetworkSettings"]["Networks"][f"fleetd-{instance}-agents"]["IPAddress"])
