"""Deployments (fleetd.deployments): the tables of state.db and the deploy options' validation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetd.autoscale import ScalingPolicy
from fleetd.config import Config, Limits
from fleetd.deployments import TaskDefaults, check_name, deploy_request
from fleetd.errors import InvalidRequest
from fleetd.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "state.db")
    yield store
    store.close()


def test_migration_m009_makes_the_deployment_tables(store: Store) -> None:
    assert [c.name for c in store.db["deployments"].columns] == [
        "name", "state", "current_version", "min", "max", "warm", "tasks_per_agent", "scale_down_window",
        "task_ttl", "task_attempts", "task_max_usd", "drain", "created_at", "updated_at"]
    assert store.db["deployments"].pks == ["name"]
    assert [c.name for c in store.db["deployment_versions"].columns] == [
        "deployment", "version", "spec", "state", "created_at"]
    assert store.db["deployment_versions"].pks == ["deployment", "version"]


# --------------------------------------------------------------------------- rig

CONFIG = Config(roles={"big": Limits(memory=1 << 30)})
CPUS = 2


def request(**fields: Any) -> dict[str, Any]:
    return {"image": "worker:1", "command": ["python", "work.py"], **fields}


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
    agent, scaling, tasks = deploy_request(
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
        ("ls", "invalid deployment name 'ls': inspect, ls, rm, scale are verbs of fleetd deploy"),
        ("rm", "invalid deployment name 'rm'"),
    ],
)
def test_deployment_names(name: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=f"^{message}"):
        check_name(name)
