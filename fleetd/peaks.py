"""Each agent's peak memory and CPU, sampled from its cgroup and kept on its record (right-sizing, issue 16).

A container's cgroup goes soon after it exits, so its figures are taken while it runs: every ``PERIOD`` seconds one
pass reads the cgroup of every running agent (``AgentRuntime.usage``: file reads, no Docker API call, the whole pass
in one call of the blocking pool), and once more when the supervisor records an exit, if the cgroup is still there
(the die event often comes after it has gone: then the last pass's figures stand). On the agent's record:

- ``peak_memory_bytes``: the highest high-water mark its cgroup reported (``fleetd.cgroups``), over all its runs (a
  restart makes a new cgroup, whose mark starts again from nothing);
- ``cpu_ns``: the CPU time of its last run at the last sample. A restart sets it back to null, as the cgroup's
  counter and ``started_at`` start again: cpu_ns / (finished_at - started_at) is that run's average in cores;
- ``peak_cpu_cores``: the highest CPU rate between two samples of one run, in cores: an average over about
  ``PERIOD`` (at least ``MIN_WINDOW``: a shorter window says more about when the samples fell than about the agent),
  so bursts shorter than that are smoothed out.

A row is written only when one of its figures changed, all those of a pass in one transaction. In memory: each
running agent's last sample, for its rate; bounded by the running agents.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import astuple, dataclass
from typing import Any, NamedTuple

from fleetd.agent_runtime import AgentRuntime
from fleetd.models import State
from fleetd.store import DEPLOYMENT_OF, Store

PERIOD = 10.0  # seconds between two passes
MIN_WINDOW = 5.0  # seconds between the two samples a CPU rate is taken from, at least
SAMPLED = (State.RUNNING.value, State.STOPPING.value)  # an agent whose container runs
FINISHED = (State.EXITED.value, State.REMOVED.value, State.FAILED.value)


@dataclass(frozen=True)
class Figures:
    """An agent's usage figures as its record keeps them (null: not measured)."""

    peak_memory_bytes: int | None
    cpu_ns: int | None
    peak_cpu_cores: float | None


class Sample(NamedTuple):
    """One reading of a run's CPU time, and when (monotonic seconds)."""

    started_at: str | None  # the run it was taken in
    cpu_ns: int
    at: float


def advance(before: Figures, usage: Mapping[str, int], now: Sample, last: Sample | None) -> tuple[Figures, Sample]:
    """The figures after one more reading of the cgroup (``usage``, taken as ``now``), and the sample the next rate
    is to be measured from."""
    peak_memory = max(before.peak_memory_bytes or 0, usage["memory_peak_bytes"])
    cores, keep = before.peak_cpu_cores, now
    if last is not None and last.started_at == now.started_at and now.cpu_ns >= last.cpu_ns:
        window = now.at - last.at
        if window < MIN_WINDOW:
            keep = last  # the next reading measures from the older one
        else:
            rate = round((now.cpu_ns - last.cpu_ns) / (window * 1e9), 3)
            cores = rate if cores is None else max(cores, rate)
    return Figures(peak_memory, now.cpu_ns, cores), keep


class PeakRecorder:
    """Samples the running agents' cgroups and keeps their peaks on their records."""

    def __init__(self, store: Store, runtime: AgentRuntime, call: Callable[..., Awaitable[Any]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.runtime = runtime
        self.call = call
        self.clock = clock
        self.last: dict[str, Sample] = {}  # running agent -> the sample its next rate is measured from
        # One pass at a time, each writing what it computed from the rows it read: an exit's reading waits for the
        # pass in flight, which would otherwise write its older figures over the exit's. An agent read by a pass
        # cannot start a new run meanwhile either: its exit is recorded (and its cgroup read) after the pass.
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        """One pass over every running agent (the timer's)."""
        async with self._lock:
            rows = self._rows()
            live = {row["id"] for row in rows}
            self.last = {agent_id: sample for agent_id, sample in self.last.items() if agent_id in live}
            await self._sample(rows)

    async def sample_exit(self, agent_id: str) -> None:
        """The agent's container has stopped: one last reading while its exit is recorded, if its cgroup is still
        there (best effort)."""
        async with self._lock:
            await self._sample(self._rows(agent_id))
            self.last.pop(agent_id, None)

    def _rows(self, agent_id: str | None = None) -> list[dict[str, Any]]:
        sql = ("SELECT id, container_id, started_at, peak_memory_bytes, cpu_ns, peak_cpu_cores FROM agents "
               "WHERE state IN (?, ?) AND container_id IS NOT NULL")
        params: list[Any] = [*SAMPLED]
        if agent_id is not None:
            sql += " AND id = ?"
            params.append(agent_id)
        return self.store.rows(sql, params)

    async def _sample(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        readings = await self.call(self._read, [row["container_id"] for row in rows])
        changed = []
        for row, (usage, at) in zip(rows, readings, strict=True):
            if usage is None:  # its cgroup is gone (it has just ended), or the daemon cannot see the host's
                continue
            before = Figures(row["peak_memory_bytes"], row["cpu_ns"], row["peak_cpu_cores"])
            figures, self.last[row["id"]] = advance(before, usage, Sample(row["started_at"], usage["cpu_ns"], at),
                                                    self.last.get(row["id"]))
            if figures != before:
                changed.append((*astuple(figures), row["id"]))
        if changed:
            with self.store.transaction():
                self.store.conn.executemany("UPDATE agents SET peak_memory_bytes = ?, cpu_ns = ?, peak_cpu_cores = ? "
                                            "WHERE id = ?", changed)

    def _read(self, container_ids: list[str]) -> list[tuple[dict[str, int] | None, float]]:
        """In the blocking pool: each container's cgroup figures, and when they were read."""
        return [(self.runtime.usage(container_id), self.clock()) for container_id in container_ids]


def newest_limits(store: Store, role: str) -> tuple[int | None, int | None]:
    """The memory limit and nano-CPUs of the role's newest agent: the limits it is spawned with now, as far as the
    records tell (agents of one role may each be given their own); (None, None) when it has none."""
    row = store.conn.execute("SELECT json_extract(spec, '$.memory'), json_extract(spec, '$.nano_cpus') FROM agents "
                             "WHERE role = ? ORDER BY created_at DESC, rowid DESC LIMIT 1", (role,)).fetchone()
    return (row[0], row[1]) if row else (None, None)


def finished(store: Store, *, role: str | None = None, deployment: str | None = None) -> list[dict[str, Any]]:
    """The figures of the agents of a role or of a deployment that ran (``started_at``) and have ended, among the
    records kept (retention bounds them): never their spec, read through an index."""
    where, name = ("role = ?", role) if deployment is None else (f"{DEPLOYMENT_OF} = ?", deployment)
    marks = ", ".join("?" for _ in FINISHED)
    return store.rows(
        f"SELECT id, peak_memory_bytes, cpu_ns, peak_cpu_cores, started_at, finished_at, reason FROM agents "
        f"WHERE {where} AND state IN ({marks}) AND started_at IS NOT NULL", [name, *FINISHED])
