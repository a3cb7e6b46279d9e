"""``fleetd deploy`` and ``fleetd task`` (cli/fleet.py) against a fake daemon on a Unix socket: the exact requests
they send, what they print, and their exit statuses. The canned answers are the daemon's own JSON views
(Deployment.to_json, Task.to_json) of records made on a real state.db."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import cli.fleet
from cli.main import main
from fleetd.config import Config
from fleetd.deployments import SCALING_FIELDS, TASK_FIELDS, Deployments, Replicas
from fleetd.store import Store
from fleetd.task_queue import TaskQueue, TaskState
from tests.unit.fake_daemon import Answer, FakeDaemon, Seen, error, fake_daemon
from tests.unit.wall_clock import WallClock

EMPTY_SPEC = {"env": [], "labels": []}  # what spawn_request always sends


@pytest.fixture
def daemon() -> Iterator[FakeDaemon]:
    with fake_daemon() as fake:
        yield fake


@pytest.fixture
def deployment(store: Store) -> dict[str, Any]:
    """``web`` as ``GET /v1/deployments/web`` answers it: 1 agent live of 3 wanted, 4 tasks queued."""
    record = Deployments(store, Config(), clock=WallClock()).apply(
        "web", {"image": "fleetd/agent-python", "command": ["python3", "worker.py"], "max": 3}, host_cpus=2)
    return {**record.deployment.to_json(Replicas(wanted=3, live=1, busy=1, idle=0)),
            "queue": {"queued": 4, "leased": 1}}


CANARY_POLICY = {"percent": 10, "promote_after": 100, "max_error_rate_increase": 0.05, "max_cost_increase": 0.2,
                 "max_duration_increase": 0.5, "max_usd": None}


@pytest.fixture
def rolling_out(store: Store) -> dict[str, Any]:
    """``web`` with version 2 on a 10 % canary beside version 1, as issue 17's API contract has the daemon show it.
    The daemon of this branch knows no rollout: the record is a real one with version 2 applied, made to read as
    the contract says (version 1 still current, both versions active, ``outcome`` and ``rollout`` added)."""
    deployments = Deployments(store, Config(), clock=WallClock())
    spec = {"command": ["python3", "worker.py"], "max": 3}
    deployments.apply("web", {"image": "fleetd/agent-python", **spec}, host_cpus=2)
    applied = deployments.apply("web", {"image": "fleetd/agent-python:2", **spec}, host_cpus=2)
    view = applied.deployment.to_json(Replicas(wanted=3, live=3, busy=2, idle=1))
    return {**view, "current_version": 1, "image": "fleetd/agent-python",
            "versions": [{**v, "state": "active", "outcome": None} for v in view["versions"]],
            "queue": {"queued": 4, "leased": 2},
            "rollout": {"strategy": "canary", "version": 2, "previous": 1, "phase": "canary", "percent": 10,
                        "routed": 3, "started_at": view["updated_at"], "policy": CANARY_POLICY, "target": None,
                        "ready": None, "verdict": None}}


def ended(view: dict[str, Any], current: int, outcomes: dict[int, str]) -> dict[str, Any]:
    """``view`` once its rollout has ended: ``current`` is the current version, each other one draining, and
    ``outcomes`` the versions' outcomes (version -> outcome)."""
    versions = [{**v, "state": "active" if v["version"] == current else "draining",
                 "outcome": outcomes.get(v["version"])} for v in view["versions"]]
    image = next(v["spec"]["image"] for v in versions if v["version"] == current)
    return {**view, "current_version": current, "image": image, "versions": versions, "rollout": None}


@pytest.fixture
def tasks(store: Store) -> list[dict[str, Any]]:
    """Two tasks of ``web``: the first succeeded, the second failed for good."""
    queue = TaskQueue(store, clock=WallClock())
    first = queue.submit("web", {"n": 1}, attempts=3)
    second = queue.submit("web", {"n": 2}, attempts=1)
    lease = queue.lease("agent-1", "web", "v1")
    assert lease is not None
    done = queue.complete(first.id, "agent-1", lease.attempt, {"echo": 1})
    lease = queue.lease("agent-1", "web", "v1")
    assert lease is not None
    failed = queue.fail(second.id, "agent-1", lease.attempt, "boom", retry=False)
    return [done.to_json(), failed.to_json()]


def run(daemon: FakeDaemon, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, ["--socket", str(daemon.socket_path), *args], input=stdin, prog_name="fleetd")


def one_line_error(result: Result, text: str) -> None:
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ") and text in result.stderr, \
        result.stderr
    assert "Traceback" not in result.output


# -- fleetd deploy: dispatch ------------------------------------------------------


def test_deploy_ls_lists_and_deploy_name_image_applies(daemon: FakeDaemon, deployment: dict[str, Any]) -> None:
    daemon.answer("GET", "/v1/deployments", [deployment])
    daemon.answer("PUT", "/v1/deployments/web", {**deployment, "message": "created"}, status=201)

    listed = run(daemon, "deploy", "ls")
    assert listed.exit_code == 0, listed.output
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "VERSION", "IMAGE", "REPLICAS", "BUSY", "QUEUED", "STATE", "AGE"]
    assert row.split()[:7] == ["web", "v1", "fleetd/agent-python", "1/3", "1", "4", "active"]

    applied = run(daemon, "deploy", "web", "--max", "3", "fleetd/agent-python", "python3", "worker.py", "--max", "5")
    assert (applied.exit_code, applied.stdout) == (0, "deployment web created\n")
    assert daemon.seen == [
        Seen("GET", "/v1/deployments", {}, None),
        Seen("PUT", "/v1/deployments/web", {}, {"image": "fleetd/agent-python",
                                                "command": ["python3", "worker.py", "--max", "5"],
                                                **EMPTY_SPEC, "max": 3}),
    ]


def test_a_subcommand_word_is_never_a_deployment_name(daemon: FakeDaemon, deployment: dict[str, Any]) -> None:
    daemon.answer("GET", "/v1/deployments/ls", deployment)
    daemon.answer("GET", "/v1/deployments", [])
    for args in (["inspect", "ls"], ["ls", "--json"], ["ls", "-q"]):
        assert run(daemon, "deploy", *args).exit_code == 0
    assert [(s.method, s.path) for s in daemon.seen] == [
        ("GET", "/v1/deployments/ls"), ("GET", "/v1/deployments"), ("GET", "/v1/deployments")]


def test_deploy_sends_each_option_under_its_field(daemon: FakeDaemon, deployment: dict[str, Any]) -> None:
    daemon.answer("PUT", "/v1/deployments/web", {**deployment, "message": "updated: version 2"})
    result = run(daemon, "deploy", "web", "--min", "1", "--max", "4", "--warm", "1", "--tasks-per-agent", "2",
                 "--scale-down-window", "5m", "--task-ttl", "600", "--task-attempts", "5", "--task-max-usd", "none",
                 "-m", "512m", "--cpus", "0.5", "--ttl", "2h", "--grace", "10s", "--role", "researcher",
                 "-e", "A=1", "--label", "team=x", "--daily-usd", "2.50", "--heartbeat-interval", "30s",
                 "--readiness-probe", "http:8080/ready", "img:1")
    assert (result.exit_code, result.stdout) == (0, "deployment web updated: version 2\n")
    [seen] = daemon.seen
    assert seen.body == {
        "image": "img:1", "command": [], "env": ["A=1"], "labels": ["team=x"],
        "memory": "512m", "cpus": "0.5", "ttl": 7200, "grace": 10, "role": "researcher", "daily_usd": "2.50",
        "heartbeat_interval": 30, "readiness_probe": "http:8080/ready",
        "min": 1, "max": 4, "warm": 1, "tasks_per_agent": 2, "scale_down_window": "5m", "task_ttl": "600",
        "task_attempts": 5, "task_max_usd": "none",
    }


def test_deploy_prints_the_message_or_the_json(daemon: FakeDaemon, deployment: dict[str, Any]) -> None:
    answers = [Answer(200, {**deployment, "message": "unchanged"}),
               Answer(200, {**deployment, "message": "updated: max 10 -> 20"}),
               Answer(200, {**deployment, "message": "unchanged"})]
    daemon.answers[("PUT", "/v1/deployments/web")] = answers
    assert run(daemon, "deploy", "web", "img").stdout == "deployment web unchanged\n"
    assert run(daemon, "deploy", "web", "--max", "20", "img").stdout == "deployment web updated: max 10 -> 20\n"
    shown = run(daemon, "deploy", "web", "--json", "img")
    assert json.loads(shown.stdout) == {**deployment, "message": "unchanged"}
    assert [s.body for s in daemon.seen] == [{"image": "img", "command": [], **EMPTY_SPEC},
                                             {"image": "img", "command": [], **EMPTY_SPEC, "max": 20},
                                             {"image": "img", "command": [], **EMPTY_SPEC}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["web", "--name", "w1", "img"], "Invalid value for '--name': a deployment names its agents NAME-<n>"),
        (["web", "--restart", "always", "img"], "Invalid value for '--restart': a deployment replaces its agents"),
        (["--max", "3", "web", "img"], "No such option: --max (options come after the deployment's NAME"),
        (["web", "--max", "3"], "Missing argument 'IMAGE'"),
        (["web", "--scale-down-window", "soon", "img"], "'soon' is not a duration"),
        (["web", "--task-ttl", "1 fortnight", "img"], "'1 fortnight' is not a duration"),
        (["web", "--min", "one", "img"], "'one' is not a valid integer"),
        (["web", "--strategy", "big-bang", "img"], "Invalid value for '--strategy': 'big-bang' is not one of"),
        (["web", "--canary", "ten", "img"], "'ten' is not a valid integer"),
        (["web", "--max-cost-increase", "nan", "img"], "Invalid value for '--max-cost-increase': nan is not a finite"),
        (["web", "--max-error-rate-increase", "5%", "img"], "'5%' is not a valid float"),
    ],
)
def test_deploy_usage_errors_exit_2_and_send_nothing(daemon: FakeDaemon, args: list[str], message: str) -> None:
    result = run(daemon, "deploy", *args)
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert daemon.seen == []


def test_deploy_help_shows_both_usages_the_options_and_the_subcommands(daemon: FakeDaemon) -> None:
    for args in (["deploy", "--help"], ["deploy"]):
        result = run(daemon, *args)
        assert result.exit_code in (0, 2)  # click: no arguments shows the help with status 2 (8.2 and later)
        lines = result.output.splitlines()
        assert lines[:2] == ["Usage: fleetd deploy NAME [OPTIONS] IMAGE [COMMAND [ARG]...]",
                             "   or: fleetd deploy ls|inspect|scale|promote|rollback|rm [ARGS]..."]
        options = re.findall(r"^  (?:-\w, )?(--[a-z-]+)", result.output, re.MULTILINE)
        assert {"--min", "--max", "--warm", "--tasks-per-agent", "--scale-down-window", "--task-ttl",
                "--task-attempts", "--task-max-usd", "--strategy", "--canary", "--promote-after",
                "--max-error-rate-increase", "--max-cost-increase", "--max-duration-increase", "--canary-max-usd",
                "--memory", "--env", "--ttl", "--json", "--help"} <= set(options)
        assert "--name" not in options and "--restart" not in options
        commands = lines[lines.index("Commands:") + 1:]
        assert [line.split()[0] for line in commands] == ["inspect", "ls", "promote", "rm", "rollback", "scale"]
    help_of_apply = run(daemon, "deploy", "web", "--help")
    assert help_of_apply.output.startswith("Usage: fleetd deploy web [OPTIONS] IMAGE [COMMAND [ARG]...]\n")
    assert daemon.seen == []


def test_deploy_sends_each_rollout_option_under_its_field(daemon: FakeDaemon, rolling_out: dict[str, Any]) -> None:
    daemon.answer("PUT", "/v1/deployments/web", {**rolling_out, "message": "updated: version 2"})
    result = run(daemon, "deploy", "web", "--strategy", "canary", "--canary", "10", "--promote-after", "50",
                 "--max-error-rate-increase", "0.02", "--max-cost-increase", "0.1", "--max-duration-increase", "1",
                 "--canary-max-usd", "$5", "--max", "3", "fleetd/agent-python:2", "python3", "worker.py")
    assert (result.exit_code, result.stdout) == (0, "deployment web updated: version 2\n"), result.output
    result = run(daemon, "deploy", "web", "--canary", "25", "img:3")  # the daemon takes it for --strategy canary
    assert result.exit_code == 0, result.output
    result = run(daemon, "deploy", "web", "--strategy", "blue-green", "img:4")
    assert result.exit_code == 0, result.output
    assert [s.body for s in daemon.seen] == [
        {"image": "fleetd/agent-python:2", "command": ["python3", "worker.py"], **EMPTY_SPEC, "max": 3,
         "strategy": "canary", "canary": 10, "promote_after": 50, "max_error_rate_increase": 0.02,
         "max_cost_increase": 0.1, "max_duration_increase": 1.0, "canary_max_usd": "$5"},
        {"image": "img:3", "command": [], **EMPTY_SPEC, "canary": 25},
        {"image": "img:4", "command": [], **EMPTY_SPEC, "strategy": "blue-green"},
    ]


def test_api_errors_are_one_line_and_exit_1(daemon: FakeDaemon) -> None:
    daemon.answers[("PUT", "/v1/deployments/web")] = error(400, "invalid_request", "--max must be at most 1000, "
                                                                                  "not 5000")
    result = run(daemon, "deploy", "web", "--max", "5000", "img")
    assert result.exit_code == 1 and result.stdout == ""
    one_line_error(result, "--max must be at most 1000, not 5000")


# -- fleetd deploy: inspect, scale, rm -------------------------------------------


def test_deploy_inspect_prints_the_record_indented(daemon: FakeDaemon, deployment: dict[str, Any]) -> None:
    record = {**deployment, "decisions": [{"time": "2026-03-01T12:00:00.000Z", "reason": "queue", "start": 2,
                                           "drain": [], "retire": [], "replace": [], "wanted": 3, "current": 1,
                                           "queued": 4, "busy": 1}]}
    daemon.answer("GET", "/v1/deployments/web", record)
    result = run(daemon, "deploy", "inspect", "web")
    assert result.exit_code == 0 and result.stdout == json.dumps(record, indent=2) + "\n"


def test_deploy_scale_sends_what_is_given_and_needs_one(daemon: FakeDaemon, deployment: dict[str, Any]) -> None:
    scaled = {**deployment, "scaling": {**deployment["scaling"], "max": 20, "warm": 2}}
    daemon.answer("POST", "/v1/deployments/web/scale", scaled)
    result = run(daemon, "deploy", "scale", "web")
    assert result.exit_code == 2
    one_line_error(result, "give --min, --max or --warm")
    assert daemon.seen == []
    result = run(daemon, "deploy", "scale", "web", "--max", "20", "--warm", "2")
    assert (result.exit_code, result.stdout) == (0, "deployment web: min 0, max 20, warm 2\n")
    assert daemon.seen == [Seen("POST", "/v1/deployments/web/scale", {}, {"max": 20, "warm": 2})]


def test_deploy_ls_shows_a_rollout_in_the_state_column(daemon: FakeDaemon, rolling_out: dict[str, Any]) -> None:
    blue_green = {**rolling_out, "name": "api", "rollout": {
        **rolling_out["rollout"], "strategy": "blue-green", "phase": "starting", "percent": None, "routed": 0,
        "policy": None, "target": 3, "ready": 1}}
    done = {**ended(rolling_out, 2, {1: "replaced", 2: "promoted"}), "name": "zed"}
    daemon.answer("GET", "/v1/deployments", [blue_green, rolling_out, done])
    result = run(daemon, "deploy", "ls")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert [row[header.index("STATE"):header.rindex("AGE")].rstrip() for row in rows] == [
        "blue-green v2 starting", "canary v2 10%", "active"]
    assert [row.split()[:2] for row in rows] == [["api", "v1"], ["web", "v1"], ["zed", "v2"]]


def test_deploy_promote_and_rollback_say_which_version(daemon: FakeDaemon, rolling_out: dict[str, Any]) -> None:
    promoted = ended(rolling_out, 2, {1: "replaced", 2: "promoted"})
    rolled_back = ended(rolling_out, 1, {2: "rolled_back"})
    daemon.answer("POST", "/v1/deployments/web/promote", promoted)
    daemon.answer("POST", "/v1/deployments/web/rollback", rolled_back)
    result = run(daemon, "deploy", "promote", "web")
    assert (result.exit_code, result.stdout) == (0, "web: version 2 promoted\n"), result.output
    result = run(daemon, "deploy", "rollback", "web")
    assert (result.exit_code, result.stdout) == (0, "web: version 2 rolled back\n"), result.output
    assert daemon.seen == [Seen("POST", "/v1/deployments/web/promote", {}, None),
                           Seen("POST", "/v1/deployments/web/rollback", {}, None)]
    result = run(daemon, "deploy", "rollback", "web", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == rolled_back
    # An older version rolled back earlier: the newest one is the one this rollback ended.
    third = {**rolled_back["versions"][1], "version": 3, "label": "v3", "outcome": "rolled_back"}
    daemon.answer("POST", "/v1/deployments/web/rollback",
                  {**rolled_back, "versions": [*rolled_back["versions"], third]})
    assert run(daemon, "deploy", "rollback", "web").stdout == "web: version 3 rolled back\n"


@pytest.mark.parametrize("verb", ["promote", "rollback"])
def test_deploy_promote_and_rollback_refused_are_one_line_and_exit_1(daemon: FakeDaemon, verb: str) -> None:
    daemon.answers[("POST", f"/v1/deployments/web/{verb}")] = error(
        409, "conflict", "deployment web has no rollout in progress")
    daemon.answers[("POST", f"/v1/deployments/api/{verb}")] = error(404, "not_found", "no such deployment: api")
    result = run(daemon, "deploy", verb, "web")
    assert (result.exit_code, result.stdout) == (1, "")
    one_line_error(result, "deployment web has no rollout in progress")
    result = run(daemon, "deploy", verb, "api")
    assert (result.exit_code, result.stdout) == (1, "")
    one_line_error(result, "no such deployment: api")
    assert [(s.method, s.path) for s in daemon.seen] == [("POST", f"/v1/deployments/web/{verb}"),
                                                         ("POST", f"/v1/deployments/api/{verb}")]


def test_deploy_rm_says_drain_true_or_false_and_goes_on_after_an_error(daemon: FakeDaemon,
                                                                       deployment: dict[str, Any]) -> None:
    daemon.answer("DELETE", "/v1/deployments/web", {**deployment, "state": "removing"})
    daemon.answers[("DELETE", "/v1/deployments/gone")] = error(404, "not_found", "no such deployment: gone")
    result = run(daemon, "deploy", "rm", "web")
    assert (result.exit_code, result.stdout) == (0, "deployment web removing\n")
    result = run(daemon, "deploy", "rm", "--drain", "gone", "web")
    assert (result.exit_code, result.stdout) == (1, "deployment web removing (draining)\n")
    one_line_error(result, "no such deployment: gone")
    assert [(s.method, s.path, s.query) for s in daemon.seen] == [
        ("DELETE", "/v1/deployments/web", {"drain": "false"}),
        ("DELETE", "/v1/deployments/gone", {"drain": "true"}),
        ("DELETE", "/v1/deployments/web", {"drain": "true"}),
    ]


# -- fleetd task submit ------------------------------------------------------------

NO_OPTIONS = {"ttl": None, "max_usd": None, "attempts": None, "key": None}


@pytest.mark.parametrize(
    ("args", "stdin", "expected"),
    [
        (["--input", '{"url": "https://example.com", "n": [1, 2.5, null]}'], None,
         {"url": "https://example.com", "n": [1, 2.5, None]}),
        (["-"], '["from", "stdin"]\n', ["from", "stdin"]),
        (["--input-file", "-"], '{"piped": true}', {"piped": True}),
        (["--input-file", "INPUT_FILE"], None, {"from": "a file", "é": "ü"}),
        ([], None, None),
        (["--input", "null"], None, None),
        (["--input", '"just a string"'], None, "just a string"),
    ],
)
def test_task_submit_takes_the_input_from_one_source(daemon: FakeDaemon, tasks: list[dict[str, Any]],
                                                     tmp_path: Path, args: list[str], stdin: str | None,
                                                     expected: Any) -> None:
    path = tmp_path / "input.json"
    path.write_text('{"from": "a file", "é": "ü"}', encoding="utf-8")
    daemon.answer("POST", "/v1/tasks", tasks[0], status=201)
    args = [str(path) if a == "INPUT_FILE" else a for a in args]
    result = run(daemon, "task", "submit", "web", *args, stdin=stdin)
    assert (result.exit_code, result.stdout) == (0, tasks[0]["id"] + "\n"), result.output
    assert daemon.seen == [Seen("POST", "/v1/tasks", {}, {"deployment": "web", "input": expected, **NO_OPTIONS})]


def test_task_submit_sends_its_options_and_prints_json(daemon: FakeDaemon, tasks: list[dict[str, Any]]) -> None:
    daemon.answer("POST", "/v1/tasks", tasks[0], status=201)
    result = run(daemon, "task", "submit", "web", "--input", "{}", "--ttl", "10m", "--max-usd", "0.50",
                 "--attempts", "2", "--key", "job-42", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == tasks[0]
    assert [s.body for s in daemon.seen] == [{"deployment": "web", "input": {}, "ttl": "10m", "max_usd": "0.50",
                                              "attempts": 2, "key": "job-42"}]


@pytest.mark.parametrize(
    ("args", "stdin", "status", "message"),
    [
        (["--input", "{"], None, 1, "--input is not JSON: Expecting property name"),
        (["--input", "{'a': 1}"], None, 1, "--input is not JSON"),
        (["--input", "[NaN]"], None, 1, "--input is not JSON: NaN is not JSON"),
        (["--input", "1 2"], None, 1, "--input is not JSON: Extra data"),
        (["-"], "not json\n", 1, "standard input is not JSON"),
        (["-"], "", 1, "standard input is empty"),
        (["--input-file", "MISSING"], None, 1, "No such file or directory"),
        (["--input", "1", "-"], "2", 2, "give one input, not --input and -"),
        (["--input", "1", "--input-file", "-"], "2", 2, "give one input, not --input and --input-file"),
        (["input.json"], None, 2, "unexpected argument 'input.json'"),
    ],
)
def test_task_submit_refuses_bad_input_in_one_line(daemon: FakeDaemon, tmp_path: Path, args: list[str],
                                                   stdin: str | None, status: int, message: str) -> None:
    args = [str(tmp_path / "missing.json") if a == "MISSING" else a for a in args]
    result = run(daemon, "task", "submit", "web", *args, stdin=stdin)
    assert result.exit_code == status
    one_line_error(result, message)
    assert daemon.seen == []


def test_task_submit_inputs_file_queues_a_line_each_a_thousand_per_request(
        daemon: FakeDaemon, tasks: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.fleet, "BATCH_TASKS", 2)
    daemon.answer("POST", "/v1/tasks/batch", [tasks[0], tasks[1]], status=201)
    path = tmp_path / "inputs.jsonl"
    path.write_text('{"n": 1}\n\n"two"\nnull\n', encoding="utf-8")
    result = run(daemon, "task", "submit", "web", "--inputs-file", str(path), "--ttl", "10m")
    assert result.exit_code == 0 and result.stdout.split() == [tasks[0]["id"], tasks[1]["id"]] * 2, result.output
    options = {"ttl": "10m", "max_usd": None, "attempts": None}
    assert [s.body for s in daemon.seen] == [
        {"deployment": "web", "tasks": [{"input": {"n": 1}, **options}, {"input": "two", **options}]},
        {"deployment": "web", "tasks": [{"input": None, **options}]}]
    daemon.seen.clear()
    result = run(daemon, "task", "submit", "web", "--inputs-file", "-", "--json", stdin="[1]\n")
    assert result.exit_code == 0 and json.loads(result.stdout) == [tasks[0], tasks[1]]


def test_task_submit_inputs_file_refused_midway_says_which_lines_were_queued(
        daemon: FakeDaemon, tasks: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.fleet, "BATCH_TASKS", 2)
    daemon.answers[("POST", "/v1/tasks/batch")] = [
        Answer(201, [tasks[0], tasks[1]]),
        error(409, "conflict", "tasks[0]: deployment web has 10000 unfinished tasks, at most 10000")]
    result = run(daemon, "task", "submit", "web", "--inputs-file", "-", stdin="1\n2\n\n3\n")
    assert result.exit_code == 1 and result.stdout.split() == [tasks[0]["id"], tasks[1]["id"]]
    one_line_error(result, "at most 10000 (in the batch from line 4; the tasks of lines 1 to 2 were queued, 2 ids")


@pytest.mark.parametrize(
    ("args", "stdin", "status", "message"),
    [
        (["--inputs-file", "-"], '{"a": 1}\n{"a": \n', 1, "--inputs-file -, line 2: not JSON"),
        (["--inputs-file", "-"], "\n\n", 1, "--inputs-file has no input"),
        (["--inputs-file", "-", "--key", "k"], "1\n", 2, "it takes no --key"),
        (["--inputs-file", "-", "--input", "1"], "1\n", 2, "it takes no --key, --input"),
    ],
)
def test_task_submit_inputs_file_refuses_bad_input_in_one_line(daemon: FakeDaemon, args: list[str], stdin: str,
                                                               status: int, message: str) -> None:
    result = run(daemon, "task", "submit", "web", *args, stdin=stdin)
    assert result.exit_code == status
    one_line_error(result, message)
    assert daemon.seen == []


# -- fleetd task ls, inspect, cancel ---------------------------------------------


def test_task_ls_passes_its_filters_and_prints_a_table(daemon: FakeDaemon, tasks: list[dict[str, Any]]) -> None:
    listed = [{**t, "input": None, "output": None} for t in tasks]
    daemon.answer("GET", "/v1/tasks", listed)
    result = run(daemon, "task", "ls", "web", "--state", "failed", "-n", "5")
    assert result.exit_code == 0
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "DEPLOYMENT", "STATE", "ATTEMPTS", "AGENT", "COST", "AGE"]
    assert [r.split()[:6] for r in rows] == [[tasks[0]["id"], "web", "succeeded", "1/3", "agent-1", "$0.0000"],
                                             [tasks[1]["id"], "web", "failed", "(agent_error)", "1/1", "agent-1"]]
    assert run(daemon, "task", "ls", "-q").stdout == "".join(t["id"] + "\n" for t in tasks)
    assert json.loads(run(daemon, "task", "ls", "--json").stdout) == listed
    assert [s.query for s in daemon.seen] == [{"deployment": "web", "state": "failed", "limit": "5"}, {}, {}]
    bad = run(daemon, "task", "ls", "--state", "running")
    assert bad.exit_code == 2 and len(daemon.seen) == 3


def test_task_inspect_prints_one_object_or_a_list(daemon: FakeDaemon, tasks: list[dict[str, Any]]) -> None:
    first, second = tasks
    daemon.answer("GET", f"/v1/tasks/{first['id']}", first)
    daemon.answer("GET", f"/v1/tasks/{second['id']}", second)
    daemon.answers[("GET", "/v1/tasks/nope")] = error(404, "not_found", "no such task: nope")
    one = run(daemon, "task", "inspect", first["id"])
    assert (one.exit_code, one.stdout) == (0, json.dumps(first, indent=2) + "\n")
    both = run(daemon, "task", "inspect", first["id"], second["id"])
    assert (both.exit_code, json.loads(both.stdout)) == (0, [first, second])
    missing = run(daemon, "task", "inspect", "nope", first["id"])
    assert (missing.exit_code, json.loads(missing.stdout)) == (1, [first])
    one_line_error(missing, "no such task: nope")


def test_task_cancel_prints_each_id_and_goes_on_after_a_conflict(daemon: FakeDaemon,
                                                                 tasks: list[dict[str, Any]]) -> None:
    first = tasks[0]
    daemon.answer("POST", "/v1/tasks/q1/cancel", {**first, "id": "q1", "state": "cancelled"})
    daemon.answers[("POST", f"/v1/tasks/{first['id']}/cancel")] = error(
        409, "conflict", f"task {first['id']} is succeeded: only a queued or leased task can be cancelled")
    result = run(daemon, "task", "cancel", first["id"], "q1")
    assert (result.exit_code, result.stdout) == (1, "q1\n")
    one_line_error(result, "only a queued or leased task can be cancelled")
    assert [(s.method, s.path, s.body) for s in daemon.seen] == [
        ("POST", f"/v1/tasks/{first['id']}/cancel", None), ("POST", "/v1/tasks/q1/cancel", None)]


# -- fleetd task wait ---------------------------------------------------------------


def test_task_wait_exits_0_when_every_task_succeeded(daemon: FakeDaemon, tasks: list[dict[str, Any]]) -> None:
    done = tasks[0]
    daemon.answer("POST", "/v1/tasks/a/wait", {**done, "id": "a"})
    daemon.answer("POST", "/v1/tasks/b/wait", {**done, "id": "b"})
    result = run(daemon, "task", "wait", "a", "b")
    assert (result.exit_code, result.stdout) == (0, "a succeeded\nb succeeded\n")
    assert [(s.path, s.query) for s in daemon.seen] == [("/v1/tasks/a/wait", {}), ("/v1/tasks/b/wait", {})]


def test_task_wait_exits_1_when_one_did_not_succeed(daemon: FakeDaemon, tasks: list[dict[str, Any]]) -> None:
    done, failed = tasks
    daemon.answer("POST", "/v1/tasks/a/wait", {**failed, "id": "a"})
    daemon.answer("POST", "/v1/tasks/b/wait", {**done, "id": "b"})
    daemon.answers[("POST", "/v1/tasks/nope/wait")] = error(404, "not_found", "no such task: nope")
    result = run(daemon, "task", "wait", "a", "b")
    assert (result.exit_code, result.stdout) == (1, "a failed (agent_error)\nb succeeded\n")
    result = run(daemon, "task", "wait", "nope", "b")
    assert (result.exit_code, result.stdout) == (1, "b succeeded\n")
    one_line_error(result, "no such task: nope")


def test_task_wait_timeout_exits_124_and_still_prints_what_finished(daemon: FakeDaemon,
                                                                    tasks: list[dict[str, Any]]) -> None:
    daemon.answers[("POST", "/v1/tasks/slow/wait")] = error(408, "timeout", "task slow is still queued after 5s")
    daemon.answer("POST", "/v1/tasks/b/wait", {**tasks[0], "id": "b"})
    result = run(daemon, "task", "wait", "slow", "b", "--timeout", "5")
    assert (result.exit_code, result.stdout) == (cli.fleet.TIMEOUT_EXIT, "b succeeded\n")
    one_line_error(result, "task slow is still queued after 5s")
    assert [s.query for s in daemon.seen] == [{"timeout": "5"}, {"timeout": "5"}]
    daemon.answer("POST", "/v1/tasks/a/wait", {**tasks[1], "id": "a"})
    result = run(daemon, "task", "wait", "slow", "a", "--timeout", "1m")  # a failure outranks a timeout
    assert result.exit_code == 1
    assert daemon.seen[-2].query == {"timeout": "60"}


def test_task_wait_timeout_bounds_the_whole_wait(daemon: FakeDaemon, tasks: list[dict[str, Any]]) -> None:
    """--timeout is for all the tasks: the second wait gets what is left of it (whole seconds, rounded up)."""
    done = tasks[0]
    daemon.answers[("POST", "/v1/tasks/a/wait")] = Answer(200, {**done, "id": "a"}, delay=1.2)
    daemon.answer("POST", "/v1/tasks/b/wait", {**done, "id": "b"})
    result = run(daemon, "task", "wait", "a", "b", "--timeout", "4")
    assert result.exit_code == 0
    assert [s.query for s in daemon.seen] == [{"timeout": "4"}, {"timeout": "3"}]


# -- the CLI's copies of the daemon's names ------------------------------------------


def test_the_cli_knows_the_daemons_task_states_and_deploy_fields() -> None:
    assert tuple(state.value for state in TaskState) == cli.fleet.TASK_STATES
    assert cli.fleet.DEPLOY_FIELDS == SCALING_FIELDS + TASK_FIELDS
    assert not set(cli.fleet.ROLLOUT_FIELDS) & set(cli.fleet.DEPLOY_FIELDS)


def test_shell_completion_sees_the_apply_verbs_options_and_the_subcommands() -> None:
    def complete(words: str) -> list[str]:
        env = {"_FLEETD_COMPLETE": "bash_complete", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
        result = CliRunner().invoke(main, [], env=env, prog_name="fleetd")
        return [line.split(",", 1)[1] for line in result.stdout.splitlines()]

    assert complete("fleetd deploy ") == ["inspect", "ls", "promote", "rm", "rollback", "scale"]
    assert complete("fleetd deploy web --ma") == ["--max", "--max-error-rate-increase", "--max-cost-increase",
                                                  "--max-duration-increase", "--max-llm-calls"]
    assert complete("fleetd deploy scale web --m") == ["--min", "--max"]


def test_a_state_shows_its_code_when_that_says_more() -> None:
    assert cli.fleet.state_text({"state": "failed", "code": "ttl_expired"}) == "failed (ttl_expired)"
    assert cli.fleet.state_text({"state": "cancelled", "code": "cancelled"}) == "cancelled"
    assert cli.fleet.state_text({"state": "queued", "code": None}) == "queued"
