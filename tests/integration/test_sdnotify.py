"""The daemon speaks systemd's notify protocol the way fleetd.service (Type=notify, WatchdogSec=) expects.

The integration test plays systemd: it binds the datagram socket named by $NOTIFY_SOCKET, starts
the real ``fleetd daemon`` and reads what arrives. $WATCHDOG_PID is left unset because the child's
pid is unknown before it starts (systemd sets it in the child, after fork); an unset pid means
"the watchdog is meant for you".
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.client import Client
from tests.integration.harness import remove_instance_objects

FLEETD = Path(sys.executable).with_name("fleetd")
START_TIMEOUT = 90.0  # the daemon waits up to 30 s for the engine, then reconciles
WATCHDOG_USEC = 1_000_000  # -> a ping every 0.5 s


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET: every datagram, with when it arrived."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.received: list[tuple[float, dict[str, str]]] = []

    def close(self) -> None:
        self.sock.close()

    def next(self, timeout: float) -> dict[str, str] | None:
        """The next message as a dict of its KEY=VALUE lines; None after ``timeout`` seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.received.append((time.monotonic(), fields))
        return fields

    def wait_for(self, key: str, timeout: float, alive: subprocess.Popen[bytes]) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.next(min(0.5, deadline - time.monotonic()))
            if message is not None and key in message:
                return message
            if message is None and alive.poll() is not None:
                raise AssertionError(f"the daemon exited with {alive.returncode} before sending {key}")
        raise AssertionError(f"no {key} within {timeout} s; got {[m for _, m in self.received]}")


def instance_networks(instance: str) -> list[str]:
    import docker

    client = docker.from_env()
    try:
        return [n.name for n in client.networks.list(filters={"label": f"fleetd.instance={instance}"})]
    finally:
        client.close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short directory: AF_UNIX paths are limited to 108 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="fln-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.docker
def test_daemon_notifies_systemd(workdir: Path) -> None:
    instance = f"t-notify-{secrets.token_hex(4)}"
    api_socket = workdir / "api.sock"
    config = workdir / "config.toml"
    config.write_text("")  # not the host's /etc/fleetd/config.toml
    log_path = workdir / "daemon.log"
    fake = FakeSystemd(str(workdir / "notify"))
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", "STATE_DIRECTORY", "JOURNAL_STREAM")}
    env.update(NOTIFY_SOCKET=fake.path, WATCHDOG_USEC=str(WATCHDOG_USEC))
    command = [
        str(FLEETD), "daemon", "--config", str(config), "--state-dir", str(workdir / "state"),
        "--socket", str(api_socket), "--instance", instance,
    ]  # fmt: skip
    proc: subprocess.Popen[bytes] | None = None

    def daemon_log() -> str:
        return log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""

    try:
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)

        # READY=1 arrives once the API answers: we call it the moment READY=1 is read.
        ready = fake.wait_for("READY", START_TIMEOUT, proc)
        ready_at = time.monotonic()
        status = Client(str(api_socket), timeout=5).call("GET", "/v1/status")
        assert ready["READY"] == "1"
        assert ready.get("MAINPID") == str(proc.pid)
        assert status["instance"] == instance
        assert status["pid"] == proc.pid
        assert status["docker"]["connected"] is True
        assert f"fleetd-{instance}-agents" in instance_networks(instance)

        # WATCHDOG=1 every WATCHDOG_USEC/2 = 0.5 s: at least two in ~3 s, and not a flood.
        while time.monotonic() < ready_at + 3.0:
            fake.next(ready_at + 3.0 - time.monotonic())
        pings = [t for t, m in fake.received if m.get("WATCHDOG") == "1" and t >= ready_at]
        assert 2 <= len(pings) <= 12, f"{len(pings)} watchdog pings in 3 s\n{daemon_log()}"
        assert sum("READY" in m for _, m in fake.received) == 1, "READY=1 sent more than once"

        # systemctl stop: SIGTERM -> STOPPING=1, exit 0, the socket file removed.
        proc.send_signal(signal.SIGTERM)
        fake.wait_for("STOPPING", 30, proc)
        assert proc.wait(timeout=60) == 0, daemon_log()
        assert not api_socket.exists(), "the daemon left its API socket behind"
        assert "Traceback" not in daemon_log(), daemon_log()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        fake.close()
        remove_instance_objects(instance, workdir / "state")
