"""An agent's network on the real engine: it resolves `zone2` and nothing else, and has no IPv6.

Docker runs a DNS server in every container on a user-defined network (127.0.0.11). It answers
other containers' names, short ids and addresses (PTR), and forwards other names upstream, from
the host's own namespace when the host's resolver is on a loopback address (CVE-2024-29018, not
fixed in the 20.10 engine here). A hostile agent need not go through /etc/resolv.conf: the probe
below also sends raw DNS queries, over UDP and TCP, to 127.0.0.11 and to every configured
nameserver. Nothing here sends traffic beyond this host: the external name is under .invalid,
and after the fix no query leaves the agent at all.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import threading
from typing import Any

import docker
import pytest

from tests.integration.harness import AGENT_IMAGE, Daemon, wait_for

# Resolves each name (getaddrinfo, raw UDP and TCP queries to every nameserver), reverse-resolves each
# address, and calls zone 2 by name; prints a JSON report. Exits 3 on its first run (a marker in /tmp,
# which survives restarts), so that its restart policy runs it a second time in the same network setup.
PROBE = r"""
import json, os, random, socket, struct, sys, urllib.error, urllib.request
names, addresses = json.loads(sys.argv[1]), json.loads(sys.argv[2])

def query(server, name, qtype, tcp):
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    packet = struct.pack(">HHHHHH", random.randrange(1 << 16), 0x0100, 1, 0, 0, 0) + labels + b"\0"
    packet += struct.pack(">HH", qtype, 1)
    try:
        if tcp:
            with socket.create_connection((server, 53), timeout=2) as s:
                s.sendall(struct.pack(">H", len(packet)) + packet)
                data = s.recv(65535)[2:]
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(2)
                s.sendto(packet, (server, 53))
                data = s.recv(65535)
    except OSError as exc:
        return {"answered": False, "error": type(exc).__name__}
    return {"answered": len(data) >= 12, "rcode": data[3] & 15, "answers": struct.unpack(">H", data[6:8])[0]}

servers = sorted({"127.0.0.11"} | {line.split()[1] for line in open("/etc/resolv.conf")
                                   if line.startswith("nameserver")})
report = {"servers": servers, "gai": {}, "raw": {}}
for label, name in names.items():
    try:
        report["gai"][label] = sorted({a[4][0] for a in socket.getaddrinfo(name, 80)})
    except OSError:
        report["gai"][label] = None
    for server in servers:
        for tcp in (False, True):
            report["raw"][f"{label} @{server} {'tcp' if tcp else 'udp'}"] = query(server, name, 1, tcp)
for address in addresses:
    reverse = ".".join(reversed(address.split("."))) + ".in-addr.arpa"
    for server in servers:
        report["raw"][f"PTR {address} @{server} udp"] = query(server, reverse, 12, False)
try:
    urllib.request.urlopen("http://zone2:8080/", timeout=5).close()
    report["zone2_http"] = 200
except urllib.error.HTTPError as exc:
    report["zone2_http"] = exc.code
except OSError as exc:
    report["zone2_http"] = repr(exc)
print("REPORT " + json.dumps(report), flush=True)
if not os.path.exists("/tmp/ran"):
    open("/tmp/ran", "w").close()
    sys.exit(3)
"""


def agents_network(daemon: Daemon) -> str:
    return f"fleetd-{daemon.instance}-agents"


def address_of(engine: docker.DockerClient, daemon: Daemon, agent_id: str) -> str:
    """The agent's address on the agents' network (whichever container of the agent holds it)."""
    for container in engine.containers.list(filters={"label": f"fleetd.agent-id={agent_id}"}):
        network = container.attrs["NetworkSettings"]["Networks"].get(agents_network(daemon)) or {}
        if network.get("IPAddress"):
            return str(network["IPAddress"])
    raise AssertionError(f"agent {agent_id} has no address")


def zone2_address(engine: docker.DockerClient, daemon: Daemon) -> str:
    zone2 = engine.containers.get(f"fleetd-{daemon.instance}-zone2")
    return str(zone2.attrs["NetworkSettings"]["Networks"][agents_network(daemon)]["IPAddress"])


def reports(daemon: Daemon, agent_id: str) -> list[dict[str, Any]]:
    return [json.loads(line.removeprefix("REPORT ")) for line in daemon.logs(agent_id).splitlines()
            if line.startswith("REPORT ")]


def test_an_agent_resolves_zone2_and_nothing_else(daemon: Daemon, engine: docker.DockerClient) -> None:
    other = daemon.spawn(AGENT_IMAGE, "sleep", "300")
    other_container = engine.containers.get(daemon.agent(other)["container_id"])
    names = {
        "zone2": "zone2",
        "other agent": other_container.name,
        "other agent's short id": other_container.id[:12],
        "zone 2's container": f"fleetd-{daemon.instance}-zone2",
        "external": f"fleetd-exfil-{secrets.token_hex(4)}.invalid",
    }
    addresses = [address_of(engine, daemon, other), zone2_address(engine, daemon)]
    prober = daemon.spawn("--restart", "on-failure:1", AGENT_IMAGE, "python3", "-c", PROBE, json.dumps(names),
                          json.dumps(addresses))
    wait_for(lambda: len(reports(daemon, prober)) == 2, 90, what="two probe runs (before and after a restart)")
    for report in reports(daemon, prober):
        assert report["gai"]["zone2"] == [zone2_address(engine, daemon)], report["gai"]
        assert isinstance(report["zone2_http"], int), report["zone2_http"]  # zone 2 answered, by name
        resolved = {label: found for label, found in report["gai"].items() if label != "zone2" and found}
        assert not resolved, resolved
        answered = {query: result for query, result in report["raw"].items() if result["answered"]}
        assert not answered, answered  # no DNS server answers the agent at all: nothing can be forwarded


def test_a_restart_sets_a_stopped_namespace_up_again(daemon: Daemon, engine: docker.DockerClient) -> None:
    """As after a restart of dockerd, which stops every container: the holder runs its rules again first."""
    names = {"zone2": "zone2", "zone 2's container": f"fleetd-{daemon.instance}-zone2"}
    prober = daemon.spawn("--restart", "on-failure:1", AGENT_IMAGE, "python3", "-c", PROBE, json.dumps(names),
                          json.dumps([zone2_address(engine, daemon)]))
    wait_for(lambda: reports(daemon, prober), 30, what="the first probe run")
    engine.containers.get(f"fleetd-{daemon.instance}-{prober}-netns").kill()
    wait_for(lambda: len(reports(daemon, prober)) == 2, 60, what="the run after the restart")
    report = reports(daemon, prober)[1]
    assert report["gai"] == {"zone2": [zone2_address(engine, daemon)], "zone 2's container": None}, report["gai"]
    assert isinstance(report["zone2_http"], int), report["zone2_http"]
    assert not [q for q, result in report["raw"].items() if result["answered"]], report["raw"]
    assert daemon.agent(prober)["restarts"] == 1


def test_zone2_keeps_its_address_and_agents_keep_reaching_it_by_name(
        daemon: Daemon, engine: docker.DockerClient) -> None:
    agent_id = daemon.spawn("--heartbeat-interval", "1", AGENT_IMAGE, "python3", "-c",
                            "import time, fleetd_agent\nfleetd_agent.start_heartbeat()\ntime.sleep(600)")
    wait_for(lambda: daemon.agent(agent_id)["last_heartbeat"], 20, what="the first heartbeat")
    before = zone2_address(engine, daemon)
    ready_events = len([e for e in daemon.events() if e["type"] == "zone2_ready"])
    assert daemon.proc is not None
    # While the daemon cannot react, zone 2 goes away and another container takes whatever address is free.
    daemon.proc.send_signal(signal.SIGSTOP)
    try:
        engine.containers.get(f"fleetd-{daemon.instance}-zone2").remove(force=True)
        squatter = engine.containers.run(AGENT_IMAGE, ["sleep", "120"], detach=True, network=agents_network(daemon),
                                         labels={"fleetd.instance": daemon.instance})
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    try:
        wait_for(lambda: len([e for e in daemon.events() if e["type"] == "zone2_ready"]) > ready_events, 60,
                 what="zone 2 back")
        assert zone2_address(engine, daemon) == before  # the address agents have for zone2 still holds
        beat = daemon.agent(agent_id)["last_heartbeat"]
        wait_for(lambda: daemon.agent(agent_id)["last_heartbeat"] != beat, 20, what="heartbeats through zone 2")
        assert daemon.agent(agent_id)["state"] == "running"
    finally:
        squatter.remove(force=True)


def bridge_link_local(engine: docker.DockerClient, daemon: Daemon) -> tuple[str, int]:
    """The IPv6 link-local address of the host's side of the agents' network, and its interface index."""
    network = engine.networks.get(agents_network(daemon))
    bridge = network.attrs["Options"].get("com.docker.network.bridge.name") or f"br-{network.id[:12]}"

    def usable() -> tuple[str, int] | None:
        with open("/proc/net/if_inet6") as table:
            lines = table.read().splitlines()
        for line in lines:
            raw, index, _, _, flags, name = line.split()
            if name == bridge and raw.startswith("fe80") and not int(flags, 16) & 0x40:  # not tentative (DAD)
                return ":".join(raw[i:i + 4] for i in range(0, 32, 4)), int(index, 16)
        return None

    try:
        found: tuple[str, int] = wait_for(usable, 15, what=f"an IPv6 link-local address on {bridge}")
    except AssertionError:
        pytest.skip(f"the host's bridge {bridge} has no IPv6 link-local address")
    return found


# Tries IPv6 the ways an agent could: its own addresses and routes, and a connection to a listener.
IPV6_PROBE = r"""
import json, socket, sys
address, port = sys.argv[1], int(sys.argv[2])
report = {"addresses": open("/proc/net/if_inet6").read().split("\n")[:-1],
          "routes": [line.split()[-1] for line in open("/proc/net/ipv6_route").read().split("\n") if line]}
try:
    with socket.create_connection((f"{address}%eth0", port), timeout=3):
        report["connect"] = "connected"
except OSError as exc:
    report["connect"] = type(exc).__name__
print("REPORT " + json.dumps(report), flush=True)
"""


def test_an_agent_has_no_ipv6(daemon: Daemon, engine: docker.DockerClient) -> None:
    sleeper = daemon.spawn(AGENT_IMAGE, "sleep", "60")  # an agent on the network: the bridge has a carrier
    address, index = bridge_link_local(engine, daemon)
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.bind((address, 0, 0, index))
    listener.listen()
    listener.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[1])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        agent_id = daemon.spawn(AGENT_IMAGE, "python3", "-c", IPV6_PROBE, address, str(listener.getsockname()[1]))
        report = wait_for(lambda: reports(daemon, agent_id), 30, what="the IPv6 probe")[0]
    finally:
        stop.set()
        thread.join()
        listener.close()
    # No address, and no route but the kernel's "unreachable" entries on lo.
    assert report["addresses"] == [] and set(report["routes"]) <= {"lo"}, report
    assert report["connect"] != "connected" and not accepted, report
    # Disabled by fleetd itself, not only by this engine's default (newer engines give link-local addresses).
    (holder,) = engine.containers.list(filters={"label": [f"fleetd.agent-id={sleeper}", "fleetd.kind=netns"]})
    sysctls = holder.attrs["HostConfig"]["Sysctls"] or {}
    assert sysctls.get("net.ipv6.conf.all.disable_ipv6") == "1", sysctls
    assert sysctls.get("net.ipv6.conf.default.disable_ipv6") == "1", sysctls
