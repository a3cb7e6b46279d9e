"""Deployments and their versions (fleetd.deployments) on a real state.db: the deploy options' validation, apply
(create, unchanged, in place, a new version), scale, remove and forget, the events, and the JSON view."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
