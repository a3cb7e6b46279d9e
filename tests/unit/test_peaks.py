"""fleetd.peaks: each running agent's cgroup sampled into its record (peak memory, CPU time, peak CPU rate), and the
query right-sizing reads them with. The supervisor runs on an in-memory runtime (tests/unit/fake_runtime.py) whose
cgroup figures the tests set; the clock of the CPU rates is the test's."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

from fleetd.fleet import DEPLOYMENT_LABEL, member_labels
from fleetd.models import AgentSpec, iso, utcnow
from fleetd.peaks import MIN_WINDOW, PERIOD, Figures, Sample, advance, finished
from fleetd.store import DEPLOYMENT_OF, Store
from fleetd.supervisor import Supervisor
from tests.unit.fake_runtime import USAGE, FakeRuntime
from tests.unit.supervisor_rig import deliver, run

MIB = 1 << 20
WRITE = "UPDATE agents SET peak_memory_bytes"  # the recorder's statement


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def usage(peak_mib: int, cpu_seconds: float) -> dict[str, int]:
    return {**USAGE, "memory_peak_bytes": peak_mib * MIB, "cpu_ns": int(cpu_seconds * 1e9)}


def figures(store: Store, agent_id: str) -> tuple[Any, ...]:
    row = store.get(agent_id)
    assert row is not None
    return row["peak_memory_bytes"], row["cpu_ns"], row["peak_cpu_cores"]


async def started(supervisor: Supervisor, **request: Any) -> tuple[dict[str, Any], Clock]:
    """The supervisor started, its recorder on a clock of the test's, and an agent spawned."""
    await supervisor.start()
    supervisor.peaks.clock = clock = Clock()
    return await supervisor.spawn({"image": "img", "ttl": 600, **request}), clock


# -- one reading at a time (pure) ----------------------------------------------------


def test_the_peak_memory_is_the_highest_mark_seen_and_the_cpu_time_the_last() -> None:
    before = Figures(peak_memory_bytes=300 * MIB, cpu_ns=1_000, peak_cpu_cores=None)
    after, _ = advance(before, usage(200, 2.0), Sample("t0", 2_000_000_000, 10.0), None)
    assert after == Figures(300 * MIB, 2_000_000_000, None)  # a lower mark (a new cgroup after a restart) keeps it
    higher, _ = advance(after, usage(400, 2.5), Sample("t0", 2_500_000_000, 20.0), None)
    assert higher.peak_memory_bytes == 400 * MIB


def test_the_cpu_rate_is_taken_between_two_readings_of_one_run() -> None:
    start = Figures(None, None, None)
    first = Sample("t0", 1_000_000_000, 100.0)
    after, keep = advance(start, usage(1, 1.0), first, None)
    assert (after.peak_cpu_cores, keep) == (None, first)  # one reading says no rate
    second = Sample("t0", 6_000_000_000, 110.0)
    after, keep = advance(after, usage(1, 6.0), second, first)
    assert (after.peak_cpu_cores, keep) == (0.5, second)  # 5 s of CPU in 10 s
    third = Sample("t0", 7_000_000_000, 120.0)
    after, _ = advance(after, usage(1, 7.0), third, second)
    assert after.peak_cpu_cores == 0.5  # the highest rate stays


def test_a_window_shorter_than_the_minimum_measures_from_the_older_reading() -> None:
    """An exit's reading right after a pass: its rate would say more about when the two fell than about the agent."""
    first = Sample("t0", 0, 100.0)
    soon = Sample("t0", 1_000_000_000, 100.0 + MIN_WINDOW - 0.5)
    after, keep = advance(Figures(None, None, None), usage(1, 1.0), soon, first)
    assert (after.peak_cpu_cores, after.cpu_ns, keep) == (None, 1_000_000_000, first)
    later = Sample("t0", 2_000_000_000, 110.0)
    after, keep = advance(after, usage(1, 2.0), later, keep)
    assert (after.peak_cpu_cores, keep) == (0.2, later)  # 2 s over the 10 s since the older reading


def test_no_rate_across_runs_or_a_counter_that_went_back() -> None:
    last = Sample("t0", 9_000_000_000, 100.0)
    for now in (Sample("t1", 10_000_000_000, 110.0), Sample("t0", 1_000_000_000, 110.0)):
        after, keep = advance(Figures(MIB, 9_000_000_000, 0.1), usage(1, now.cpu_ns / 1e9), now, last)
        assert (after.peak_cpu_cores, after.cpu_ns, keep) == (0.1, now.cpu_ns, now)


# -- the recorder in the supervisor --------------------------------------------------


def test_the_supervisor_samples_every_running_agent_on_a_timer(tmp_path: Path) -> None:
    async def check(supervisor: Supervisor, store: Store, runtime: FakeRuntime) -> None:
        one, clock = await started(supervisor)
        two = await supervisor.spawn({"image": "img", "ttl": 600})
        job = supervisor.timers.scheduler.get_job("peaks")
        assert job is not None and job.trigger.interval.total_seconds() == PERIOD
        runtime.usages[one["container_id"]] = usage(100, 1.0)
        runtime.usages[two["container_id"]] = usage(50, 0.0)
        await supervisor.peaks.run()
        assert figures(store, one["id"]) == (100 * MIB, 1_000_000_000, None)
        clock.now += 10
        runtime.usages[one["container_id"]] = usage(80, 16.0)  # 15 s of CPU in 10 s: 1.5 cores
        runtime.usages[two["container_id"]] = usage(60, 2.0)
        await supervisor.peaks.run()
        assert figures(store, one["id"]) == (100 * MIB, 16_000_000_000, 1.5)
        assert figures(store, two["id"]) == (60 * MIB, 2_000_000_000, 0.2)

    run(tmp_path, check)


def test_a_pass_writes_only_the_rows_whose_figures_changed(tmp_path: Path) -> None:
    async def check(supervisor: Supervisor, store: Store, runtime: FakeRuntime) -> None:
        busy, clock = await started(supervisor)
        idle = await supervisor.spawn({"image": "img", "ttl": 600})
        written: list[str] = []
        store.conn.set_trace_callback(lambda sql: written.append(sql) if sql.startswith(WRITE) else None)
        runtime.usages[busy["container_id"]] = usage(10, 1.0)
        runtime.usages[idle["container_id"]] = usage(10, 1.0)
        await supervisor.peaks.run()
        assert len(written) == 2
        clock.now += 10
        runtime.usages[busy["container_id"]] = usage(10, 2.0)
        await supervisor.peaks.run()  # the idle one's rate is 0 now: its figures change too
        assert len(written) == 4
        clock.now += 10
        runtime.usages[busy["container_id"]] = usage(10, 3.0)  # the same rate: its cpu_ns changes
        await supervisor.peaks.run()
        assert [sql.rsplit("'", 2)[1] for sql in written[4:]] == [busy["id"]]  # the idle one's row is left alone

    run(tmp_path, check)


def test_an_exit_takes_a_last_reading_while_the_cgroup_is_still_there(tmp_path: Path) -> None:
    async def check(supervisor: Supervisor, store: Store, runtime: FakeRuntime) -> None:
        agent, _ = await started(supervisor)
        runtime.usages[agent["container_id"]] = usage(100, 1.0)
        await supervisor.peaks.run()
        runtime.cgroup_kept = True
        runtime.usages[agent["container_id"]] = usage(700, 9.0)  # it grew after the last pass
        runtime.exit(agent["container_id"], 0)
        await deliver(supervisor, runtime)
        record = store.get(agent["id"])
        assert record is not None and record["state"] == "exited"
        assert figures(store, agent["id"])[:2] == (700 * MIB, 9_000_000_000)
        assert agent["id"] not in supervisor.peaks.last

    run(tmp_path, check)


def test_an_exit_after_its_cgroup_went_keeps_the_last_passs_figures(tmp_path: Path) -> None:
    async def check(supervisor: Supervisor, store: Store, runtime: FakeRuntime) -> None:
        agent, _ = await started(supervisor)
        other = await supervisor.spawn({"image": "img", "ttl": 600})
        runtime.usages[agent["container_id"]] = usage(100, 1.0)
        await supervisor.peaks.run()
        assert set(supervisor.peaks.last) == {agent["id"], other["id"]}
        runtime.exit(agent["container_id"], 0)  # the cgroup goes with the container's end (cgroup_kept is False)
        runtime.exit(other["container_id"], 0)
        runtime.died.pop()  # nobody has told the supervisor of the second one's end yet
        await deliver(supervisor, runtime)
        assert figures(store, agent["id"]) == (100 * MIB, 1_000_000_000, None)
        assert set(supervisor.peaks.last) == {other["id"]}
        store.update(other["id"], state="exited")
        await supervisor.peaks.run()
        assert supervisor.peaks.last == {}  # what it kept for an agent that ended unseen goes at the next pass

    run(tmp_path, check)


def test_a_restart_starts_the_cpu_time_again_and_keeps_the_peaks(tmp_path: Path) -> None:
    async def check(supervisor: Supervisor, store: Store, runtime: FakeRuntime) -> None:
        agent, clock = await started(supervisor, restart="on-failure:1")
        container = agent["container_id"]
        runtime.usages[container] = usage(500, 1.0)
        await supervisor.peaks.run()
        clock.now += 10
        runtime.usages[container] = usage(500, 11.0)
        await supervisor.peaks.run()
        runtime.exit(container, 1)
        await deliver(supervisor, runtime)
        await supervisor.restart(agent["id"])
        assert figures(store, agent["id"]) == (500 * MIB, None, 1.0)
        clock.now += 10
        runtime.usages[container] = usage(200, 0.5)  # the new run's cgroup
        await supervisor.peaks.run()
        assert figures(store, agent["id"]) == (500 * MIB, 500_000_000, 1.0)

    run(tmp_path, check)


class SlowCgroups(FakeRuntime):
    """A runtime whose next cgroup read takes what the cgroup shows, then waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = threading.Event()
        self.reading = threading.Event()
        self.go_on = threading.Event()

    def usage(self, container_id: str) -> dict[str, int] | None:
        found = super().usage(container_id)
        if self.hold.is_set():
            self.hold.clear()
            self.reading.set()
            self.go_on.wait(10)
        return found


def test_an_exit_during_a_pass_is_read_after_it_and_its_figures_stay(tmp_path: Path) -> None:
    """The pass computed its figures from what it read before the exit: written after the exit's reading, they
    would take the exit's higher peak back."""
    async def check(supervisor: Supervisor, store: Store, runtime: FakeRuntime) -> None:
        assert isinstance(runtime, SlowCgroups)
        agent, _ = await started(supervisor)
        runtime.usages[agent["container_id"]] = usage(100, 1.0)
        runtime.hold.set()
        passing = asyncio.create_task(supervisor.peaks.run())
        await asyncio.to_thread(runtime.reading.wait, 10)
        runtime.cgroup_kept = True
        runtime.usages[agent["container_id"]] = usage(700, 9.0)
        runtime.exit(agent["container_id"], 0)
        await deliver(supervisor, runtime)  # the exit is recorded, or waits for the pass
        runtime.go_on.set()
        await passing
        await deliver(supervisor, runtime)
        record = store.get(agent["id"])
        assert record is not None and record["state"] == "exited"
        assert figures(store, agent["id"])[:2] == (700 * MIB, 9_000_000_000)

    run(tmp_path, check, SlowCgroups())


# -- what right-sizing reads ---------------------------------------------------------


def add(store: Store, agent_id: str, state: str, role: str = "worker", deployment: str | None = None,
        ran: bool = True, peak: int | None = MIB) -> None:
    labels = member_labels(deployment, 1, None) if deployment else {}
    now = iso(utcnow())
    store.insert_agent(agent_id, name=agent_id, image="img", role=role, state=state, created_at=now, deadline=now,
                       started_at=now if ran else None, finished_at=now if state != "running" else None,
                       peak_memory_bytes=peak, spec=json.dumps(AgentSpec(image="img", labels=labels).to_json()))


def test_finished_reads_the_agents_of_a_role_or_a_deployment_that_ran_and_ended(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    try:
        add(store, "exited", "exited", deployment="web")
        add(store, "removed", "removed", deployment="web")
        add(store, "failed-ran", "failed", deployment="web")
        add(store, "never-ran", "failed", deployment="web", ran=False)
        add(store, "running", "running", deployment="web")
        add(store, "other-deployment", "exited", deployment="api")
        add(store, "same-role-no-deployment", "exited")
        add(store, "other-role", "exited", role="default")
        assert {r["id"] for r in finished(store, deployment="web")} == {"exited", "removed", "failed-ran"}
        assert {r["id"] for r in finished(store, role="worker")} == {
            "exited", "removed", "failed-ran", "other-deployment", "same-role-no-deployment"}
        assert finished(store, deployment="nobody") == []
    finally:
        store.close()


def test_finished_reads_through_an_index_not_the_whole_records_window(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    try:
        for query, name in ((f"{DEPLOYMENT_OF} = ?", "web"), ("role = ?", "worker")):
            plan = " ".join(str(row) for row in store.conn.execute(
                f"EXPLAIN QUERY PLAN SELECT id FROM agents WHERE {query} AND state IN ('exited', 'removed')", (name,)))
            assert "USING INDEX agents_" in plan, plan
        assert f'$.labels."{DEPLOYMENT_LABEL}"' in DEPLOYMENT_OF  # the label the fleet gives its agents
    finally:
        store.close()
