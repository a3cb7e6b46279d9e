"""Bad input gets a clear one-line error (CLI) or a 4xx JSON body (API), and changes nothing."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator

import pytest

from tests.integration.harness import AGENT_IMAGE, Daemon, containers


@pytest.fixture(scope="module")
def shared() -> Iterator[Daemon]:
    """One daemon for the many refusals: each test checks that it changed nothing."""
    d = Daemon().start()
    try:
        yield d
    finally:
        d.cleanup()


def snapshot(daemon: Daemon) -> tuple[list[tuple[str, str]], int, int]:
    agents = [(a["id"], a["state"]) for a in daemon.agents()]
    return agents, len(containers(daemon.instance)), len(daemon.events())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuch/image:1"], "not found locally: build or load it"),
        (["--memory", "banana", AGENT_IMAGE], "--memory: invalid size 'banana'"),
        (["--memory", "5m", AGENT_IMAGE], "below Docker's minimum of 6 MiB"),
        (["--memory-reservation", "1g", "--memory", "64m", AGENT_IMAGE], "must be smaller than --memory"),
        (["--cpus", "0", AGENT_IMAGE], "--cpus: must be greater than 0"),
        (["--cpus", "512", AGENT_IMAGE], "more than the"),
        (["--cpus", "lots", AGENT_IMAGE], "--cpus: invalid number"),
        (["--ttl", "0", AGENT_IMAGE], "--ttl: must be at least 1"),
        (["--ttl", "-5", AGENT_IMAGE], "--ttl: must be at least 1"),
        (["--ttl", "86401", AGENT_IMAGE], "--ttl: must be at most 86400"),
        (["--grace", "-1", AGENT_IMAGE], "--grace: must be at least 0"),
        (["--ttl", "1.5s", AGENT_IMAGE], "--ttl: must be a whole number of seconds"),
        (["--ttl", "2d", AGENT_IMAGE], "--ttl: must be at most 86400"),
        (["--grace", "2h", AGENT_IMAGE], "--grace: must be at most 3600"),
        (["--env-file", "/nonexistent/agent.env", AGENT_IMAGE], "--env-file /nonexistent/agent.env: No such file"),
        (["--pids-limit", "0", AGENT_IMAGE], "--pids-limit: must be at least 1"),
        (["-e", "=x", AGENT_IMAGE], "invalid env '=x'"),
        (["-e", "BAD KEY=1", AGENT_IMAGE], "invalid env 'BAD KEY=1'"),
        (["-e", "FLEETD_AGENT_ID=x", AGENT_IMAGE], "reserved"),
        (["--label", "fleetd.instance=x", AGENT_IMAGE], "reserved"),
        (["--label", "novalue", AGENT_IMAGE], "invalid label 'novalue'"),
        (["--name", "bad name", AGENT_IMAGE], "invalid name"),
        (["--role", "ghost", AGENT_IMAGE], "unknown role 'ghost'"),
    ],
)
def test_bad_spawn_is_refused_and_changes_nothing(shared: Daemon, args: list[str], message: str) -> None:
    daemon = shared
    before = snapshot(daemon)
    result = daemon.cli("spawn", *args, check=False)
    assert result.returncode == 1
    assert message in result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1  # one line, no traceback
    assert snapshot(daemon) == before


def test_duplicate_name_is_refused(daemon: Daemon) -> None:
    first = daemon.spawn("--name", "solo", AGENT_IMAGE, "sleep", "60")
    before = snapshot(daemon)
    result = daemon.cli("spawn", "--name", "solo", AGENT_IMAGE, "sleep", "60", check=False)
    assert result.returncode == 1 and f"already in use by agent {first}" in result.stderr
    assert snapshot(daemon) == before


def test_non_integer_flag_is_a_usage_error(daemon: Daemon) -> None:
    result = daemon.cli("spawn", "--ttl", "soon", AGENT_IMAGE, check=False)
    assert result.returncode == 2 and "Invalid value for '--ttl'" in result.stderr
    assert "is not a duration" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("verb", [["inspect"], ["stop"], ["kill"], ["logs"], ["extend", "--ttl", "5"], ["rm"],
                                  ["rm", "-f"], ["wait"]])
def test_unknown_agent(shared: Daemon, verb: list[str]) -> None:
    daemon = shared
    result = daemon.cli(*verb[:1], "ffffffffffff", *verb[1:], check=False)
    assert result.returncode == 1 and "no such agent: ffffffffffff" in result.stderr
    assert result.stdout == ""


def test_cli_without_daemon_says_so(tmp_path: object) -> None:
    d = Daemon()
    try:
        result = d.cli("ps", check=False)
        assert result.returncode == 1 and "cannot reach fleetd" in result.stderr and "Traceback" not in result.stderr
    finally:
        d.cleanup()


def raw_request(daemon: Daemon, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("localhost")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(daemon.socket))
    conn.sock = sock
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/agents", b"{not json", 400, "invalid_request"),
        ("POST", "/v1/agents", b"[1, 2]", 400, "invalid_request"),
        ("POST", "/v1/agents", b"\xff\xfe", 400, "invalid_request"),
        ("POST", "/v1/agents", b'{"image": "fleetd/agent-python", "bogus": 1}', 400, "invalid_request"),
        ("POST", "/v1/agents", b'{"image": "fleetd/agent-python", "ttl": "abc"}', 400, "invalid_request"),
        ("POST", "/v1/agents", b'{"image": "fleetd/agent-python", "ttl": "1h30"}', 400, "invalid_request"),
        ("POST", "/v1/agents", b'{"image": "fleetd/agent-python", "grace": "1.5s"}', 400, "invalid_request"),
        ("POST", "/v1/agents", b'{"image": "fleetd/agent-python", "heartbeat_interval": "often"}', 400,
         "invalid_request"),
        ("POST", "/v1/agents/abc123/extend", b'{"ttl": "soon"}', 400, "invalid_request"),
        ("POST", "/v1/drain", b'{"timeout": "10 parsecs"}', 400, "invalid_request"),
        ("DELETE", "/v1/agents/ffffffffffff?force=maybe", None, 400, "invalid_request"),
        ("POST", "/v1/agents/ffffffffffff/wait", None, 404, "not_found"),
        ("POST", "/v1/agents", b'{"image": "fleetd/agent-python", "command": "sleep 1"}', 400, "invalid_request"),
        ("POST", "/v1/agents", b'{"image": 5}', 400, "invalid_request"),
        ("POST", "/v1/agents", b'{"image": "fleetd/agent-python", "env": {"A": 1}}', 400, "invalid_request"),
        ("GET", "/v1/agents?all=maybe", None, 400, "invalid_request"),
        ("GET", "/v1/events?since=-1", None, 400, "invalid_request"),
        ("GET", "/v1/agents?filter=colour=red", None, 400, "invalid_request"),
        ("GET", "/v1/agents?filter=state=asleep", None, 400, "invalid_request"),
        ("GET", "/v1/agents?filter=label=", None, 400, "invalid_request"),
        ("GET", "/v1/events?from=yesterday", None, 400, "invalid_request"),
        ("GET", "/v1/events?until=10x", None, 400, "invalid_request"),
        ("GET", "/v1/events?from=1m&until=1h", None, 400, "invalid_request"),
        ("GET", "/v1/agents/abc123/logs?since=soon", None, 400, "invalid_request"),
        ("GET", "/v1/agents/abc123/logs?timestamps=maybe", None, 400, "invalid_request"),
        ("GET", "/v1/nowhere", None, 404, "not_found"),
        ("DELETE", "/v1/agents", None, 405, "method_not_allowed"),
        ("POST", "/v1/agents/abc123/extend", b"{}", 400, "invalid_request"),
    ],
)
def test_api_errors_are_json(shared: Daemon, method: str, path: str, body: bytes | None, status: int,
                             code: str) -> None:
    daemon = shared
    before = snapshot(daemon)
    got_status, payload = raw_request(daemon, method, path, body)
    assert got_status == status
    error = payload["error"]
    assert isinstance(error, dict) and error["type"] == code and error["message"]
    assert snapshot(daemon) == before


def test_second_daemon_on_same_socket_refuses(daemon: Daemon) -> None:
    other = Daemon()
    other.socket = daemon.socket
    try:
        other.start(wait=False)
        assert other.proc is not None and other.proc.wait(30) == 1
        assert f"another fleetd daemon (pid {daemon.proc.pid}) is listening on {daemon.socket}" in other.log()  # type: ignore[union-attr]
        assert daemon.cli("status").returncode == 0  # the first one is untouched
    finally:
        other.socket = other.root / "sock"
        other.cleanup()


def test_second_daemon_on_same_state_dir_refuses(daemon: Daemon) -> None:
    other = Daemon(instance=daemon.instance)
    other.state_dir = daemon.state_dir
    try:
        other.start(wait=False)
        assert other.proc is not None and other.proc.wait(30) == 1
        assert f"another fleetd daemon (pid {daemon.proc.pid}, instance {daemon.instance}" in other.log()  # type: ignore[union-attr]
        assert not other.socket.exists()
    finally:
        other.proc = None
        import shutil

        shutil.rmtree(other.root, ignore_errors=True)


def test_state_dir_of_another_instance_is_refused(daemon: Daemon) -> None:
    daemon.stop()
    other = Daemon(instance="t-someone-else")
    other.state_dir = daemon.state_dir
    try:
        other.start(wait=False)
        assert other.proc is not None and other.proc.wait(30) == 1
        assert f"belongs to instance '{daemon.instance}'" in other.log()
    finally:
        other.proc = None
        import shutil

        shutil.rmtree(other.root, ignore_errors=True)
