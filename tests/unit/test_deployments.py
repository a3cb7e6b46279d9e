"""Deployments and their versions (fleetd.deployments) on a real state.db: the deploy options' validation, apply
(create, unchanged, in place, a new version), scale, remove and forget, the events, and the JSON view."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleetd.autoscale import ScalingPolicy
from fleetd.config import Config, Limits
from fleetd.deployments import (
    Deployments,
    DeploymentState,
    Replicas,
    TaskDefaults,
    VersionState,
    check_name,
    deploy_request,
)
from fleetd.errors import Conflict, InvalidRequest, NotFound
from fleetd.store import Store
from fleetd.units import NAME_PATTERN
from tests.unit.wall_clock import WallClock


def test_migration_m010_makes_the_deployment_tables(store: Store) -> None:
    assert [c.name for c in store.db["deployments"].columns] == [
        "name", "state", "current_version", "min", "max", "warm", "tasks_per_agent", "scale_down_window",
        "task_ttl", "task_attempts", "task_max_usd", "drain", "created_at", "updated_at"]
    assert store.db["deployments"].pks == ["name"]
    assert [c.name for c in store.db["deployment_versions"].columns] == [
        "deployment", "version", "spec", "state", "created_at", "outcome", "spend_cap_nusd"]  # m013
    assert store.db["deployment_versions"].pks == ["deployment", "version"]


# --------------------------------------------------------------------------- rig

CONFIG = Config(roles={"big": Limits(memory=1 << 30)})
CPUS = 2




@pytest.fixture
def clock() -> WallClock:
    return WallClock()


@pytest.fixture
def deployments(store: Store, clock: WallClock) -> Deployments:
    return Deployments(store, CONFIG, clock=clock)


def request(**fields: Any) -> dict[str, Any]:
    return {"image": "worker:1", "command": ["python", "work.py"], **fields}


def events(store: Store) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e["type"], e["message"], e["data"]) for e in store.events() if e["type"].startswith("deployment_")]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "w1"}, "name: a deployment names its agents NAME-<n> after itself; give no agent name"),
        ({"restart": "always"}, "restart: a deployment replaces its agents itself; it takes no restart policy"),
        ({"replicas": 3}, r"unknown deploy fields: \['replicas'\]"),
        ({"image": ""}, "an image is required"),
        ({"memory": "1m"}, r"--memory: '1m' is below Docker's minimum of 6 MiB \(6m\)"),
        ({"role": "nope"}, r"unknown role 'nope' \(known roles: big\)"),
        ({"min": "two"}, "--min: expected a whole number, got 'two'"),
        ({"min": 1.5}, "--min: expected a whole number, got 1.5"),
        ({"max": True}, "--max: expected a whole number, got True"),
        ({"min": -1}, "--min must be an integer >= 0, not -1"),
        ({"max": 0}, "--max must be an integer >= 1, not 0"),
        ({"max": "1001"}, "--max must be at most 1000, not 1001"),
        ({"min": 5, "max": 3}, r"--min \(5\) must not exceed --max \(3\)"),
        ({"warm": 11}, r"--warm \(11\) must be within --max \(10\)"),
        ({"tasks_per_agent": 0}, "--tasks-per-agent must be an integer >= 1, not 0"),
        ({"scale_down_window": "soon"}, "--scale-down-window: invalid duration 'soon'"),
        ({"scale_down_window": "-5m"}, "--scale-down-window: must be at least 0, got '-5m'"),
        ({"scale_down_window": "2h"}, "--scale-down-window must be at most 3600 seconds, not 7200.0"),
        ({"task_ttl": 0}, "--task-ttl: must be at least 1, got 0"),
        ({"task_ttl": "1.5s"}, "--task-ttl: must be a whole number of seconds, got '1.5s'"),
        ({"task_ttl": "8d"}, "--task-ttl: must be at most 604800, got '8d'"),
        ({"task_attempts": 0}, "--task-attempts: must be at least 1, got 0"),
        ({"task_attempts": 101}, "--task-attempts: must be at most 100, got 101"),
        ({"task_attempts": "x"}, "--task-attempts: expected a whole number, got 'x'"),
        ({"task_max_usd": "-1"}, "--task-max-usd: must be a finite amount >= 0, got '-1'"),
        ({"task_max_usd": "lots"}, "--task-max-usd: expected an amount in US dollars like 12.50, got 'lots'"),
    ],
)
def test_deploy_request_refuses_with_a_clear_message(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=f"^{message}"):
        deploy_request(request(**fields), CONFIG, CPUS, frozenset())


def test_deploy_request_must_be_an_object() -> None:
    with pytest.raises(InvalidRequest, match=r"^deploy request must be a JSON object$"):
        deploy_request(["worker:1"], CONFIG, CPUS)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"scale_down_window": "5m"}, (300.0, 3600)),
        ({"scale_down_window": "90"}, (90.0, 3600)),
        ({"scale_down_window": 120}, (120.0, 3600)),
        ({"scale_down_window": "1m30s", "task_ttl": "1h"}, (90.0, 3600)),
        ({"scale_down_window": 0, "task_ttl": "2d"}, (0.0, 172800)),
        ({"task_ttl": 45}, (300.0, 45)),
    ],
)
def test_durations_take_seconds_or_units(fields: dict[str, Any], expected: tuple[float, int]) -> None:
    spec = deploy_request(request(**fields), CONFIG, CPUS)
    assert (spec.scaling.scale_down_window, spec.tasks.ttl) == expected


def test_deploy_request_reads_every_option() -> None:
    agent, scaling, tasks, _ = deploy_request(
        request(min="1", max="8", warm=2, tasks_per_agent="3", scale_down_window="10m", task_ttl="30m",
                task_attempts="5", task_max_usd="$0.25", role="big", daily_usd=4), CONFIG, CPUS)
    assert scaling == ScalingPolicy(min=1, max=8, warm=2, tasks_per_agent=3, scale_down_window=600)
    assert tasks == TaskDefaults(ttl=1800, attempts=5, max_usd="0.25")
    assert (agent.role, agent.memory, agent.daily_usd) == ("big", 1 << 30, "4")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "invalid deployment name ''"),
        ("-web", "invalid deployment name '-web'"),
        ("web/1", "invalid deployment name 'web/1'"),
        ("w" * 51, "invalid deployment name 'w{51}': 1-50 letters, digits, _ . - starting with a letter or digit "
                   r"\(its agents are named NAME-<n>\)"),
        ("ls", "invalid deployment name 'ls': inspect, ls, promote, rm, rollback, scale are verbs of fleetd deploy"),
        ("rm", "invalid deployment name 'rm'"),
    ],
)
def test_deployment_names(name: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=f"^{message}"):
        check_name(name)


# --------------------------------------------------------------------------- create and apply


def test_create_makes_version_1_with_the_issue_defaults(deployments: Deployments, store: Store) -> None:
    applied = deployments.apply("web", request(env=["MODE=fast"], memory="256m"), CPUS)
    assert applied.message == "created"
    d = applied.deployment
    assert (d.name, d.state, d.current_version, d.drain) == ("web", DeploymentState.ACTIVE, 1, False)
    assert d.scaling == ScalingPolicy(min=0, max=10, warm=0, tasks_per_agent=5, scale_down_window=300)
    assert d.tasks == TaskDefaults(ttl=3600, attempts=3, max_usd=None)
    assert (d.created_at, d.updated_at) == ("2026-03-01T12:00:00.000Z", "2026-03-01T12:00:00.000Z")
    [v1] = d.versions
    assert (v1.number, v1.label, v1.state, v1.created_at) == (1, "v1", VersionState.ACTIVE, "2026-03-01T12:00:00.000Z")
    assert (v1.spec.image, v1.spec.command, v1.spec.env, v1.spec.memory) == (
        "worker:1", ("python", "work.py"), {"MODE": "fast"}, 256 << 20)
    assert v1.spec.name is None and v1.spec.ttl == 3600  # the config's default, as a spawn gets it
    assert events(store) == [("deployment_created", "deployment web created: version 1 (worker:1)", {
        "deployment": "web", "version": 1, "image": "worker:1", "min": 0, "max": 10, "warm": 0,
        "tasks_per_agent": 5, "scale_down_window": 300.0, "task_ttl": 3600, "task_attempts": 3,
        "task_max_usd": None})]


def test_a_deployment_is_on_disk(deployments: Deployments, tmp_path: Path) -> None:
    deployments.apply("web", request(max=4), CPUS)
    again = Store(tmp_path / "state.db")
    try:
        d = Deployments(again, CONFIG).get("web")
    finally:
        again.close()
    assert (d.scaling.max, d.current.spec.image) == (4, "worker:1")


def test_apply_unchanged_changes_nothing(deployments: Deployments, store: Store, clock: WallClock) -> None:
    deployments.apply("web", request(max=4, env=["A=1"]), CPUS)
    clock.advance(60)
    applied = deployments.apply("web", request(max="4", env=["A=1"]), CPUS)
    assert applied.message == "unchanged"
    assert applied.deployment.updated_at == "2026-03-01T12:00:00.000Z"
    assert [v.number for v in applied.deployment.versions] == [1]
    assert [e[0] for e in events(store)] == ["deployment_created"]


def test_apply_with_only_options_changed_updates_them_in_place(deployments: Deployments, store: Store,
                                                              clock: WallClock) -> None:
    deployments.apply("web", request(), CPUS)
    clock.advance(60)
    applied = deployments.apply("web", request(max=20, warm=2, task_max_usd="0.50"), CPUS)
    assert applied.message == "updated: max 10 -> 20, warm 0 -> 2, task_max_usd none -> 0.5"
    d = applied.deployment
    assert (d.scaling.max, d.scaling.warm, d.tasks.max_usd) == (20, 2, "0.5")
    assert [(v.number, v.state) for v in d.versions] == [(1, VersionState.ACTIVE)]  # no new version
    assert (d.current_version, d.updated_at) == (1, "2026-03-01T12:01:00.000Z")
    assert events(store)[-1] == (
        "deployment_updated", "deployment web updated: max 10 -> 20, warm 0 -> 2, task_max_usd none -> 0.5",
        {"deployment": "web", "options": {"max": [10, 20], "warm": [0, 2], "task_max_usd": [None, "0.5"]}})


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"image": "worker:2"}, ["image"]),
        ({"env": ["MODE=slow"]}, ["env"]),
        ({"memory": "1g"}, ["memory"]),
        ({"cpus": 0.5}, ["nano_cpus"]),
        ({"command": ["python", "other.py"]}, ["command"]),
        ({"labels": ["team=b"], "ttl": "2h"}, ["labels", "ttl"]),
        ({"role": "big"}, ["role", "memory"]),  # the role's limits come with it
    ],
)
def test_apply_with_a_changed_agent_spec_makes_version_2(deployments: Deployments, store: Store, clock: WallClock,
                                                         change: dict[str, Any], fields: list[str]) -> None:
    deployments.apply("web", request(env=["MODE=fast"]), CPUS)
    clock.advance(60)
    applied = deployments.apply("web", request(env=["MODE=fast"]) | change, CPUS)
    assert applied.message == "updated: version 2"
    d = applied.deployment
    assert d.current_version == 2 and d.current.label == "v2"
    assert [(v.number, v.state, v.created_at) for v in d.versions] == [
        (1, VersionState.DRAINING, "2026-03-01T12:00:00.000Z"), (2, VersionState.ACTIVE, "2026-03-01T12:01:00.000Z")]
    assert d.versions[0].spec.env == {"MODE": "fast"}  # the old version keeps its spec for its agents
    type_, message, data = events(store)[-1]
    assert (type_, message) == ("deployment_updated", "deployment web updated: version 2")
    assert data == {"deployment": "web", "options": {}, "version": 2, "previous": 1,
                    "image": change.get("image", "worker:1"), "changed": fields}
    assert "slow" not in json.dumps(data)  # env values stay out of events


def test_a_new_version_with_new_options_changes_both(deployments: Deployments, store: Store) -> None:
    deployments.apply("web", request(), CPUS)
    applied = deployments.apply("web", request(image="worker:2", min=1), CPUS)
    assert applied.message == "updated: version 2"
    assert (applied.deployment.scaling.min, applied.deployment.current.spec.image) == (1, "worker:2")
    assert events(store)[-1][2]["options"] == {"min": [0, 1]}


def test_options_not_given_keep_their_values_on_update(deployments: Deployments) -> None:
    """A new image must not undo ``deploy scale``: scaling and task options are kept unless given again."""
    deployments.apply("web", request(task_attempts=7, task_max_usd=2), CPUS)
    deployments.scale("web", max=30, warm=3)
    d = deployments.apply("web", request(image="worker:2"), CPUS).deployment
    assert (d.scaling.max, d.scaling.warm, d.tasks.attempts, d.tasks.max_usd) == (30, 3, 7, "2")
    d = deployments.apply("web", request(image="worker:2", task_max_usd="none"), CPUS).deployment
    assert d.tasks.max_usd is None


def test_the_agent_spec_is_given_whole_on_update(deployments: Deployments) -> None:
    deployments.apply("web", request(env=["A=1"]), CPUS)
    d = deployments.apply("web", request(), CPUS).deployment  # no env now: as docker run, not a merge
    assert (d.current_version, d.current.spec.env) == (2, {})


def test_reapplying_an_older_spec_makes_a_new_version(deployments: Deployments) -> None:
    deployments.apply("web", request(), CPUS)
    deployments.apply("web", request(image="worker:2"), CPUS)
    d = deployments.apply("web", request(), CPUS).deployment
    assert [(v.number, v.spec.image, v.state) for v in d.versions] == [
        (1, "worker:1", VersionState.DRAINING), (2, "worker:2", VersionState.DRAINING),
        (3, "worker:1", VersionState.ACTIVE)]


def test_a_refused_update_changes_nothing(deployments: Deployments, store: Store) -> None:
    deployments.apply("web", request(min=3), CPUS)
    with pytest.raises(InvalidRequest, match=r"^--min \(3\) must not exceed --max \(2\)$"):  # against the kept min
        deployments.apply("web", request(image="worker:2", max=2), CPUS)
    d = deployments.get("web")
    assert (d.current_version, d.scaling.max, len(d.versions)) == (1, 10, 1)
    assert [e[0] for e in events(store)] == ["deployment_created"]


def test_a_role_made_by_role_set_is_known(deployments: Deployments, store: Store) -> None:
    store.set_role("crawler", [])
    assert deployments.apply("web", request(role="crawler"), CPUS).deployment.current.spec.role == "crawler"


# --------------------------------------------------------------------------- names


def test_apply_checks_the_name_first(deployments: Deployments, store: Store) -> None:
    with pytest.raises(InvalidRequest, match=r"^invalid deployment name 'inspect': "):
        deployments.apply("inspect", request(), CPUS)
    assert deployments.list() == [] and events(store) == []


def test_the_longest_name_leaves_room_for_its_agents_names(deployments: Deployments) -> None:
    name = "w" * 50
    assert deployments.apply(name, request(), CPUS).message == "created"
    assert NAME_PATTERN.fullmatch(f"{name}-{10**12 - 1}")


def test_a_name_is_one_deployment(deployments: Deployments) -> None:
    deployments.apply("web", request(), CPUS)
    deployments.apply("web.v2-b_c", request(image="other"), CPUS)
    deployments.apply("web", request(image="worker:2"), CPUS)
    assert [(d.name, d.current.spec.image) for d in deployments.list()] == [
        ("web", "worker:2"), ("web.v2-b_c", "other")]
    with pytest.raises(NotFound, match=r"^no such deployment: api$"):
        deployments.get("api")


# --------------------------------------------------------------------------- scale


def test_scale_changes_min_max_warm_and_says_so(deployments: Deployments, store: Store, clock: WallClock) -> None:
    deployments.apply("web", request(), CPUS)
    clock.advance(5)
    d = deployments.scale("web", min=2, max="20")
    assert (d.scaling.min, d.scaling.max, d.scaling.warm, d.updated_at) == (2, 20, 0, "2026-03-01T12:00:05.000Z")
    assert d.scaling.tasks_per_agent == 5 and len(d.versions) == 1
    assert events(store)[-1] == ("deployment_scaled", "deployment web scaled: min 0 -> 2, max 10 -> 20",
                                 {"deployment": "web", "options": {"min": [0, 2], "max": [10, 20]}})
    assert deployments.scale("web", warm=4).scaling.warm == 4


def test_scale_to_the_same_values_records_nothing(deployments: Deployments, store: Store, clock: WallClock) -> None:
    deployments.apply("web", request(max=4), CPUS)
    clock.advance(5)
    d = deployments.scale("web", max=4)
    assert (d.scaling.max, d.updated_at) == (4, "2026-03-01T12:00:00.000Z")
    assert [e[0] for e in events(store)] == ["deployment_created"]


def test_scale_validates_as_deploy_does(deployments: Deployments) -> None:
    deployments.apply("web", request(min=2), CPUS)
    with pytest.raises(InvalidRequest, match=r"^--min \(2\) must not exceed --max \(1\)$"):
        deployments.scale("web", max=1)
    with pytest.raises(InvalidRequest, match=r"^--warm: expected a whole number, got 'many'$"):
        deployments.scale("web", warm="many")
    with pytest.raises(InvalidRequest, match=r"^deploy scale: give --min, --max or --warm$"):
        deployments.scale("web")
    with pytest.raises(NotFound, match=r"^no such deployment: api$"):
        deployments.scale("api", max=3)
    assert deployments.get("web").scaling == ScalingPolicy(min=2)


# --------------------------------------------------------------------------- remove and forget


def test_remove_marks_removing_and_forget_deletes(deployments: Deployments, store: Store, clock: WallClock) -> None:
    deployments.apply("web", request(), CPUS)
    deployments.apply("web", request(image="worker:2"), CPUS)
    clock.advance(1)
    d = deployments.remove("web", drain=True)
    assert (d.state, d.drain, d.updated_at) == (DeploymentState.REMOVING, True, "2026-03-01T12:00:01.000Z")
    assert events(store)[-1] == ("deployment_removed", "deployment web removing after its agents finish their work",
                                 {"deployment": "web", "drain": True, "hurried": False})
    assert deployments.remove("web", drain=True) == d  # again: nothing new
    d = deployments.remove("web", drain=False)  # hurry it
    assert (d.state, d.drain) == (DeploymentState.REMOVING, False)
    assert events(store)[-1] == ("deployment_removed", "deployment web removing now",
                                 {"deployment": "web", "drain": False, "hurried": True})
    assert deployments.remove("web", drain=True).drain is False  # no going back to a slower removal
    assert len(events(store)) == 4
    deployments.forget("web")
    with pytest.raises(NotFound):
        deployments.get("web")
    assert store.conn.execute("SELECT COUNT(*) FROM deployment_versions").fetchone()[0] == 0
    assert deployments.apply("web", request(), CPUS).deployment.current_version == 1  # the name is free again


def test_a_removing_deployment_refuses_changes(deployments: Deployments) -> None:
    deployments.apply("web", request(), CPUS)
    deployments.remove("web", drain=False)
    with pytest.raises(Conflict, match=r"^deployment web is being removed: it cannot be updated$"):
        deployments.apply("web", request(image="worker:2"), CPUS)
    with pytest.raises(Conflict, match=r"^deployment web is being removed: it cannot be scaled$"):
        deployments.scale("web", max=3)
    assert deployments.get("web").current.spec.image == "worker:1"


def test_only_a_removed_deployment_is_forgotten(deployments: Deployments) -> None:
    deployments.apply("web", request(), CPUS)
    with pytest.raises(Conflict, match=r"^deployment web is active: remove it before it is forgotten$"):
        deployments.forget("web")
    with pytest.raises(NotFound, match=r"^no such deployment: api$"):
        deployments.forget("api")
    with pytest.raises(NotFound, match=r"^no such deployment: api$"):
        deployments.remove("api", drain=False)
    assert deployments.get("web").state == DeploymentState.ACTIVE


# --------------------------------------------------------------------------- versions


def test_only_a_draining_version_retires(deployments: Deployments) -> None:
    deployments.apply("web", request(), CPUS)
    with pytest.raises(Conflict, match=r"^version 1 of deployment web is active: only a draining version retires$"):
        deployments.retire_version("web", 1)
    deployments.apply("web", request(image="worker:2"), CPUS)
    d = deployments.retire_version("web", 1)
    assert [(v.number, v.state) for v in d.versions] == [(1, VersionState.RETIRED), (2, VersionState.ACTIVE)]
    with pytest.raises(NotFound, match=r"^deployment web has no version 9$"):
        deployments.retire_version("web", 9)


def test_retired_versions_are_kept_ten_deep(deployments: Deployments) -> None:
    deployments.apply("web", request(image="worker:1"), CPUS)
    for n in range(2, 15):
        deployments.apply("web", request(image=f"worker:{n}"), CPUS)
        deployments.retire_version("web", n - 1)
    d = deployments.get("web")
    assert [v.number for v in d.versions] == list(range(4, 15))  # 4..13 retired, 14 current
    assert {v.state for v in d.versions[:-1]} == {VersionState.RETIRED}
    assert deployments.apply("web", request(image="worker:1"), CPUS).deployment.current_version == 15


# --------------------------------------------------------------------------- JSON


def test_json_view_has_every_field_and_a_place_for_live_counts(deployments: Deployments) -> None:
    deployments.apply("web", request(task_max_usd="1.5", scale_down_window="1m"), CPUS)
    d = deployments.apply("web", request(image="worker:2", task_max_usd="1.5"), CPUS).deployment
    view = d.to_json()
    assert {k: v for k, v in view.items() if k != "versions"} == {
        "name": "web", "state": "active", "drain": False, "current_version": 2, "image": "worker:2",
        "scaling": {"min": 0, "max": 10, "warm": 0, "tasks_per_agent": 5, "scale_down_window": 60.0},
        "tasks": {"ttl": 3600, "attempts": 3, "max_usd": "1.5"},
        "created_at": "2026-03-01T12:00:00.000Z", "updated_at": "2026-03-01T12:00:00.000Z", "replicas": None,
        "rollout": None}
    assert [(v["version"], v["label"], v["state"], v["created_at"], v["spec"]["image"]) for v in view["versions"]] == [
        (1, "v1", "draining", "2026-03-01T12:00:00.000Z", "worker:1"),
        (2, "v2", "active", "2026-03-01T12:00:00.000Z", "worker:2")]
    assert view["versions"][1]["spec"] == d.current.spec.to_json()
    assert json.loads(json.dumps(view)) == view  # plain JSON
    counted = d.to_json(Replicas(wanted=3, live=2, busy=1, idle=1))
    assert counted["replicas"] == {"wanted": 3, "live": 2, "busy": 1, "idle": 1}
