"""The Docker adapter: the only module that imports the docker SDK.

Every method is blocking; the supervisor runs them in a thread pool, off the
event loop. Docker's exceptions are translated once, in ``docker_errors``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.types import LogConfig

from fleetd.cgroups import cgroup_usage
from fleetd.errors import ImageNotFound, NotFound, RuntimeFailure, RuntimeUnavailable
from fleetd.models import AgentSpec
from fleetd.pidfds import kill_process_tree

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "/fleetd/checkpoint"
# The only places an agent may write (its root filesystem is read-only), each a disk of its own
# (fleetd.disks) of half its --disk: the disk's name, where it is mounted.
DISK_MOUNTS = {"tmp": "/tmp", "ckpt": CHECKPOINT_DIR}
VOLUME_KINDS = {"tmp": "tmp", "ckpt": "checkpoint"}

LABEL_INSTANCE = "fleetd.instance"
LABEL_AGENT = "fleetd.agent-id"
LABEL_NAME = "fleetd.name"
LABEL_ROLE = "fleetd.role"
LABEL_KIND = "fleetd.kind"
# A container's json-file log is capped so a chatty agent cannot fill the disk.
LOG_CONFIG = {"max-size": "10m", "max-file": "3"}
POOL_SIZE = 64


@contextmanager
def docker_errors(image: str | None = None) -> Iterator[None]:
    """Translate the docker SDK's exceptions into fleetd's, once, here."""
    try:
        yield
    except docker.errors.ImageNotFound:
        raise ImageNotFound(
            f"image {image!r} not found locally: build or load it (fleetd images build, docker load)"
        ) from None
    except docker.errors.NotFound as exc:
        raise NotFound(str(exc.explanation or exc)) from None
    except docker.errors.APIError as exc:
        raise RuntimeFailure(f"docker: {exc.explanation or exc}") from None
    except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
        raise RuntimeUnavailable(f"cannot reach the Docker engine: {exc}") from None


class DockerRuntime:
    """Containers, networks and the event stream of one fleetd instance."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.network = f"fleetd-{instance}-agents"
        self.egress = f"fleetd-{instance}-egress"
        self.zone2_name = f"fleetd-{instance}-zone2"
        with docker_errors():
            self.client = docker.from_env(max_pool_size=POOL_SIZE)
        self.api = self.client.api
        self._network_ready = False

    @property
    def labels(self) -> dict[str, str]:
        return {LABEL_INSTANCE: self.instance}

    @property
    def label_filter(self) -> dict[str, Any]:
        return {"label": f"{LABEL_INSTANCE}={self.instance}"}

    def info(self) -> dict[str, Any]:
        with docker_errors():
            info: dict[str, Any] = self.api.info()
            return info

    def ping(self) -> None:
        with docker_errors():
            self.api.ping()

    def ensure_network(self) -> str:
        """The instance's private agent network: internal, no inter-agent traffic."""
        if self._network_ready:
            return self.network
        with docker_errors():
            if not self.api.networks(names=[self.network], filters=self.label_filter):
                try:
                    self.api.create_network(
                        self.network,
                        driver="bridge",
                        internal=True,
                        options={"com.docker.network.bridge.enable_icc": "false"},
                        labels={**self.labels, LABEL_KIND: "agents"},
                    )
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:  # created by a racing spawn
                        raise
        self._network_ready = True
        return self.network

    def ensure_egress(self) -> str:
        """The network zone 2 (and only zone 2) uses to reach upstreams."""
        with docker_errors():
            if not self.api.networks(names=[self.egress], filters=self.label_filter):
                try:
                    self.api.create_network(
                        self.egress, driver="bridge", labels={**self.labels, LABEL_KIND: "egress"}
                    )
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:
                        raise
        return self.egress

    def agents_bridge(self) -> str:
        """The host interface of the agents' network (for the firewall)."""
        with docker_errors():
            network = self.api.inspect_network(self.ensure_network())
        name = (network.get("Options") or {}).get("com.docker.network.bridge.name")
        return str(name or f"br-{network['Id'][:12]}")

    def agent_addresses(self) -> dict[str, str]:
        """IP address on the agents' network -> agent id, for every running agent container."""
        with docker_errors():
            found = self.api.containers(filters={**self.label_filter, "network": self.network})
        out = {}
        for container in found:
            agent_id = (container.get("Labels") or {}).get(LABEL_AGENT)
            endpoint = ((container.get("NetworkSettings") or {}).get("Networks") or {}).get(self.network) or {}
            if agent_id and endpoint.get("IPAddress"):
                out[endpoint["IPAddress"]] = agent_id
        return out

    def run_zone2(self, image: str, control_dir: str) -> str:
        """(Re)create and start the zone 2 container; return its id.

        No Docker socket, no secret in its env or on its disk, read-only root,
        no capabilities, nobody's uid; the control dir is its only mount.
        """
        with docker_errors(image):
            for old in self.api.containers(all=True, filters={"name": f"^/{self.zone2_name}$"}):
                self.api.remove_container(old["Id"], force=True)
            host_config = self.api.create_host_config(
                binds={control_dir: {"bind": "/control", "mode": "rw"}},
                read_only=True,
                tmpfs={"/tmp": "size=16m"},
                cap_drop=["ALL"],
                security_opt=["no-new-privileges:true"],
                mem_limit=256 << 20,
                pids_limit=512,
                init=True,
                network_mode=self.ensure_network(),
                log_config=LogConfig(type="json-file", config=LOG_CONFIG),
            )
            networking = self.api.create_networking_config(
                {self.network: self.api.create_endpoint_config(aliases=["zone2"])}  # type: ignore[arg-type]
            )
            created = self.api.create_container(
                image,
                command=["zone2", "--control-dir", "/control"],
                name=self.zone2_name,
                user="65534:65534",
                labels={**self.labels, LABEL_KIND: "zone2"},
                host_config=host_config,
                networking_config=networking,
            )
            container_id: str = created["Id"]
            self.api.connect_container_to_network(container_id, self.ensure_egress())
            self.api.start(container_id)
        return container_id

    def create_and_start(self, agent_id: str, spec: AgentSpec, env: dict[str, str],
                         disks: Mapping[str, Path]) -> str:
        """Create and start the agent's container; return its id.

        ``disks`` are the devices (fleetd.disks) of the places in DISK_MOUNTS: each becomes a volume
        mounted there; everything else the agent sees is read-only.
        """
        network = self.ensure_network()
        host_config = self.api.create_host_config(
            mem_limit=spec.memory,
            # Swap equal to memory: no swap, so the memory limit is real.
            memswap_limit=spec.memory,
            mem_reservation=spec.memory_reservation,
            nano_cpus=spec.nano_cpus,
            pids_limit=spec.pids_limit,
            init=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            network_mode=network,
            log_config=LogConfig(type="json-file", config=LOG_CONFIG),
            read_only=True,
            binds={self.disk_volume(agent_id, which): {"bind": DISK_MOUNTS[which], "mode": "rw"} for which in disks},
        )
        labels = {
            **spec.labels,
            **self.labels,
            LABEL_AGENT: agent_id,
            LABEL_NAME: spec.name or agent_id,
            LABEL_ROLE: spec.role,
            LABEL_KIND: "agent",
        }
        env = {**spec.env, **env, "FLEETD_AGENT_ID": agent_id}
        with docker_errors(spec.image):
            for which, device in disks.items():
                # dockerd mounts the filesystem when the container starts, as any volume with mount options.
                self.api.create_volume(
                    self.disk_volume(agent_id, which), driver="local",
                    driver_opts={"type": "ext4", "device": str(device), "o": "nosuid,nodev"},
                    labels={**self.labels, LABEL_AGENT: agent_id, LABEL_KIND: VOLUME_KINDS[which]},
                )
            created = self.api.create_container(
                spec.image,
                command=list(spec.command) or None,
                name=f"fleetd-{self.instance}-{agent_id}",
                environment=env,
                labels=labels,
                host_config=host_config,
            )
            container_id: str = created["Id"]
            try:
                self.api.start(container_id)
            except docker.errors.APIError:
                self.api.remove_container(container_id, force=True)
                raise
        return container_id

    def signal(self, container_id: str, signal: str) -> bool:
        """Send a signal; False when the container is not running (nothing to signal)."""
        try:
            with docker_errors():
                self.api.kill(container_id, signal=signal)
        except (NotFound, RuntimeFailure) as exc:
            if isinstance(exc, NotFound) or "is not running" in exc.message:
                return False
            raise
        return True

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        """The container's inspect document, or None when it does not exist."""
        try:
            with docker_errors():
                data: dict[str, Any] = self.api.inspect_container(container_id)
                return data
        except NotFound:
            return None

    def exec_status(self, container_id: str, command: list[str], timeout: float) -> int:
        """Run ``command`` in the container (docker exec, no tty) and return its exit code.

        A command still running after ``timeout`` seconds gives 124, like
        coreutils' ``timeout`` (which minimal images may lack), and is killed
        with everything it started, as containerd's ExecSync does for a
        Kubernetes exec probe: Docker has no API to end an exec, so the daemon
        signals the processes itself (:func:`fleetd.pidfds.kill_process_tree`).
        The exec is started detached and polled, so no thread waits on it.
        """
        import time

        give_up = time.monotonic() + timeout
        with docker_errors():
            created = self.api.exec_create(container_id, command, stdout=False, stderr=False, tty=False)
            exec_id: str = created["Id"]
            self.api.exec_start(exec_id, detach=True)
            pause = 0.01
            while True:
                state = self.api.exec_inspect(exec_id)
                if not state.get("Running") and state.get("ExitCode") is not None:
                    return int(state["ExitCode"])
                left = give_up - time.monotonic()
                if left <= 0:
                    killed = kill_process_tree(int(state.get("Pid") or 0), container_id)
                    log.debug("exec %r in %s timed out: %d processes killed", command, container_id[:12], killed)
                    return 124
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.2)

    def remove(self, container_id: str) -> None:
        try:
            with docker_errors():
                self.api.remove_container(container_id, force=True, v=True)
        except NotFound:
            pass

    def disk_volume(self, agent_id: str, which: str) -> str:
        """The volume of one of the agent's disks: it outlives restarts of the agent, not the agent."""
        return f"fleetd-{self.instance}-{which}-{agent_id}"

    def remove_volumes(self, agent_id: str) -> None:
        """Remove the agent's volumes (its container must be gone)."""
        for which in DISK_MOUNTS:
            try:
                with docker_errors():
                    self.api.remove_volume(self.disk_volume(agent_id, which), force=True)
            except NotFound:
                pass

    def start(self, container_id: str) -> None:
        """Start an existing (exited) container again: same id, name, volumes and labels."""
        with docker_errors():
            self.api.start(container_id)

    def usage(self, container_id: str) -> dict[str, int] | None:
        """Memory in use, its limit and CPU time of a running container, read from its cgroup."""
        return cgroup_usage(container_id)

    def containers(self) -> list[dict[str, Any]]:
        """Every container of this instance, running or not."""
        with docker_errors():
            found: list[dict[str, Any]] = self.api.containers(all=True, filters=self.label_filter)
            return found

    def logs(self, container_id: str, follow: bool, tail: int | None) -> Any:
        """A stream of raw log bytes (stdout and stderr), cancellable with ``close()``."""
        with docker_errors():
            return self.api.logs(
                container_id, stream=True, follow=follow, tail="all" if tail is None else tail
            )

    def events(self, since: int | None) -> Any:
        """The engine's event stream for this instance's containers."""
        with docker_errors():
            filters = {**self.label_filter, "type": "container"}
            return self.api.events(since=since, filters=filters, decode=True)

    def teardown(self) -> dict[str, int]:
        """Remove every container, network and volume labelled with this instance."""
        removed = {"containers": 0, "networks": 0, "volumes": 0}
        with docker_errors():
            for container in self.api.containers(all=True, filters=self.label_filter):
                self.remove(container["Id"])
                removed["containers"] += 1
            for network in self.api.networks(filters=self.label_filter):
                try:
                    self.api.remove_network(network["Id"])
                    removed["networks"] += 1
                except docker.errors.NotFound:
                    pass
                except docker.errors.APIError as exc:
                    # e.g. a stale endpoint (moby#42119): report it, and remove the rest anyway
                    log.warning("teardown: cannot remove network %s: %s", network["Name"], exc.explanation)
            volumes = self.api.volumes(filters=self.label_filter).get("Volumes") or []
            for volume in volumes:
                try:
                    self.api.remove_volume(volume["Name"], force=True)
                    removed["volumes"] += 1
                except docker.errors.NotFound:
                    pass
        self._network_ready = False
        return removed
