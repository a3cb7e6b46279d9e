"""The supervisor: agent lifecycle, deadlines, exits and re-adoption.

It records in the store, arms the timers, and calls the container runtime (``fleetd.agent_runtime``) through the
blocking-call pool so the event loop never blocks on the engine. Its decisions come from ``decisions`` and
``health``; this module only carries them out. What it needs of zone 2 is ``fleetd.zone2_port``; the liveness
watchdog tells it whom to condemn. All of them come in through the constructor (``fleetd.daemon`` wires them; unit
tests pass fakes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import signal as signals
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from fleetd.agent_runtime import AgentRuntime
from fleetd.agent_storage import AgentStorage
from fleetd.background import Background
from fleetd.blocking import BlockingCalls
from fleetd.config import Config
from fleetd.decisions import (
    Adopt,
    MarkLost,
    RecordExit,
    RemoveOrphan,
    deadline_for,
    exit_reason,
    kill_time,
    plan_reconcile,
)
from fleetd.disks import Disks
from fleetd.errors import Conflict, FleetdError, InvalidRequest, NotFound
from fleetd.health import RestartPolicy, backoff_index, restart_delay, should_restart
from fleetd.janitor import Janitor
from fleetd.liveness import Liveness
from fleetd.models import LIVE_STATES, AgentSpec, Reason, State, iso, parse_iso, utcnow
from fleetd.peaks import PERIOD as PEAKS_PERIOD
from fleetd.peaks import PeakRecorder
from fleetd.pidfds import PidHandles
from fleetd.runtime import CHECKPOINT_DIR, LABEL_AGENT, LABEL_KIND
from fleetd.spare_netns import SpareNamespaces
from fleetd.spec import build_spec, grace_seconds, ttl_seconds
from fleetd.store import Store
from fleetd.timers import Timers
from fleetd.units import format_bytes, parse_whole_seconds
from fleetd.zone2_port import Zone2Port

log = logging.getLogger(__name__)
T = TypeVar("T")
INFRASTRUCTURE = ("zone2", "netns")  # containers of the instance that are not agents


class Supervisor:
    """Carries out every verb of the API against Docker and the store."""

    def __init__(self, config: Config, store: Store, runtime: AgentRuntime, timers: Timers, calls: BlockingCalls,
                 zone2: Zone2Port, liveness: Liveness, disks: Disks | None = None) -> None:
        self.config = config
        self.store = store
        self.runtime = runtime
        self.timers = timers
        self.calls = calls
        self.zone2 = zone2
        self.liveness = liveness
        self.storage = AgentStorage(runtime, disks or Disks(config.state_dir / "disks"))
        self.janitor = Janitor(config, store, runtime, self.storage, self.call)
        self.peaks = PeakRecorder(store, runtime, self.call)
        self.started = time.monotonic()
        self.host_cpus = 1
        self.docker_version = "?"
        self.docker_connected = False
        self._oom_seen: set[str] = set()
        self._exited: dict[str, asyncio.Event] = {}  # live agents someone waits to see end
        self.background = Background()  # kept until they end; their failures logged
        self._spawning: set[str] = set()  # agents whose spawn is in flight
        self.pidfds = PidHandles()
        self.draining = store.meta("draining") == "1"
        self._streak: dict[str, int] = {}  # restarts in a row, for the backoff (reset after 10 min of running)
        self.spares = SpareNamespaces(runtime, self.call, self._zone2_ip, config.spare_namespaces)
        # Told of each agent that has ended, with its final record (the fleet gives back the task it held).
        self.on_finished: list[Callable[[dict[str, Any]], None]] = []

    async def call(self, func: Callable[..., T], *args: Any) -> T:
        """Run a blocking engine call off the event loop."""
        return await self.calls.call(func, *args)

    # -- startup ------------------------------------------------------------
    async def start(self) -> None:
        """Learn the engine, re-adopt what runs, arm every timer."""
        info = await self.call(self.runtime.info)
        self.host_cpus = int(info.get("NCPU") or 1)
        self.docker_version = str(info.get("ServerVersion") or "?")
        self.docker_connected = True
        await self.call(self.runtime.ensure_network)
        self.liveness.start(self.condemn, self.zone2.answering)
        await self.resync(startup=True)
        self.timers.every("janitor", self.janitor.period, self.janitor.run)
        self.timers.every("peaks", PEAKS_PERIOD, self.peaks.run)

    async def resync(self, startup: bool = False) -> None:
        """Make the store match Docker: adopt, record exits, mark lost, remove orphans."""
        containers = [
            {"id": c["Id"], "agent_id": (c.get("Labels") or {}).get(LABEL_AGENT), "running": c["State"] == "running"}
            for c in await self.call(self.runtime.containers)
            # Only containers labelled as an agent's: one that merely carries the instance's label (a
            # user's, a test's upstream simulator) is not fleetd's to adopt or remove.
            if LABEL_AGENT in (c.get("Labels") or {}) and (c.get("Labels") or {}).get(LABEL_KIND) not in INFRASTRUCTURE
        ]
        # A spawn in flight (a resync after the engine came back) is its own to finish or fail.
        agents = [a for a in self.store.agents() if a["id"] not in self._spawning]
        for action in plan_reconcile(agents, containers):
            match action:
                case Adopt(agent_id, container_id):
                    await self._adopt(agent_id, container_id, startup)
                case RecordExit(agent_id, container_id):
                    await self._record_exit(agent_id, container_id)
                case MarkLost(agent_id):
                    agent = self.store.get(agent_id)
                    if agent is not None and agent["state"] == State.CREATED:
                        # the daemon stopped during the spawn, before the container was made
                        self._never_started(agent_id, None, "its container was never made (the daemon stopped "
                                            "during the spawn?)")
                        await self.call(self.storage.discard, agent_id)
                        continue
                    self.store.transition(agent_id, State.EXITED, Reason.LOST, finished_at=iso(utcnow()))
                    self._finished(agent_id)
                case RemoveOrphan(container_id, label):
                    self.store.add_event(
                        "orphan_removed",
                        f"container {container_id[:12]} carries this instance's label but no agent "
                        f"record (agent id {label!r}): removed",
                        None,
                        {"container_id": container_id, "agent_label": label},
                    )
                    await self.call(self.runtime.remove, container_id)
        # Namespace holders and disks of agents that will not run again (ended while the daemon was down).
        holders = await self.call(self.runtime.containers, "netns")
        spares = self.spares.held()  # after the listing: a spare begun meanwhile is in it
        for holder in holders:
            owner = (holder.get("Labels") or {}).get(LABEL_AGENT) or ""
            agent = self.store.get(owner)
            if owner not in spares and (agent is None or agent["state"] not in LIVE_STATES):
                await self.call(self.runtime.remove, holder["Id"])
        have_container = {c["agent_id"] for c in containers}
        for agent_id in await self.call(self.storage.agents):
            agent = self.store.get(agent_id)
            if agent_id not in have_container and (agent is None or agent["state"] == State.REMOVED):
                await self.call(self.storage.remove, agent_id)

    async def _adopt(self, agent_id: str, container_id: str, startup: bool) -> None:
        agent = self.store.get(agent_id)
        assert agent is not None
        if agent["state"] in (State.CREATED, State.RESTARTING):
            agent = self.store.transition(
                agent_id, State.RUNNING, None, container_id=container_id, started_at=iso(utcnow()), restart_at=None
            )
        if startup:
            self.store.add_event("adopted", f"re-adopted running container {container_id[:12]}", agent_id)
        await self._after_start(agent_id, container_id)
        if agent["state"] == State.RUNNING:
            self._arm_deadline(agent)
        elif agent["state"] == State.STOPPING:
            kill_at = parse_iso(agent["kill_at"]) or utcnow()
            if kill_at > utcnow():
                # The SIGTERM may not have gone out before the daemon died: send it again.
                await self._signal(container_id, "SIGTERM")
            self.timers.at(f"kill:{agent_id}", kill_at, self.force_kill, agent_id)

    # -- spawn --------------------------------------------------------------
    async def spawn(self, request: Any) -> dict[str, Any]:
        """Validate, record, create and start an agent; arm its deadline."""
        if self.draining:
            raise Conflict("the daemon is draining: no new agents until `fleetd undrain`")
        return await self.launch(build_spec(request, self.config, self.host_cpus,
                                            frozenset(r["name"] for r in self.store.roles())))

    async def check_image(self, image: str) -> None:
        """400 unless the engine has ``image`` (fleetd pulls nothing: images are built or loaded beforehand)."""
        await self.call(self.runtime.check_image, image)

    async def launch(self, spec: AgentSpec) -> dict[str, Any]:
        """Record, create and start an agent of a validated spec (``spawn``'s, or a deployment's version)."""
        if self.draining:
            raise Conflict("the daemon is draining: no new agents until `fleetd undrain`")
        await self.check_image(spec.image)
        env: dict[str, str] = {
            "FLEETD_HEARTBEAT_INTERVAL": f"{spec.heartbeat_interval:g}",
            "FLEETD_GRACE_SECONDS": str(spec.grace),
            "FLEETD_CHECKPOINT_DIR": CHECKPOINT_DIR,
        }
        env.update(self.zone2.agent_env(spec))  # refuses an --egress wider than the role's: before anything is made
        await self.zone2.ready()  # zone 2 runs before any agent does
        owner = self.store.name_owner(spec.name) if spec.name else None
        if owner is not None:
            held_by, state = owner
            free = f"fleetd rm {held_by}" if state not in LIVE_STATES else f"fleetd rm -f {held_by}"
            raise Conflict(f"name {spec.name!r} is already in use by agent {held_by} ({state}): "
                           f"run `{free}` to free it")
        # A spare holder's id, its namespace ready (fleetd.spare_netns); else a new id, its holder made below.
        agent_id = self.spares.take() or secrets.token_hex(6)
        name = spec.name or agent_id
        now = utcnow()
        self.store.insert_agent(
            agent_id,
            name=name,
            image=spec.image,
            role=spec.role,
            state=State.CREATED.value,
            created_at=iso(now),
            deadline=iso(deadline_for(now, spec.ttl)),
            spec=_dumps(spec.to_json()),
        )
        self._spawning.add(agent_id)
        try:
            # The holder's start (most of a spawn's time) and the rest (disks, volumes, the agent's container,
            # made in the holder's namespace to be) do not wait for each other; the agent starts after both.
            holder = await self.call(self.runtime.create_netns, agent_id, self._zone2_ip())
            made = await asyncio.gather(self.call(self.runtime.start_netns, holder) if holder else asyncio.sleep(0),
                                        self.call(self.storage.create_container, agent_id, spec, env),
                                        return_exceptions=True)
            for failed in made:
                if isinstance(failed, BaseException):
                    raise failed
            container_id = made[1]
            assert isinstance(container_id, str)
            await self.call(self.runtime.start_agent, container_id)
        except InvalidRequest:
            await self.call(self.storage.discard, agent_id)
            # Bad input (unknown image, bad reference): leave no trace.
            self.store.discard_agent(agent_id)
            raise
        except Exception as exc:
            # However the start failed (an engine error, a timeout, a bug), the record says so: never `created`
            # for ever. What the engine may have made anyway is the reconcile's to remove (an orphan).
            message = exc.message if isinstance(exc, FleetdError) else f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                await self.call(self.storage.discard, agent_id)
            self.store.transition(agent_id, State.FAILED, Reason.START_FAILED, finished_at=iso(utcnow()))
            self.store.add_event("start_failed", message, agent_id)
            self._finished(agent_id)
            raise
        finally:
            self._spawning.discard(agent_id)
            self.spares.fill()  # the next spawn's holder, made after this one's
        agent = self.store.get(agent_id)
        assert agent is not None
        if agent["state"] == State.CREATED:
            agent = self.store.transition(
                agent_id, State.RUNNING, None, container_id=container_id, started_at=iso(utcnow())
            )
            self._arm_deadline(agent)
            self.background.start(self._after_start(agent_id, container_id), f"after the start of agent {agent_id}")
        else:  # it already exited: the die event beat us here
            agent = self.store.update(agent_id, container_id=container_id)
        return agent

    def _zone2_ip(self) -> str | None:
        """The address an agent's /etc/hosts gives zone2 (fixed on the agents' network: see runtime)."""
        return self.zone2.ip

    def _arm_deadline(self, agent: dict[str, Any]) -> None:
        deadline = parse_iso(agent["deadline"])
        assert deadline is not None
        self.timers.at(f"deadline:{agent['id']}", deadline, self.expire, agent["id"])

    async def _signal(self, container_id: str, name: str) -> bool:
        """Signal a container's init: through its pidfd at once, else through Docker's API."""
        return (await self._signal_via(container_id, name))[0]

    async def _signal_via(self, container_id: str, name: str) -> tuple[bool, str]:
        """Whether the signal was sent (False: the container is gone), and which way: "pidfd" or "docker"."""
        sent = self.pidfds.send(container_id, name)
        if sent is not None:
            return sent, "pidfd"
        return await self.call(self.runtime.signal, container_id, name), "docker"

    async def _after_start(self, agent_id: str, container_id: str) -> None:
        """One inspect of a started container: keep a pidfd of its init, tell zone 2 its address."""
        data = await self.call(self.runtime.inspect, container_id)
        state = (data or {}).get("State") or {}
        if not state.get("Running"):
            return
        self.pidfds.attach(container_id, int(state.get("Pid") or 0))
        ip = await self.call(self.runtime.address_of, data)
        if ip:
            await self.zone2.register(agent_id, ip)
        agent = self.store.get(agent_id)
        if agent is not None and agent["state"] == State.RUNNING:
            self.liveness.watch(agent, _spec(agent), container_id, ip)

    # -- ending an agent ----------------------------------------------------
    async def expire(self, agent_id: str) -> None:
        """The deadline timer: SIGTERM now, SIGKILL after the grace period."""
        agent = self.store.get(agent_id)
        if agent and agent["state"] == State.RUNNING:
            await self._terminate(agent, Reason.TTL_EXPIRED, _spec(agent).grace)
        elif agent and agent["state"] == State.RESTARTING:
            self._end_restarting(agent, Reason.TTL_EXPIRED)

    async def condemn(self, agent_id: str, reason: Reason, message: str) -> None:
        """The watchdog or a probe gave up on a running agent: SIGTERM, grace, SIGKILL (then its restart policy)."""
        agent = self.store.get(agent_id)
        if agent and agent["state"] == State.RUNNING:
            self.store.add_event(str(reason), message, agent_id)
            await self._terminate(agent, reason, _spec(agent).grace)

    def _end_restarting(self, agent: dict[str, Any], reason: Reason) -> None:
        """An agent waiting for its restart is stopped for good instead."""
        self.timers.cancel(f"restart:{agent['id']}")
        self.store.transition(agent["id"], State.EXITED, reason, finished_at=iso(utcnow()), restart_at=None)
        self._finished(agent["id"])

    async def _terminate(self, agent: dict[str, Any], reason: Reason, grace: int) -> dict[str, Any]:
        now = utcnow()
        kill_at = kill_time(now, grace)
        self.timers.cancel(f"deadline:{agent['id']}")
        agent = self.store.transition(agent["id"], State.STOPPING, reason, kill_at=iso(kill_at))
        signal = "SIGKILL" if grace == 0 else "SIGTERM"
        sent, via = await self._signal_via(agent["container_id"], signal)
        self.store.add_event(
            "signal", f"{signal} sent ({reason})", agent["id"],
            {"signal": signal, "sent": sent, "grace": grace, "via": via},
        )
        if not sent:
            await self._record_exit(agent["id"], agent["container_id"])
        elif grace > 0:
            self.timers.at(f"kill:{agent['id']}", kill_at, self.force_kill, agent["id"])
        return agent

    async def force_kill(self, agent_id: str) -> None:
        """The grace period ended and the agent still runs: SIGKILL."""
        agent = self.store.get(agent_id)
        if agent and agent["state"] == State.STOPPING:
            sent = await self._signal(agent["container_id"], "SIGKILL")
            if sent:
                self.store.add_event("signal", "SIGKILL sent: grace period over", agent_id, {"signal": "SIGKILL"})
            else:
                await self._record_exit(agent_id, agent["container_id"])

    async def stop(self, ref: str, grace: Any = None, wait: bool = True) -> dict[str, Any]:
        """SIGTERM, wait the grace period, SIGKILL; like ``docker stop`` a stopped agent is left alone."""
        agent = self.store.resolve(ref)
        spec = _spec(agent)
        grace = spec.grace if grace is None else grace_seconds(grace, self.config)
        if agent["state"] in (State.RUNNING, State.CREATED) and agent["container_id"]:
            agent = await self._terminate(agent, Reason.STOPPED, grace)
        elif agent["state"] == State.RESTARTING:
            self._end_restarting(agent, Reason.STOPPED)
        if wait and agent["state"] in LIVE_STATES:
            kill_at = parse_iso(agent["kill_at"]) or utcnow()
            timeout = max(0.0, (kill_at - utcnow()).total_seconds()) + 30
            await self._wait_exit(agent["id"], timeout)
        return self._get(agent["id"])

    async def kill(self, ref: str, signal: Any = "SIGKILL") -> dict[str, Any]:
        """Send a signal (SIGKILL by default, which ends the agent with reason ``killed``)."""
        agent = self.store.resolve(ref)
        if agent["state"] not in (State.RUNNING, State.STOPPING) or not agent["container_id"]:
            raise Conflict(f"agent {agent['id']} is not running ({agent['state']})")
        signal = _signal_name(signal)
        if signal != "SIGKILL":
            await self._signal(agent["container_id"], signal)
            self.store.add_event("signal", f"{signal} sent (kill)", agent["id"], {"signal": signal})
            return self._get(agent["id"])
        self.timers.cancel(f"deadline:{agent['id']}")
        self.timers.cancel(f"kill:{agent['id']}")
        if agent["state"] == State.RUNNING:
            self.store.transition(agent["id"], State.STOPPING, Reason.KILLED, kill_at=iso(utcnow()))
        await self._signal(agent["container_id"], "SIGKILL")
        self.store.add_event("signal", "SIGKILL sent (kill)", agent["id"], {"signal": "SIGKILL"})
        await self._wait_exit(agent["id"], 30)
        return self._get(agent["id"])

    async def extend(self, ref: str, ttl: Any) -> dict[str, Any]:
        """Set the deadline to now + ``ttl`` seconds (E2B's set_timeout)."""
        seconds = ttl_seconds(ttl, self.config)  # bad input is a 400 whichever agent it names
        agent = self.store.resolve(ref)
        if agent["state"] != State.RUNNING:
            raise Conflict(f"agent {agent['id']} is {agent['state']}: only a running agent can be extended")
        deadline = deadline_for(utcnow(), seconds)
        agent = self.store.update(agent["id"], deadline=iso(deadline))
        self.store.add_event("extended", f"deadline set to {iso(deadline)}", agent["id"], {"ttl": seconds})
        self._arm_deadline(agent)
        return agent

    async def remove(self, ref: str, force: bool = False) -> dict[str, Any]:
        """``fleetd rm``: remove an ended agent's container, volumes and disks; its record stays, ``removed``.

        A live agent is refused (409) unless ``force``: then it is killed first (SIGKILL, like ``docker rm -f``).
        """
        agent = self.store.resolve(ref)
        agent_id = agent["id"]
        if agent["state"] in LIVE_STATES:
            if not force:
                raise Conflict(f"agent {agent_id} is {agent['state']}: stop it first (`fleetd stop {agent_id}`) "
                               f"or remove it by force (`fleetd rm -f {agent_id}`)")
            if agent_id in self._spawning:
                raise Conflict(f"agent {agent_id} is being spawned: try again in a moment")
            if agent["state"] == State.RESTARTING:
                self._end_restarting(agent, Reason.KILLED)
            elif agent["state"] in (State.RUNNING, State.STOPPING) and agent["container_id"]:
                await self.kill(agent_id)
            agent = self._get(agent_id)
            if agent["state"] in LIVE_STATES:  # the kill was not seen to end it (or it never had a container)
                self.timers.cancel(f"kill:{agent_id}")
                self.store.transition(agent_id, State.EXITED, Reason.KILLED, finished_at=iso(utcnow()))
                self._finished(agent_id)
        if agent["container_id"]:
            await self.call(self.runtime.remove, agent["container_id"])
        await self.call(self.storage.remove, agent_id)
        agent = self._get(agent_id)  # the destroy event may have recorded it meanwhile
        if agent["state"] != State.REMOVED:
            agent = self.store.transition(agent_id, State.REMOVED, agent["reason"], exit_code=agent["exit_code"])
        return agent

    async def wait(self, ref: str) -> dict[str, Any]:
        """``fleetd wait``: return the agent's record once it has ended (exited, failed or removed)."""
        agent = self.store.resolve(ref)
        while agent["state"] in LIVE_STATES:
            # The event is set when it ends; looking again now and then also covers a restart of the daemon's view.
            await self._wait_exit(agent["id"], 5.0)
            agent = self._get(agent["id"])
        return agent

    async def _wait_exit(self, agent_id: str, timeout: float) -> None:
        """Until the agent has ended (at once if it has), at most ``timeout`` seconds."""
        agent = self.store.get(agent_id)
        if agent is None or agent["state"] not in LIVE_STATES:
            return
        ended = self._exited.setdefault(agent_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), timeout)

    def _finished(self, agent_id: str) -> None:
        agent = self.store.get(agent_id)
        self.pidfds.detach(agent["container_id"] if agent else None)
        self.timers.cancel(f"deadline:{agent_id}")
        self.timers.cancel(f"kill:{agent_id}")
        self.timers.cancel(f"restart:{agent_id}")
        self._oom_seen.discard(agent_id)
        self._streak.pop(agent_id, None)
        self.liveness.forget(agent_id)
        ended = self._exited.pop(agent_id, None)  # kept for live agents only
        if ended is not None:
            ended.set()
        if agent is not None:
            for listener in self.on_finished:
                try:
                    listener(agent)
                except Exception:
                    log.exception("after the end of agent %s", agent_id)
        # its logs stay, its namespace goes
        self.background.start(self.call(self.runtime.remove_netns, agent_id), f"removing agent {agent_id}'s namespace")
        self.background.start(self.zone2.unregister(agent_id), f"unregistering agent {agent_id} from zone 2")

    # -- Docker events ------------------------------------------------------
    def on_docker_event(self, event: dict[str, Any]) -> None:
        """Called on the loop for each container event of this instance."""
        attrs = (event.get("Actor") or {}).get("Attributes") or {}
        agent_id = attrs.get(LABEL_AGENT)
        action = event.get("Action") or event.get("status") or ""
        if attrs.get(LABEL_KIND) == "zone2" and action == "die":
            self.zone2.on_exit()
            return
        if not agent_id or attrs.get(LABEL_KIND) == "netns":  # a holder's events are not its agent's
            return
        container_id = (event.get("Actor") or {}).get("ID") or event.get("id")
        if action == "oom":
            self._oom_seen.add(agent_id)
            self.store.add_event("oom", "the kernel's OOM killer killed a process", agent_id)
        elif action == "die":
            self.background.start(self._record_exit(agent_id, container_id), f"recording agent {agent_id}'s exit")
        elif action == "destroy":
            agent = self.store.get(agent_id)
            if agent and agent["state"] in (State.EXITED, State.FAILED):
                self.store.transition(agent_id, State.REMOVED, agent["reason"], exit_code=agent["exit_code"])
            if agent and agent["state"] not in LIVE_STATES:
                # gone with the agent
                self.background.start(self.call(self.storage.remove, agent_id), f"removing agent {agent_id}'s disks")

    def on_docker_disconnect(self, reason: str) -> None:
        self.docker_connected = False
        self.store.add_event("docker_disconnected", f"lost the Docker engine: {reason}")

    def on_docker_reconnect(self) -> None:
        self.docker_connected = True
        self.store.add_event("docker_reconnected", "the Docker engine is back: resyncing")
        self.runtime.forget_network()
        self.background.start(self._resync_logged(), "resync after the engine came back")

    async def _resync_logged(self) -> None:
        try:
            await self.call(self.runtime.ensure_network)
            await self.resync()
        except FleetdError as exc:
            log.warning("resync after reconnect failed: %s", exc.message)

    async def _record_exit(self, agent_id: str, container_id: str | None) -> None:
        """Record how an agent's container ended (idempotent)."""
        agent = self.store.get(agent_id)
        if agent is None or agent["state"] not in LIVE_STATES:
            return
        if agent["state"] == State.RESTARTING:
            self._arm_restart(agent)  # e.g. after the daemon itself restarted
            return
        data = await self.call(self.runtime.inspect, container_id) if container_id else None
        state = (data or {}).get("State") or {}
        if state.get("Running"):
            return  # a stale event: it runs again
        await self.peaks.sample_exit(agent_id)  # its last figures, if its cgroup is still there
        agent = self.store.get(agent_id)  # may have changed while we waited
        if agent is None or agent["state"] not in LIVE_STATES or agent["state"] == State.RESTARTING:
            return  # another call recorded this exit meanwhile (the SIGKILL path and the die event race)
        if data is not None and state.get("Status") == "created":
            self._never_started(agent_id, container_id or agent["container_id"],
                                "its container was made but never started (the daemon stopped during the spawn?)")
            return
        exit_code = state.get("ExitCode") if data else None
        oom = bool(state.get("OOMKilled"))
        reason = exit_reason(agent["state"], agent["reason"], exit_code, oom, agent_id in self._oom_seen)
        if data is None:
            reason = agent["reason"] if agent["state"] == State.STOPPING and agent["reason"] else Reason.LOST
        if reason == Reason.OOM_KILLED:
            limit = format_bytes(_spec(agent).memory)
            self.store.add_event("oom_killed", f"killed by the kernel at its memory limit ({limit})", agent_id,
                                 {"memory_limit": _spec(agent).memory})
        if data is not None and self._schedule_restart(agent, reason, exit_code):
            return
        self.store.transition(
            agent_id,
            State.EXITED,
            reason,
            exit_code=exit_code,
            oom_killed=int(oom),
            finished_at=iso(utcnow()),
            container_id=container_id or agent["container_id"],
        )
        self._finished(agent_id)

    def _never_started(self, agent_id: str, container_id: str | None, why: str) -> None:
        """An agent whose container never ran: failed (start_failed), never "exited 0"."""
        self.store.transition(agent_id, State.FAILED, Reason.START_FAILED, finished_at=iso(utcnow()),
                              container_id=container_id)
        self.store.add_event("start_failed", why, agent_id)
        self._finished(agent_id)

    # -- restarts -----------------------------------------------------------
    def _schedule_restart(self, agent: dict[str, Any], reason: str, exit_code: int | None) -> bool:
        """Apply the agent's restart policy to an exit: schedule a restart (same container) or not."""
        spec = _spec(agent)
        policy = RestartPolicy.parse(spec.restart)
        started = parse_iso(agent["started_at"]) or utcnow()
        ran = (utcnow() - started).total_seconds()
        index = backoff_index(self._streak.get(agent["id"], 0), ran)
        delay = restart_delay(index)
        deadline = parse_iso(agent["deadline"])
        deadline_passed = deadline is not None and deadline <= utcnow() + timedelta(seconds=delay)
        if self.draining or not should_restart(policy, reason, exit_code, agent["restarts"], deadline_passed):
            return False
        self._streak[agent["id"]] = index + 1
        restart_at = utcnow() + timedelta(seconds=delay)
        self.pidfds.detach(agent["container_id"])
        self.liveness.forget(agent["id"])
        agent = self.store.transition(agent["id"], State.RESTARTING, reason, exit_code=exit_code,
                                      restart_at=iso(restart_at), kill_at=None)
        limit = f" of {policy.max_restarts}" if policy.max_restarts is not None else ""
        self.store.add_event("restart_scheduled", f"{reason} (exit code {exit_code}): restart {agent['restarts'] + 1}"
                             f"{limit} in {delay:g} s ({policy})", agent["id"],
                             {"delay": delay, "reason": reason, "exit_code": exit_code})
        self._arm_restart(agent)
        return True

    def _arm_restart(self, agent: dict[str, Any]) -> None:
        at = parse_iso(agent["restart_at"]) or utcnow()
        self.timers.at(f"restart:{agent['id']}", at, self.restart, agent["id"])

    async def restart(self, agent_id: str) -> None:
        """Start the same container again: identity, role, budget, checkpoint and deadline are kept."""
        agent = self.store.get(agent_id)
        if agent is None or agent["state"] != State.RESTARTING:
            return
        if self.draining:
            self._end_restarting(agent, Reason.DRAINED)
            return
        try:
            await self.call(self.storage.attach, agent_id)
            await self.call(self.runtime.ensure_netns_of, agent["container_id"], self._zone2_ip())
            await self.call(self.runtime.start, agent["container_id"])
        except FleetdError as exc:
            self.store.add_event("restart_failed", exc.message, agent_id)
            self._end_restarting(agent, Reason.named(agent["reason"], Reason.EXITED))
            return
        # A new run: its cgroup counts CPU time from 0 again (fleetd.peaks); the peaks are the agent's, kept.
        agent = self.store.transition(agent_id, State.RUNNING, None, started_at=iso(utcnow()), restart_at=None,
                                      restarts=agent["restarts"] + 1, exit_code=None, ready=0, cpu_ns=None)
        self.store.add_event("restarted", f"restart {agent['restarts']}", agent_id, {"restarts": agent["restarts"]})
        self._arm_deadline(agent)
        await self._after_start(agent_id, agent["container_id"])

    # -- housekeeping -------------------------------------------------------
    async def teardown(self) -> tuple[dict[str, int], list[dict[str, str]]]:
        """Remove every Docker object of this instance; every agent ends ``removed``.

        Returns the counts removed and what could not be removed; an agent whose container is among those
        keeps its record as it is (not ``removed``: its container is still there).
        """
        for agent in self.store.agents(LIVE_STATES):
            self.timers.cancel(f"deadline:{agent['id']}")
            self.timers.cancel(f"kill:{agent['id']}")
            if agent["state"] != State.STOPPING:
                # Their containers die next: the exits must say why.
                self.store.transition(agent["id"], State.STOPPING, Reason.TEARDOWN, kill_at=iso(utcnow()))
        rules = await self.zone2.teardown()
        await self.spares.clear()  # made again by the next spawn
        removed, failed = await self.call(self.runtime.teardown)
        removed["disks"] = await self.call(self.storage.remove_all)
        removed["firewall_rules"] = rules
        left = {f["id"] for f in failed if f["kind"] == "container"}
        for agent in self.store.agents(tuple(s for s in State if s != State.REMOVED)):
            if agent["container_id"] in left:
                continue
            self.store.transition(
                agent["id"], State.REMOVED, agent["reason"], finished_at=agent["finished_at"] or iso(utcnow())
            )
            self._finished(agent["id"])
        self.store.add_event("teardown", f"removed {removed}" + (f"; could not remove {len(failed)}" if failed else ""),
                             None, {**removed, "failed": failed})
        return removed, failed

    def drain_seconds(self) -> float:
        """How long a drain may take: the longest grace period of a live agent, plus slack."""
        graces = [_spec(a).grace for a in self.store.agents(LIVE_STATES)]
        return max(graces, default=0) + 30

    async def drain_fleet(self, timeout: Any = None) -> dict[str, Any]:
        """`fleetd drain`: accept no spawns, let agents finish for ``timeout`` seconds, then stop the rest."""
        seconds = parse_whole_seconds(3600 if timeout is None else timeout, "--timeout", 0, 7 * 86400)
        if not self.draining:
            self.draining = True
            self.store.set_meta("draining", "1")
            self.store.add_event("draining", f"draining: no new agents; the rest get {seconds} s to finish")
        deadline = time.monotonic() + seconds
        live = self.store.agents(LIVE_STATES)
        await asyncio.gather(*(self._wait_exit(a["id"], max(0.0, deadline - time.monotonic())) for a in live))
        left = self.store.agents(LIVE_STATES)
        for agent in left:
            if agent["state"] == State.RESTARTING:
                self._end_restarting(agent, Reason.DRAINED)
        await self.drain()
        finished = len(live) - len(left)
        self.store.add_event("drained", f"drained: {finished} finished on their own, {len(left)} stopped")
        return {"draining": True, "finished": finished, "stopped": len(left)}

    def undrain(self) -> dict[str, Any]:
        if self.draining:
            self.draining = False
            self.store.set_meta("draining", "0")
            self.store.add_event("undrained", "accepting new agents again")
        return {"draining": False}

    async def drain(self) -> None:
        """Stop every live agent (SIGTERM, grace, SIGKILL) and wait for them."""
        agents = self.store.agents((State.RUNNING, State.CREATED))
        await asyncio.gather(
            *(self._terminate(a, Reason.DRAINED, _spec(a).grace) for a in agents if a["container_id"])
        )
        waits = [self._wait_exit(a["id"], _spec(a).grace + 30) for a in self.store.agents(LIVE_STATES)]
        await asyncio.gather(*waits)

    # -- reading ------------------------------------------------------------
    def _get(self, agent_id: str) -> dict[str, Any]:
        agent = self.store.get(agent_id)
        if agent is None:
            raise NotFound(f"no such agent: {agent_id}")
        return agent

    async def stats(self) -> list[dict[str, Any]]:
        """Memory and CPU use of every running agent, read from its cgroup."""
        out = []
        for agent in self.store.agents((State.RUNNING, State.STOPPING)):
            used = await self.call(self.runtime.usage, agent["container_id"]) if agent["container_id"] else None
            if used is not None:
                out.append({"id": agent["id"], "memory_bytes": used["memory_bytes"],
                            "memory_limit_bytes": used["memory_limit_bytes"], "cpu_seconds": used["cpu_ns"] / 1e9})
        return out

    def list_agents(self, all_: bool, filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        """Live agents' records (every one with ``all_``), narrowed by ``filters`` (``fleetd.filters``) in SQL."""
        if filters:
            return self.store.filtered_agents(filters, all_)
        return self.store.agents(None if all_ else LIVE_STATES)

    def engine(self) -> dict[str, Any]:
        """What `fleetd status` shows of the container engine."""
        return {"connected": self.docker_connected, "version": self.docker_version, "cpus": self.host_cpus}

    def close(self) -> None:
        self.pidfds.close()


def _spec(agent: dict[str, Any]) -> AgentSpec:
    return AgentSpec.from_json(json.loads(agent["spec"]))


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True)


def _signal_name(signal: Any) -> str:
    text = str(signal).upper()
    if text.isdigit():
        try:
            return signals.Signals(int(text)).name
        except ValueError:
            raise InvalidRequest(f"invalid signal {signal!r}") from None
    name = text if text.startswith("SIG") else f"SIG{text}"
    if name not in signals.Signals.__members__:
        raise InvalidRequest(f"invalid signal {signal!r}")
    return name
