"""Habits of docker and systemd users (issue 15): rm, wait, --env-file, names held until removed, teardown's
confirmation and its report of what it could not remove. The daemon side runs against an in-memory runtime."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from click.testing import CliRunner

import cli.main
from cli.client import ApiError, Client
from cli.spawn_options import EnvError, parse_fast, spawn_request
from fleetd.errors import Conflict
from fleetd.models import State
from fleetd.runtime import DockerRuntime
from fleetd.store import Store
from fleetd.supervisor import Supervisor
from tests.unit.fake_runtime import FakeRuntime
from tests.unit.supervisor_rig import insert, run

# -- --env-file ------------------------------------------------------------------


def test_env_files_are_read_like_docker_and_e_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = tmp_path / "a.env"
    first.write_text("# a comment\n\nA=1\n  B=two words\nQUOTED=\"kept\"\nFROM_SHELL\nUNSET_ONE\nEMPTY=\nX=file\n")
    second = tmp_path / "b.env"
    second.write_text("A=from-b\n")
    monkeypatch.setenv("FROM_SHELL", "shell")
    monkeypatch.delenv("UNSET_ONE", raising=False)
    request = spawn_request("img", [], {"env_file": [str(first), str(second)], "env": ["X=flag"], "label": []})
    assert request["env"] == ["A=1", "B=two words", 'QUOTED="kept"', "FROM_SHELL=shell", "EMPTY=", "X=file",
                              "A=from-b", "X=flag"]
    assert "env_file" not in request
    # The daemon keeps the last value of a key: files in order, then -e.
    from fleetd.units import parse_pairs
    assert parse_pairs(request["env"], "env") == {"A": "from-b", "B": "two words", "QUOTED": '"kept"',
                                                  "FROM_SHELL": "shell", "EMPTY": "", "X": "flag"}


def test_env_file_faults_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.env"
    bad.write_text("OK=1\nBAD KEY=1\n")
    with pytest.raises(EnvError, match=r"bad.env, line 2: invalid variable 'BAD KEY'"):
        spawn_request("img", [], {"env_file": [str(bad)]})
    with pytest.raises(EnvError, match="No such file"):
        spawn_request("img", [], {"env_file": [str(tmp_path / "missing.env")]})
    result = CliRunner().invoke(cli.main.main, ["--socket", "/nonexistent", "spawn", "--env-file",
                                                str(tmp_path / "missing.env"), "img"])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "missing.env" in result.output


def test_the_spawn_fast_path_takes_env_files() -> None:
    parsed = parse_fast(["--env-file", "x.env", "--env-file=y.env", "-e", "A=1", "img", "cmd"])
    assert parsed is not None and parsed[0]["env_file"] == ["x.env", "y.env"] and parsed[1:] == ("img", ["cmd"])


# -- the CLI's rm, wait, teardown against a fake API --------------------------------


class FakeApi:
    def __init__(self, answers: dict[tuple[str, str], Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, Any]] = []

    def call(self, method: str, path: str, body: Any = None, query: Any = None) -> Any:
        self.calls.append((method, path, query))
        answer = self.answers[(method, path)]
        if isinstance(answer, Exception):
            raise answer
        return answer


def invoke(monkeypatch: pytest.MonkeyPatch, answers: dict[tuple[str, str], Any], *args: str,
           tty: bool = False, input_: str | None = None) -> tuple[Any, FakeApi]:
    api = FakeApi(answers)
    monkeypatch.setattr(Client, "call", lambda _client, *args, **kwargs: api.call(*args, **kwargs))
    monkeypatch.setattr(cli.main, "interactive", lambda: tty, raising=False)
    return CliRunner().invoke(cli.main.main, ["--socket", "/nonexistent", *args], input=input_), api


def test_wait_prints_each_exit_code_and_exits_1_for_an_unknown_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {("POST", "/v1/agents/a/wait"): {"exit_code": 3}, ("POST", "/v1/agents/b/wait"): {"exit_code": None},
               ("POST", "/v1/agents/nope/wait"): ApiError("no such agent: nope")}
    result, _ = invoke(monkeypatch, answers, "wait", "a", "b")
    assert (result.exit_code, result.stdout) == (0, "3\n-1\n")
    result, _ = invoke(monkeypatch, answers, "wait", "a", "nope", "b")
    assert (result.exit_code, result.stdout) == (1, "3\n-1\n")
    assert result.stderr == "Error: no such agent: nope\n"


def test_rm_goes_on_after_an_error_and_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {("DELETE", "/v1/agents/a"): {"id": "aaa"},
               ("DELETE", "/v1/agents/live"): ApiError("agent live is running: stop it first ... fleetd rm -f live")}
    result, api = invoke(monkeypatch, answers, "rm", "live", "a")
    assert (result.exit_code, result.stdout) == (1, "aaa\n") and "fleetd rm -f live" in result.stderr
    assert api.calls[0][2] == {"force": False}
    result, api = invoke(monkeypatch, answers, "rm", "-f", "a")
    assert result.exit_code == 0 and api.calls[0][2] == {"force": True}


REMOVED = {"containers": 2, "networks": 2, "volumes": 0, "disks": 0, "firewall_rules": 3}


def test_teardown_asks_on_a_terminal_unless_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {("POST", "/v1/teardown"): {"removed": REMOVED, "failed": []}}
    result, api = invoke(monkeypatch, answers, "teardown", tty=True, input_="n\n")
    assert result.exit_code == 1 and "Aborted" in result.output and api.calls == []
    result, api = invoke(monkeypatch, answers, "teardown", tty=True, input_="y\n")
    assert result.exit_code == 0 and len(api.calls) == 1 and "2 containers removed" in result.stdout
    for args in (["teardown", "-f"], ["teardown", "--force"]):
        result, api = invoke(monkeypatch, answers, *args, tty=True)
        assert result.exit_code == 0 and len(api.calls) == 1 and "?" not in result.output
    result, api = invoke(monkeypatch, answers, "teardown")  # not a terminal: as before, no question
    assert result.exit_code == 0 and len(api.calls) == 1


def test_teardown_reports_what_it_could_not_remove_and_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    failed = [{"kind": "network", "name": "fleetd-x-agents", "id": "n1", "error": "has active endpoints"}]
    result, _ = invoke(monkeypatch, {("POST", "/v1/teardown"): {"removed": REMOVED, "failed": failed}}, "teardown")
    assert result.exit_code == 1 and "2 containers removed" in result.stdout
    assert result.stderr == "Error: could not remove network fleetd-x-agents: has active endpoints\n"


# -- the daemon's side ------------------------------------------------------------


class FakeApiClient:
    """docker-py's low-level API, as much of it as DockerRuntime.teardown uses."""

    def __init__(self) -> None:
        self.removed: list[str] = []

    def containers(self, all: bool, filters: Any) -> list[dict[str, Any]]:
        return [{"Id": "c-stuck", "Names": ["/fleetd-x-stuck"]}, {"Id": "c-ok", "Names": ["/fleetd-x-ok"]}]

    def remove_container(self, container_id: str, force: bool, v: bool) -> None:
        if container_id == "c-stuck":
            raise docker.errors.APIError("500 Server Error", explanation="device or resource busy")
        self.removed.append(container_id)

    def networks(self, filters: Any) -> list[dict[str, Any]]:
        return [{"Id": "n1", "Name": "fleetd-x-agents"}]

    def remove_network(self, network_id: str) -> None:
        raise docker.errors.APIError("403", explanation="network has active endpoints")

    def volumes(self, filters: Any) -> dict[str, Any]:
        return {"Volumes": [{"Name": "v1"}]}

    def remove_volume(self, name: str, force: bool) -> None:
        self.removed.append(name)


def test_runtime_teardown_removes_the_rest_and_lists_what_it_could_not() -> None:
    runtime = DockerRuntime.__new__(DockerRuntime)
    runtime.instance = "x"
    runtime.api = FakeApiClient()  # type: ignore[assignment]
    removed, failed = runtime.teardown()
    assert removed == {"containers": 1, "networks": 0, "volumes": 1}
    assert [(f["kind"], f["name"], f["id"]) for f in failed] == [
        ("container", "fleetd-x-stuck", "c-stuck"), ("network", "fleetd-x-agents", "n1")]
    assert "device or resource busy" in failed[0]["error"]


class TeardownRuntime(FakeRuntime):
    def teardown(self) -> tuple[dict[str, int], list[dict[str, str]]]:
        return ({"containers": 1, "networks": 2, "volumes": 0},
                [{"kind": "container", "name": "stuck", "id": "c-stuck", "error": "busy"}])


def test_an_agent_whose_container_teardown_could_not_remove_is_not_marked_removed(tmp_path: Path) -> None:
    async def check(supervisor: Supervisor, store: Store, runtime: FakeRuntime) -> None:
        supervisor.runtime = TeardownRuntime()  # type: ignore[assignment]
        insert(store, "stuck", state=State.EXITED.value)
        insert(store, "gone", state=State.EXITED.value)
        removed, failed = await supervisor.teardown()
        assert removed["containers"] == 1 and [f["id"] for f in failed] == ["c-stuck"]
        assert (store.get("stuck")["state"], store.get("gone")["state"]) == ("exited", "removed")  # type: ignore[index]

    run(tmp_path, check)


def test_rm_refuses_a_live_agent_and_removes_an_ended_one(tmp_path: Path) -> None:
    async def check(supervisor: Supervisor, store: Store, runtime: FakeRuntime) -> None:
        insert(store, "live", state=State.RUNNING.value)
        insert(store, "done", state=State.EXITED.value, reason="exited", exit_code=3)
        with pytest.raises(Conflict, match=r"agent live is running: .*`fleetd rm -f live`"):
            await supervisor.remove("live")
        assert store.get("live")["state"] == "running"  # type: ignore[index]
        agent = await supervisor.remove("done")
        assert (agent["state"], agent["reason"], agent["exit_code"]) == ("removed", "exited", 3)
        assert runtime.removed == ["c-done"]
        assert (await supervisor.remove("done"))["state"] == "removed"  # again: nothing left to do

    run(tmp_path, check)


def test_rm_force_of_an_agent_waiting_to_restart(tmp_path: Path) -> None:
    async def check(supervisor: Supervisor, store: Store, runtime: FakeRuntime) -> None:
        insert(store, "again", restart="always", state=State.RESTARTING.value, reason="exited")
        agent = await supervisor.remove("again", force=True)
        assert (agent["state"], agent["reason"]) == ("removed", "killed")
        assert "c-again" in runtime.removed

    run(tmp_path, check)


def test_a_name_is_held_until_its_agent_is_removed(tmp_path: Path) -> None:
    async def check(supervisor: Supervisor, store: Store, runtime: FakeRuntime) -> None:
        supervisor.host_cpus = 2
        supervisor.runtime.check_image = lambda image: None  # type: ignore[attr-defined]
        store.insert_agent("old", name="job", image="img", role="default", state="exited",
                           created_at="2026-01-01T00:00:00.000Z", container_id="c-old", spec="{}")
        with pytest.raises(Conflict, match=r"name 'job' is already in use by agent old \(exited\): "
                                           r"run `fleetd rm old` to free it"):
            await supervisor.spawn({"image": "img", "name": "job"})

    run(tmp_path, check)


def test_wait_returns_once_the_agent_has_ended(tmp_path: Path) -> None:
    async def check(supervisor: Supervisor, store: Store, runtime: FakeRuntime) -> None:
        insert(store, "w", state=State.RUNNING.value)
        waiter = asyncio.ensure_future(supervisor.wait("w"))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        store.transition("w", State.EXITED, "exited", exit_code=7)
        supervisor._finished("w")
        agent = await asyncio.wait_for(waiter, 5)
        assert (agent["state"], agent["exit_code"]) == ("exited", 7)
        assert (await supervisor.wait("w"))["exit_code"] == 7  # ended already: at once

    run(tmp_path, check)
