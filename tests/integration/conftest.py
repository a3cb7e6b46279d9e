from __future__ import annotations

import time
from collections.abc import Iterator

import docker
import pytest

from tests.integration.harness import AGENT_IMAGE, Daemon
from tests.integration.sdk_image import SDK_IMAGE, build_sdk_image


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


@pytest.fixture(scope="session")
def sdk_image(engine: docker.DockerClient) -> str:
    """An agent image with the ``openai`` and ``anthropic`` SDKs on its PATH; left in place for the next run."""
    start = time.monotonic()
    _, built = build_sdk_image(engine)
    print(f"\n{SDK_IMAGE}: {'built' if built else 'reused'} in {time.monotonic() - start:.1f}s")
    return SDK_IMAGE


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.docker)
