"""``daemon.sock``: the daemon's API for zone 2, which asks who an address it does not know yet is (so an agent's
first call never races its registration), relays heartbeats and the agents' task calls, and sends events to record.
Each handler reads its message with the contract's class (``fleetd.zone2.contract``); a message it cannot read is a
400, and a task call the queue refuses is answered with its error (404, 409), which zone 2 passes to the agent."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from fleetd.errors import FleetdError, NotFound
from fleetd.fleet import Answered
from fleetd.hangup import until_hangup
from fleetd.store import Store
from fleetd.task_queue import Lease, Task
from fleetd.zone2.contract import (
    Event,
    HeartbeatAnswer,
    HeartbeatBatch,
    Registration,
    TaskAnswer,
    TaskAnswers,
    TaskComplete,
    TaskCompletions,
    TaskFail,
    TaskHold,
    TaskNext,
    TaskOutcome,
)
from fleetd.zone2.control import received, refuse_malformed

log = logging.getLogger(__name__)
Whois = Callable[[str], Awaitable[Registration | None]]
MAX_MESSAGE = 2 << 20  # a task's output is up to 1 MiB of JSON, relayed inside a message


@web.middleware
async def queue_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    """What the queue refuses (no such task, a stale attempt) goes back to zone 2 as the API's JSON error."""
    try:
        return await handler(request)
    except FleetdError as exc:
        return web.json_response(exc.to_json(), status=exc.status)


class HeartbeatWatch(Protocol):
    """The heartbeat watchdog (``fleetd.liveness.Liveness``): zone 2 relays the agents' beats to it, and the keeper
    pauses it while the beats cannot arrive."""

    def beat(self, agent_id: str, progress: dict[str, Any] | None) -> bool: ...

    def pause(self, why: str) -> None: ...

    def resume(self) -> None: ...


class TaskDoor(Protocol):
    """The task queue as agents use it (``fleetd.fleet.Fleet``): zone 2 relays their calls, naming the agent; and
    which task each agent holds, which its registration tells zone 2."""

    async def next_task(self, agent_id: str, wait: float) -> Lease | None: ...

    def held(self, agent_id: str) -> TaskHold | None: ...

    def holds(self) -> dict[str, TaskHold]: ...

    def complete(self, task_id: str, agent_id: str, attempt: int | None, output: Any) -> Task: ...

    def complete_and_take(self, task_id: str, agent_id: str, attempt: int | None, output: Any
                          ) -> tuple[Task, Lease | None]: ...

    def complete_many(self, answers: list[Answered]) -> list[tuple[Task, Lease | None] | FleetdError]: ...

    def fail(self, task_id: str, agent_id: str, attempt: int | None, error: str, retry: bool) -> Task: ...

    def heard(self, kind: str, data: dict[str, Any] | None) -> None: ...


class DaemonSocket:
    def __init__(self, path: Path, store: Store, whois: Whois, watchdog: HeartbeatWatch,
                 tasks: TaskDoor | None = None) -> None:
        self.path = path
        self.store = store
        self.whois = whois
        self.watchdog = watchdog
        self.tasks = tasks
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[refuse_malformed, queue_errors], client_max_size=MAX_MESSAGE)

        async def whois(request: web.Request) -> web.Response:
            reg = await self.whois(request.query.get("ip", ""))
            if reg is None:
                return web.json_response({"error": "not an agent"}, status=404)
            return web.json_response(reg.to_json())

        async def event(request: web.Request) -> web.Response:
            event = await received(request, Event)
            agent_id = event.agent_id if event.agent_id and self.store.get(event.agent_id) else None
            self.store.add_event(event.type, event.message, agent_id, event.data)
            if self.tasks is not None:
                self.tasks.heard(event.type, event.data)  # a canary's spend cap reached rolls it back
            return web.json_response({"ok": True})

        async def heartbeats(request: web.Request) -> web.Response:
            """A batch of heartbeats relayed by zone 2; answers which agents are being watched."""
            beats = (await received(request, HeartbeatBatch)).beats
            taken = tuple(b.agent_id for b in beats if self.watchdog.beat(b.agent_id, b.progress))
            return web.json_response(HeartbeatAnswer(taken).to_json())

        async def next_task(request: web.Request) -> web.Response:
            ask = await received(request, TaskNext)
            try:  # zone 2 gives up on a poll its agent left: no task is leased to nobody meanwhile
                lease = await until_hangup(request, self._door().next_task(ask.agent_id, ask.wait))
            except ConnectionResetError:
                return web.Response(status=204)
            return web.Response(status=204) if lease is None else web.json_response(lease.to_json())

        async def complete(request: web.Request) -> web.Response:
            done = await received(request, TaskComplete)
            task_id = request.match_info["task_id"]
            if done.next_wait is None:
                task = self._door().complete(task_id, done.agent_id, done.attempt, done.output)
                return await self._outcome(request, task, done.agent_id, None)
            # With the next task when one is ready: one transaction (else a poll, as next waits)
            task, lease = self._door().complete_and_take(task_id, done.agent_id, done.attempt, done.output)
            if lease is None:
                return await self._outcome(request, task, done.agent_id, done.next_wait)
            outcome = TaskOutcome(task.id, task.state.value, task.attempts, asked_next=True, next=lease)
            return web.json_response(outcome.to_json())

        async def completions(request: web.Request) -> web.Response:
            """Completions zone 2 relays together: one transaction, and each one's answer as it would be alone."""
            items = (await received(request, TaskCompletions)).items
            done = self._complete_many([Answered(task_id, c.agent_id, c.attempt, c.output,
                                                 take_next=c.next_wait is not None) for task_id, c in items])
            answers = []
            for (_, asked), result in zip(items, done, strict=True):
                if isinstance(result, FleetdError):
                    answers.append(TaskAnswer(result.status, result.to_json()))
                    continue
                task, lease = result
                outcome = TaskOutcome(task.id, task.state.value, task.attempts, asked.next_wait is not None, lease)
                answers.append(TaskAnswer(200, outcome.to_json()))
            return web.json_response(TaskAnswers(tuple(answers)).to_json())

        async def fail(request: web.Request) -> web.Response:
            failed = await received(request, TaskFail)
            task = self._door().fail(request.match_info["task_id"], failed.agent_id, failed.attempt, failed.error,
                                     failed.retry)
            return await self._outcome(request, task, failed.agent_id, failed.next_wait)

        app.router.add_get("/control/whois", whois)
        app.router.add_post("/control/tasks/next", next_task)
        app.router.add_post("/control/tasks/completions", completions)
        app.router.add_post("/control/tasks/{task_id}/complete", complete)
        app.router.add_post("/control/tasks/{task_id}/fail", fail)
        app.router.add_post("/control/heartbeats", heartbeats)
        app.router.add_post("/control/events", event)
        return app

    async def _outcome(self, request: web.Request, task: Task, agent_id: str, next_wait: float | None
                       ) -> web.Response:
        """The answer to a completion or failure: the task's outcome, and with ``next_wait`` the agent's next task
        (as ``next`` answers it: one round trip per task instead of two)."""
        outcome = TaskOutcome(task.id, task.state.value, task.attempts)
        if next_wait is not None:
            try:  # as next: no task is leased to an agent whose poll zone 2 gave up
                lease = await until_hangup(request, self._door().next_task(agent_id, next_wait))
            except (ConnectionResetError, FleetdError):  # the answer is recorded: a refused next is no refused answer
                lease = None
            outcome = replace(outcome, asked_next=True, next=lease)
        return web.json_response(outcome.to_json())

    def _complete_many(self, answers: list[Answered]) -> list[tuple[Task, Lease | None] | FleetdError]:
        """The group in one transaction; should it fail as a whole (a fault, not a refusal), each alone, so that one
        agent's completion does not cost the others theirs."""
        door = self._door()
        try:
            return door.complete_many(answers)
        except Exception:
            log.exception("a group of %d completions failed: recording each alone", len(answers))
        done: list[tuple[Task, Lease | None] | FleetdError] = []
        for answer in answers:
            try:
                done += door.complete_many([answer])
            except Exception as exc:
                log.exception("the completion of task %s by agent %s failed", answer.task_id, answer.agent_id)
                done.append(exc if isinstance(exc, FleetdError) else FleetdError(f"recording the completion failed: "
                                                                               f"{type(exc).__name__}"))
        return done

    def _door(self) -> TaskDoor:
        if self.tasks is None:
            raise NotFound("this daemon keeps no task queue")
        return self.tasks

    async def serve(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        if self.path.exists():
            self.path.unlink()
        await web.UnixSite(self._runner, str(self.path)).start()
        os.chmod(self.path, 0o666)  # zone 2 connects as nobody; the control dir is what keeps others out

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
