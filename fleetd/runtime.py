"""The Docker adapter: the only module that imports the docker SDK.

Every method is blocking; the supervisor runs them in a thread pool, off the
event loop. Docker's exceptions are translated once, in ``docker_errors``.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.types import IPAMConfig, IPAMPool, LogConfig

from fleetd import __version__, netns
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
LABEL_ZONE2_ADDRESS = "fleetd.zone2-address"  # on the agents' network: the address kept for zone 2
NETNS_START_TIMEOUT = 20.0
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
    except requests.exceptions.Timeout:
        # The engine took the call but did not answer in time (a busy or wedged dockerd): what it did is unknown.
        raise RuntimeUnavailable("the Docker engine did not answer in time") from None
    except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
        raise RuntimeUnavailable(f"cannot reach the Docker engine: {exc}") from None


class _Demux:
    """Docker's multiplexed exec stream (an 8-byte header, stream and size, before each frame): payloads kept
    up to ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.pending = b""
        self.frame_left = 0

    def feed(self, data: bytes) -> None:
        self.pending += data
        while self.pending:
            if self.frame_left == 0:
                if len(self.pending) < 8:
                    return
                self.frame_left, self.pending = int.from_bytes(self.pending[4:8], "big"), self.pending[8:]
                continue
            chunk, self.pending = self.pending[: self.frame_left], self.pending[self.frame_left:]
            self.frame_left -= len(chunk)
            self.buffer += chunk[: max(0, self.limit - len(self.buffer))]

    def kept(self) -> bytes:
        return bytes(self.buffer)


class DockerRuntime:
    """Containers, networks and the event stream of one fleetd instance."""

    def __init__(self, instance: str, helper_image: str = f"fleetd/zone2:{__version__}") -> None:
        self.instance = instance
        self.network = f"fleetd-{instance}-agents"
        self.egress = f"fleetd-{instance}-egress"
        self.zone2_name = f"fleetd-{instance}-zone2"
        self.helper_image = helper_image  # runs each agent's netns holder (fleetd.netns)
        self.zone2_address: str | None = None  # fixed, on networks this fleetd made (else Docker picks)
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

    def forget_network(self) -> None:
        """The engine restarted: look the agents' network up again (and make it if it went) on next use."""
        self._network_ready = False

    def ensure_network(self) -> str:
        """The instance's private agent network: internal, no inter-agent traffic, a fixed address for zone 2.

        Agents find zone 2 in their /etc/hosts (fleetd.netns), so its address must not change when it is
        re-created: the network has a subnet of its own (a static address needs one), zone 2 the first
        address after the gateway, agents the upper half.
        """
        if self._network_ready:
            return self.network
        with docker_errors():
            found = self._agents_network()
            if found is not None and LABEL_ZONE2_ADDRESS not in (found.get("Labels") or {}):
                found = self._replace_old_network(found)
            if found is None:
                self._create_agents_network()
                found = self._agents_network()
            self.zone2_address = ((found or {}).get("Labels") or {}).get(LABEL_ZONE2_ADDRESS)
        self._network_ready = True
        return self.network

    def _agents_network(self) -> dict[str, Any] | None:
        for network in self.api.networks(names=[self.network], filters=self.label_filter):
            if network["Name"] == self.network:
                found: dict[str, Any] = self.api.inspect_network(network["Id"])
                return found
        return None

    def _create_agents_network(self) -> None:
        subnet = self._free_subnet()
        pool = IPAMPool(subnet=str(subnet), gateway=str(subnet[1]), iprange=str(list(subnet.subnets())[1]))
        try:
            self.api.create_network(
                self.network,
                driver="bridge",
                internal=True,
                options={"com.docker.network.bridge.enable_icc": "false"},
                ipam=IPAMConfig(pool_configs=[pool]),
                labels={**self.labels, LABEL_KIND: "agents", LABEL_ZONE2_ADDRESS: str(subnet[2])},
            )
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # created by a racing spawn
                raise

    def _free_subnet(self) -> ipaddress.IPv4Network:
        """A subnet from Docker's own pools: the one it gives a throw-away network (then removed)."""
        probe = self.api.create_network(f"fleetd-{self.instance}-probe-{secrets.token_hex(3)}", driver="bridge",
                                        internal=True, labels={**self.labels, LABEL_KIND: "probe"})
        try:
            config = self.api.inspect_network(probe["Id"])["IPAM"]["Config"]
        finally:
            self.api.remove_network(probe["Id"])
        return ipaddress.IPv4Network(config[0]["Subnet"])

    def _replace_old_network(self, network: dict[str, Any]) -> dict[str, Any] | None:
        """A network of an older fleetd (no fixed zone 2 address): replaced when only zone 2 is on it."""
        attached = {name.lstrip("/") for c in self.api.containers(all=True, filters={"network": network["Id"]})
                    for name in c.get("Names") or []}
        if attached - {self.zone2_name}:
            log.warning("the agents' network %s has no fixed address for zone 2 and agents on it: zone 2 keeps "
                        "Docker's address until it is replaced (after the last agent, or fleetd teardown)",
                        self.network)
            return network
        for old in self.api.containers(all=True, filters={"name": f"^/{self.zone2_name}$"}):
            self.api.remove_container(old["Id"], force=True)
        self.api.remove_network(network["Id"])
        return None

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

    def agent_networks(self) -> tuple[str, ...]:
        """The subnets of the agents' network (zone 2's forward proxy never connects into them)."""
        with docker_errors():
            network = self.api.inspect_network(self.ensure_network())
        return tuple(str(c["Subnet"]) for c in (network.get("IPAM") or {}).get("Config") or [] if c.get("Subnet"))

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
            endpoint = self.api.create_endpoint_config(aliases=["zone2"], ipv4_address=self.zone2_address)
            networking = self.api.create_networking_config({self.network: endpoint})  # type: ignore[arg-type]
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

    def check_image(self, image: str) -> None:
        """ImageNotFound unless the engine has ``image`` (before anything is made for an agent)."""
        with docker_errors(image):
            self.api.inspect_image(image)  # type: ignore[no-untyped-call]

    def create_agent(self, agent_id: str, spec: AgentSpec, env: dict[str, str], disks: Mapping[str, Path]) -> str:
        """Create the agent's container (not started) in its holder's network namespace; return its id.

        ``disks`` are the devices (fleetd.disks) of the places in DISK_MOUNTS: each becomes a volume
        mounted there; everything else the agent sees is read-only. The holder (fleetd.netns) must exist,
        not yet run: the container is made while the holder starts, and started after it is ready.
        """
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
            # Docker keeps the holder's id: a holder is started again (never replaced) while its agent may run.
            network_mode=f"container:{self.netns_name(agent_id)}",
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
                name=self.agent_name(agent_id),
                environment=env,
                labels=labels,
                host_config=host_config,
            )
        container_id: str = created["Id"]
        return container_id

    def agent_name(self, agent_id: str) -> str:
        return f"fleetd-{self.instance}-{agent_id}"

    def start_agent(self, container_id: str) -> None:
        """Start a container made by ``create_agent`` (its holder ready); removed if it cannot start."""
        with docker_errors():
            try:
                self.api.start(container_id)
            except docker.errors.APIError:
                self.api.remove_container(container_id, force=True)
                raise

    # -- network namespaces ----------------------------------------------------
    def netns_name(self, agent_id: str) -> str:
        return f"fleetd-{self.instance}-{agent_id}-netns"

    def ensure_netns(self, agent_id: str, zone2_ip: str | None) -> None:
        """The agent's namespace holder runs, its rules in place: started again when it stopped, else made."""
        holder = self.create_netns(agent_id, zone2_ip)
        if holder is not None:
            self.start_netns(holder)

    def create_netns(self, agent_id: str, zone2_ip: str | None) -> str | None:
        """Make the agent's namespace holder, not started yet; None when it exists (started again if it stopped)."""
        name = self.netns_name(agent_id)
        with docker_errors(self.helper_image):
            for old in self.api.containers(all=True, filters={"name": f"^/{name}$"}):
                if old["State"] != "running":  # dockerd restarted: a new namespace, set up again
                    readies = self._netns_readies(old["Id"])
                    self.api.start(old["Id"])
                    self._wait_netns_ready(old["Id"], readies)
                return None
            host_config = self.api.create_host_config(
                network_mode=self.ensure_network(),
                cap_drop=["ALL"],
                cap_add=netns.CAPABILITIES,
                security_opt=["no-new-privileges:true"],
                read_only=True,
                init=True,
                mem_limit=32 << 20,
                memswap_limit=32 << 20,
                pids_limit=8,
                sysctls=netns.SYSCTLS,
                extra_hosts={"zone2": zone2_ip} if zone2_ip else None,
                # Were Docker's DNS server reached after all, it would forward inside this namespace (which
                # routes nowhere), never from the host's (CVE-2024-29018: only for the host's resolvers).
                dns=["127.0.0.1"],
                log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
            )
            created = self.api.create_container(
                self.helper_image,
                command=["python3", "-c", netns.SCRIPT],
                entrypoint=[],
                name=name,
                hostname=agent_id,
                user="0:0",
                labels={**self.labels, LABEL_AGENT: agent_id, LABEL_KIND: "netns"},
                host_config=host_config,
            )
        holder: str = created["Id"]
        return holder

    def start_netns(self, holder: str) -> None:
        """Start a holder made by ``create_netns`` and wait until its namespace is set up; removed if it fails."""
        with docker_errors(self.helper_image):
            try:
                self.api.start(holder)
                self._wait_netns_ready(holder, 0)
            except BaseException:
                self.api.remove_container(holder, force=True)
                raise

    def ensure_netns_of(self, container_id: str, zone2_ip: str | None) -> None:
        """Before an agent's container starts again: its namespace holder runs (an older agent has none)."""
        data = self.inspect(container_id) or {}
        if str((data.get("HostConfig") or {}).get("NetworkMode") or "").startswith("container:"):
            self.ensure_netns((data.get("Config", {}).get("Labels") or {})[LABEL_AGENT], zone2_ip)

    def _netns_readies(self, holder: str) -> int:
        """How many times the holder said its namespace was ready (once per start)."""
        return bytes(self.api.logs(holder, stdout=True, stderr=True)).decode(errors="replace").count(netns.READY)

    def _wait_netns_ready(self, holder: str, before: int) -> None:
        """Follow the holder's output until it says ready (once more than ``before``), it exits, or time is up."""
        stream = self.api.logs(holder, stdout=True, stderr=True, stream=True, follow=True)
        timer = threading.Timer(NETNS_START_TIMEOUT, stream.close)  # unblocks the read below
        timer.start()
        seen = b""
        try:
            for chunk in stream:
                seen += chunk
                if seen.count(netns.READY.encode()) > before:
                    return
        except Exception:  # the stream closed by the timer
            pass
        finally:
            timer.cancel()
            stream.close()
        raise RuntimeFailure(f"the agent's network namespace was not set up: {seen.decode(errors='replace')[-300:]}")

    def remove_netns(self, agent_id: str) -> None:
        """Remove the agent's namespace holder (when the agent will not run again)."""
        self.remove(self.netns_name(agent_id))

    def address_of(self, data: dict[str, Any]) -> str | None:
        """A running agent's address on the agents' network (its holder's; its own for an older agent)."""
        mode = str((data.get("HostConfig") or {}).get("NetworkMode") or "")
        if mode.startswith("container:"):
            data = self.inspect(mode.removeprefix("container:")) or {}
        networks = (data.get("NetworkSettings") or {}).get("Networks") or {}
        address = (networks.get(self.network) or {}).get("IPAddress")
        return str(address) if address else None

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

    def exec_output(self, container_id: str, command: list[str], timeout: float, keep: int) -> tuple[int, bytes]:
        """``exec_status``, with the start of the command's output (stdout and stderr): ``keep`` bytes and one.

        For an exec probe's failure event. The output is read as it comes, without blocking, so a command
        that writes more is not stalled on a full pipe; what is past ``keep`` is read and dropped.
        """
        import select

        give_up = time.monotonic() + timeout
        output = _Demux(keep + 1)  # one more byte than kept: the event can say "it was longer"
        with docker_errors():
            created = self.api.exec_create(container_id, command, stdout=True, stderr=True, tty=False)
            exec_id: str = created["Id"]
            raw = self.api.exec_start(exec_id, socket=True)
            sock: Any = getattr(raw, "_sock", raw)
            try:
                sock.setblocking(False)
                streaming = True
                while True:
                    left = give_up - time.monotonic()
                    if streaming and left > 0 and select.select([sock], [], [], min(left, 0.2))[0]:
                        try:
                            data = sock.recv(65536)
                        except (BlockingIOError, InterruptedError):
                            continue
                        streaming = bool(data)
                        output.feed(data)
                        continue
                    state = self.api.exec_inspect(exec_id)
                    if not state.get("Running") and state.get("ExitCode") is not None:
                        return int(state["ExitCode"]), output.kept()
                    if time.monotonic() >= give_up:
                        killed = kill_process_tree(int(state.get("Pid") or 0), container_id)
                        log.debug("exec %r in %s timed out: %d processes killed", command, container_id[:12], killed)
                        return 124, output.kept()
                    if not streaming:
                        time.sleep(min(0.05, max(0.0, give_up - time.monotonic())))
            finally:
                sock.close()

    def remove(self, container_id: str) -> None:
        try:
            with docker_errors():
                self.api.remove_container(container_id, force=True, v=True)
        except NotFound:
            pass
        except RuntimeFailure as exc:
            if "already in progress" not in exc.message:
                raise
            # Another task removes it at the same time (teardown, and the agent's end): done when it is gone.
            give_up = time.monotonic() + 30
            while self.inspect(container_id) is not None and time.monotonic() < give_up:
                time.sleep(0.05)

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
        """Memory in use, its peak, its limit and CPU time of a running container, read from its cgroup."""
        return cgroup_usage(container_id)

    def containers(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every container of this instance (of one kind: agent, netns, zone2), running or not."""
        labels = [f"{LABEL_INSTANCE}={self.instance}"] + ([f"{LABEL_KIND}={kind}"] if kind else [])
        with docker_errors():
            found: list[dict[str, Any]] = self.api.containers(all=True, filters={"label": labels})
            return found

    def logs(self, container_id: str, follow: bool, tail: int | None, since: float | None = None,
             timestamps: bool = False) -> Any:
        """A stream of raw log bytes (stdout and stderr), cancellable with ``close()``.

        ``since``: Unix seconds, only output from then on; ``timestamps``: each line begins with its time.
        """
        extra: dict[str, Any] = {"since": since} if since is not None and since > 0 else {}
        with docker_errors():
            return self.api.logs(
                container_id, stream=True, follow=follow, tail="all" if tail is None else tail,
                timestamps=timestamps, **extra,
            )

    def events(self, since: int | None) -> Any:
        """The engine's event stream for this instance's containers."""
        with docker_errors():
            filters = {**self.label_filter, "type": "container"}
            return self.api.events(since=since, filters=filters, decode=True)

    def teardown(self) -> tuple[dict[str, int], list[dict[str, str]]]:
        """Remove every container, network and volume labelled with this instance.

        Returns the counts removed, and what could not be removed (``kind``, ``name``, ``id``, ``error``):
        one failure does not stop the rest.
        """
        removed = {"containers": 0, "networks": 0, "volumes": 0}
        failed: list[dict[str, str]] = []

        def failure(kind: str, name: str, id_: str, error: str) -> None:
            log.warning("teardown: cannot remove %s %s: %s", kind, name, error)
            failed.append({"kind": kind, "name": name, "id": id_, "error": error})

        with docker_errors():
            for container in self.api.containers(all=True, filters=self.label_filter):
                name = ((container.get("Names") or ["?"])[0]).lstrip("/")
                try:
                    self.remove(container["Id"])
                    removed["containers"] += 1
                except RuntimeFailure as exc:
                    failure("container", name, container["Id"], exc.message)
            for network in self.api.networks(filters=self.label_filter):
                try:
                    self.api.remove_network(network["Id"])
                    removed["networks"] += 1
                except docker.errors.NotFound:
                    pass
                except docker.errors.APIError as exc:
                    # e.g. a stale endpoint (moby#42119): report it, and remove the rest anyway
                    failure("network", network["Name"], network["Id"], str(exc.explanation or exc))
            volumes = self.api.volumes(filters=self.label_filter).get("Volumes") or []
            for volume in volumes:
                try:
                    self.api.remove_volume(volume["Name"], force=True)
                    removed["volumes"] += 1
                except docker.errors.NotFound:
                    pass
                except docker.errors.APIError as exc:
                    failure("volume", volume["Name"], volume["Name"], str(exc.explanation or exc))
        self._network_ready = False
        return removed, failed
