"""docs/openapi.yaml is valid OpenAPI 3.1 and matches the code: routes, spawn fields, response shapes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import secrets
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import jsonschema
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from jsonschema.validators import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

import cli.fleet
from cli.fleet import DeployGroup
from cli.main import main as cli_main
from fleetd import errors
from fleetd.admin import Admin
from fleetd.api import error_response, init_app
from fleetd.canary import MAX_PERCENT, MAX_PROMOTE_AFTER, MIN_PERCENT, CanaryPolicy, VersionFigures, judge
from fleetd.config import Config
from fleetd.deployments import DEPLOY_FIELDS, MAX_NAME_CHARS, RESERVED_NAMES, Deployments, Replicas, deploy_request
from fleetd.egress import PRESETS
from fleetd.fleet import member_labels
from fleetd.gateway import zone2_egress_log
from fleetd.models import Reason, State, iso, utcnow
from fleetd.rightsize import report
from fleetd.services import Services
from fleetd.spec import SPAWN_FIELDS, build_spec
from fleetd.store import Store
from fleetd.task_queue import TaskQueue, TaskState
from fleetd.units import NAME_PATTERN
from fleetd.vault import CRED_NAME, MAX_SECRET  # also defines VaultError, an API error (vault_error)
from fleetd.zone2.contract import Health
from fleetd.zone2.egress_log import EgressLog
from tests.unit.openapi_doc import SPEC_PATH, check, declared, resolve, undocumented, validator

METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
# DESIGN.md: "An agent record in JSON has at least: ..."
CONTRACT_AGENT_KEYS = {"id", "name", "image", "role", "state", "reason", "container_id", "created_at", "deadline"} | {
    "exit_code",
    "last_heartbeat",
}
# Codes the API's error middleware (fleetd/api.py) adds to those of fleetd.errors.
MIDDLEWARE_CODES = {"not_found", "method_not_allowed", "request_too_large", "http_error", "internal_error"}
# Raised by the daemon at startup only; never an API answer.
NOT_API_ERRORS = {errors.DaemonAlreadyRunning}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


# -- the document -----------------------------------------------------------


def test_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1.")
    validate(doc, cls=OpenAPIV31SpecValidator)


def test_component_schemas_are_valid_json_schema(doc: dict[str, Any]) -> None:
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_server_explains_the_unix_socket(doc: dict[str, Any]) -> None:
    [server] = doc["servers"]
    assert server["url"] == "http://localhost"
    for needle in ("/run/fleetd/fleetd.sock", "$XDG_RUNTIME_DIR/fleetd/fleetd.sock", "FLEETD_SOCKET"):
        assert needle in server["description"]


# -- routes -----------------------------------------------------------------


def test_paths_equal_the_routes_of_init_app(doc: dict[str, Any]) -> None:
    app = init_app(object())  # type: ignore[arg-type]  # init_app only stores the daemon's parts
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    documented = set(operations(doc))
    assert routes <= documented, "routes the docs miss"
    assert documented <= routes, "documented routes the daemon does not serve"


def cli_command(words: list[str]) -> click.Command | None:
    """The CLI command at ``fleetd WORD [WORD ...]`` (through groups such as ``cred``), or None."""
    command: click.Command = cli_main
    for word in words:
        if not isinstance(command, click.Group) or word not in command.commands:
            return None
        command = command.commands[word]
    return command


def test_every_operation_is_named_and_names_its_cli_verb(doc: dict[str, Any]) -> None:
    ops = operations(doc)
    ids = [op["operationId"] for op in ops.values()]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for key, op in ops.items():
        named = re.findall(r"`fleetd ([a-z-]+(?: [a-z-]+)*)`", op["summary"])
        assert named, f"{key}: the summary should name the CLI verb, e.g. (`fleetd ps`, `fleetd cred set`)"
        for verb in named:
            command = cli_command(verb.split())
            assert command is not None, f"{key}: `fleetd {verb}` is not a fleetd command"
            # A group is no verb, unless it is one too (`fleetd deploy NAME IMAGE` beside `fleetd deploy ls`).
            verb_too = isinstance(command, DeployGroup) and command.apply is not None
            assert not isinstance(command, click.Group) or verb_too, f"{key}: `fleetd {verb}` is a group, not a verb"


def test_path_parameters_are_declared(doc: dict[str, Any]) -> None:
    for path, item in doc["paths"].items():
        placeholders = set(re.findall(r"{(\w+)}", path))
        for method in METHODS & set(item):
            params = [resolve(doc, p) for p in item.get("parameters", []) + item[method].get("parameters", [])]
            assert {p["name"] for p in params if p["in"] == "path"} == placeholders, (method, path)
            assert all(p["required"] for p in params if p["in"] == "path")


def test_every_operation_documents_its_errors_with_the_error_schema(doc: dict[str, Any]) -> None:
    for key, op in operations(doc).items():
        statuses = [s for s in op["responses"] if s.startswith(("4", "5"))]
        assert "500" in statuses, key
        for status in statuses:
            response = resolve(doc, op["responses"][status])
            assert list(response["content"]) == ["application/json"], (key, status)
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_streaming_media_types(doc: dict[str, Any]) -> None:
    logs = doc["paths"]["/v1/agents/{ref}/logs"]["get"]["responses"]["200"]["content"]
    assert list(logs) == ["application/octet-stream"]
    events = doc["paths"]["/v1/events"]["get"]["responses"]["200"]["content"]
    assert set(events) == {"application/json", "application/x-ndjson"}
    assert events["application/json"]["schema"]["items"] == {"$ref": "#/components/schemas/Event"}
    assert events["application/x-ndjson"]["schema"]["$ref"] == "#/components/schemas/Event"


# -- request and response schemas ---------------------------------------------


def test_spawn_request_fields_equal_spawn_fields(doc: dict[str, Any]) -> None:
    body = doc["paths"]["/v1/agents"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    spawn = resolve(doc, body)
    assert set(spawn["properties"]) == SPAWN_FIELDS
    assert spawn["additionalProperties"] is False
    assert spawn["required"] == ["image"]


@pytest.mark.parametrize(
    "request_",
    [
        {"image": "fleetd/agent-python"},
        {
            "image": "fleetd/agent-python",
            "command": ["python3", "agent.py"],
            "name": "a-1",
            "role": "default",
            "env": ["A=1", "B="],
            "labels": ["team=x"],
            "memory": "512m",
            "memory_reservation": 268435456,
            "cpus": 0.25,
            "pids_limit": 64,
            "ttl": 60,
            "grace": 0,
        },
        {"image": "x", "memory": 536870912, "cpus": "0.5", "ttl": "60", "name": None},
        # What the CLI sends for `fleetd spawn -m 1g --cpus 1 x`.
        {"ttl": None, "memory": "1g", "cpus": "1", "image": "x", "command": [], "env": [], "labels": []},
    ],
)
def test_spawn_requests_the_daemon_accepts_match_the_schema(doc: dict[str, Any], request_: dict[str, Any]) -> None:
    build_spec(request_, Config(), host_cpus=4)  # the daemon accepts it ...
    validator(doc, "SpawnRequest").validate(request_)  # ... and so does the schema


@pytest.mark.parametrize(
    "request_",
    [
        {},
        {"image": ""},
        {"image": "x", "memory_limit": "1g"},
        {"image": "x", "env": "A=1"},
        {"image": "x", "env": {"A": "1"}},
        {"image": "x", "cpus": []},
        {"image": "x", "ttl": 1.5},
        {"image": "x", "command": "sleep 30"},
    ],
)
def test_spawn_requests_the_daemon_refuses_fail_the_schema(doc: dict[str, Any], request_: dict[str, Any]) -> None:
    with pytest.raises(errors.InvalidRequest):
        build_spec(request_, Config(), host_cpus=4)
    with pytest.raises(jsonschema.ValidationError):
        validator(doc, "SpawnRequest").validate(request_)


def test_agent_requires_the_design_contract_keys(doc: dict[str, Any]) -> None:
    agent = doc["components"]["schemas"]["Agent"]
    assert set(agent["required"]) >= CONTRACT_AGENT_KEYS
    assert set(agent["required"]) == set(agent["properties"]), "every Agent field is always present"


def test_error_codes_cover_every_api_error(doc: dict[str, Any]) -> None:
    def subclasses(cls: type) -> set[type]:
        return {cls} | {s for sub in cls.__subclasses__() for s in subclasses(sub)}

    codes = {cls.code for cls in subclasses(errors.FleetdError) - NOT_API_ERRORS} | MIDDLEWARE_CODES
    documented = set(doc["components"]["schemas"]["ErrorCode"]["enum"])
    assert codes == documented
    for cls in subclasses(errors.FleetdError) - NOT_API_ERRORS:
        check(doc, "Error", cls("boom").to_json())
    check(doc, "Error", json.loads(error_response(405, "method_not_allowed", "Method Not Allowed").text or ""))


# -- real response shapes, built by the daemon's real parts and store (no Docker) -----


def add_agent(parts: Services, request: dict[str, Any], name: str) -> str:
    spec = build_spec(request, parts.config, host_cpus=4)
    now = utcnow()
    agent_id = f"{len(parts.records.agents()):012x}"
    parts.records.insert_agent(
        agent_id,
        name=name,
        image=spec.image,
        role=spec.role,
        state=State.CREATED.value,
        created_at=iso(now),
        deadline=iso(now),
        spec=json.dumps(spec.to_json()),
    )
    return agent_id


def test_agent_records_match_the_schemas(doc: dict[str, Any], parts: Services) -> None:
    store = parts.records
    running = add_agent(parts, {"image": "img", "cpus": 0.5, "env": ["A=1"]}, "runner")
    store.transition(running, State.RUNNING, None, container_id="c" * 64, started_at=iso(utcnow()))
    store.update(running, last_heartbeat=iso(utcnow()))
    exited = add_agent(parts, {"image": "img", "command": ["true"]}, "done")
    store.transition(exited, State.RUNNING, None, container_id="d" * 64, started_at=iso(utcnow()))
    store.transition(exited, State.STOPPING, Reason.STOPPED, kill_at=iso(utcnow()))
    store.transition(exited, State.EXITED, Reason.STOPPED, exit_code=143, finished_at=iso(utcnow()))
    failed = add_agent(parts, {"image": "img"}, "never")
    store.transition(failed, State.FAILED, Reason.START_FAILED, finished_at=iso(utcnow()))

    for agent in store.agents():
        check(doc, "Agent", parts.agent_json(agent))
        detail = parts.agent_json(agent, detail=True)
        check(doc, "AgentDetail", detail)
        assert detail["transitions"][0]["from_state"] is None
    for agent in (parts.agent_json(a) for a in parts.agents.list_agents(True)):
        assert set(agent) == set(doc["components"]["schemas"]["Agent"]["properties"])


def test_status_and_events_match_the_schemas(doc: dict[str, Any], parts: Services) -> None:
    agent_id = add_agent(parts, {"image": "img"}, "a")
    parts.records.add_event(
        "teardown", "removed", None, {"containers": 2, "networks": 2, "volumes": 0, "firewall_rules": 3}
    )
    check(doc, "Status", parts.status())
    events = parts.records.events()
    assert [e["agent_id"] for e in events] == [agent_id, None]
    for event in events:
        check(doc, "Event", event)


def test_schemas_reject_what_the_daemon_never_sends(doc: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validator(doc, "Error").validate({"error": "not_found"})
    with pytest.raises(jsonschema.ValidationError):
        validator(doc, "Event").validate(
            {"id": 1, "time": "yesterday", "agent_id": None, "type": "x", "message": "", "data": {}}
        )
    assert undocumented(
        doc,
        {"$ref": "#/components/schemas/TeardownResult"},
        {"removed": {"containers": 0, "networks": 0, "volumes": 0, "images": 0}},
    ) == [".removed.images"]


# -- credentials and roles ------------------------------------------------------

UPSTREAM = "http://127.0.0.1:9"


def write_body(doc: dict[str, Any]) -> dict[str, Any]:
    put = doc["paths"]["/v1/creds/{name}"]["put"]
    return put["requestBody"]["content"]["application/json"]["schema"]  # type: ignore[no-any-return]


def test_the_secret_is_write_only_and_in_no_response(doc: dict[str, Any]) -> None:
    write = resolve(doc, write_body(doc))
    assert write["required"] == ["upstream", "secret"]
    assert write["properties"]["secret"]["writeOnly"] is True
    assert "no response of this API ever contains it" in write["description"]
    assert "no response of this API ever contains a secret" in doc["paths"]["/v1/creds/{name}"]["put"]["description"]
    assert write["properties"]["secret"]["maxLength"] == MAX_SECRET
    # No schema but the write body declares a secret, and no response refers to the write body.
    holders = [name for name, schema in doc["components"]["schemas"].items() if "secret" in declared(doc, schema)]
    assert holders == ["CredentialWrite"]
    for key, op in operations(doc).items():
        assert "CredentialWrite" not in json.dumps(op["responses"]), key


def test_name_patterns_equal_the_daemons(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert schemas["CredentialName"]["pattern"] == CRED_NAME.pattern
    assert schemas["RoleName"]["pattern"] == NAME_PATTERN.pattern
    role_name = validator(doc, "RoleName")
    assert role_name.is_valid("researcher")
    assert not role_name.is_valid("default")


@pytest.fixture
def admin(parts: Services) -> Admin:
    return parts.admin


@pytest.mark.parametrize(
    ("name", "request_"),
    [
        ("openai", {"upstream": "https://api.openai.com", "secret": "sk-1"}),
        ("a.b_c-1", {"upstream": " HTTPS://Example.COM:8443/v1/ ", "secret": "x" * MAX_SECRET}),
        ("L" * 64, {"upstream": UPSTREAM, "secret": "s p a c e s", "ignored": True}),
    ],
)
def test_credential_writes_the_daemon_accepts_match_the_schema(
    doc: dict[str, Any], admin: Admin, name: str, request_: dict[str, Any]
) -> None:
    record = asyncio.run(admin.set_credential(name, request_))
    check(doc, "Credential", record)
    validator(doc, "CredentialName").validate(name)
    validator(doc, "CredentialWrite").validate(request_)


@pytest.mark.parametrize(
    ("name", "request_"),
    [
        ("-leading-dash", {"upstream": UPSTREAM, "secret": "s"}),
        ("L" * 65, {"upstream": UPSTREAM, "secret": "s"}),
        ("has space", {"upstream": UPSTREAM, "secret": "s"}),
        ("ok", {"secret": "s"}),
        ("ok", {"upstream": UPSTREAM}),
        ("ok", {"upstream": UPSTREAM, "secret": 42}),
        ("ok", {"upstream": UPSTREAM, "secret": ""}),
        ("ok", {"upstream": UPSTREAM, "secret": "two\nlines"}),
        ("ok", {"upstream": UPSTREAM, "secret": "crlf\r\n"}),
        ("ok", {"upstream": UPSTREAM, "secret": "x" * (MAX_SECRET + 1)}),
        ("ok", {"upstream": "api.openai.com", "secret": "s"}),
        ("ok", {"upstream": "ftp://files.example.com", "secret": "s"}),
    ],
)
def test_credential_writes_the_daemon_refuses_fail_the_schema(
    doc: dict[str, Any], admin: Admin, name: str, request_: dict[str, Any]
) -> None:
    with pytest.raises(errors.InvalidRequest):
        asyncio.run(admin.set_credential(name, request_))
    assert admin.vault.records() == []
    name_ok = validator(doc, "CredentialName").is_valid(name)
    assert not (name_ok and validator(doc, "CredentialWrite").is_valid(request_))


def test_credential_and_role_records_match_the_schemas(doc: dict[str, Any], admin: Admin) -> None:
    sup = admin
    secret = f"sk-{secrets.token_hex(16)}"
    first = asyncio.run(sup.set_credential("openai", {"upstream": "https://API.openai.com/", "secret": secret}))
    assert first["upstream"] == "https://api.openai.com"
    asyncio.run(sup.set_credential("local", {"upstream": UPSTREAM, "secret": secret}))
    rotated = asyncio.run(sup.set_credential("openai", {"upstream": "https://api.openai.com/v1", "secret": "sk-2"}))
    assert rotated["created_at"] == first["created_at"]
    records = sup.vault.records()
    assert [r["name"] for r in records] == ["local", "openai"]
    for record in [first, rotated, *records]:
        check(doc, "Credential", record)

    role = asyncio.run(sup.set_role("researcher", {"creds": ["openai", "local", "openai"]}))
    assert role["creds"] == ["local", "openai"]
    kept = asyncio.run(sup.set_role("researcher", {}))
    assert kept["creds"] == role["creds"]
    asyncio.run(sup.set_role("empty", {"creds": None}))
    for value in [role, kept, *sup.store.roles()]:
        check(doc, "Role", value)
    for bad in ({"creds": "openai"}, {"creds": [1]}):
        with pytest.raises(errors.InvalidRequest):
            asyncio.run(sup.set_role("researcher", bad))
        with pytest.raises(jsonschema.ValidationError):
            validator(doc, "RoleWrite").validate(bad)
    with pytest.raises(errors.InvalidRequest):
        asyncio.run(sup.set_role("default", {}))

    # Budget caps: set, kept by a body without them (or with null), unset by "inherit".
    capped = asyncio.run(sup.set_role("researcher", {"daily_usd": "5", "max_llm_calls": 10, "allow_unpriced": True}))
    assert (capped["daily_usd"], capped["max_llm_calls"], capped["allow_unpriced"]) == ("5", 10, True)
    kept = asyncio.run(sup.set_role("researcher", {"daily_usd": None, "monthly_usd": "20"}))
    assert (kept["daily_usd"], kept["monthly_usd"], kept["max_llm_calls"]) == ("5", "20", 10)
    write = {"daily_usd": "inherit", "max_llm_calls": "inherit", "allow_unpriced": "inherit"}
    validator(doc, "RoleWrite").validate(write)
    unset = asyncio.run(sup.set_role("researcher", write))
    assert (unset["daily_usd"], unset["monthly_usd"], unset["max_llm_calls"], unset["allow_unpriced"]) == (
        None, "20", None, None)
    assert unset["creds"] == role["creds"]
    check(doc, "Role", unset)
    with pytest.raises(errors.InvalidRequest):
        asyncio.run(sup.set_role("researcher", {"daily_usd": "inherited"}))

    asyncio.run(sup.remove_credential("local"))
    check(doc, "CredentialRemoved", {"removed": "local"})  # what fleetd/api.py answers
    with pytest.raises(errors.NotFound):
        asyncio.run(sup.remove_credential("local"))

    events = sup.store.events()
    assert {"credential_set", "credential_rotated", "credential_removed", "role_set"} <= {e["type"] for e in events}
    for event in events:
        check(doc, "Event", event)
    everything = json.dumps([records, sup.store.roles(), events])
    assert secret not in everything and "sk-2" not in everything


def test_status_with_zone2_matches_the_schema(doc: dict[str, Any], parts: Services) -> None:
    zone2 = parts.zone2
    status = parts.status()
    check(doc, "Status", status)
    assert status["zone2"] == {
        "healthy": False,
        "serving_agents": False,
        "container_id": None,
        "address": None,
        "restarts": 0,
        "agents_registered": None,
        "credentials": None,
        "ledger_error": None,
        "code_matches": None,
    }
    keeper = zone2.keeper
    keeper.healthy, keeper.container_id, keeper.ip, keeper.restarts = True, "e" * 64, "172.30.0.2", 1
    zone2.control.last_health = Health(2, 1, 3.5, 1, ledger_error="database or disk is full", ledger_unwritten=3)
    status = parts.status()
    check(doc, "Status", status)
    assert (status["zone2"]["agents_registered"], status["zone2"]["credentials"]) == (2, 1)
    assert status["zone2"]["ledger_error"] == "database or disk is full"


def test_teardown_result_counts_firewall_rules(doc: dict[str, Any]) -> None:
    removed = {"containers": 2, "networks": 2, "volumes": 0, "disks": 2, "firewall_rules": 3}
    check(doc, "TeardownResult", {"removed": removed, "failed": []})
    failed = [{"kind": "network", "name": "fleetd-x-agents", "id": "n1", "error": "has active endpoints"}]
    check(doc, "TeardownResult", {"removed": removed, "failed": failed})
    with pytest.raises(jsonschema.ValidationError):
        validator(doc, "TeardownResult").validate({"removed": {"containers": 2, "networks": 2, "volumes": 0},
                                                   "failed": []})
    with pytest.raises(jsonschema.ValidationError):
        validator(doc, "TeardownResult").validate({"removed": removed})  # what it could not remove is always said


# -- deployments and tasks (issue 16) ---------------------------------------------------


def test_deploy_request_fields_equal_the_daemons(doc: dict[str, Any]) -> None:
    deploy = doc["components"]["schemas"]["DeployRequest"]
    assert set(deploy["properties"]) == SPAWN_FIELDS | DEPLOY_FIELDS
    assert deploy["additionalProperties"] is False
    assert deploy["required"] == ["image"]
    name = doc["components"]["schemas"]["DeploymentName"]
    assert (name["pattern"], name["maxLength"]) == (NAME_PATTERN.pattern, MAX_NAME_CHARS)
    assert set(name["not"]["enum"]) == RESERVED_NAMES
    assert doc["components"]["schemas"]["TaskState"]["enum"] == [state.value for state in TaskState]


@pytest.mark.parametrize(
    "request_",
    [
        {"image": "fleetd/agent-python"},
        # What the CLI sends for `fleetd deploy web --max 3 fleetd/agent-python python3 worker.py`.
        {"image": "fleetd/agent-python", "command": ["python3", "worker.py"], "env": [], "labels": [], "max": 3},
        # ... and for every deploy option and some spawn ones (tests/unit/test_cli_fleet.py).
        {"image": "img:1", "command": [], "env": ["A=1"], "labels": ["team=x"], "memory": "512m", "cpus": "0.5",
         "ttl": 7200, "grace": 10, "daily_usd": "2.50", "heartbeat_interval": 30,
         "readiness_probe": "http:8080/ready", "min": 1, "max": 4, "warm": 1, "tasks_per_agent": 2,
         "scale_down_window": "5m", "task_ttl": "600", "task_attempts": 5, "task_max_usd": "none"},
        {"image": "x", "name": None, "restart": None, "min": "2", "max": None, "scale_down_window": 90.5,
         "task_ttl": 60, "task_attempts": "3", "task_max_usd": "$1.25"},
        {"image": "x", "task_max_usd": " None "},
    ],
)
def test_deploy_requests_the_daemon_accepts_match_the_schema(doc: dict[str, Any], request_: dict[str, Any]) -> None:
    deploy_request(request_, Config(), host_cpus=4)
    validator(doc, "DeployRequest").validate(request_)


@pytest.mark.parametrize(
    "request_",
    [
        {"max": 3},
        {"image": "x", "name": "w1"},
        {"image": "x", "restart": "always"},
        {"image": "x", "replicas": 3},
        {"image": "x", "min": -1},
        {"image": "x", "max": 1.5},
        {"image": "x", "task_ttl": 1.5},
        {"image": "x", "scale_down_window": -5},
        {"image": "x", "task_max_usd": -1},
    ],
)
def test_deploy_requests_the_daemon_refuses_fail_the_schema(doc: dict[str, Any], request_: dict[str, Any]) -> None:
    with pytest.raises(errors.InvalidRequest):
        deploy_request(request_, Config(), host_cpus=4)
    with pytest.raises(jsonschema.ValidationError):
        validator(doc, "DeployRequest").validate(request_)


def test_deploy_request_rollout_fields_and_reserved_names_equal_the_clis(doc: dict[str, Any]) -> None:
    """Against the CLI's copies, which this branch's daemon does not know yet (issue 17: the daemon's own check is
    test_deploy_request_fields_equal_the_daemons)."""
    deploy = doc["components"]["schemas"]["DeployRequest"]["properties"]
    assert set(deploy) == SPAWN_FIELDS | set(cli.fleet.DEPLOY_FIELDS) | set(cli.fleet.ROLLOUT_FIELDS)
    assert deploy["strategy"]["oneOf"][0]["enum"] == list(cli.fleet.STRATEGIES)
    assert set(doc["components"]["schemas"]["DeploymentName"]["not"]["enum"]) == set(cli.fleet.deploy.commands)
    canary = deploy["canary"]["oneOf"][0]
    assert (canary["minimum"], canary["maximum"]) == (MIN_PERCENT, MAX_PERCENT)
    assert deploy["promote_after"]["oneOf"][0]["maximum"] == MAX_PROMOTE_AFTER


@pytest.mark.parametrize(
    "request_",
    [
        # What tests/unit/test_cli_fleet.py has `fleetd deploy` send with every rollout option ...
        {"image": "fleetd/agent-python:2", "command": ["python3", "worker.py"], "env": [], "labels": [], "max": 3,
         "strategy": "canary", "canary": 10, "promote_after": 50, "max_error_rate_increase": 0.02,
         "max_cost_increase": 0.1, "max_duration_increase": 1.0, "canary_max_usd": "$5"},
        # ... with --canary alone, and --strategy blue-green.
        {"image": "img:3", "command": [], "env": [], "labels": [], "canary": 25},
        {"image": "img:4", "command": [], "env": [], "labels": [], "strategy": "blue-green"},
        {"image": "x", "strategy": "rolling", "canary_max_usd": 2.5, "promote_after": MAX_PROMOTE_AFTER},
    ],
)
def test_rollout_requests_the_cli_sends_match_the_schema(doc: dict[str, Any], request_: dict[str, Any]) -> None:
    validator(doc, "DeployRequest").validate(request_)


@pytest.mark.parametrize(
    "request_",
    [
        {"image": "x", "strategy": "big-bang"},
        {"image": "x", "canary": 0},
        {"image": "x", "canary": 51},
        {"image": "x", "canary": 2.5},
        {"image": "x", "promote_after": 0},
        {"image": "x", "max_error_rate_increase": 1.5},
        {"image": "x", "max_cost_increase": -0.1},
        {"image": "x", "canary_max_usd": -1},
    ],
)
def test_rollout_requests_out_of_bounds_fail_the_schema(doc: dict[str, Any], request_: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validator(doc, "DeployRequest").validate(request_)


def test_scale_and_submit_requests_match_the_schemas(doc: dict[str, Any]) -> None:
    scale = validator(doc, "ScaleRequest")
    scale.validate({"max": 20, "warm": 2})  # `fleetd deploy scale web --max 20 --warm 2`
    assert not scale.is_valid({})
    submit = validator(doc, "TaskSubmit")
    for body in ({"deployment": "web", "input": None, "ttl": None, "max_usd": None, "attempts": None, "key": None},
                 {"deployment": "web", "input": {"n": [1, 2.5]}, "ttl": "10m", "max_usd": "0.50", "attempts": 2,
                  "key": "job-42"}):
        submit.validate(body)  # what `fleetd task submit` sends
    assert not submit.is_valid({"input": 1})
    assert not submit.is_valid({"deployment": "web", "attempts": "2"})


def test_deployment_and_task_records_match_the_schemas(doc: dict[str, Any], tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    try:
        deployments = Deployments(store, Config())
        queue = TaskQueue(store)
        created = deployments.apply("web", {"image": "worker:1", "command": ["python", "w.py"], "max": 3}, 4)
        check(doc, "Deployment", created.deployment.to_json())
        check(doc, "DeploymentApplied", {**created.deployment.to_json(), "message": created.message})
        updated = deployments.apply("web", {"image": "worker:2", "task_max_usd": "0.5"}, 4)
        assert updated.message == "updated: version 2"
        replicas = Replicas(wanted=3, live=2, busy=1, idle=1)
        listed = {**updated.deployment.to_json(replicas), "queue": queue.counts("web")}
        assert [v["state"] for v in listed["versions"]] == ["draining", "active"]
        check(doc, "Deployment", listed)
        decision = {"time": iso(utcnow()), "deployment": "web", "version": None, "reason": "2 tasks queued",
                    "start": 1, "drain": [], "retire": [], "replace": ["3f9c2a1b7d04"], "raw": 3, "wanted": 3,
                    "stabilized": 3, "desired": 3, "current": 2, "queued": 2, "busy": 1, "draining": 0, "live": 2,
                    "policy": {"min": 0}}
        unmeasured = {"kind": "deployment", "name": "web", **report([], None, None)}
        no_task = {"succeeded": 0, "failed": 0, "dead": 0, "finished": 0, "error_rate": None,
                   "cost_per_succeeded_usd": None, "p50_duration_seconds": None, "p95_duration_seconds": None,
                   "llm_calls_per_task": None}  # deploy inspect's versions say what their tasks did (issue 17)
        inspected = {**listed, "versions": [{**v, "tasks": no_task} for v in listed["versions"]]}
        check(doc, "DeploymentDetail", {**inspected, "decisions": [decision], "rightsize": unmeasured})
        with pytest.raises(jsonschema.ValidationError):
            validator(doc, "DeploymentDetail").validate({**inspected, "decisions": [{**decision, "start": []}],
                                                         "rightsize": unmeasured})
        with pytest.raises(jsonschema.ValidationError):
            validator(doc, "DeploymentDetail").validate({**inspected, "decisions": [decision]})
        check(doc, "Deployment", deployments.scale("web", max=5).to_json())
        check(doc, "Deployment", deployments.remove("web", drain=True).to_json())

        first = queue.submit("web", {"url": "https://example.com"}, max_usd="0.50", key="job-1")
        second = queue.submit("web", None, attempts=1)
        lease = queue.lease("agent-1", "web", "v2")
        assert lease is not None and lease.id == first.id
        queue.add_cost(first.id, 1234)
        check(doc, "Task", queue.get(first.id).to_json())
        check(doc, "Task", queue.complete(first.id, "agent-1", lease.attempt, {"echo": [1]}).to_json())
        check(doc, "Task", queue.cancel(second.id).to_json())
        for task in queue.tasks("web"):
            check(doc, "Task", task.to_json())
    finally:
        store.close()


def test_rollout_views_of_the_contract_match_the_schemas(doc: dict[str, Any], store: Store) -> None:
    """The views issue 17's contract describes: a real record with version 2 applied, given ``rollout``, the
    versions' ``outcome`` and (inspect) ``tasks``, the policy, figures and verdict as fleetd.canary makes them."""
    deployments = Deployments(store, Config())
    deployments.apply("web", {"image": "worker:1", "max": 3}, 4)
    view = {**deployments.apply("web", {"image": "worker:2"}, 4).deployment.to_json(Replicas(3, 3, 1, 2)),
            "current_version": 1, "image": "worker:1"}
    policy = CanaryPolicy(10, promote_after=20, max_usd=2.5)
    canary = VersionFigures(succeeded=18, failed=1, dead=1, cost_usd=0.36, durations=(4.0, 5.5, 7.25))
    verdict = judge(canary, VersionFigures(), policy, canary_spent_usd=0.41).to_json()
    assert verdict["action"] == "rollback"
    verdict = {"time": iso(utcnow()), **verdict}  # as fleet.Fleet keeps it
    rollout = {"strategy": "canary", "version": 2, "previous": 1, "phase": "canary", "percent": 10, "routed": 23,
               "started_at": view["updated_at"], "policy": policy.to_json(), "target": None, "ready": None,
               "verdict": None}
    canarying = {**view, "versions": [{**v, "outcome": None} for v in view["versions"]], "rollout": rollout}
    check(doc, "Deployment", canarying)
    check(doc, "Deployment", {**canarying, "rollout": {**rollout, "verdict": verdict}})
    blue_green = {**rollout, "strategy": "blue-green", "phase": "starting", "percent": None, "routed": 0,
                  "policy": None, "target": 3, "ready": 1}
    check(doc, "DeploymentApplied", {**canarying, "rollout": blue_green, "message": "updated: version 2"})
    rolled_back = {**view, "versions": [{**view["versions"][0], "state": "active", "outcome": None},
                                        {**view["versions"][1], "state": "draining", "outcome": "rolled_back"}],
                   "rollout": None}
    check(doc, "Deployment", rolled_back)

    tasks = {**canary.to_json(), "p95_duration_seconds": 7.1, "llm_calls_per_task": 3.5}
    none_yet = {**VersionFigures().to_json(), "p95_duration_seconds": None, "llm_calls_per_task": None}
    detail = {**rolled_back, "queue": {"queued": 0}, "decisions": [],
              "rightsize": {"kind": "deployment", "name": "web", **report([], None, None)},
              "versions": [{**rolled_back["versions"][0], "tasks": none_yet},
                           {**rolled_back["versions"][1], "tasks": tasks}]}
    check(doc, "DeploymentDetail", detail)

    for bad in ({**rollout, "strategy": "rolling"}, {**rollout, "phase": "promoted"}, {**rollout, "percent": 60},
                {k: v for k, v in rollout.items() if k != "routed"}):
        assert not validator(doc, "Deployment").is_valid({**canarying, "rollout": bad}), bad
    assert not validator(doc, "Deployment").is_valid({k: v for k, v in canarying.items() if k != "rollout"})
    assert not validator(doc, "Deployment").is_valid(
        {**rolled_back, "versions": [{**rolled_back["versions"][1], "outcome": "failed"}]})
    no_tasks = {**detail, "versions": [{**detail["versions"][0], "tasks": None}, detail["versions"][1]]}
    assert not validator(doc, "DeploymentDetail").is_valid(no_tasks)
    assert not validator(doc, "DeploymentDetail").is_valid({**detail, "versions": rolled_back["versions"]})


def test_promote_and_rollback_answer_the_deployment_or_say_why_not(doc: dict[str, Any]) -> None:
    for verb in ("promote", "rollback"):
        responses = doc["paths"][f"/v1/deployments/{{name}}/{verb}"]["post"]["responses"]
        assert set(responses) == {"200", "404", "409", "500"}
        assert responses["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Deployment"}
        assert responses["409"] == {"$ref": "#/components/responses/NoRollout"}
    example = doc["components"]["responses"]["NoRollout"]["content"]["application/json"]["example"]
    check(doc, "Error", example)
    assert example["error"]["message"] == "deployment web has no rollout in progress"


# -- right-sizing (issue 16) --------------------------------------------------------------


def add_finished(parts: Services, name: str, peak: int | None, role: str = "default", deployment: str | None = None,
                 memory: str = "1g", reason: str = Reason.EXITED) -> None:
    """An agent that ran for a minute and ended, with the figures fleetd.peaks would have kept."""
    labels = member_labels(deployment, 1, None) if deployment else {}
    spec = dataclasses.replace(build_spec({"image": "img", "memory": memory, "cpus": 0.5, "role": role},
                                          parts.config, host_cpus=4), labels=labels)
    start = utcnow() - timedelta(minutes=5)
    parts.records.insert_agent(name, name=name, image="img", role=role, state=State.EXITED.value, reason=reason,
                               created_at=iso(start), deadline=iso(start), started_at=iso(start),
                               finished_at=iso(start + timedelta(minutes=1)), peak_memory_bytes=peak,
                               cpu_ns=None if peak is None else 30 * 10**9, peak_cpu_cores=0.75,
                               spec=json.dumps(spec.to_json()))


def test_rightsize_reports_of_a_deployment_and_a_role_match_the_schema(doc: dict[str, Any], parts: Services) -> None:
    deployment = parts.fleet.deployments.apply("web", {"image": "img", "memory": "2g", "cpus": "0.5"}, 4).deployment
    for n in range(6):
        add_finished(parts, f"web-{n}", (100 + n) << 20, deployment="web")
    add_finished(parts, "web-oom", 1 << 30, deployment="web", reason=Reason.OOM_KILLED)
    add_finished(parts, "web-short", None, deployment="web")
    add_finished(parts, "solo", 64 << 20, role="default", memory="128m")

    web = parts.rightsize("web", None)
    check(doc, "RightsizeReport", web)
    assert (web["kind"], web["agents"], web["measured"], web["oom_killed"]) == ("deployment", 8, 7, 1)
    assert web["limits"] == {"memory": 2 << 30, "cpus": 0.5}  # the current version's
    assert web["recommendation"] == {"memory": 2 << 30} and web["flags"] == ["oom"]  # the OOM-killed one's 1 GiB
    detail = parts.fleet.view(deployment, detail=True)
    check(doc, "DeploymentDetail", detail)
    assert detail["rightsize"] == web

    role = parts.rightsize(None, "default")
    check(doc, "RightsizeReport", role)
    # Every agent of the role, the deployment's too; the limits of its newest agent.
    assert (role["kind"], role["agents"], role["limits"]) == ("role", 9, {"memory": 128 << 20, "cpus": 0.5})
    with pytest.raises(errors.NotFound):
        parts.rightsize("api", None)
    with pytest.raises(errors.NotFound):
        parts.rightsize(None, "researcher")
    parts.records.set_role("researcher", [])
    known = parts.rightsize(None, "researcher")
    check(doc, "RightsizeReport", known)
    assert (known["agents"], known["recommendation"], known["limits"]) == (0, None, {"memory": None, "cpus": None})


def test_the_rightsize_route_takes_exactly_one_of_deployment_and_role(doc: dict[str, Any], parts: Services) -> None:
    parts.fleet.deployments.apply("web", {"image": "img"}, 4)

    async def main() -> None:
        async with TestClient(TestServer(init_app(parts))) as client:
            for query, status in (({"deployment": "web"}, 200), ({"role": "default"}, 200), ({}, 400),
                                  ({"deployment": "web", "role": "default"}, 400), ({"role": ""}, 400),
                                  ({"deployment": "api"}, 404), ({"role": "researcher"}, 404)):
                async with client.get("/v1/rightsize", params=query) as response:
                    body = await response.json()
                    assert response.status == status, (query, body)
                    check(doc, "RightsizeReport" if status == 200 else "Error", body)

    asyncio.run(main())


# -- egress (issue 18) ---------------------------------------------------------------


def test_the_api_answers_the_log_and_the_presets_as_documented(parts: Services, doc: dict[str, Any]) -> None:
    path = zone2_egress_log(parts.config.state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = EgressLog(path)
    for host, decision in (("allowed.example.test", "allowed"), ("other.example.test", "denied")):
        log.write(SimpleNamespace(agent_id=None, host=host, port=443, method="CONNECT", decision=decision,  # type: ignore[arg-type]
                                  reason=None if decision == "allowed" else "not allowed", address=None,
                                  bytes_out=0, bytes_in=0, started_at=0.0, duration_s=0.0))

    async def main() -> None:
        async with TestClient(TestServer(init_app(parts))) as client:
            async with client.get("/v1/egress/log", params={"denied": "1", "limit": "5"}) as response:
                [row] = await response.json()
                assert response.status == 200 and row["host"] == "other.example.test"
                check(doc, "EgressConnection", row)
            for query in ({"limit": "0"}, {"denied": "maybe"}, {"limit": "x"}):
                async with client.get("/v1/egress/log", params=query) as response:
                    assert response.status == 400, query
            async with client.get("/v1/egress/log", params={"agent": "nobody"}) as response:
                assert response.status == 404
            async with client.get("/v1/egress/presets") as response:
                assert (await response.json())["pypi"] == list(PRESETS["pypi"])

    asyncio.run(main())
    log.close()
