"""Real answers of a real daemon validate against docs/openapi.yaml (status, content type, body schema)."""

from __future__ import annotations

import contextlib
import http.client
import json
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from jsonschema.validators import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from fleetd.firewall import Firewall
from tests.integration.harness import remove_instance_objects

pytestmark = pytest.mark.docker


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over the daemon's Unix socket (the test's own client, independent of the CLI's)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
DOC_URI = "urn:fleetd:openapi"
IMAGE = "fleetd/agent-python"
FLEETD = Path(sys.executable).with_name("fleetd")
STARTUP_TIMEOUT = 60.0


@dataclass
class Answer:
    status: int
    content_type: str
    raw: bytes

    def json(self) -> Any:
        return json.loads(self.raw)


class Api:
    """Raw HTTP over the daemon's socket, checked against the OpenAPI document."""

    def __init__(self, socket_path: str, doc: dict[str, Any], instance: str, log_path: Path) -> None:
        self.socket_path = socket_path
        self.doc = doc
        self.instance = instance
        self.log_path = log_path
        self.bodies: list[bytes] = []  # every response body, to search for what must never be in one
        resource: Resource[Any] = Resource.from_contents(doc, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(DOC_URI, resource)

    def request(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None, timeout: float = 120.0
    ) -> Answer:
        conn = UnixHTTPConnection(self.socket_path, timeout)
        try:
            payload = raw if raw is not None else None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            content_type = (response.getheader("Content-Type") or "").split(";")[0].strip()
            answer = Answer(response.status, content_type, response.read())
            self.bodies.append(answer.raw)
            return answer
        finally:
            conn.close()

    def validate(self, pointer: str, value: Any) -> None:
        """Validate ``value`` against the schema at a JSON pointer into the document, and find no undocumented key."""
        schema = {"$ref": f"{DOC_URI}#{pointer}"}
        Draft202012Validator(
            schema, registry=self.registry, format_checker=Draft202012Validator.FORMAT_CHECKER
        ).validate(value)
        assert self.undocumented({"$ref": f"#{pointer}"}, value) == [], "keys the spec does not describe"

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            node: Any = self.doc
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            schema = node
        return schema

    def declared(self, schema: dict[str, Any]) -> dict[str, Any]:
        """Every property a schema declares, through $ref and allOf."""
        schema = self.resolve(schema)
        props = dict(schema.get("properties", {}))
        for part in schema.get("allOf", []):
            props.update(self.declared(part))
        return props

    def undocumented(self, schema: dict[str, Any], value: Any, where: str = "") -> list[str]:
        """Keys in ``value`` (and the objects and arrays in it) that the schema does not declare."""
        schema = self.resolve(schema)
        if isinstance(value, list) and "items" in schema:
            return [k for item in value for k in self.undocumented(schema["items"], item, f"{where}[]")]
        props = self.declared(schema)
        if not isinstance(value, dict) or not props:
            return []
        found = [f"{where}.{key}" for key in value if key not in props]
        for key, sub in props.items():
            if key in value:
                found += self.undocumented(sub, value[key], f"{where}.{key}")
        return found

    def media_pointer(self, method: str, template: str, status: int, content_type: str) -> str:
        """The pointer to the schema the spec gives for this answer; fails if the spec does not list it."""
        op = self.doc["paths"][template][method.lower()]
        assert str(status) in op["responses"], f"{method} {template}: status {status} is not documented"
        response = op["responses"][str(status)]
        if "$ref" in response:
            base = response["$ref"].removeprefix("#")
            response = self.doc["components"]["responses"][base.rsplit("/", 1)[1]]
        else:
            base = "/paths/" + _escape(template) + f"/{method.lower()}/responses/{status}"
        assert content_type in response["content"], (
            f"{method} {template} {status}: content type {content_type!r} is not documented"
        )
        return f"{base}/content/{_escape(content_type)}/schema"

    def check(self, answer: Answer, method: str, template: str, status: int) -> Any:
        """Assert the status, then that the content type and body match the spec; return the body."""
        assert answer.status == status, f"{method} {template}: {answer.status} {answer.raw[:500]!r}"
        pointer = self.media_pointer(method, template, status, answer.content_type)
        if answer.content_type != "application/json":
            return answer.raw
        data = answer.json()
        self.validate(pointer, data)
        return data

    def call(
        self, method: str, path: str, template: str, status: int, body: Any = None, raw: bytes | None = None
    ) -> Any:
        return self.check(self.request(method, path, body, raw), method, template, status)

    def error(
        self, method: str, path: str, template: str, status: int, code: str, body: Any = None, raw: bytes | None = None
    ) -> dict[str, Any]:
        data = self.call(method, path, template, status, body, raw)
        assert data["error"]["code"] == data["error"]["type"] == code, data
        return data  # type: ignore[no-any-return]


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())


@pytest.fixture(scope="module")
def api(doc: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    instance = f"t-api-{secrets.token_hex(4)}"
    state_dir = tmp_path_factory.mktemp("state")
    config = state_dir / "config.toml"
    config.write_text("")  # not /etc/fleetd/config.toml, whatever this machine has there
    socket_dir = tempfile.mkdtemp(prefix="fleetd-", dir="/tmp")  # AF_UNIX paths are short
    socket_path = os.path.join(socket_dir, "fleetd.sock")
    log_path = state_dir / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(FLEETD),
                "daemon",
                "--config",
                str(config),
                "--state-dir",
                str(state_dir),
                "--socket",
                socket_path,
                "--instance",
                instance,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    client = Api(socket_path, doc, instance, log_path)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the daemon exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if client.request("GET", "/v1/status", timeout=5).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the daemon did not answer in {STARTUP_TIMEOUT}s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield client
    finally:
        # The daemon starts zone 2 and adds iptables rules (comment fleetd:<instance>): a teardown
        # removes both. The label sweep below catches what a failed teardown leaves of the rest.
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                client.request("POST", "/v1/teardown", timeout=60)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        try:
            remove_instance_objects(instance, state_dir)  # containers, networks, volumes, disks, firewall rules
        finally:
            shutil.rmtree(socket_dir, ignore_errors=True)


def spawn(api: Api, **request: Any) -> dict[str, Any]:
    body = {"image": IMAGE, "command": ["sleep", "30"], "ttl": 60, **request}
    agent: dict[str, Any] = api.call("POST", "/v1/agents", "/v1/agents", 201, body)
    return agent


# -- the happy paths -----------------------------------------------------------


def test_status(api: Api) -> None:
    status = api.call("GET", "/v1/status", "/v1/status", 200)
    assert status["instance"].startswith("t-api-")
    assert status["docker"]["connected"] is True
    assert status["socket"] == api.socket_path
    zone2 = status["zone2"]
    assert zone2["healthy"] is True, zone2
    assert zone2["address"] and zone2["container_id"]
    assert zone2["code_matches"] is True  # the image was built from this tree (the fingerprint holds in a wheel)
    engine = docker.from_env()
    try:
        container = engine.containers.get(f"fleetd-{api.instance}-zone2")
        assert container.id == zone2["container_id"]
        assert container.labels["fleetd.instance"] == api.instance
    finally:
        engine.close()


# -- credentials and roles -------------------------------------------------------


def zone2_credentials(api: Api, expected: int) -> None:
    """Zone 2's credential count (from its health check, about once a second) reaches ``expected``."""
    deadline = time.monotonic() + 10
    while (zone2 := api.call("GET", "/v1/status", "/v1/status", 200)["zone2"])["credentials"] != expected:
        assert time.monotonic() < deadline, f"zone 2 holds {zone2['credentials']} credentials, not {expected}"
        time.sleep(0.2)


def test_credentials_and_roles(api: Api) -> None:
    secret = f"sk-fleetd-test-{secrets.token_hex(16)}"
    rotated_secret = f"sk-fleetd-test-{secrets.token_hex(16)}"
    name = f"api-cred-{secrets.token_hex(3)}"
    role = f"api-role-{secrets.token_hex(3)}"
    creds, one = "/v1/creds", "/v1/creds/{name}"

    # cred set: nothing is contacted, so a closed local port is a fine upstream.
    created = api.call("PUT", f"{creds}/{name}", one, 200, {"upstream": "HTTP://127.0.0.1:9/", "secret": secret})
    assert created["name"] == name
    assert created["upstream"] == "http://127.0.0.1:9"
    rotated = api.call("PUT", f"{creds}/{name}", one, 200, {"upstream": "http://127.0.0.1:9", "secret": rotated_secret})
    assert rotated["created_at"] == created["created_at"]
    assert rotated["updated_at"] >= created["updated_at"]
    other = f"{name}-2"
    api.call("PUT", f"{creds}/{other}", one, 200, {"upstream": "http://127.0.0.1:9/v1", "secret": secret})

    # cred ls
    listed = api.call("GET", creds, creds, 200)
    mine = {c["name"]: c for c in listed if c["name"].startswith(name)}
    assert mine == {name: rotated, other: {**mine[other], "upstream": "http://127.0.0.1:9/v1"}}
    zone2_credentials(api, len(listed))

    # What the daemon refuses.
    good = {"upstream": "http://127.0.0.1:9", "secret": secret}
    for path, body, raw in [
        (f"{creds}/-{name}", good, None),
        (f"{creds}/{'x' * 65}", good, None),
        (f"{creds}/{name}", {"upstream": "127.0.0.1:9", "secret": secret}, None),
        (f"{creds}/{name}", {"upstream": "http://u:p@127.0.0.1:9", "secret": secret}, None),
        (f"{creds}/{name}", {"upstream": "http://127.0.0.1:9", "secret": f"{secret}\nmore"}, None),
        (f"{creds}/{name}", {"upstream": "http://127.0.0.1:9", "secret": ""}, None),
        (f"{creds}/{name}", {"upstream": "http://127.0.0.1:9"}, None),
        (f"{creds}/{name}", None, b'{"upstream": '),
    ]:
        api.error("PUT", path, one, 400, "invalid_request", body, raw)
    assert api.call("GET", creds, creds, 200) == listed  # none of that changed anything

    # role set, role ls
    roles, one_role = "/v1/roles", "/v1/roles/{name}"
    made = api.call("PUT", f"{roles}/{role}", one_role, 200, {"creds": [other, name, name]})
    assert made["creds"] == sorted([name, other])
    kept = api.call("PUT", f"{roles}/{role}", one_role, 200)  # no body: the list stays
    assert kept["creds"] == made["creds"]
    assert kept["created_at"] == made["created_at"]
    emptied = api.call("PUT", f"{roles}/{role}", one_role, 200, {"creds": []})
    assert emptied["creds"] == []
    api.call("PUT", f"{roles}/{role}", one_role, 200, {"creds": [name]})
    listed_roles = api.call("GET", roles, roles, 200)
    assert [r["creds"] for r in listed_roles if r["name"] == role] == [[name]]
    api.error("PUT", f"{roles}/default", one_role, 400, "invalid_request", {"creds": [name]})
    api.error("PUT", f"{roles}/-{role}", one_role, 400, "invalid_request", {"creds": [name]})
    api.error("PUT", f"{roles}/{role}", one_role, 400, "invalid_request", {"creds": name})
    api.error("PUT", f"{roles}/{role}", one_role, 400, "invalid_request", raw=b"[]")

    # A role made here is one spawn accepts.
    agent = spawn(api, role=role)
    assert agent["role"] == role

    # cred rm, and 404 for a credential that is not (or no longer) there.
    assert api.call("DELETE", f"{creds}/{other}", one, 200) == {"removed": other}
    api.error("DELETE", f"{creds}/{other}", one, 404, "not_found")
    api.error("DELETE", f"{creds}/nosuchcred-{secrets.token_hex(3)}", one, 404, "not_found")
    assert [c["name"] for c in api.call("GET", creds, creds, 200) if c["name"].startswith(name)] == [name]
    assert [e["type"] for e in api.call("GET", "/v1/events", "/v1/events", 200) if e["type"].startswith("cred")][
        -4:
    ] == ["credential_set", "credential_rotated", "credential_set", "credential_removed"]

    # No secret in any response body the daemon sent so far (nor in its log).
    for value in (secret, rotated_secret):
        assert not [raw[:200] for raw in api.bodies if value.encode() in raw]
        assert value not in api.log_path.read_text()


def test_agent_lifecycle(api: Api) -> None:
    agent = spawn(api, name=f"api-{secrets.token_hex(3)}", memory="64m", cpus=0.5, env=["A=1"], labels=["t=1"])
    assert agent["state"] == "running"
    assert agent["limits"]["memory"] == 64 << 20
    ref = f"/v1/agents/{agent['id']}"

    listed = api.call("GET", "/v1/agents", "/v1/agents", 200)
    assert agent["id"] in [a["id"] for a in listed]
    api.call("GET", "/v1/agents?all=true", "/v1/agents", 200)

    detail = api.call("GET", ref, "/v1/agents/{ref}", 200)
    assert detail["spec"]["env"] == {"A": "1"}
    assert [t["to_state"] for t in detail["transitions"]] == ["created", "running"]
    by_name = api.call("GET", f"/v1/agents/{agent['name']}", "/v1/agents/{ref}", 200)
    assert by_name["id"] == agent["id"]

    extended = api.call("POST", f"{ref}/extend", "/v1/agents/{ref}/extend", 200, {"ttl": 120})
    assert extended["deadline"] > agent["deadline"]
    assert extended["ttl_remaining"] > 60

    logs = api.call("GET", f"{ref}/logs", "/v1/agents/{ref}/logs", 200)
    assert logs == b""  # sleep says nothing

    stopped = api.call("POST", f"{ref}/stop", "/v1/agents/{ref}/stop", 200, {"grace": 1})
    assert (stopped["state"], stopped["reason"]) == ("exited", "stopped")
    assert stopped["ttl_remaining"] is None

    # Stopping a stopped agent leaves it alone; extending it is a conflict.
    again = api.call("POST", f"{ref}/stop", "/v1/agents/{ref}/stop", 200)
    assert again["state"] == "exited"
    api.error("POST", f"{ref}/extend", "/v1/agents/{ref}/extend", 409, "conflict", {"ttl": 60})


def test_logs_and_kill(api: Api) -> None:
    agent = spawn(api, command=["sh", "-c", "echo hello-from-agent; exec sleep 30"])
    ref = f"/v1/agents/{agent['id']}"
    deadline = time.monotonic() + 20
    while b"hello-from-agent" not in api.call("GET", f"{ref}/logs?tail=10", "/v1/agents/{ref}/logs", 200):
        assert time.monotonic() < deadline, "the agent's output never showed in its logs"
        time.sleep(0.2)

    api.error("POST", f"{ref}/kill", "/v1/agents/{ref}/kill", 400, "invalid_request", {"signal": "SIGNOPE"})
    killed = api.call("POST", f"{ref}/kill", "/v1/agents/{ref}/kill", 200, {})
    assert (killed["state"], killed["reason"]) == ("exited", "killed")
    assert killed["exit_code"] == 137
    api.error("POST", f"{ref}/kill", "/v1/agents/{ref}/kill", 409, "conflict")
    # Logs outlive the agent; follow ends with the (stopped) container.
    assert b"hello-from-agent" in api.call("GET", f"{ref}/logs?follow=true", "/v1/agents/{ref}/logs", 200)


def test_events(api: Api) -> None:
    agent = spawn(api)
    ref = f"/v1/agents/{agent['id']}"
    everything = api.call("GET", "/v1/events", "/v1/events", 200)
    assert {"daemon_started", "created", "state"} <= {e["type"] for e in everything}
    past = api.call("GET", f"/v1/events?agent={agent['id']}", "/v1/events", 200)
    assert [e["type"] for e in past] == ["created", "state"]
    assert api.call("GET", f"/v1/events?since={past[0]['id']}&agent={agent['id']}", "/v1/events", 200) == past[1:]

    conn = UnixHTTPConnection(api.socket_path, 20)
    try:
        conn.request("GET", f"/v1/events?follow=true&agent={agent['id']}")
        response = conn.getresponse()
        content_type = (response.getheader("Content-Type") or "").split(";")[0]
        pointer = api.media_pointer("GET", "/v1/events", response.status, content_type)
        assert content_type == "application/x-ndjson"
        lines: list[bytes] = []
        buffer = b""

        def read_lines(count: int) -> None:
            nonlocal buffer
            while len(lines) < count:
                chunk = response.read1(65536)
                assert chunk, "the event stream ended"
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                lines.extend(complete)

        read_lines(len(past))
        api.call("POST", f"{ref}/extend", "/v1/agents/{ref}/extend", 200, {"ttl": 90})
        read_lines(len(past) + 1)
    finally:
        conn.close()
    streamed = [json.loads(line) for line in lines]
    for event in streamed:
        api.validate(pointer, event)
    assert streamed[: len(past)] == past
    assert streamed[len(past)]["type"] == "extended"
    assert streamed[len(past)]["data"] == {"ttl": 90}


# -- errors --------------------------------------------------------------------


def test_request_errors(api: Api) -> None:
    api.error("POST", "/v1/agents", "/v1/agents", 400, "invalid_request", raw=b'{"image": ')
    api.error("POST", "/v1/agents", "/v1/agents", 400, "invalid_request", raw=b'["not", "an", "object"]')
    api.error("POST", "/v1/agents", "/v1/agents", 400, "invalid_request", {"image": IMAGE, "memroy": "1g"})
    api.error("POST", "/v1/agents", "/v1/agents", 400, "invalid_request", {"image": IMAGE, "ttl": 10**9})
    api.error("POST", "/v1/agents", "/v1/agents", 400, "invalid_request", {"image": IMAGE, "env": ["FLEETD_X=1"]})
    missing = f"fleetd/no-such-image-{secrets.token_hex(4)}:never"
    api.error("POST", "/v1/agents", "/v1/agents", 400, "image_not_found", {"image": missing})
    api.error("GET", "/v1/agents?all=maybe", "/v1/agents", 400, "invalid_request")
    api.error("GET", "/v1/events?since=-1", "/v1/events", 400, "invalid_request")
    too_big = json.dumps({"image": IMAGE, "command": ["x" * (1 << 20)]}).encode()
    api.error("POST", "/v1/agents", "/v1/agents", 413, "request_too_large", raw=too_big)


def test_name_conflict(api: Api) -> None:
    name = f"api-dup-{secrets.token_hex(3)}"
    spawn(api, name=name)
    message = api.error("POST", "/v1/agents", "/v1/agents", 409, "conflict", {"image": IMAGE, "name": name})
    assert name in message["error"]["message"]


def test_durations_wait_and_remove(api: Api) -> None:
    name = f"api-rm-{secrets.token_hex(3)}"
    live = spawn(api, name=name, ttl="1h30m", grace="30s", heartbeat_interval="1m")
    assert (live["limits"]["ttl"], live["limits"]["grace"], live["heartbeat_interval"]) == (5400, 30, 60)
    ref = f"/v1/agents/{live['id']}"
    extended = api.call("POST", f"{ref}/extend", "/v1/agents/{ref}/extend", 200, {"ttl": "90m"})
    assert 5300 < extended["ttl_remaining"] <= 5400
    message = api.error("POST", f"{ref}/extend", "/v1/agents/{ref}/extend", 400, "invalid_request", {"ttl": "soon"})
    assert "--ttl: invalid duration 'soon'" in message["error"]["message"]
    refused = api.error("DELETE", ref, "/v1/agents/{ref}", 409, "conflict")
    assert f"fleetd rm -f {live['id']}" in refused["error"]["message"]
    taken = api.error("POST", "/v1/agents", "/v1/agents", 409, "conflict", {"image": IMAGE, "name": name})
    assert f"agent {live['id']} (running)" in taken["error"]["message"]
    forced = api.call("DELETE", f"{ref}?force=true", "/v1/agents/{ref}", 200)
    assert (forced["state"], forced["reason"]) == ("removed", "killed")

    ended = spawn(api, name=name, command=["sh", "-c", "exit 3"])  # the name is free again
    ref = f"/v1/agents/{ended['id']}"
    waited = api.call("POST", f"{ref}/wait", "/v1/agents/{ref}/wait", 200)
    assert (waited["state"], waited["exit_code"]) == ("exited", 3)
    assert api.call("POST", f"{ref}/wait", "/v1/agents/{ref}/wait", 200)["exit_code"] == 3  # at once now
    removed = api.call("DELETE", ref, "/v1/agents/{ref}", 200)
    assert (removed["state"], removed["exit_code"]) == ("removed", 3)
    assert api.call("DELETE", ref, "/v1/agents/{ref}", 200)["state"] == "removed"
    assert api.call("POST", f"{ref}/wait", "/v1/agents/{ref}/wait", 200)["state"] == "removed"


def test_unknown_agent(api: Api) -> None:
    for method, path, template in [
        ("GET", "/v1/agents/nosuchagent", "/v1/agents/{ref}"),
        ("GET", "/v1/agents/nosuchagent/logs", "/v1/agents/{ref}/logs"),
        ("POST", "/v1/agents/nosuchagent/stop", "/v1/agents/{ref}/stop"),
        ("POST", "/v1/agents/nosuchagent/kill", "/v1/agents/{ref}/kill"),
        ("POST", "/v1/agents/nosuchagent/extend", "/v1/agents/{ref}/extend"),
        ("POST", "/v1/agents/nosuchagent/wait", "/v1/agents/{ref}/wait"),
        ("DELETE", "/v1/agents/nosuchagent", "/v1/agents/{ref}"),
        ("GET", "/v1/events?agent=nosuchagent", "/v1/events"),
    ]:
        body = {"ttl": 60} if path.endswith("/extend") else None
        api.error(method, path, template, 404, "not_found", body)


def test_unknown_route_and_method_answer_the_error_shape(api: Api) -> None:
    for method, path, status, code in [
        ("GET", "/v1/nope", 404, "not_found"),
        ("DELETE", "/v1/agents", 405, "method_not_allowed"),
    ]:
        answer = api.request(method, path)
        assert (answer.status, answer.content_type) == (status, "application/json")
        api.validate("/components/schemas/Error", answer.json())
        assert answer.json()["error"]["code"] == code


def test_teardown(api: Api) -> None:
    spawn(api)
    firewall = Firewall(api.instance)
    assert len([rule for rule in firewall.rules() if firewall.tag in rule]) == 3
    result = api.call("POST", "/v1/teardown", "/v1/teardown", 200)
    assert result["failed"] == []
    assert result["removed"]["containers"] >= 2  # the agents and zone 2
    assert result["removed"]["networks"] == 2  # agents and egress
    assert result["removed"]["firewall_rules"] == 3
    assert firewall.rules() == []
    assert api.call("GET", "/v1/status", "/v1/status", 200)["zone2"]["healthy"] is False
    agents = api.call("GET", "/v1/agents?all=true", "/v1/agents", 200)
    assert {a["state"] for a in agents} == {"removed"}
    assert api.call("GET", "/v1/agents", "/v1/agents", 200) == []
