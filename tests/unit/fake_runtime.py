"""An in-memory container runtime (fleetd.agent_runtime.AgentRuntime) and disks, for unit tests of the supervisor's
decisions: spawn, exit, restart, resync and adoption without Docker. A container's end is an event the test hands
to ``Supervisor.on_docker_event`` (``die_event``), as the Docker event watcher would."""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fleetd.errors import ImageNotFound, RuntimeFailure
from fleetd.models import AgentSpec
from fleetd.runtime import LABEL_AGENT, LABEL_KIND

RUNNING = {"Status": "running", "Running": True, "ExitCode": 0, "OOMKilled": False, "Pid": 0}
USAGE = {"memory_bytes": 1 << 20, "memory_peak_bytes": 2 << 20, "memory_limit_bytes": 64 << 20, "cpu_ns": 0}


class FakeRuntime:
    def __init__(self, instance: str = "test") -> None:
        self.instance = instance
        self.containers_by_id: dict[str, dict[str, Any]] = {}
        self.ids = (f"c{n:011d}" for n in itertools.count(1))
        self.missing_images: set[str] = set()
        self.start_fails = False
        self.ignore_term = False  # agents that trap SIGTERM and go on
        self.signals: list[tuple[str, str]] = []
        self.died: list[dict[str, Any]] = []  # die events not yet handed to the supervisor
        self.removed: list[str] = []  # every remove() asked for (an id or a name)
        self.inspect_delay = 0.0  # seconds an inspect takes (in the supervisor's thread pool, as a Docker call)
        self.usages: dict[str, dict[str, int]] = {}  # what a running container's cgroup shows (else USAGE)
        self.cgroup_kept = False  # an exited container's cgroup is still there (it goes soon after the exit)

    # -- the engine --------------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {"NCPU": 2, "ServerVersion": "fake"}

    def ensure_network(self) -> str:
        return f"fleetd-{self.instance}-agents"

    def forget_network(self) -> None:
        pass

    def check_image(self, image: str) -> None:
        if image in self.missing_images:
            raise ImageNotFound(f"image {image!r} not found")

    # -- containers -------------------------------------------------------------------------------------------
    def _make(self, name: str, labels: dict[str, str], **extra: Any) -> str:
        container_id = next(self.ids)
        self.containers_by_id[container_id] = {
            "Id": container_id, "Name": name, "Labels": labels,
            "State": {"Status": "created", "Running": False, "ExitCode": 0, "OOMKilled": False, "Pid": 0},
            **extra,
        }
        return container_id

    def put(self, container_id: str, agent_id: str, status: str, exit_code: int = 0) -> None:
        """A container as a test needs it (made by an earlier daemon, say)."""
        self.containers_by_id[container_id] = {
            "Id": container_id, "Name": self.agent_name(agent_id),
            "Labels": {LABEL_AGENT: agent_id, LABEL_KIND: "agent"},
            "State": {"Status": status, "Running": status == "running", "ExitCode": exit_code, "OOMKilled": False,
                      "Pid": 0}}

    def by_name(self, name: str) -> dict[str, Any] | None:
        return next((c for c in self.containers_by_id.values() if c["Name"] == name), None)

    def agent_name(self, agent_id: str) -> str:
        return f"fleetd-{self.instance}-{agent_id}"

    def netns_name(self, agent_id: str) -> str:
        return f"fleetd-{self.instance}-{agent_id}-netns"

    def create_netns(self, agent_id: str, zone2_ip: str | None) -> str | None:
        found = self.by_name(self.netns_name(agent_id))
        if found is not None:
            found["State"] = dict(RUNNING)
            return None
        return self._make(self.netns_name(agent_id), {LABEL_AGENT: agent_id, LABEL_KIND: "netns"})

    def start_netns(self, holder: str) -> None:
        self.containers_by_id[holder]["State"] = dict(RUNNING)

    def ensure_netns_of(self, container_id: str, zone2_ip: str | None) -> None:
        if container_id not in self.containers_by_id:
            return
        agent_id = self.containers_by_id[container_id]["Labels"][LABEL_AGENT]
        holder = self.create_netns(agent_id, zone2_ip)
        if holder is not None:
            self.start_netns(holder)

    def remove_netns(self, agent_id: str) -> None:
        found = self.by_name(self.netns_name(agent_id))
        if found is not None:
            del self.containers_by_id[found["Id"]]

    def create_agent(self, agent_id: str, spec: AgentSpec, env: dict[str, str], disks: Mapping[str, Path]) -> str:
        labels = {**spec.labels, LABEL_AGENT: agent_id, LABEL_KIND: "agent"}
        env = {**spec.env, **env, "FLEETD_AGENT_ID": agent_id}  # as DockerRuntime merges them
        return self._make(self.agent_name(agent_id), labels, Env=env, Cmd=list(spec.command),
                          HostConfig={"NetworkMode": f"container:{self.netns_name(agent_id)}"})

    def start_agent(self, container_id: str) -> None:
        if self.start_fails:
            del self.containers_by_id[container_id]
            raise RuntimeFailure("docker: cannot start container")
        self.containers_by_id[container_id]["State"] = dict(RUNNING)

    def start(self, container_id: str) -> None:
        if self.start_fails:
            raise RuntimeFailure("docker: cannot start container")
        self.containers_by_id[container_id]["State"] = dict(RUNNING)

    def exit(self, container_id: str, code: int, oom: bool = False) -> dict[str, Any]:
        """The container's process ends: its state, and the die event Docker would send (returned and kept)."""
        container = self.containers_by_id[container_id]
        container["State"] = {"Status": "exited", "Running": False, "ExitCode": code, "OOMKilled": oom, "Pid": 0}
        event = {"Action": "die", "Actor": {"ID": container_id, "Attributes": dict(container["Labels"])}}
        self.died.append(event)
        return event

    def signal(self, container_id: str, signal: str) -> bool:
        container = self.containers_by_id.get(container_id)
        if container is None or not container["State"]["Running"]:
            return False
        self.signals.append((container_id, signal))
        if signal == "SIGKILL":
            self.exit(container_id, 137)
        elif signal == "SIGTERM" and not self.ignore_term:
            self.exit(container_id, 0)
        return True

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        time.sleep(self.inspect_delay)
        container = self.containers_by_id.get(container_id)
        if container is None:
            return None
        return {"Id": container_id, "State": dict(container["State"]), "Config": {"Labels": container["Labels"]},
                "HostConfig": container.get("HostConfig", {})}

    def address_of(self, data: dict[str, Any]) -> str | None:
        return "10.0.0.9"

    def containers(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [{"Id": c["Id"], "State": c["State"]["Status"], "Labels": c["Labels"]}
                for c in self.containers_by_id.values() if kind is None or c["Labels"].get(LABEL_KIND) == kind]

    def remove(self, container_id: str) -> None:
        self.removed.append(container_id)
        self.containers_by_id.pop(container_id, None)
        found = self.by_name(container_id)  # by name, as Docker's API also takes
        if found is not None:
            del self.containers_by_id[found["Id"]]

    def remove_volumes(self, agent_id: str) -> None:
        pass

    # -- looking inside -----------------------------------------------------------------------------------------
    def exec_status(self, container_id: str, command: list[str], timeout: float) -> int:
        return 0

    def exec_output(self, container_id: str, command: list[str], timeout: float, keep: int) -> tuple[int, bytes]:
        return 0, b""

    def usage(self, container_id: str) -> dict[str, int] | None:
        container = self.containers_by_id.get(container_id)
        if container is None or not (container["State"]["Running"] or self.cgroup_kept):
            return None
        return dict(self.usages.get(container_id, USAGE))

    def logs(self, container_id: str, follow: bool, tail: int | None, since: float | None = None,
             timestamps: bool = False) -> Any:
        return iter(())

    def teardown(self) -> tuple[dict[str, int], list[dict[str, str]]]:
        removed = len(self.containers_by_id)
        self.containers_by_id.clear()
        return {"containers": removed, "networks": 0, "volumes": 0}, []


class FakeDisks:
    """fleetd.disks.Disks without loop devices: which agents have disks."""

    def __init__(self) -> None:
        self.made: dict[str, set[str]] = {}

    def create(self, agent_id: str, which: str, size: int) -> Path:
        self.made.setdefault(agent_id, set()).add(which)
        return Path(f"/dev/fake-{agent_id}-{which}")

    def attach(self, agent_id: str, which: str) -> Path:
        return Path(f"/dev/fake-{agent_id}-{which}")

    def exists(self, agent_id: str) -> list[str]:
        return sorted(self.made.get(agent_id, ()))

    def agents(self) -> set[str]:
        return set(self.made)

    def remove(self, agent_id: str) -> None:
        self.made.pop(agent_id, None)

    def remove_all(self) -> int:
        count = sum(len(v) for v in self.made.values())
        self.made.clear()
        return count


class FakeZone2:
    """Zone 2 as the supervisor sees it (fleetd.zone2_port.Zone2Port): who is registered, at which address."""

    def __init__(self, ip: str | None = "172.30.0.2") -> None:
        self.ip = ip
        self.registered: dict[str, str] = {}  # agent id -> its address
        self.exits = 0  # times the engine said zone 2 died
        self.torn_down = False

    def agent_env(self, spec: object = None) -> dict[str, str]:
        return {"FLEETD_GATEWAY_URL": "http://zone2:8080"}

    async def ready(self) -> None:
        self.torn_down = False

    async def register(self, agent_id: str, ip: str) -> None:
        self.registered[agent_id] = ip

    async def unregister(self, agent_id: str) -> None:
        self.registered.pop(agent_id, None)

    def on_exit(self) -> None:
        self.exits += 1

    async def answering(self, timeout: float = 1.0) -> bool:
        return True

    async def teardown(self) -> int:
        self.torn_down = True
        return 0

    def status(self) -> dict[str, Any]:
        return {"healthy": True, "address": self.ip, "agents_registered": len(self.registered)}
