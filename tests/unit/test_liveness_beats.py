"""Heartbeats as the daemon takes them (fleetd.liveness.Liveness.beat), on a real store."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from fleetd.liveness import Liveness
from fleetd.models import AgentSpec, State, iso, utcnow
from fleetd.store import Store


async def no_exec(*args: Any) -> int:
    return 0


def agent(store: Store, agent_id: str, state: State) -> dict[str, Any]:
    store.insert_agent(agent_id, name=agent_id, image="img", role="default", state=state.value,
                       created_at=iso(utcnow()), deadline=iso(utcnow() + timedelta(hours=1)),
                       spec=json.dumps(AgentSpec(image="img", heartbeat_interval=1).to_json()))
    found = store.get(agent_id)
    assert found is not None
    return found


def test_a_running_agent_that_beats_before_its_watch_begins_is_not_refused(tmp_path: Path) -> None:
    """An agent beating at once (--heartbeat-interval 1) was told "not watched" when its first beat came before
    the supervisor's inspect of its container finished: fleetd_agent.progress() returned False and the agent gave
    up (tests/integration/test_liveness.py failed so on a loaded machine)."""
    store = Store(tmp_path / "state.db")
    liveness = Liveness(store, no_exec, clock=lambda: 100.0)
    running = agent(store, "a1", State.RUNNING)
    assert liveness.beat("a1", {"step": 1}) is True
    assert liveness.heartbeat("a1")[2] == {"step": 1}
    liveness.watch(running, AgentSpec(image="img", heartbeat_interval=1), "c1", "10.0.0.9")
    assert liveness.beat("a1", {"step": 2}) is True
    agent(store, "a2", State.EXITED)
    assert liveness.beat("a2", None) is False  # an ended agent's beats are refused
    assert liveness.beat("nobody", None) is False
    store.close()


def test_stop_ends_the_watchdog_even_when_a_watch_wakes_it_as_it_is_cancelled(tmp_path: Path) -> None:
    """On Python 3.11 asyncio.wait_for swallowed a cancel that came with the wake-up: a watch() just before
    stop() (an agent's start, as the daemon or a test shuts down) left stop() waiting for the loop forever."""

    async def condemn(*args: Any) -> None:
        pass

    async def answering() -> bool:
        return True

    async def main() -> None:
        store = Store(tmp_path / "state.db")
        running = agent(store, "a1", State.RUNNING)
        hung = []
        try:
            for turns in range(4):  # the cancel lands that many loop turns after the wake-up
                liveness = Liveness(store, no_exec)
                liveness.start(condemn, answering)
                await asyncio.sleep(0.01)  # it waits for its next due time
                liveness.watch(running, AgentSpec(image="img", heartbeat_interval=1), "c1", "10.0.0.9")
                for _ in range(turns):
                    await asyncio.sleep(0)
                stopping = asyncio.ensure_future(liveness.stop())
                done, _ = await asyncio.wait({stopping}, timeout=1)
                if not done:
                    hung.append(turns)
                    stopping.cancel()  # a second cancel ends the loop, so that the test ends
                    await stopping
        finally:
            store.close()
        assert hung == []

    asyncio.run(main())
