"""The daemon's lifecycle: serve -> startup -> main_loop -> shutdown.

Signals only set a flag. SIGTERM (what ``systemctl stop`` sends) leaves the
agents running, like Docker's live-restore, unless ``drain_on_exit`` is set;
their deadlines are on disk and are enforced by the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import grp
import logging
import os
import signal
import socket
import struct
import time
from pathlib import Path
from typing import IO

from aiohttp import web
from aiohttp.web_log import AccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from fleetd import __version__, loops
from fleetd.admin import Admin
from fleetd.api import init_app
from fleetd.blocking import BlockingCalls
from fleetd.config import Config
from fleetd.deployments import Deployments
from fleetd.docker_events import DockerEventWatcher
from fleetd.errors import DaemonAlreadyRunning, FleetdError, RuntimeUnavailable
from fleetd.event_bus import EventBus
from fleetd.fleet import Fleet
from fleetd.gateway import Zone2, zone2_ledger
from fleetd.liveness import Liveness, engine_exec
from fleetd.log_streams import LogStreams
from fleetd.open_files import raise_open_files
from fleetd.runtime import POOL_SIZE, DockerRuntime
from fleetd.sdnotify import notify, watchdog_period
from fleetd.services import Services
from fleetd.store import Store
from fleetd.supervisor import Supervisor
from fleetd.task_costs import TaskCosts
from fleetd.task_queue import TaskQueue
from fleetd.timers import Timers
from fleetd.vault import Vault, load_master_key

log = logging.getLogger("fleetd")
DOCKER_WAIT = 30.0



class DebugAccessLogger(AccessLogger):
    """aiohttp's line per API request, at DEBUG: at INFO every `fleetd ps` would be a line in the journal."""

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        values = [value for _, value in self._format_line(request, response, time)]
        self.logger.debug(self._log_format % tuple(values))

class Daemon:
    """One fleetd instance: its lock, store, supervisor and socket."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.should_exit = asyncio.Event()
        self._lock: IO[str] | None = None
        self._runner: web.AppRunner | None = None
        self._watcher: DockerEventWatcher | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._socket_owned = False

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.should_exit.set)
        try:
            await self.startup()
            if not self.should_exit.is_set():
                await self.main_loop()
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        config = self.config
        raise_open_files()
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._lock = take_lock(config.state_dir / "fleetd.lock", config)
        check_socket_free(config.socket)
        self.store = Store(config.state_dir / "state.db")
        self.store.claim_instance(config.instance)
        self.runtime = await wait_for_docker(config.instance, config.zone2_image, self.should_exit)
        self.timers = Timers()
        self.timers.start()
        # The parts, each given what it needs when it is made (unit tests make them with fakes).
        self.calls = BlockingCalls(POOL_SIZE)
        events = EventBus()
        self.store.on_event = events.publish
        self.vault = Vault(self.store, load_master_key(config.state_dir))
        self.liveness = Liveness(self.store, engine_exec(self.runtime, self.calls))
        self.fleet = Fleet(self.store, Deployments(self.store, config), TaskQueue(self.store),
                           costs=TaskCosts(zone2_ledger(config.state_dir)))
        self.gateway = Zone2(config.state_dir, self.store, self.vault, self.runtime, self.calls.call, self.liveness,
                             config.zone2_image, config.policy, self.fleet)
        self.gateway.pools = self.fleet.pool_of  # a canary's agents share its spend cap in zone 2
        self.fleet.repool = self.gateway.push_all  # and a promoted one's agents leave it
        self.supervisor = s = Supervisor(config, self.store, self.runtime, self.timers, self.calls, self.gateway,
                                         self.liveness)
        self.logs = LogStreams(self.runtime, self.calls)
        self._watcher = DockerEventWatcher(
            self.runtime, asyncio.get_running_loop(), s.on_docker_event, s.on_docker_reconnect, s.on_docker_disconnect
        )
        # Watch before reconciling, so no exit falls between the two.
        self._watcher.start(since=int(time.time()))
        await self.supervisor.start()
        # Zone 2 serves before the socket accepts a single spawn.
        await self.gateway.start()
        self.supervisor.spares.fill()  # holders for the first spawns (fleetd.spare_netns)
        self.fleet.start(self.supervisor)  # after the re-adoption: what it finds dead gives its task back
        parts = Services(config, self.supervisor, self.store, self.liveness, self.gateway,
                         Admin(self.store, self.vault, self.gateway), events, self.logs, self.timers, self.fleet)
        self._runner = web.AppRunner(init_app(parts), handle_signals=False, shutdown_timeout=2.0,
                                     access_log_class=DebugAccessLogger)
        await self._runner.setup()
        config.socket.parent.mkdir(parents=True, exist_ok=True)
        umask = os.umask(0o117)  # the socket is born 0660, never wider
        try:
            await web.UnixSite(self._runner, str(config.socket)).start()
        finally:
            os.umask(umask)
        self._socket_owned = True
        secure_socket(config.socket)
        if config.metrics:
            from fleetd.listen import parse_listen
            from fleetd.metrics import serve_metrics

            self._metrics = await serve_metrics(parts, *parse_listen(config.metrics))
        period = watchdog_period()
        if period:
            self._tasks.append(asyncio.create_task(self._watchdog(period)))
        self.store.add_event("daemon_started", f"fleetd {__version__} started (pid {os.getpid()})")
        metrics = f", Prometheus metrics on http://{config.metrics}/metrics" if config.metrics else ""
        log.info("fleetd %s instance %s listening on %s%s", __version__, config.instance, config.socket, metrics)
        notify(f"READY=1\nSTATUS=serving on {config.socket}\nMAINPID={os.getpid()}")

    async def main_loop(self) -> None:
        await self.should_exit.wait()

    async def shutdown(self) -> None:
        notify("STOPPING=1")
        log.info("fleetd stopping")
        for task in self._tasks:
            task.cancel()
        if self.config.drain_on_exit and hasattr(self, "supervisor"):
            # Tell systemd the stop takes as long as the longest grace period (TimeoutStopSec).
            extra = self.supervisor.drain_seconds()
            notify(f"EXTEND_TIMEOUT_USEC={int(extra * 1_000_000)}\nSTATUS=draining agents")
            await self.supervisor.drain()
        if hasattr(self, "fleet"):
            await self.fleet.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if getattr(self, "_metrics", None) is not None:
            await self._metrics.cleanup()
        if hasattr(self, "gateway"):
            await self.gateway.stop()
        if hasattr(self, "supervisor"):
            await self.supervisor.spares.clear()
        if self._socket_owned and self.config.socket.is_socket():
            self.config.socket.unlink()
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.stop)
        if hasattr(self, "timers"):
            self.timers.shutdown()
        if hasattr(self, "supervisor"):
            await self.liveness.stop()
            self.store.add_event("daemon_stopped", "fleetd stopped; agents keep running")
            self.supervisor.close()
            self.logs.close()
            self.calls.close()
        if hasattr(self, "store"):
            self.store.close()
        if self._lock is not None:
            self._lock.close()

    async def _watchdog(self, period: float) -> None:
        """Ping systemd's watchdog while the event loop is alive."""
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(period)


def take_lock(path: Path, config: Config) -> IO[str]:
    """Hold an exclusive lock on the state dir; name the holder when another daemon has it."""
    handle = open(path, "a+")  # noqa: SIM115 - held open for the daemon's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise DaemonAlreadyRunning(
            f"another fleetd daemon ({holder}) already uses state dir {config.state_dir}"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}, instance {config.instance}, socket {config.socket}\n")
    handle.flush()
    return handle


def check_socket_free(path: Path) -> None:
    """Refuse a socket another daemon answers on; remove a stale one."""
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: stale, left by a daemon that was killed
        return
    else:
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        raise DaemonAlreadyRunning(f"another fleetd daemon (pid {pid}) is listening on {path}")
    finally:
        probe.close()


def secure_socket(path: Path) -> None:
    """Mode 0660; group ``fleetd`` when that group exists (like docker.sock and ``docker``)."""
    with contextlib.suppress(KeyError):
        os.chown(path, -1, grp.getgrnam("fleetd").gr_gid)
    os.chmod(path, 0o660)


async def wait_for_docker(instance: str, helper_image: str, give_up: asyncio.Event) -> DockerRuntime:
    """Connect to the engine, waiting a little for one that is still starting."""
    deadline = time.monotonic() + DOCKER_WAIT
    while True:
        try:
            runtime = DockerRuntime(instance, helper_image)
            await asyncio.to_thread(runtime.ping)
            return runtime
        except RuntimeUnavailable as exc:
            if time.monotonic() > deadline or give_up.is_set():
                raise
            log.warning("waiting for the Docker engine: %s", exc.message)
            notify("STATUS=waiting for the Docker engine")
            await asyncio.sleep(1)


def run(config: Config, log_level: str = "info") -> int:
    """Run the daemon until SIGTERM/SIGINT; return the process exit code."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(levelname)s %(name)s: %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else "%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    try:
        loops.run(Daemon(config).serve(), "the daemon")
    except FleetdError as exc:
        log.error("%s", exc.message)
        return 1
    return 0
