"""The supervisor's lifecycle decisions against an in-memory runtime (tests/unit/fake_runtime.py), no Docker:
spawn, exit, deadline, restart policy, and what a restarted daemon adopts, records and marks lost."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from fleetd.config import Config
from fleetd.janitor import REMOVALS_AT_ONCE
from fleetd.models import iso, utcnow
from fleetd.runtime import LABEL_KIND
from fleetd.store import Store
from fleetd.supervisor import Supervisor
from fleetd.timers import Timers
from tests.unit.fake_runtime import FakeDisks, FakeRuntime, FakeZone2
from tests.unit.supervisor_rig import build, close_all, deliver

Check = Callable[[Callable[[], Supervisor], Store, FakeRuntime], Awaitable[None]]


def run(tmp_path: Path, check: Check, **config: Any) -> None:
    """``check(new, store, runtime)``: ``new()`` starts a supervisor (again, as a restarted daemon would)."""
    async def main() -> None:
        store = Store(tmp_path / "state.db")
        runtime = FakeRuntime()
        disks = FakeDisks()
        made: list[tuple[Supervisor, Timers]] = []

        def new() -> Supervisor:
            if made:  # the previous daemon stops first
                made[-1][1].shutdown()
                made[-1][0].close()
            timers = Timers()
            timers.start()
            supervisor = build(Config(state_dir=tmp_path, spare_namespaces=0, **config), store, runtime, timers, disks)
            made.append((supervisor, timers))
            return supervisor

        try:
            await check(new, store, runtime)
        finally:
            if made:
                made[-1][1].shutdown()
                await close_all(made[-1][0])
            store.close()

    asyncio.run(main())


def spawn_request(**fields: Any) -> dict[str, Any]:
    return {"image": "img", "command": ["work"], "ttl": 600, **fields}


def test_spawn_starts_the_container_in_its_namespace_and_arms_the_deadline(tmp_path: Path) -> None:
    async def check(new: Callable[[], Supervisor], store: Store, runtime: FakeRuntime) -> None:
        supervisor = new()
        await supervisor.start()
        agent = await supervisor.spawn(spawn_request(env=["A=1"]))
        container = runtime.containers_by_id[agent["container_id"]]
        assert agent["state"] == "running" and container["State"]["Running"]
        assert runtime.by_name(f"fleetd-test-{agent['id']}-netns")["State"]["Running"]  # type: ignore[index]
        assert container["Env"]["A"] == "1" and container["Env"]["FLEETD_AGENT_ID"] == agent["id"]
        assert supervisor.timers.scheduler.get_job(f"deadline:{agent['id']}") is not None
        runtime.missing_images.add("nope")
        before = len(store.agents())
        try:
            await supervisor.spawn(spawn_request(image="nope"))
        except Exception as exc:
            assert "not found" in str(exc)
        assert len(store.agents()) == before  # bad input leaves no record

    run(tmp_path, check)


def test_an_exit_is_recorded_with_its_code_and_the_namespace_goes(tmp_path: Path) -> None:
    async def check(new: Callable[[], Supervisor], store: Store, runtime: FakeRuntime) -> None:
        supervisor = new()
        await supervisor.start()
        agent = await supervisor.spawn(spawn_request())
        runtime.exit(agent["container_id"], 3)
        await deliver(supervisor, runtime)
        ended = store.get(agent["id"])
        assert ended is not None and (ended["state"], ended["reason"], ended["exit_code"]) == ("exited", "exited", 3)
        assert runtime.by_name(f"fleetd-test-{agent['id']}-netns") is None
        assert supervisor.timers.scheduler.get_job(f"deadline:{agent['id']}") is None

    run(tmp_path, check)


def test_the_deadline_sends_sigterm_and_the_exit_keeps_the_reason(tmp_path: Path) -> None:
    async def check(new: Callable[[], Supervisor], store: Store, runtime: FakeRuntime) -> None:
        supervisor = new()
        await supervisor.start()
        agent = await supervisor.spawn(spawn_request())
        await supervisor.expire(agent["id"])
        assert runtime.signals == [(agent["container_id"], "SIGTERM")]
        assert store.get(agent["id"])["state"] == "stopping"  # type: ignore[index]
        await deliver(supervisor, runtime)
        ended = store.get(agent["id"])
        assert ended is not None and (ended["state"], ended["reason"]) == ("exited", "ttl_expired")

    run(tmp_path, check)


def test_a_failure_is_restarted_by_its_policy_in_the_same_container(tmp_path: Path) -> None:
    async def check(new: Callable[[], Supervisor], store: Store, runtime: FakeRuntime) -> None:
        supervisor = new()
        await supervisor.start()
        agent = await supervisor.spawn(spawn_request(restart="on-failure:1"))
        runtime.exit(agent["container_id"], 1)
        await deliver(supervisor, runtime)
        waiting = store.get(agent["id"])
        assert waiting is not None and waiting["state"] == "restarting" and waiting["restart_at"]
        await supervisor.restart(agent["id"])
        again = store.get(agent["id"])
        assert again is not None and (again["state"], again["restarts"]) == ("running", 1)
        assert runtime.containers_by_id[agent["container_id"]]["State"]["Running"]  # the same container
        runtime.exit(agent["container_id"], 1)  # a second failure: on-failure:1 is spent
        await deliver(supervisor, runtime)
        assert store.get(agent["id"])["state"] == "exited"  # type: ignore[index]

    run(tmp_path, check)


def test_a_restarted_daemon_adopts_what_runs_records_what_ended_and_marks_what_vanished(tmp_path: Path) -> None:
    async def check(new: Callable[[], Supervisor], store: Store, runtime: FakeRuntime) -> None:
        first = new()
        await first.start()
        running, ended, vanished = [await first.spawn(spawn_request()) for _ in range(3)]
        # The daemon stops; meanwhile one agent exits (no one sees the event) and one container is removed.
        second = new()
        runtime.exit(ended["container_id"], 2)
        runtime.died.clear()
        del runtime.containers_by_id[vanished["container_id"]]
        await second.start()
        assert store.get(running["id"])["state"] == "running"  # type: ignore[index]
        assert second.timers.scheduler.get_job(f"deadline:{running['id']}") is not None  # re-armed, not re-created
        assert runtime.containers_by_id[running["container_id"]]["State"]["Running"]
        record = store.get(ended["id"])
        assert record is not None and (record["state"], record["exit_code"]) == ("exited", 2)
        assert store.get(vanished["id"])["reason"] == "lost"  # type: ignore[index]
        # An orphan (this instance's label, no record) is removed.
        orphan = runtime._make("stray", {"fleetd.agent-id": "nobody", "fleetd.kind": "agent"})
        await second.resync()
        assert orphan not in runtime.containers_by_id

    run(tmp_path, check)


def test_zone2_learns_each_agent_from_start_to_end_and_is_brought_back_when_it_dies(tmp_path: Path) -> None:
    """Zone 2 comes to the supervisor through its constructor (fleetd.zone2_port), never as None: agents get its
    environment, it learns each agent's address when it starts and forgets it when it ends, and the engine's
    word that zone 2's container died reaches it."""
    async def check(new: Callable[[], Supervisor], store: Store, runtime: FakeRuntime) -> None:
        supervisor = new()
        zone2 = supervisor.zone2
        assert isinstance(zone2, FakeZone2)
        await supervisor.start()
        agent = await supervisor.spawn(spawn_request())
        container = runtime.containers_by_id[agent["container_id"]]
        assert container["Env"]["FLEETD_GATEWAY_URL"] == "http://zone2:8080"
        await deliver(supervisor, runtime)
        assert zone2.registered == {agent["id"]: "10.0.0.9"}
        runtime.exit(agent["container_id"], 0)
        await deliver(supervisor, runtime)
        assert zone2.registered == {}
        supervisor.on_docker_event({"Action": "die", "Actor": {"ID": "z", "Attributes": {LABEL_KIND: "zone2"}}})
        assert zone2.exits == 1
        await supervisor.teardown()
        assert zone2.torn_down

    run(tmp_path, check)


def test_the_janitor_removes_an_exited_agents_container_and_disks_after_retention(tmp_path: Path) -> None:
    """fleetd.janitor: past log_retention an exited agent's container and disks go and its record says removed;
    one still within it keeps both."""
    async def check(new: Callable[[], Supervisor], store: Store, runtime: FakeRuntime) -> None:
        supervisor = new()
        await supervisor.start()
        old = await supervisor.spawn(spawn_request(disk="64m"))
        runtime.exit(old["container_id"], 0)
        await deliver(supervisor, runtime)
        store.update(old["id"], finished_at=iso(utcnow() - timedelta(seconds=120)))  # past the 60 s retention
        fresh = await supervisor.spawn(spawn_request(disk="64m"))
        runtime.exit(fresh["container_id"], 0)
        await deliver(supervisor, runtime)
        await supervisor.janitor.run()
        gone, kept = store.get(old["id"]), store.get(fresh["id"])
        assert gone is not None and gone["state"] == "removed" and gone["reason"] == "exited"
        assert old["container_id"] not in runtime.containers_by_id and old["id"] not in supervisor.storage.agents()
        assert kept is not None and kept["state"] == "exited" and fresh["container_id"] in runtime.containers_by_id
        assert fresh["id"] in supervisor.storage.agents()

    run(tmp_path, check, log_retention=60)


def test_the_janitor_removes_exited_agents_side_by_side_up_to_its_bound(tmp_path: Path) -> None:
    """One removal at a time fell behind spawns made six at a time (soak run D: 2,800 exited containers). The
    janitor removes REMOVALS_AT_ONCE at once, never more, and every one of them."""
    async def check(new: Callable[[], Supervisor], store: Store, runtime: FakeRuntime) -> None:
        supervisor = new()
        await supervisor.start()
        agents = [await supervisor.spawn(spawn_request()) for _ in range(REMOVALS_AT_ONCE * 2 + 3)]
        for agent in agents:
            runtime.exit(agent["container_id"], 0)
        await deliver(supervisor, runtime)
        for agent in agents:
            store.update(agent["id"], finished_at=iso(utcnow() - timedelta(seconds=120)))
        call, now, most = supervisor.janitor.call, [0], [0]

        async def counted(fn: Callable[..., Any], *args: Any) -> Any:
            now[0] += 1
            most[0] = max(most[0], now[0])
            try:
                await asyncio.sleep(0.01)
                return await call(fn, *args)
            finally:
                now[0] -= 1

        supervisor.janitor.call = counted
        await supervisor.janitor.run()
        assert most[0] == REMOVALS_AT_ONCE
        assert {store.get(a["id"])["state"] for a in agents} == {"removed"}  # type: ignore[index]
        assert not any(a["container_id"] in runtime.containers_by_id for a in agents)

    run(tmp_path, check, log_retention=60, max_exited=1000)


def test_a_start_that_fails_unexpectedly_is_recorded_failed_not_left_created(tmp_path: Path) -> None:
    """A wedged engine's read timeout once surfaced untranslated: the spawn answered 500 and its record stayed
    `created` for ever. Whatever the failure, the record ends failed (start_failed) and the holder goes."""

    async def check(new: Callable[[], Supervisor], store: Store, runtime: FakeRuntime) -> None:
        supervisor = new()
        await supervisor.start()

        def broken(container_id: str) -> None:
            raise TimeoutError("the engine did not answer")

        runtime.start_agent = broken  # type: ignore[method-assign]
        with pytest.raises(TimeoutError):
            await supervisor.spawn(spawn_request())
        [agent] = store.agents()
        assert (agent["state"], agent["reason"]) == ("failed", "start_failed")
        assert any(e["type"] == "start_failed" and "TimeoutError" in e["message"]
                   for e in store.events(None, 100, agent["id"], None, None))
        await asyncio.sleep(0.05)  # the holder's removal runs in the background
        assert runtime.by_name(f"fleetd-test-{agent['id']}-netns") is None

    run(tmp_path, check)
