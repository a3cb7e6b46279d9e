"""Fixtures that several unit test modules use: a state.db, and the daemon's parts on a fake runtime."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.config import Config
from fleetd.services import Services
from fleetd.store import Store
from tests.unit.supervisor_rig import build_services


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "state.db")
    yield store
    store.close()


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Services]:
    """The API's parts as fleetd.daemon makes them (tests/unit/supervisor_rig.py), on a fake runtime."""
    config = Config(instance="t-unit", state_dir=tmp_path, socket=tmp_path / "fleetd.sock")
    store = Store(tmp_path / "state.db")
    built = build_services(config, store)
    yield built
    built.agents.close()
    built.agents.calls.close()
    store.close()
