"""Is each running agent alive and ready? Heartbeats, the watchdog and probes, on the daemon's loop.

The decisions are pure (:mod:`fleetd.health`); this module feeds them the clock,
heartbeats relayed by zone 2 and probe results, and acts on what they decide by
asking the supervisor to condemn an agent (SIGTERM, grace, SIGKILL). One task
sleeps until the next thing is due (a heartbeat deadline, a probe), so 200 idle
agents cost next to nothing. While zone 2 is down the watchdog is paused: the
silence is zone 2's doing, not the agents'.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any

import aiohttp

from fleetd.agent_runtime import AgentRuntime
from fleetd.background import Background
from fleetd.blocking import BlockingCalls
from fleetd.health import ProbeSpec, ProbeTracker, Verdict, Watchdog, Which
from fleetd.models import AgentSpec, Reason, State, iso, utcnow
from fleetd.probes import MAX_OUTPUT, ProbeResult, probe
from fleetd.store import Store

log = logging.getLogger(__name__)
FLUSH_PERIOD = 2.0  # heartbeats reach state.db at most this often (they are kept in memory meanwhile)
IDLE_WAKE = 1.0
MIN_WAIT = 0.02
Condemn = Callable[[str, Reason, str], Coroutine[Any, Any, None]]
ExecProbe = Callable[[str, tuple[str, ...], float], Awaitable[int | tuple[int, bytes]]]
RelayOk = Callable[[], Awaitable[bool]]


def engine_exec(runtime: AgentRuntime, calls: BlockingCalls) -> ExecProbe:
    """Exec probes run in the agent's container through the engine (its output kept up to MAX_OUTPUT)."""

    async def exec_probe(container_id: str, command: tuple[str, ...], timeout: float) -> tuple[int, bytes]:
        return await calls.call(runtime.exec_output, container_id, list(command), timeout, MAX_OUTPUT)

    return exec_probe


class Liveness:
    def __init__(self, store: Store, exec_probe: ExecProbe, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.exec_probe = exec_probe
        self.clock = clock
        self.watchdog = Watchdog()
        self.trackers: dict[str, ProbeTracker] = {}
        self.addresses: dict[str, str] = {}
        self.containers: dict[str, str] = {}
        self.beats: dict[str, tuple[datetime, dict[str, Any] | None]] = {}  # last beat (wall clock) and progress
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._probes = Background()  # probe runs, judgements and the condemnations they lead to
        self._session: aiohttp.ClientSession | None = None
        self._last_flush = 0.0
        self._judging: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------
    def start(self, condemn: Condemn, relay_ok: RelayOk) -> None:
        """Watch, and hand the agents that fail to ``condemn``; before condemning anyone for silence, ask
        ``relay_ok`` whether zone 2 (which relays the heartbeats) answers at all."""
        self.condemn = condemn
        self.relay_ok = relay_ok
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._probes.cancel()
        self.flush()
        if self._session is not None:
            await self._session.close()

    # -- agents come and go ------------------------------------------------------
    def watch(self, agent: dict[str, Any], spec: AgentSpec, container_id: str, ip: str | None) -> None:
        """An agent (re)started: expect heartbeats after its startup window; begin probing."""
        agent_id = agent["id"]
        now = self.clock()
        if spec.heartbeat_interval:
            self.watchdog.add(agent_id, spec.heartbeat_interval, now)
        probes = {which: ProbeSpec.from_dict(d) for which, d in (
            ("startup", spec.startup_probe), ("readiness", spec.readiness_probe), ("liveness", spec.liveness_probe))
            if d}
        self.containers[agent_id] = container_id
        if ip:
            self.addresses[agent_id] = ip
        if probes:
            tracker = self.trackers[agent_id] = ProbeTracker(now, **probes)
            self.store.update(agent_id, ready=int(tracker.ready))  # only a readiness probe can say "not yet"
        else:
            self.trackers.pop(agent_id, None)
            self.store.update(agent_id, ready=1)  # no readiness probe: ready once running, as in Kubernetes
        self._wake.set()

    def forget(self, agent_id: str) -> None:
        self.watchdog.remove(agent_id)
        self.trackers.pop(agent_id, None)
        self.addresses.pop(agent_id, None)
        self.containers.pop(agent_id, None)
        if agent_id in self._dirty:
            self._flush_one(agent_id)

    def beat(self, agent_id: str, progress: dict[str, Any] | None) -> bool:
        """A heartbeat relayed by zone 2. False for an agent that is not being watched.

        An agent that beats at once can beat before its watch begins (the supervisor watches it after one inspect
        of its started container, which a loaded engine makes slow): a running agent's beat is taken then too, or
        the agent would be told it is not watched (fleetd_agent.progress() returning False) for being quick."""
        known = self.watchdog.beat(agent_id, self.clock(), progress)
        if known or agent_id in self.containers or self._starting(agent_id):
            watch = self.watchdog.get(agent_id)
            self.beats[agent_id] = (utcnow(), watch.progress if watch else progress)
            self._dirty.add(agent_id)  # no wake-up: a heartbeat only moves a deadline later
            return True
        return False

    def _starting(self, agent_id: str) -> bool:
        agent = self.store.get(agent_id)
        return agent is not None and agent["state"] == State.RUNNING

    def pause(self, why: str) -> None:
        if not self.watchdog.paused:
            self.watchdog.pause(self.clock())
            self.store.add_event("watchdog_paused", f"heartbeat watchdog paused: {why}")

    def resume(self) -> None:
        if self.watchdog.paused:
            self.watchdog.resume(self.clock())
            self.store.add_event("watchdog_resumed", "heartbeat watchdog resumed: every agent gets 2 x its "
                                                     "interval from now")
            self._wake.set()

    # -- reading -----------------------------------------------------------------
    def heartbeat(self, agent_id: str) -> tuple[str | None, float | None, dict[str, Any] | None]:
        """(last heartbeat ISO, its age in seconds, the last progress) from memory when fresher than the store."""
        beat = self.beats.get(agent_id)
        if beat is None:
            return None, None, None
        at, progress = beat
        return iso(at), round((utcnow() - at).total_seconds(), 3), progress

    # -- the loop ----------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            now = self.clock()
            due = [d for d in (self.watchdog.next_due(), *(t.next_due() for t in self.trackers.values()))
                   if d is not None]
            # Never below a few ms: a due time that stays in the past (an agent being judged) must not spin.
            wait = max(MIN_WAIT, min([IDLE_WAKE, *(d - now for d in due)]))
            self._wake.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that comes as the wake-up
            # does (watch() at stop()), and stop() would wait for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            try:
                self._tick()
            except Exception:  # never let one bad agent stop the watchdog
                log.exception("liveness tick failed")

    def _tick(self) -> None:
        now = self.clock()
        lost = [a for a in self.watchdog.lost(now) if a not in self._judging]
        if lost:
            self._judging.update(lost)
            self._background(self._judge(lost))
        for agent_id, tracker in list(self.trackers.items()):
            for which in tracker.which_due(now):
                self._background(self._probe(agent_id, which, tracker))
        if self._dirty and now - self._last_flush >= FLUSH_PERIOD:
            self.flush()

    async def _judge(self, lost: list[str]) -> None:
        """Condemn agents whose heartbeats stopped, unless zone 2 is what went quiet."""
        try:
            if not await self.relay_ok():
                self.pause("zone 2 does not answer, so heartbeats cannot arrive")
                return
            still = set(self.watchdog.lost(self.clock()))
            for agent_id in lost:
                if agent_id not in still:
                    continue  # a heartbeat arrived while zone 2 was being checked
                watch = self.watchdog.get(agent_id)
                interval = watch.interval if watch else 0
                self.watchdog.remove(agent_id)
                last = self.beats.get(agent_id)
                since = f"{(utcnow() - last[0]).total_seconds():.1f} s ago" if last else "never"
                await self.condemn(agent_id, Reason.HEARTBEAT_LOST,
                                   f"no heartbeat within 2 x {interval:g} s (last one: {since})")
        finally:
            self._judging.difference_update(lost)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        self._probes.start(coro, getattr(coro, "__qualname__", "a liveness task"))

    async def _probe(self, agent_id: str, which: Which, tracker: ProbeTracker) -> None:
        spec = tracker.specs[which]
        ip = self.addresses.get(agent_id, "")
        container_id = self.containers.get(agent_id, "")

        async def exec_fn(command: tuple[str, ...], timeout: float) -> int | tuple[int, bytes]:
            return await self.exec_probe(container_id, command, timeout)

        if self._session is None:
            self._session = aiohttp.ClientSession()
        result = await probe(spec, ip, exec_fn, self._session)
        if self.trackers.get(agent_id) is not tracker:
            return  # the agent restarted or ended meanwhile
        verdict = tracker.record(which, result.ok, self.clock())
        self._act(agent_id, verdict, result, spec.kind)
        self._wake.set()

    def _act(self, agent_id: str, verdict: Verdict, result: ProbeResult | None = None, kind: str = "") -> None:
        if verdict.stale:
            return
        if not verdict.ok:
            # Why, in the event: its text was chosen by the agent (a body, an exec's output), so store.add_event
            # bounds it, and the probe kept no more than fleetd.probes.MAX_OUTPUT of an output anyway.
            why = f": {result.message}" if result is not None and result.message else ""
            self.store.add_event("probe_failed", f"{verdict.which} probe failed{why}", agent_id,
                                 {**(result.data if result is not None else {}), "probe": verdict.which,
                                  **({"kind": kind} if kind else {})})
        if verdict.started_now:
            self.store.add_event("started", "startup probe succeeded", agent_id, {"probe": "startup"})
        if verdict.ready_changed is not None:
            self.store.update(agent_id, ready=int(verdict.ready_changed))
            self.store.add_event("ready" if verdict.ready_changed else "not_ready",
                                 f"readiness {'passed' if verdict.ready_changed else 'failed'}", agent_id)
        if verdict.restart:
            reason = Reason(verdict.reason or Reason.LIVENESS_FAILED)
            tracker = self.trackers.pop(agent_id, None)
            spec = tracker.specs.get(verdict.which) if tracker else None
            times = spec.failure_threshold if spec else "too many"
            self._background(self.condemn(agent_id, reason, f"{verdict.which} probe failed {times} times in a row"))

    def flush(self) -> None:
        """Write the heartbeats that came in since the last flush (one transaction)."""
        self._last_flush = self.clock()
        if not self._dirty:
            return
        with self.store.transaction():
            for agent_id in list(self._dirty):
                self._flush_one(agent_id)

    def _flush_one(self, agent_id: str) -> None:
        self._dirty.discard(agent_id)
        beat = self.beats.get(agent_id)
        if beat is not None and self.store.get(agent_id) is not None:
            at, progress = beat
            self.store.update(agent_id, last_heartbeat=iso(at),
                              progress=json.dumps(progress) if progress is not None else None)
