"""Heartbeats, the watchdog, probes, restarts, checkpoints, OOM and drain on the real engine."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import docker
import pytest

from tests.integration.harness import AGENT_IMAGE, Daemon, wait_for

# Agents that beat with the SDK; this one beats three times, then goes silent and ignores SIGTERM.
SILENT_AFTER_THREE = """
import signal, time, fleetd_agent
signal.signal(signal.SIGTERM, lambda *_: print("SIGTERM ignored", flush=True))
for step in range(3):
    assert fleetd_agent.progress(step=step + 1, total=3, message="warming up"), "heartbeat refused"
    time.sleep(0.5)
print("stopped beating", flush=True)
while True:
    time.sleep(1)
"""

BEATING_FOREVER = """
import time, fleetd_agent
fleetd_agent.start_heartbeat()
while True:
    time.sleep(1)
"""

DRAINING = """
import time, fleetd_agent
def drain():
    fleetd_agent.save_checkpoint({"step": 7})
    print("drained: checkpoint saved", flush=True)
fleetd_agent.on_sigterm(drain)
fleetd_agent.start_heartbeat()
print("working", flush=True)
while not fleetd_agent.should_stop():
    time.sleep(0.2)
time.sleep(60)  # the helper exits the process once drain() is done
"""

# An HTTP server whose /ready answers 200 while /tmp/ready exists; /tmp/started gates startup.
PROBED = """
import http.server, os, threading, time, fleetd_agent
state = fleetd_agent.load_checkpoint(default={"runs": 0})
state["runs"] += 1
fleetd_agent.save_checkpoint(state)
print("run", state["runs"], flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = os.path.exists("/tmp/ready")
        self.send_response(200 if ok else 503)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("0.0.0.0", 8080), H)
threading.Thread(target=server.serve_forever, daemon=True).start()
while not os.path.exists("/tmp/close"):
    time.sleep(0.2)
server.shutdown()
server.server_close()
print("port closed, still running", flush=True)
while True:
    time.sleep(1)
"""

OOM = "x = []\nwhile True:\n    x.append(bytearray(16 << 20))\n"


@pytest.fixture
def fleet() -> Iterator[Daemon]:
    # Exited containers go 10 s after they exit: soon enough for the checkpoint test to see it, late enough for a
    # loaded machine to read an exited agent's logs first.
    d = Daemon(config="log_retention = 10\n").start()
    try:
        yield d
    finally:
        d.cli("teardown", check=False)
        d.cleanup()


def events(daemon: Daemon, agent_id: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events(agent_id) if e["type"] == kind]


def at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()


def test_silent_agent_is_sigtermed_after_two_intervals_then_sigkilled(fleet: Daemon) -> None:
    agent_id = fleet.spawn("--heartbeat-interval", "1", "--grace", "2", AGENT_IMAGE, "python3", "-c",
                           SILENT_AFTER_THREE)
    wait_for(lambda: fleet.agent(agent_id)["progress"] is not None, 20, what="first heartbeat")
    agent = fleet.agent(agent_id)
    assert agent["heartbeat_interval"] == 1 and agent["progress"]["total"] == 3
    record = fleet.wait_state(agent_id, "exited", timeout=60)
    assert record["reason"] == "heartbeat_lost" and record["exit_code"] == 137
    state_events = [e for e in fleet.events(agent_id) if e["type"] == "state"]
    stopping = next(e for e in state_events if e["data"].get("to") == "stopping")
    signals = [e for e in fleet.events(agent_id) if e["type"] == "signal"]
    assert [s["data"]["signal"] for s in signals] == ["SIGTERM", "SIGKILL"]
    assert 1.5 <= at(signals[1]) - at(signals[0]) <= 4  # SIGKILL after the 2 s grace
    lost = events(fleet, agent_id, "heartbeat_lost")
    assert lost and "2 x 1 s" in lost[0]["message"]
    assert at(stopping) - at(lost[0]) < 1
    assert "SIGTERM ignored" in fleet.logs(agent_id)
    # The last heartbeat was ~2 s before the SIGTERM (2 x interval), not much later.
    last = datetime.fromisoformat(fleet.agent(agent_id)["last_heartbeat"].replace("Z", "+00:00")).timestamp()
    assert 1.9 <= at(signals[0]) - last <= 3.5


def test_sdk_sigterm_helper_drains_and_exits_zero_within_grace(fleet: Daemon) -> None:
    agent_id = fleet.spawn("--grace", "10", "--heartbeat-interval", "1", AGENT_IMAGE, "python3", "-c", DRAINING)
    wait_for(lambda: "working" in fleet.logs(agent_id), 20, what="agent working")
    started = time.monotonic()
    fleet.cli("stop", agent_id)
    record = fleet.wait_state(agent_id, "exited", timeout=30)
    assert time.monotonic() - started < 10
    assert record["exit_code"] == 0 and record["reason"] == "stopped"
    assert "drained: checkpoint saved" in fleet.logs(agent_id)
    assert not [e for e in fleet.events(agent_id) if e["type"] == "signal" and e["data"]["signal"] == "SIGKILL"]


def test_zone2_outage_does_not_get_heartbeating_agents_killed(fleet: Daemon, engine: docker.DockerClient) -> None:
    agents = [fleet.spawn("--heartbeat-interval", "1", AGENT_IMAGE, "python3", "-c", BEATING_FOREVER)
              for _ in range(3)]
    wait_for(lambda: all(fleet.agent(a)["last_heartbeat"] for a in agents), 20, what="heartbeats")
    zone2 = engine.containers.get(f"fleetd-{fleet.instance}-zone2")
    zone2.pause()  # zone 2 stops answering: no heartbeat can reach the daemon
    try:
        wait_for(lambda: any(e["type"] == "watchdog_paused" for e in fleet.events()), 20, what="watchdog paused")
        time.sleep(4)  # longer than 2 x interval
    finally:
        try:
            zone2.reload()
            if zone2.status == "paused":
                zone2.unpause()
        except docker.errors.NotFound:
            pass  # the daemon replaced it meanwhile
    wait_for(lambda: any(e["type"] == "watchdog_resumed" for e in fleet.events()), 30, what="watchdog resumed")
    time.sleep(3)  # heartbeats flow again: nobody is condemned
    for agent_id in agents:
        assert fleet.agent(agent_id)["state"] == "running", fleet.events(agent_id)
        assert not events(fleet, agent_id, "heartbeat_lost")


def test_zone2_killed_again_and_again_gets_no_heartbeating_agent_killed(fleet: Daemon,
                                                                        engine: docker.DockerClient) -> None:
    """After a docker kill of zone 2, an agent beating every second was now and then stopped as heartbeat_lost once
    zone 2 was back. Its window must count from when zone 2 answers agents again, and the agent must not be stuck
    meanwhile: resolving "zone2" while zone 2 was down took Docker's embedded DNS 10 s (it forwarded the name to
    a resolver an internal network cannot reach), five windows of a 1 s interval."""
    agents = [fleet.spawn("--heartbeat-interval", "1", AGENT_IMAGE, "python3", "-c", BEATING_FOREVER)
              for _ in range(4)]
    wait_for(lambda: all(fleet.agent(a)["last_heartbeat"] for a in agents), 20, what="heartbeats")
    for round_ in range(1, 4):
        engine.containers.get(f"fleetd-{fleet.instance}-zone2").kill()
        wait_for(lambda r=round_: fleet.api.call("GET", "/v1/status")["zone2"]["restarts"] >= r, 30,
                 what="zone 2 restarted")
        wait_for(lambda: fleet.api.call("GET", "/v1/status")["zone2"]["serving_agents"], 30, what="zone 2 serving")
        time.sleep(3)  # more than 2 x interval after it answers again
    for agent_id in agents:
        assert fleet.agent(agent_id)["state"] == "running", fleet.events(agent_id)
        assert not events(fleet, agent_id, "heartbeat_lost")


def test_probes_gate_flip_and_a_liveness_failure_restarts_keeping_deadline_and_checkpoint(
        fleet: Daemon, engine: docker.DockerClient) -> None:
    agent_id = fleet.spawn(
        "--ttl", "600", "--restart", "on-failure",
        "--startup-probe", "exec:test -f /tmp/started,period=1,failure=60",
        "--readiness-probe", "http:8080/ready,period=1",
        "--liveness-probe", "tcp:8080,period=1,failure=2",
        AGENT_IMAGE, "python3", "-c", PROBED)
    before = fleet.agent(agent_id)
    container = engine.containers.get(before["container_id"])
    time.sleep(3)
    assert fleet.agent(agent_id)["ready"] is False
    assert not events(fleet, agent_id, "probe_failed") or all(
        e["data"]["probe"] == "startup" for e in events(fleet, agent_id, "probe_failed"))  # startup gates the rest
    container.exec_run(["touch", "/tmp/started", "/tmp/ready"])
    wait_for(lambda: fleet.agent(agent_id)["ready"] is True, 20, what="ready")
    assert events(fleet, agent_id, "started")
    container.exec_run(["rm", "/tmp/ready"])
    wait_for(lambda: fleet.agent(agent_id)["ready"] is False, 20, what="not ready")  # flips back
    assert any(e["data"]["probe"] == "readiness" for e in events(fleet, agent_id, "probe_failed"))
    assert fleet.agent(agent_id)["state"] == "running"  # readiness alone never restarts
    ps = fleet.cli("ps").stdout
    assert agent_id in ps and " no " in ps

    container.exec_run(["touch", "/tmp/close"])  # the port closes, the process lives on: liveness fails twice
    wait_for(lambda: fleet.agent(agent_id)["state"] == "restarting", 30, what="restarting")
    waiting = fleet.agent(agent_id)
    assert waiting["reason"] == "liveness_failed"
    scheduled = events(fleet, agent_id, "restart_scheduled")[0]
    assert scheduled["data"]["delay"] == 10  # CrashLoopBackOff starts at 10 s
    wait_for(lambda: fleet.agent(agent_id)["state"] == "running" and fleet.agent(agent_id)["restarts"] == 1,
             40, what="restarted")
    after = fleet.agent(agent_id)
    assert after["deadline"] == before["deadline"]  # the TTL did not reset
    assert after["container_id"] == before["container_id"] and after["id"] == agent_id
    wait_for(lambda: "run 2" in fleet.logs(agent_id), 20, what="second run")  # the checkpoint survived
    assert after["ready"] is False  # probes start over after a restart

    # Removed with the agent: stop it, the janitor removes the container (retention 10 s), the volume goes too.
    volume = f"fleetd-{fleet.instance}-ckpt-{agent_id}"
    assert engine.volumes.get(volume)
    fleet.cli("stop", agent_id, "--grace", "1")
    wait_for(lambda: fleet.agent(agent_id)["state"] == "removed", 30, what="container removed")

    def volume_gone() -> bool:
        try:
            engine.volumes.get(volume)
            return False
        except docker.errors.NotFound:
            return True

    wait_for(volume_gone, 20, what="checkpoint volume removed")


def test_an_agent_past_its_memory_limit_is_oom_killed_with_an_event_naming_the_limit(fleet: Daemon) -> None:
    agent_id = fleet.spawn("--memory", "64m", AGENT_IMAGE, "python3", "-c", OOM)
    record = fleet.wait_state(agent_id, "exited", timeout=60)
    assert record["reason"] == "oom_killed" and record["exit_code"] == 137
    event = events(fleet, agent_id, "oom_killed")[0]
    assert "64" in event["message"] and event["data"]["memory_limit"] == 64 << 20


def test_oom_follows_the_restart_policy(fleet: Daemon) -> None:
    agent_id = fleet.spawn("--memory", "64m", "--restart", "on-failure:1", AGENT_IMAGE, "python3", "-c", OOM)
    wait_for(lambda: fleet.agent(agent_id)["state"] == "restarting", 60, what="restart scheduled")
    assert fleet.agent(agent_id)["reason"] == "oom_killed"


def test_drain_waits_then_stops_the_rest_and_refuses_spawns_until_undrain(fleet: Daemon) -> None:
    quick = fleet.spawn(AGENT_IMAGE, "sh", "-c", "sleep 2; echo done")
    slow = fleet.spawn("--grace", "1", AGENT_IMAGE, "sleep", "600")
    started = time.monotonic()
    out = fleet.cli("drain", "--timeout", "5").stdout
    took = time.monotonic() - started
    assert "1 agents finished, 1 stopped" in out
    assert 4.5 <= took <= 30
    assert fleet.agent(quick)["reason"] == "exited" and fleet.agent(quick)["exit_code"] == 0
    assert fleet.agent(slow)["reason"] == "drained"
    refused = fleet.cli("spawn", AGENT_IMAGE, "true", check=False)
    assert refused.returncode == 1 and "draining" in refused.stderr
    assert fleet.api.call("GET", "/v1/status")["draining"] is True
    fleet.cli("undrain")
    fleet.spawn(AGENT_IMAGE, "true")


def test_a_timed_out_exec_probe_is_killed_with_what_it_started(fleet: Daemon, engine: docker.DockerClient) -> None:
    # Each probe runs a shell that starts two sleeps and hangs; with the 1 s timeout every one of them times out.
    agent_id = fleet.spawn(
        "--ttl", "600", "--readiness-probe", "exec:sh -c 'sleep 300 & sleep 301',period=1,timeout=1",
        AGENT_IMAGE, "python3", "-c", "import time; time.sleep(600)")
    container = engine.containers.get(fleet.agent(agent_id)["container_id"])
    wait_for(lambda: len(events(fleet, agent_id, "probe_failed")) >= 1, 30, what="the probe failed")
    time.sleep(6)  # ~6 more probes, each timed out

    def leftovers() -> list[str]:
        return [" ".join(p) for p in container.top(ps_args="-o pid,args")["Processes"]
                if "sleep 30" in " ".join(p)]

    # At most the probe under way right now (a shell and its two sleeps) may be seen: none of the earlier ones.
    assert len(leftovers()) <= 3, leftovers()
    assert fleet.agent(agent_id)["ready"] is False and fleet.agent(agent_id)["state"] == "running"
