"""stop, kill, extend, deadlines, exits, OOM, logs, events, ps, teardown, retention."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime

import docker

from tests.integration.harness import (
    AGENT_IMAGE,
    FLEETD,
    IGNORE_TERM,
    TRAP_TERM,
    Daemon,
    containers,
    term_time,
    wait_for,
)


def started(daemon: Daemon, agent_id: str) -> None:
    wait_for(lambda: "started" in daemon.logs(agent_id), 10, what="agent output")


def test_stop_sends_sigterm_and_the_agent_exits(daemon: Daemon) -> None:
    agent_id = daemon.spawn(AGENT_IMAGE, *TRAP_TERM)
    started(daemon, agent_id)
    daemon.cli("stop", agent_id)  # waits, like docker stop
    agent = daemon.agent(agent_id)
    assert (agent["state"], agent["reason"], agent["exit_code"]) == ("exited", "stopped", 0)
    assert "TERM" in daemon.logs(agent_id)
    assert [t["to_state"] for t in agent["transitions"]] == ["created", "running", "stopping", "exited"]


def test_stop_kills_after_grace_when_sigterm_is_ignored(daemon: Daemon) -> None:
    agent_id = daemon.spawn("--grace", "30", AGENT_IMAGE, *IGNORE_TERM)
    started(daemon, agent_id)
    begin = time.monotonic()
    daemon.cli("stop", "--grace", "2", agent_id)
    elapsed = time.monotonic() - begin
    agent = daemon.agent(agent_id)
    assert (agent["state"], agent["reason"], agent["exit_code"]) == ("exited", "stopped", 137)
    assert elapsed >= 2  # SIGKILL came only after the grace period
    assert "TERM ignored" in daemon.logs(agent_id)
    signals = [e["data"]["signal"] for e in daemon.events(agent_id) if e["type"] == "signal"]
    assert signals == ["SIGTERM", "SIGKILL"]


def test_stop_of_an_exited_agent_is_a_no_op(daemon: Daemon) -> None:
    agent_id = daemon.spawn(AGENT_IMAGE, "true")
    daemon.wait_state(agent_id, "exited")
    assert daemon.cli("stop", agent_id).returncode == 0
    assert daemon.agent(agent_id)["reason"] == "exited"


def test_kill(daemon: Daemon) -> None:
    agent_id = daemon.spawn(AGENT_IMAGE, *IGNORE_TERM)
    daemon.cli("kill", agent_id)
    agent = daemon.agent(agent_id)
    assert (agent["state"], agent["reason"], agent["exit_code"]) == ("exited", "killed", 137)
    again = daemon.cli("kill", agent_id, check=False)
    assert again.returncode == 1 and "is not running" in again.stderr


def test_kill_with_another_signal_delivers_it(daemon: Daemon) -> None:
    agent_id = daemon.spawn(AGENT_IMAGE, *TRAP_TERM)
    started(daemon, agent_id)
    daemon.cli("kill", "-s", "TERM", agent_id)
    agent = daemon.wait_state(agent_id, "exited")
    assert agent["reason"] == "exited" and agent["exit_code"] == 0


def test_exit_code_and_reason(daemon: Daemon) -> None:
    agent_id = daemon.spawn(AGENT_IMAGE, "sh", "-c", "echo bye; exit 3")
    agent = daemon.wait_state(agent_id, "exited")
    assert (agent["reason"], agent["exit_code"], agent["oom_killed"]) == ("exited", 3, False)


def test_exit_137_alone_is_not_an_oom(daemon: Daemon) -> None:
    agent_id = daemon.spawn(AGENT_IMAGE, "sh", "-c", "kill -9 $$")
    agent = daemon.wait_state(agent_id, "exited")
    assert (agent["reason"], agent["exit_code"], agent["oom_killed"]) == ("exited", 137, False)


def test_memory_limit_is_real_and_oom_is_reported(daemon: Daemon) -> None:
    hog = "b = []\nwhile True: b.append(bytearray(8 << 20))"
    agent_id = daemon.spawn("--memory", "48m", AGENT_IMAGE, "python3", "-c", hog)
    agent = daemon.wait_state(agent_id, "exited", timeout=60)
    assert (agent["reason"], agent["exit_code"], agent["oom_killed"]) == ("oom_killed", 137, True)
    oom = [e for e in daemon.events(agent_id) if e["type"] == "oom_killed"]
    assert oom and "48MiB" in oom[0]["message"]


def test_ttl_expiry_sends_sigterm_at_the_deadline(daemon: Daemon) -> None:
    agent_id = daemon.spawn("--ttl", "3", AGENT_IMAGE, *TRAP_TERM)
    agent = daemon.wait_state(agent_id, "exited", timeout=20)
    assert (agent["reason"], agent["exit_code"]) == ("ttl_expired", 0)
    late = term_time(daemon.logs(agent_id)) - datetime.fromisoformat(agent["deadline"]).timestamp()
    assert 0 <= late < 3  # on time (precision itself is measured by bench/deadline_precision.py)
    # straight to the container's init through a pidfd, not queued behind Docker's API
    [signal] = [e["data"] for e in daemon.events(agent_id) if e["type"] == "signal"]
    assert signal["via"] == "pidfd" and signal["sent"] is True


def test_ttl_expiry_kills_after_grace(daemon: Daemon) -> None:
    agent_id = daemon.spawn("--ttl", "2", "--grace", "2", AGENT_IMAGE, *IGNORE_TERM)
    agent = daemon.wait_state(agent_id, "exited", timeout=20)
    assert (agent["reason"], agent["exit_code"]) == ("ttl_expired", 137)
    assert "TERM ignored" in daemon.logs(agent_id)


def test_extend_moves_the_deadline(daemon: Daemon) -> None:
    # A TTL the extend comes well within, even on a loaded machine; then wait past the old deadline.
    agent_id = daemon.spawn("--ttl", "8", AGENT_IMAGE, *TRAP_TERM)
    before = daemon.agent(agent_id)["deadline"]
    record = json.loads(daemon.cli("extend", agent_id, "--ttl", "60", "--json").stdout)
    assert record["deadline"] > before and 55 < record["ttl_remaining"] <= 60
    old_deadline = datetime.fromisoformat(before.replace("Z", "+00:00"))
    time.sleep(max(0.0, (old_deadline - datetime.now(UTC)).total_seconds()) + 1.5)
    assert daemon.agent(agent_id)["state"] == "running"
    too_long = daemon.cli("extend", agent_id, "--ttl", "100000", check=False)
    assert too_long.returncode == 1 and "at most 86400" in too_long.stderr
    daemon.cli("kill", agent_id)
    ended = daemon.cli("extend", agent_id, "--ttl", "60", check=False)
    assert ended.returncode == 1 and "only a running agent can be extended" in ended.stderr


def test_logs_after_exit_and_tail(daemon: Daemon) -> None:
    agent_id = daemon.spawn(AGENT_IMAGE, "sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done; echo err >&2")
    daemon.wait_state(agent_id, "exited")
    logs = daemon.logs(agent_id)
    assert "line1" in logs and "line5" in logs and "err" in logs
    # stdout and stderr are separate streams, logged in either order: the last two lines are two of these
    tail = daemon.cli("logs", "--tail", "2", agent_id).stdout.split()
    assert len(tail) == 2 and set(tail) <= {"line4", "line5", "err"}


def test_logs_follow_streams_until_exit(daemon: Daemon) -> None:
    agent_id = daemon.spawn(AGENT_IMAGE, "sh", "-c", "echo one; sleep 2; echo two")
    result = subprocess.run([FLEETD, "--socket", str(daemon.socket), "logs", "-f", agent_id],
                            capture_output=True, text=True, timeout=30)
    assert result.stdout.split() == ["one", "two"]


def test_events_json_and_follow(daemon: Daemon) -> None:
    with subprocess.Popen([FLEETD, "--socket", str(daemon.socket), "events", "-f", "--json"],
                          stdout=subprocess.PIPE, text=True) as follower:
        agent_id = daemon.spawn(AGENT_IMAGE, "true")
        seen = []
        assert follower.stdout is not None
        while not any(e.get("data", {}).get("to") == "exited" for e in seen):
            seen.append(json.loads(follower.stdout.readline()))
        types = [e["type"] for e in seen if e["agent_id"] == agent_id]
        assert types[0] == "created" and "state" in types
        assert all({"id", "time", "agent_id", "type", "message", "data"} <= set(e) for e in seen)
        follower.terminate()
    lines = daemon.cli("events", "--json").stdout.splitlines()
    assert all(json.loads(line)["id"] for line in lines)


def test_ps_shows_live_agents_and_all_with_a(daemon: Daemon) -> None:
    done = daemon.spawn("--name", "done", AGENT_IMAGE, "true")
    daemon.wait_state(done, "exited")
    live = daemon.spawn("--name", "live", AGENT_IMAGE, "sleep", "60")
    ps = daemon.cli("ps").stdout
    assert "live" in ps and "done" not in ps and "running" in ps
    ps_all = daemon.cli("ps", "-a").stdout
    assert "done" in ps_all and "exited (exited, 0)" in ps_all
    assert daemon.cli("ps", "-q").stdout.split() == [live]


def test_status(daemon: Daemon) -> None:
    daemon.spawn(AGENT_IMAGE, "sleep", "60")
    info = json.loads(daemon.cli("status", "--json").stdout)
    assert info["instance"] == daemon.instance and info["docker"]["connected"]
    assert info["agents"]["running"] == 1
    assert "connected" in daemon.cli("status").stdout


def test_teardown_removes_every_object_of_the_instance(daemon: Daemon, engine: docker.DockerClient) -> None:
    ids = [daemon.spawn(AGENT_IMAGE, "sleep", "60") for _ in range(2)]
    assert len(containers(daemon.instance)) == 2
    out = daemon.cli("teardown").stdout
    # two agents, their namespace holders and zone 2; the agents' and the egress network; zone 2's firewall rules
    assert "5 containers removed" in out and "2 networks removed" in out and "3 firewall_rules removed" in out
    assert containers(daemon.instance, kinds=()) == []
    assert engine.volumes.list(filters={"label": f"fleetd.instance={daemon.instance}"}) == []
    assert not list((daemon.state_dir / "disks").glob("*"))  # their disks (and loop devices) too
    assert "fleetd:" + daemon.instance not in subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
    assert engine.networks.list(filters={"label": f"fleetd.instance={daemon.instance}"}) == []
    assert {daemon.agent(i)["state"] for i in ids} == {"removed"}
    assert daemon.agent(ids[0])["reason"] == "teardown"
    # The daemon carries on: the next spawn recreates the network.
    assert daemon.agent(daemon.spawn(AGENT_IMAGE, "sleep", "5"))["state"] == "running"


def test_exited_containers_are_removed_after_retention() -> None:
    d = Daemon(config="log_retention = 2\n").start()
    try:
        agent_id = d.spawn(AGENT_IMAGE, "echo", "bye")
        d.wait_state(agent_id, "exited")
        assert "bye" in d.logs(agent_id)
        d.wait_state(agent_id, "removed", timeout=20)
        assert containers(d.instance) == []
        gone = d.cli("logs", agent_id, check=False)
        assert gone.returncode == 1 and "container is gone" in gone.stderr
        assert d.agent(agent_id)["reason"] == "exited"
    finally:
        d.cleanup()


def test_only_so_many_exited_containers_are_kept() -> None:
    d = Daemon(config="max_exited = 2\n").start()
    try:
        ids = [d.spawn(AGENT_IMAGE, "true") for _ in range(4)]
        for agent_id in ids:
            d.wait_state(agent_id, "exited")
        wait_for(lambda: len(containers(d.instance)) == 2, 40, what="janitor")
        assert [d.agent(i)["state"] for i in ids[:2]] == ["removed", "removed"]
    finally:
        d.cleanup()


def test_interrupted_log_followers_free_their_threads(daemon: Daemon) -> None:
    quiet = daemon.spawn(AGENT_IMAGE, "sleep", "600")

    def streams() -> int:
        return int(daemon.api.call("GET", "/v1/status")["log_streams"])

    followers = [subprocess.Popen([FLEETD, "--socket", str(daemon.socket), "logs", "-f", quiet],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(70)]
    wait_for(lambda: streams() == 70, 30, what="70 followers")
    for follower in followers:
        follower.terminate()
    for follower in followers:
        follower.wait()
    # More followers than the Docker pool has threads, all gone: the daemon still works, and frees them.
    assert daemon.agent(daemon.spawn(AGENT_IMAGE, "true"))["container_id"]
    wait_for(lambda: streams() == 0, 15, what="the followers' streams to close")
