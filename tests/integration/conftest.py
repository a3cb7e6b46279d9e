from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest

from tests.integration.harness import AGENT_IMAGE, Daemon


@pytest.fixture(scope="session", autouse=True)
def engine() -> Iterator[docker.DockerClient]:
    """The real Docker engine, with fleetd's images built (``fleetd images build``)."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"these tests need a running Docker engine: {exc}")
    try:
        client.images.get(AGENT_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{AGENT_IMAGE} is missing: run 'fleetd images build' first")
    yield client
    client.close()


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = Daemon().start()
    try:
        yield d
    finally:
        d.cleanup()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.docker)
