"""The daemon rides out a restart of dockerd itself."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import warnings

import docker
import pytest

from tests.integration.harness import AGENT_IMAGE, Daemon, wait_for


def engine_answers() -> bool:
    try:
        client = docker.from_env()
        client.ping()
        client.close()
        return True
    except docker.errors.DockerException:
        return False


def restart_dockerd() -> None:
    """Restart the engine the way this machine runs it: systemd, or a plain process."""
    if shutil.which("systemctl") and subprocess.run(["systemctl", "is-active", "--quiet", "docker"]).returncode == 0:
        subprocess.run(["systemctl", "restart", "docker"], check=True)
        return
    pids = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True).stdout.split()
    if len(pids) != 1:
        pytest.skip(f"cannot tell which dockerd to restart (found {pids})")
    pid = int(pids[0])
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = [part.decode() for part in f.read().split(b"\0") if part]
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 60, what="dockerd to exit")
    with open("/var/log/dockerd.log", "ab") as log:
        # setsid -f: dockerd runs on in its own session, outliving this test (as it did before)
        subprocess.run(["setsid", "-f", *cmdline], stdout=log, stderr=subprocess.STDOUT, check=True)
    wait_for(engine_answers, 60, what="dockerd to come back")


@pytest.mark.disruptive
def test_dockerd_restart_under_a_running_daemon(daemon: Daemon, engine: docker.DockerClient) -> None:
    agent_id = daemon.spawn(AGENT_IMAGE, "sleep", "600")
    restart_dockerd()
    # This test's own Docker clients hold pooled connections to the old engine: drop them quietly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        engine.close()
        gc.collect()
    # Without live-restore the engine's restart ends the container: the daemon notices and says so.
    agent = daemon.wait_state(agent_id, "exited", timeout=60)
    assert agent["reason"] in ("exited", "lost")
    # the event stream is back (after its backoff), and the gap was resynced
    wait_for(lambda: "docker_reconnected" in [e["type"] for e in daemon.events()], 60, what="reconnect")
    types = [e["type"] for e in daemon.events()]
    assert "docker_disconnected" in types, types
    status = daemon.api.call("GET", "/v1/status")
    assert status["docker"]["connected"]
    # And it goes on working against the new engine.
    fresh = daemon.spawn("--ttl", "2", AGENT_IMAGE, "sleep", "600")
    assert daemon.wait_state(fresh, "exited", timeout=30)["reason"] == "ttl_expired"
