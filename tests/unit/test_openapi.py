"""docs/openapi.yaml is valid OpenAPI 3.1 and matches the code: routes, spawn fields, response shapes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from jsonschema.validators import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from cli.main import main as cli_main
from fleetd import errors
from fleetd.api import error_response, init_app
from fleetd.config import Config
from fleetd.models import Reason, State, iso, utcnow
from fleetd.spec import SPAWN_FIELDS, build_spec
from fleetd.store import Store
from fleetd.supervisor import Supervisor
from fleetd.timers import Timers

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
DOC_URI = "urn:fleetd:openapi"
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


def validator(doc: dict[str, Any], name: str) -> Draft202012Validator:
    """A JSON Schema validator for ``#/components/schemas/<name>`` with the whole document as context."""
    registry: Registry[Any] = Registry().with_resource(
        DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    schema = {"$ref": f"{DOC_URI}#/components/schemas/{name}"}
    return Draft202012Validator(schema, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER)


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def declared(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Every property a schema declares, through $ref and allOf."""
    schema = resolve(doc, schema)
    props = dict(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        props.update(declared(doc, part))
    return props


def undocumented(doc: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "") -> list[str]:
    """Keys in ``value`` that the schema does not declare (a response grew a field the docs miss)."""
    schema = resolve(doc, schema)
    if isinstance(value, list) and "items" in schema:
        return [k for item in value for k in undocumented(doc, schema["items"], item, f"{where}[]")]
    props = declared(doc, schema)
    if not isinstance(value, dict) or not props:
        return []
    found = [f"{where}.{key}" for key in value if key not in props]
    for key, sub in props.items():
        if key in value:
            found += undocumented(doc, sub, value[key], f"{where}.{key}")
    return found


def check(doc: dict[str, Any], name: str, value: Any) -> None:
    validator(doc, name).validate(value)
    assert undocumented(doc, {"$ref": f"#/components/schemas/{name}"}, value) == []


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
    app = init_app(object())  # type: ignore[arg-type]  # init_app only stores the supervisor
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    assert set(operations(doc)) == routes


def test_every_operation_is_named_and_names_its_cli_verb(doc: dict[str, Any]) -> None:
    ops = operations(doc)
    ids = [op["operationId"] for op in ops.values()]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    verbs = set(cli_main.commands)
    for key, op in ops.items():
        named = re.findall(r"`fleetd ([a-z-]+)`", op["summary"])
        assert named, f"{key}: the summary should name the CLI verb, e.g. (`fleetd ps`)"
        assert set(named) <= verbs, f"{key}: {named} is not a fleetd command"


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
    assert set(doc["components"]["schemas"]["ErrorCode"]["enum"]) == codes
    for cls in subclasses(errors.FleetdError) - NOT_API_ERRORS:
        check(doc, "Error", cls("boom").to_json())
    check(doc, "Error", json.loads(error_response(405, "method_not_allowed", "Method Not Allowed").text or ""))


# -- real response shapes, built by the real supervisor and store (no Docker) -----


@pytest.fixture
def supervisor(tmp_path: Path) -> Any:
    config = Config(instance="t-unit", state_dir=tmp_path, socket=tmp_path / "fleetd.sock")
    store = Store(tmp_path / "state.db")
    sup = Supervisor(config, store, None, Timers())  # type: ignore[arg-type]  # no Docker call is made here
    yield sup
    sup.close()
    store.close()


def add_agent(sup: Supervisor, request: dict[str, Any], name: str) -> str:
    spec = build_spec(request, sup.config, host_cpus=4)
    now = utcnow()
    agent_id = f"{len(sup.store.agents()):012x}"
    sup.store.insert_agent(
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


def test_agent_records_match_the_schemas(doc: dict[str, Any], supervisor: Supervisor) -> None:
    store = supervisor.store
    running = add_agent(supervisor, {"image": "img", "cpus": 0.5, "env": ["A=1"]}, "runner")
    store.transition(running, State.RUNNING, None, container_id="c" * 64, started_at=iso(utcnow()))
    store.update(running, last_heartbeat=iso(utcnow()))
    exited = add_agent(supervisor, {"image": "img", "command": ["true"]}, "done")
    store.transition(exited, State.RUNNING, None, container_id="d" * 64, started_at=iso(utcnow()))
    store.transition(exited, State.STOPPING, Reason.STOPPED, kill_at=iso(utcnow()))
    store.transition(exited, State.EXITED, Reason.STOPPED, exit_code=143, finished_at=iso(utcnow()))
    failed = add_agent(supervisor, {"image": "img"}, "never")
    store.transition(failed, State.FAILED, Reason.START_FAILED, finished_at=iso(utcnow()))

    for agent in store.agents():
        check(doc, "Agent", supervisor.agent_json(agent))
        detail = supervisor.agent_json(agent, detail=True)
        check(doc, "AgentDetail", detail)
        assert detail["transitions"][0]["from_state"] is None
    for agent in supervisor.list_agents(True):
        assert set(agent) == set(doc["components"]["schemas"]["Agent"]["properties"])


def test_status_and_events_match_the_schemas(doc: dict[str, Any], supervisor: Supervisor) -> None:
    agent_id = add_agent(supervisor, {"image": "img"}, "a")
    supervisor.store.add_event("teardown", "removed", None, {"containers": 1, "networks": 1, "volumes": 0})
    check(doc, "Status", supervisor.status())
    events = supervisor.store.events()
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
