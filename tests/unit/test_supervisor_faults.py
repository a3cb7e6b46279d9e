"""The supervisor's records under faults, against an in-memory runtime (no Docker): what a failed restart, a
container that never started and a background task that fails leave behind."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from fleetd.background import Background
from fleetd.models import State, iso, utcnow
from fleetd.store import Store
from fleetd.supervisor import Supervisor
from tests.unit.fake_runtime import FakeRuntime
from tests.unit.supervisor_rig import insert, run


def test_a_restart_whose_start_fails_ends_the_agent_with_the_reason_it_was_restarting_for(tmp_path: Path) -> None:
    """``agent["reason"] in Reason`` raised TypeError on Python 3.11: the agent stayed ``restarting`` with no timer
    until its TTL."""
    async def check(supervisor: Supervisor, store: Store, runtime: FakeRuntime) -> None:
        insert(store, "a1", state=State.RESTARTING.value, reason="liveness_failed")
        runtime.start_fails = True
        await supervisor.restart("a1")
        agent = store.get("a1")
        assert agent is not None and (agent["state"], agent["reason"]) == ("exited", "liveness_failed")
        assert "restart_failed" in [e["type"] for e in store.events(agent_id="a1")]

    run(tmp_path, check)


def test_an_exit_recorded_twice_at_once_schedules_one_restart(tmp_path: Path) -> None:
    """The SIGKILL path (the signal found the container gone) and the die event both record the exit: the second
    saw ``stopping`` before its Docker call and ``restarting`` after it, and scheduled the restart again (backoff
    doubled twice, the reason overwritten with ``exited``)."""
    async def check(supervisor: Supervisor, store: Store, runtime: FakeRuntime) -> None:
        insert(store, "a1", restart="on-failure", state=State.STOPPING.value, reason="liveness_failed",
               started_at=iso(utcnow()))
        runtime.put("c-a1", "a1", "exited", 137)
        runtime.inspect_delay = 0.05
        await asyncio.gather(supervisor._record_exit("a1", "c-a1"), supervisor._record_exit("a1", "c-a1"))
        agent = store.get("a1")
        assert agent is not None and (agent["state"], agent["reason"]) == ("restarting", "liveness_failed")
        scheduled = [e for e in store.events(agent_id="a1") if e["type"] == "restart_scheduled"]
        assert len(scheduled) == 1
        transitions = [(t["from_state"], t["to_state"]) for t in store.transitions("a1")]
        assert ("restarting", "restarting") not in transitions

    run(tmp_path, check)


def test_a_container_that_never_started_is_a_failed_start_not_an_exit_0(tmp_path: Path) -> None:
    """SIGKILL of the daemon during spawns left containers in Docker state ``created``; after the restart they were
    recorded as ``exited``, reason ``exited``, exit code 0."""
    async def check(supervisor: Supervisor, store: Store, runtime: FakeRuntime) -> None:
        insert(store, "made", state=State.CREATED.value, container_id=None)
        insert(store, "unmade", state=State.CREATED.value, container_id=None)
        runtime.put("c-made", "made", "created")
        await supervisor.resync(startup=True)
        for agent_id in ("made", "unmade"):
            agent = store.get(agent_id)
            assert agent is not None
            assert (agent["state"], agent["reason"], agent["exit_code"]) == ("failed", "start_failed", None)
            assert "start_failed" in [e["type"] for e in store.events(agent_id=agent_id)]
        assert store.get("made")["container_id"] == "c-made"  # type: ignore[index]
        assert runtime.agent_name("unmade") in runtime.removed  # what its spawn made is discarded

    run(tmp_path, check)


def test_a_spawn_in_flight_is_left_alone_by_a_resync(tmp_path: Path) -> None:
    """A resync after the engine came back must not judge an agent whose spawn has not finished."""
    async def check(supervisor: Supervisor, store: Store, runtime: FakeRuntime) -> None:
        insert(store, "busy", state=State.CREATED.value, container_id=None)
        supervisor._spawning.add("busy")
        await supervisor.resync()
        assert store.get("busy")["state"] == "created"  # type: ignore[index]

    run(tmp_path, check)


def test_a_background_task_is_kept_until_it_ends_and_its_failure_is_logged(caplog: pytest.LogCaptureFixture
                                                                           ) -> None:
    async def main() -> None:
        background = Background()

        async def fails() -> None:
            await asyncio.sleep(0.01)
            raise RuntimeError("boom")

        task = background.start(fails(), "recording agent a1's exit")
        assert task in background.tasks
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
        assert background.tasks == set()

    with caplog.at_level(logging.ERROR, logger="fleetd"):
        asyncio.run(main())
    assert "background task failed: recording agent a1's exit" in caplog.text and "boom" in caplog.text
