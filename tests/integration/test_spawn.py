"""spawn: limits, secure defaults, labels, env, names, roles, and the agent record."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import docker

from tests.integration.harness import AGENT_IMAGE, Daemon, containers, wait_for

CONTRACT_KEYS = {"id", "name", "image", "role", "state", "reason", "container_id", "created_at", "deadline",
                 "exit_code", "last_heartbeat"}


def test_spawn_applies_limits_and_secure_defaults(daemon: Daemon, engine: docker.DockerClient) -> None:
    out = daemon.cli("spawn", "--ttl", "600", "--memory", "64m", "--memory-reservation", "32m", "--cpus", "0.25",
                     "--pids-limit", "50", "--grace", "5", "--name", "web", "-e", "A=1", "--label", "team=x",
                     "--json", AGENT_IMAGE, "sleep", "300").stdout
    agent = json.loads(out)
    assert set(agent) >= CONTRACT_KEYS
    assert agent["state"] == "running" and agent["name"] == "web"
    created = datetime.fromisoformat(agent["created_at"])
    assert datetime.fromisoformat(agent["deadline"]) - created == timedelta(seconds=600)

    attrs = engine.containers.get(agent["container_id"]).attrs
    host = attrs["HostConfig"]
    assert host["Memory"] == 64 << 20
    assert host["MemorySwap"] == 64 << 20  # no swap: the limit is real
    assert host["MemoryReservation"] == 32 << 20
    assert host["NanoCpus"] == 250_000_000
    assert host["PidsLimit"] == 50
    assert host["Init"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["ReadonlyRootfs"] is True
    # Its network namespace is its holder's, on the agents' network (fleetd.netns).
    holder = engine.containers.get(f"fleetd-{daemon.instance}-{agent['id']}-netns")
    assert host["NetworkMode"] == f"container:{holder.id}"
    assert list(holder.attrs["NetworkSettings"]["Networks"]) == [f"fleetd-{daemon.instance}-agents"]
    assert holder.attrs["HostConfig"]["CapAdd"] == ["NET_ADMIN", "SETUID", "SETGID"]
    assert holder.labels["fleetd.agent-id"] == agent["id"] and holder.labels["fleetd.kind"] == "netns"
    labels = attrs["Config"]["Labels"]
    assert labels["fleetd.instance"] == daemon.instance
    assert labels["fleetd.agent-id"] == agent["id"]
    assert labels["team"] == "x"
    env = attrs["Config"]["Env"]
    assert "A=1" in env and f"FLEETD_AGENT_ID={agent['id']}" in env
    assert attrs["Config"]["Cmd"] == ["sleep", "300"]
    assert attrs["State"]["Running"]


def test_spawn_defaults(daemon: Daemon, engine: docker.DockerClient) -> None:
    agent = daemon.agent(daemon.spawn(AGENT_IMAGE, "sleep", "300"))
    host = engine.containers.get(agent["container_id"]).attrs["HostConfig"]
    assert host["PidsLimit"] == 256
    assert host["Memory"] == 512 << 20
    assert agent["limits"]["ttl"] == 3600 and agent["limits"]["grace"] == 30
    assert agent["name"] == agent["id"]


def test_everything_after_the_image_goes_to_the_container(daemon: Daemon) -> None:
    agent_id = daemon.spawn(AGENT_IMAGE, "python3", "-c", "import sys; print(sys.argv[1:])", "--ttl", "5")
    daemon.wait_state(agent_id, "exited")
    assert "['--ttl', '5']" in daemon.logs(agent_id)
    assert daemon.agent(agent_id)["limits"]["ttl"] == 3600


def test_env_from_the_shell_like_docker(daemon: Daemon) -> None:
    import os
    import subprocess

    from tests.integration.harness import FLEETD

    out = subprocess.run([FLEETD, "--socket", str(daemon.socket), "spawn", "-e", "FROM_SHELL", "-e", "UNSET_ONE",
                          AGENT_IMAGE, "sh", "-c", "echo v=$FROM_SHELL u=${UNSET_ONE-unset}"],
                         capture_output=True, text=True, env={**os.environ, "FROM_SHELL": "yes"}, check=True)
    agent_id = out.stdout.strip()
    daemon.wait_state(agent_id, "exited")
    assert "v=yes u=unset" in daemon.logs(agent_id)


def test_roles_from_config_set_defaults() -> None:
    config = '[defaults]\nmemory = "128m"\n\n[roles.small]\nmemory = "64m"\nttl = 120\npids_limit = 20\n'
    d = Daemon(config=config).start()
    try:
        plain = d.agent(d.spawn(AGENT_IMAGE, "sleep", "60"))
        small = d.agent(d.spawn("--role", "small", AGENT_IMAGE, "sleep", "60"))
        override = d.agent(d.spawn("--role", "small", "--memory", "96m", AGENT_IMAGE, "sleep", "60"))
        assert plain["limits"]["memory"] == 128 << 20 and plain["role"] == "default"
        assert small["limits"] == {**small["limits"], "memory": 64 << 20, "ttl": 120, "pids_limit": 20}
        assert small["role"] == "small"
        assert override["limits"]["memory"] == 96 << 20 and override["limits"]["ttl"] == 120
        bad = d.cli("spawn", "--role", "nope", AGENT_IMAGE, check=False)
        assert bad.returncode == 1 and "unknown role 'nope'" in bad.stderr
    finally:
        d.cleanup()


def test_name_is_free_again_once_its_agent_is_removed(daemon: Daemon) -> None:
    """Docker's rule: an exited agent keeps its name (and its container) until it is removed."""
    first = daemon.spawn("--name", "job", AGENT_IMAGE, "true")
    daemon.wait_state(first, "exited")
    taken = daemon.cli("spawn", "--name", "job", AGENT_IMAGE, "sleep", "60", check=False)
    assert taken.returncode == 1 and f"in use by agent {first} (exited): run `fleetd rm {first}`" in taken.stderr
    daemon.cli("rm", first)
    second = daemon.spawn("--name", "job", AGENT_IMAGE, "sleep", "60")
    assert daemon.agent("job")["id"] == second
    assert len(containers(daemon.instance)) == 1


def spare_holders(engine: docker.DockerClient, daemon: Daemon, agents: set[str] | None = None) -> set[str]:
    """Agent ids of the instance's namespace holders that belong to no agent record (the spares)."""
    agents = {a["id"] for a in daemon.agents()} if agents is None else agents
    # ignore_removed: the daemon may remove a spare between the list and docker-py's inspect of each entry
    holders = engine.containers.list(all=True, ignore_removed=True,
                                     filters={"label": [f"fleetd.instance={daemon.instance}", "fleetd.kind=netns"]})
    return {h.labels["fleetd.agent-id"] for h in holders if h.labels["fleetd.agent-id"] not in agents}


def test_a_spawn_takes_a_namespace_made_ahead_and_the_pool_is_made_again(engine: docker.DockerClient) -> None:
    """The holder's start is most of a spawn: two are made ahead (spare_namespaces); a spawn takes one with its
    agent id, and another is made after it. A restart of the daemon does not adopt a spare as an agent; its
    stop removes them."""
    daemon = Daemon(config="spare_namespaces = 2\n").start()
    try:
        spares = wait_for(lambda: (found := spare_holders(engine, daemon)) and len(found) == 2 and found, 30,
                          what="two spare holders")
        for holder in spares:
            assert engine.containers.get(f"fleetd-{daemon.instance}-{holder}-netns").status == "running"
        agent = daemon.agent(daemon.spawn(AGENT_IMAGE, "sleep", "300"))
        assert agent["id"] in spares and agent["state"] == "running"
        hostname = engine.containers.get(agent["container_id"]).exec_run(["hostname"]).output.decode().strip()
        assert hostname == agent["id"]
        pool = wait_for(lambda: (found := spare_holders(engine, daemon)) and len(found) == 2 and found, 30,
                        what="the pool made again")
        assert agent["id"] not in pool
        named = daemon.agent(daemon.spawn("--name", "second", AGENT_IMAGE, "sleep", "300"))
        assert named["id"] in pool and named["name"] == "second"
        daemon.stop()
        # the stop removed the spares, not the agents' holders
        assert spare_holders(engine, daemon, {agent["id"], named["id"]}) == set()
        daemon.start()
        assert {a["id"] for a in daemon.agents()} == {agent["id"], named["id"]}
        wait_for(lambda: len(spare_holders(engine, daemon)) == 2, 30, what="the pool made again after a restart")
        assert daemon.agent(agent["id"])["state"] == "running"
    finally:
        daemon.cleanup()


def test_no_spares_when_turned_off(engine: docker.DockerClient) -> None:
    daemon = Daemon(config="spare_namespaces = 0\n").start()
    try:
        agent = daemon.agent(daemon.spawn(AGENT_IMAGE, "sleep", "300"))
        assert agent["state"] == "running" and spare_holders(engine, daemon) == set()
    finally:
        daemon.cleanup()
