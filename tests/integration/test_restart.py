"""The daemon survives itself: SIGKILL and restart lose no agent and no deadline."""

from __future__ import annotations

import time
from datetime import datetime

import docker

from tests.integration.harness import AGENT_IMAGE, IGNORE_TERM, TRAP_TERM, Daemon, containers, term_time, wait_for


def restart(daemon: Daemon) -> None:
    daemon.start()


def test_sigkill_then_restart_readopts_and_expires_on_time(daemon: Daemon) -> None:
    # TTLs well beyond a spawn's time on a loaded machine (seen at 2.4 s while a benchmark ran): "soon" must still
    # run when the daemon comes back.
    soon = daemon.spawn("--ttl", "15", AGENT_IMAGE, *TRAP_TERM)
    later = daemon.spawn("--ttl", "600", AGENT_IMAGE, *TRAP_TERM)
    before = {a["id"]: a for a in daemon.agents()}
    daemon.kill9()
    assert daemon.socket.exists()  # a stale socket is left behind …
    restart(daemon)  # … and removed by the next start
    after = {a["id"]: a for a in daemon.agents()}
    assert set(after) == {soon, later}
    for agent_id in (soon, later):
        assert after[agent_id]["state"] == "running"
        assert after[agent_id]["container_id"] == before[agent_id]["container_id"]
        assert after[agent_id]["deadline"] == before[agent_id]["deadline"]
    assert len(containers(daemon.instance)) == 2  # re-adopted, not re-created
    assert any(e["type"] == "adopted" for e in daemon.events(soon))

    agent = daemon.wait_state(soon, "exited", timeout=30)
    assert agent["reason"] == "ttl_expired"
    assert [e["data"]["via"] for e in daemon.events(soon) if e["type"] == "signal"] == ["pidfd"]  # re-attached
    late = term_time(daemon.logs(soon)) - datetime.fromisoformat(agent["deadline"]).timestamp()
    assert 0 <= late < 3  # at its original time
    assert daemon.agent(later)["state"] == "running"


def test_deadline_that_passed_while_down_is_enforced_at_once(daemon: Daemon) -> None:
    agent_id = daemon.spawn("--ttl", "6", AGENT_IMAGE, *TRAP_TERM)
    deadline = datetime.fromisoformat(daemon.agent(agent_id)["deadline"]).timestamp()
    daemon.kill9()
    time.sleep(max(0.0, deadline - time.time()) + 2)  # the deadline passes while the daemon is down
    assert containers(daemon.instance)[0].status == "running"  # nobody enforced it meanwhile
    restart(daemon)
    agent = daemon.wait_state(agent_id, "exited", timeout=15)
    assert agent["reason"] == "ttl_expired"


def test_sigkill_after_grace_is_still_sent_after_restart(daemon: Daemon) -> None:
    agent_id = daemon.spawn("--grace", "4", AGENT_IMAGE, *IGNORE_TERM)
    wait_for(lambda: "started" in daemon.logs(agent_id), 10)
    daemon.api.call("POST", f"/v1/agents/{agent_id}/stop", {"wait": False})
    daemon.kill9()
    restart(daemon)
    assert daemon.agent(agent_id)["state"] == "stopping"
    agent = daemon.wait_state(agent_id, "exited", timeout=20)
    assert (agent["reason"], agent["exit_code"]) == ("stopped", 137)


def test_exit_while_down_is_recorded(daemon: Daemon) -> None:
    agent_id = daemon.spawn(AGENT_IMAGE, "sh", "-c", "sleep 2; exit 5")
    daemon.kill9()
    time.sleep(3.5)
    restart(daemon)
    agent = daemon.wait_state(agent_id, "exited", timeout=10)
    assert (agent["reason"], agent["exit_code"]) == ("exited", 5)


def test_orphan_with_our_label_is_reported_and_removed(daemon: Daemon, engine: docker.DockerClient) -> None:
    daemon.stop()
    orphan = engine.containers.run(AGENT_IMAGE, ["sleep", "60"], detach=True,
                                   labels={"fleetd.instance": daemon.instance, "fleetd.agent-id": "deadbeef0000"})
    stranger = engine.containers.run(AGENT_IMAGE, ["sleep", "60"], detach=True,
                                     labels={"fleetd.instance": f"{daemon.instance}-other"})
    try:
        restart(daemon)
        wait_for(lambda: not containers(daemon.instance), 10, what="orphan removal")
        events = [e for e in daemon.events() if e["type"] == "orphan_removed"]
        assert events and events[0]["data"]["container_id"] == orphan.id
        stranger.reload()
        assert stranger.status == "running"  # another instance's container is not ours to touch
    finally:
        stranger.remove(force=True)


def test_normal_stop_leaves_agents_running(daemon: Daemon) -> None:
    agent_id = daemon.spawn(AGENT_IMAGE, "sleep", "600")
    assert daemon.stop() == 0
    assert not daemon.socket.exists()  # unlinked at exit
    assert containers(daemon.instance)[0].status == "running"
    restart(daemon)
    assert daemon.agent(agent_id)["state"] == "running"


def test_drain_on_exit_stops_agents() -> None:
    d = Daemon(args=("--drain-on-exit",)).start()
    try:
        agent_id = d.spawn("--grace", "5", AGENT_IMAGE, *TRAP_TERM)
        wait_for(lambda: "started" in d.logs(agent_id), 10)
        assert d.stop() == 0
        assert containers(d.instance)[0].status == "exited"
        d.start()
        agent = d.agent(agent_id)
        assert (agent["state"], agent["reason"], agent["exit_code"]) == ("exited", "drained", 0)
    finally:
        d.cleanup()


def test_two_instances_share_one_engine() -> None:
    a, b = Daemon().start(), Daemon().start()
    try:
        in_a = a.spawn(AGENT_IMAGE, "sleep", "600")
        in_b = b.spawn(AGENT_IMAGE, "sleep", "600")
        assert [x["id"] for x in a.agents()] == [in_a]
        assert [x["id"] for x in b.agents()] == [in_b]
        a.cli("teardown")
        assert containers(a.instance) == []
        assert b.agent(in_b)["state"] == "running" and containers(b.instance)[0].status == "running"
        a.kill9()
        a.start()  # b's containers are not orphans of a
        assert containers(b.instance)[0].status == "running"
    finally:
        a.cleanup()
        b.cleanup()
