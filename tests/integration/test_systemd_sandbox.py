"""The real daemon under systemd/fleetd.service's own sandbox (read from the unit file: tests/integration/sandbox.py).

systemd is not PID 1 on these machines, so nothing else runs the daemon the way production does. Under exactly
its capability bounding set, no-new-privileges and its read-only mounts, the daemon must start, keep zone 2
healthy, spawn, deliver a TTL's SIGTERM through the pidfd (CAP_KILL: agents run as another uid), relay a
credential call through zone 2, and tear down.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.integration.harness import AGENT_IMAGE, TRAP_TERM
from tests.integration.sandbox import read_unit, wrap
from tests.integration.zone2_fixtures import AGENT_HTTP, Bench

CHAT = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]})
CAPABILITY_BITS = {"chown": 0, "dac_override": 1, "dac_read_search": 2, "fowner": 3, "kill": 5, "setuid": 7,
                   "net_raw": 13, "net_admin": 12, "sys_admin": 21}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox is set up as root, like systemd does")


def sandboxed(command: list[str]) -> list[str]:
    """The daemon's command under the unit's sandbox; its state dir's parent (the test's dir, which also holds
    the socket and the log) is writable, as StateDirectory= and RuntimeDirectory= are under the unit."""
    root = Path(command[command.index("--state-dir") + 1]).parent
    return wrap(command, [root])


@pytest.fixture
def bench(engine: docker.DockerClient) -> Iterator[Bench]:
    b = Bench(engine, wrapper=sandboxed)
    try:
        yield b
    finally:
        b.close()


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def test_the_daemon_serves_under_its_units_sandbox(bench: Bench) -> None:
    daemon = bench.daemon
    assert daemon.proc is not None
    pid = daemon.proc.pid
    # The sandbox is really in force: the unit's capabilities and nothing else, no new privileges, / read-only.
    wanted = sum(1 << CAPABILITY_BITS[c] for c in read_unit().capabilities)
    assert int(status_field(pid, "CapBnd"), 16) == wanted and int(status_field(pid, "CapEff"), 16) == wanted
    assert status_field(pid, "NoNewPrivs") == "1"
    mounts = {line.split()[4]: line.split()[5] for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()}
    assert mounts["/"].startswith("ro") and mounts[str(daemon.root)].startswith("rw")

    info = json.loads(daemon.cli("status", "--json").stdout)
    assert info["zone2"]["healthy"] and info["zone2"]["serving_agents"]

    # A credential call through zone 2.
    _, out = bench.run_agent(AGENT_HTTP + f"print('CHAT', *call('POST', '/v1/chat/completions', AUTH, {CHAT!r}))\n")
    assert "CHAT 200" in out and bench.sim_requests("llm")[-1]["headers"]["Authorization"] == f"Bearer {bench.secret}"

    # A TTL's SIGTERM, through the agent's pidfd (the agent runs as uid 10001: CAP_KILL).
    agent_id = daemon.spawn("--ttl", "3", AGENT_IMAGE, *TRAP_TERM)
    agent = daemon.wait_state(agent_id, "exited", timeout=30)
    assert (agent["reason"], agent["exit_code"]) == ("ttl_expired", 0)
    [signal] = [e["data"] for e in daemon.events(agent_id) if e["type"] == "signal"]
    assert signal["via"] == "pidfd" and signal["sent"] is True

    out = daemon.cli("teardown").stdout
    assert "containers removed" in out
    log = daemon.log()
    assert "Traceback" not in log and "PermissionError" not in log and "Permission denied" not in log, log
