"""What the supervisor needs of a container runtime: the contract between the decisions and the engine.

``fleetd.runtime.DockerRuntime`` (one Docker Engine) is the implementation in production; the unit tests run the
supervisor against an in-memory one (tests/unit/fake_runtime.py). A second backend (a distributed engine such as
Docker Swarm) implements the same methods. Every method blocks (the supervisor calls them from its thread pool)
and reports failures as fleetd.errors (NotFound, RuntimeFailure, RuntimeUnavailable, ImageNotFound).

Containers are described by the engine's own documents, of which the supervisor reads only these keys:
``containers()`` rows ``{"Id", "State", "Labels"}``; ``inspect()`` ``{"Id", "State": {"Status", "Running",
"ExitCode", "OOMKilled", "Pid"}, "Config": {"Labels"}, "HostConfig": {"NetworkMode"}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from fleetd.models import AgentSpec


class AgentRuntime(Protocol):
    # -- the engine and the instance's network ----------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """The engine's facts: at least ``NCPU`` and ``ServerVersion``."""
        ...

    def ensure_network(self) -> str:
        """The agents' private network exists; its name."""
        ...

    def forget_network(self) -> None:
        """The engine restarted: look the network up again on next use."""
        ...

    def check_image(self, image: str) -> None:
        """ImageNotFound unless the engine has ``image``."""
        ...

    # -- an agent's namespace (fleetd.netns) and container ----------------------------------------------------
    def create_netns(self, agent_id: str, zone2_ip: str | None) -> str | None:
        """Make the agent's namespace holder (not started); None when it exists and runs."""
        ...

    def start_netns(self, holder: str) -> None:
        """Start a holder and wait until its namespace is set up."""
        ...

    def ensure_netns_of(self, container_id: str, zone2_ip: str | None) -> None:
        """Before an agent's container starts again: its namespace runs."""
        ...

    def remove_netns(self, agent_id: str) -> None:
        ...

    def create_agent(self, agent_id: str, spec: AgentSpec, env: dict[str, str], disks: Mapping[str, Path]) -> str:
        """Create the agent's container in its namespace (not started); its id."""
        ...

    def start_agent(self, container_id: str) -> None:
        """Start a container made by ``create_agent``; removed if it cannot start."""
        ...

    def start(self, container_id: str) -> None:
        """Start an exited container again (a restart: same id, volumes, labels)."""
        ...

    def agent_name(self, agent_id: str) -> str:
        ...

    def signal(self, container_id: str, signal: str) -> bool:
        """Send a signal by name; False when the container is not running."""
        ...

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        """The container's document, or None when it does not exist."""
        ...

    def address_of(self, data: dict[str, Any]) -> str | None:
        """A running agent's address on the agents' network, from its document."""
        ...

    def containers(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every container of this instance (of one kind: agent, netns, zone2), running or not."""
        ...

    def remove(self, container_id: str) -> None:
        """Remove a container (and its anonymous volumes); done when it is already gone."""
        ...

    def remove_volumes(self, agent_id: str) -> None:
        ...

    # -- looking inside -----------------------------------------------------------------------------------------
    def exec_status(self, container_id: str, command: list[str], timeout: float) -> int:
        ...

    def exec_output(self, container_id: str, command: list[str], timeout: float, keep: int) -> tuple[int, bytes]:
        ...

    def usage(self, container_id: str) -> dict[str, int] | None:
        """``memory_bytes``, ``memory_peak_bytes`` (its high-water mark), ``memory_limit_bytes`` and ``cpu_ns`` of a
        running container; None when its cgroup cannot be read (it has ended)."""
        ...

    def logs(self, container_id: str, follow: bool, tail: int | None, since: float | None = None,
             timestamps: bool = False) -> Any:
        """A stream of raw log bytes, cancellable with ``close()``."""
        ...

    # -- the whole instance -------------------------------------------------------------------------------------
    def teardown(self) -> tuple[dict[str, int], list[dict[str, str]]]:
        """Remove every object of this instance: counts by kind, and what could not be removed (``kind``,
        ``name``, ``id``, ``error``)."""
        ...
