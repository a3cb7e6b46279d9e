"""Zone 2's task routes: an agent of a deployment takes tasks from the daemon's queue and answers them.

Each route names the agent by its source address, as the heartbeat does, and relays to the daemon over
``daemon.sock`` (``service.DaemonLink``) one of the contract's messages (``contract.TaskNext``, ``TaskComplete``,
``TaskFail``):

- ``POST /fleetd/tasks/next?wait=S`` waits up to S seconds (default 30, at most 60) for a task: 200 with
  ``{"id", "input", "attempt", "deadline"}`` as the daemon sent it, or 204 when none came;
- ``POST /fleetd/tasks/ID/complete`` ``{"output": ..., "attempt": N}`` and ``POST /fleetd/tasks/ID/fail``
  ``{"error": "...", "retry": true, "attempt": N}``: 200 with ``{"id", "state", "attempts"}``.

The daemon's 4xx (404 no such task, 409 not this agent's current lease, 400) reach the agent as the daemon sent them;
a daemon that does not answer, answers 5xx or in time is a 503 ``daemon_unreachable``, which the agent retries.

A long-poll holds the agent's connection and one to the daemon for up to a minute: the guard does not count a
connection whose request is being handled as idle (``guard.GuardedConnection.overdue``), the daemon link gives it its
own connections without a pool limit, and when the agent hangs up the relay is cancelled (aiohttp, as zone 2 runs it,
does not cancel the handler: ``TaskRoutes.long_poll`` watches the connection).

Zone 2 remembers the task each agent holds (:class:`HeldTasks`), as it saw leases and answers pass (and, after it
restarted, as the agent's registration says), to attribute the agent's LLM calls to it (their ledger rows name it) and
reserve them against the task's cap (``max_usd`` in the lease), all its attempts together (``costs.CostTracker``).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Awaitable, Callable, Collection, Coroutine
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Protocol, TypeVar

from aiohttp import web

from fleetd.zone2.contract import (
    DEFAULT_TASK_WAIT,
    MAX_TASK_OUTPUT,
    MAX_TASK_WAIT,
    ContractError,
    Registration,
    TaskComplete,
    TaskFail,
    TaskLease,
    TaskNext,
    TaskOutcome,
)
from fleetd.zone2.errors import Zone2Error, error_response
from fleetd.zone2.guard import GUARD, LARGE_BODY, busy, read_body
from fleetd.zone2.llm import HEAVY_CONTAINERS, PARSE_BUDGET, JsonShape, parse_cost
from fleetd.zone2.registry import Registry

TASK_ID = re.compile(r"[0-9a-f]{16}")  # the daemon's secrets.token_hex(8)
MAX_ANSWER_BODY = MAX_TASK_OUTPUT + (64 << 10)  # an output of 1 MiB of JSON, the attempt and some whitespace
MAX_NEXT_BODY = 4 << 10  # a request for a task has no body to speak of ({}, or nothing): it is read and ignored
GONE_EVERY = 1.0  # s between two looks at a long-polling agent's connection
PARSE_IN_THREAD = 64 << 10  # bytes of the daemon's answer from which it is parsed in a thread
CLIENT_GONE = 499  # nginx's "client closed request": the status of an answer nobody reads
Identify = Callable[[web.Request], Awaitable[Registration | None]]
Answer = TypeVar("Answer", TaskComplete, TaskFail)


class DaemonUnreachable(Exception):
    """No usable answer came from the daemon: it is down, answered 5xx, or not in time, or what it said is not JSON."""


@dataclass(frozen=True)
class TaskReply:
    """What the daemon answered a task call: ``lease`` with a 200 to ``next``, ``outcome`` with a 200 to
    ``complete`` and ``fail``; ``body`` as it sent it (passed on to the agent for a lease or a 4xx)."""

    status: int  # 200, 204 (next: no task came) or a 4xx
    body: bytes = b""
    lease: TaskLease | None = None
    outcome: TaskOutcome | None = None


class TaskLink(Protocol):
    """The daemon's task calls (``service.DaemonLink``): a :class:`TaskReply`, or DaemonUnreachable."""

    async def task_next(self, message: TaskNext) -> TaskReply: ...

    async def task_complete(self, task_id: str, message: TaskComplete, heavy: bool = False) -> TaskReply: ...

    async def task_fail(self, task_id: str, message: TaskFail) -> TaskReply: ...


class HeldTask(NamedTuple):
    task_id: str
    attempt: int
    max_nusd: int | None = None  # the task's cap on LLM spend, all its attempts together (None: none)


class HeldTasks:
    """The task each agent holds, as zone 2 last saw it pass: set by a lease, dropped by a 200 to its completion or
    failure, by the daemon's 404 or 409 for it, and by a ``next`` answered 204 (the daemon gives an agent the task it
    holds before any other, so 204 means it holds none). A zone 2 that started while an agent held a task learns it
    from the agent's registration (:meth:`learn`). One entry per registered agent, forgotten with the agent
    (``service.init_control``).

    ``on_release`` hears the id of a task an agent no longer holds (the cost tracker then lets go of its spend)."""

    def __init__(self, on_release: Callable[[str], None] | None = None) -> None:
        self._by_agent: dict[str, HeldTask] = {}
        self.on_release = on_release

    def __len__(self) -> int:
        return len(self._by_agent)

    def held(self, agent_id: str) -> HeldTask | None:
        return self._by_agent.get(agent_id)

    def hold(self, agent_id: str, task_id: str, attempt: int, max_nusd: int | None = None) -> None:
        before = self._by_agent.get(agent_id)
        self._by_agent[agent_id] = HeldTask(task_id, attempt, max_nusd)
        if before is not None and before.task_id != task_id:
            self._released(before)

    def learn(self, reg: Registration) -> None:
        """The daemon registered the agent holding ``reg.task``: held, unless a lease zone 2 saw pass says more (the
        registration may have been written before it)."""
        if reg.task is not None and reg.agent_id not in self._by_agent:
            self.hold(reg.agent_id, reg.task.id, reg.task.attempt, reg.task.max_nusd)

    def drop(self, agent_id: str, task_id: str, attempt: int | None = None) -> None:
        """The agent no longer holds ``task_id`` (at ``attempt``; None: whichever)."""
        held = self._by_agent.get(agent_id)
        if held is not None and held.task_id == task_id and attempt in (None, held.attempt):
            del self._by_agent[agent_id]
            self._released(held)

    def forget(self, agent_id: str) -> None:
        held = self._by_agent.pop(agent_id, None)
        if held is not None:
            self._released(held)

    def keep(self, agent_ids: Collection[str]) -> None:
        """Forget every agent but these (the daemon sent the whole list of live ones)."""
        for agent_id in [a for a in self._by_agent if a not in agent_ids]:
            self.forget(agent_id)

    def _released(self, held: HeldTask) -> None:
        if self.on_release is not None:
            self.on_release(held.task_id)


def wait_of(raw: str | None, name: str = "wait") -> float:
    """The ``wait`` (or ``next``) query parameter: a number of seconds from 0 to 60 (absent: 30); else 400."""
    if raw is None:
        return DEFAULT_TASK_WAIT
    try:
        wait = float(raw)
    except ValueError:
        wait = math.nan
    if not 0 <= wait <= MAX_TASK_WAIT:  # NaN too
        raise Zone2Error(400, "bad_request", f"{name} must be a number of seconds from 0 to {MAX_TASK_WAIT:g}, "
                         f"not {raw[:40]!r}")
    return wait


def next_wait_of(request: web.Request) -> float | None:
    """An answer's ``next`` query parameter: also ask for the agent's next task, waiting up to that many seconds
    (None: absent, ask for none)."""
    raw = request.query.get("next")
    return None if raw is None else wait_of(raw, "next")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of a float's range")
    return value


def parse_json(raw: bytes) -> Any:
    """Strict JSON: no NaN or Infinity, no number out of range (the daemon refuses to store them)."""
    return json.loads(raw, parse_constant=_no_constant, parse_float=_finite)


async def read_answer(request: web.Request, what: str) -> tuple[dict[str, Any], bool]:
    """An agent's completion or failure body as a JSON object (empty: ``{}``), and whether it is heavy (read and
    parsed in its address's turn, in a thread); else 400 (413 past MAX_ANSWER_BODY)."""
    shape = JsonShape()
    raw = await read_body(request, MAX_ANSWER_BODY, what, feed=shape.feed)
    heavy = len(raw) >= LARGE_BODY or shape.containers > HEAVY_CONTAINERS
    if heavy:
        await request.app[GUARD].one_large_body(request)
    if parse_cost(raw, shape.counts) > PARSE_BUDGET:
        raise Zone2Error(400, "bad_request", f"the body has too many JSON values (parsing it would take more than "
                         f"{PARSE_BUDGET >> 20} MiB)")
    try:
        if not raw.strip():
            data: Any = {}
        elif heavy:
            data = await asyncio.to_thread(parse_json, raw)
        else:
            data = parse_json(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        raise Zone2Error(400, "bad_request", f"the body is not JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise Zone2Error(400, "bad_request", "the body must be a JSON object")
    return data, heavy


def message_of(cls: type[Answer], data: dict[str, Any], agent_id: str, known: frozenset[str]) -> Answer:
    """The agent's body as the contract's message for the daemon, checked by the contract's class; else 400."""
    unknown = sorted(set(data) - known)
    if unknown:
        raise Zone2Error(400, "bad_request", f"unknown fields {[k[:40] for k in unknown[:5]]}: the body takes "
                         f"{', '.join(sorted(known))}")
    try:
        return cls.from_json({**data, "agent_id": agent_id})
    except ContractError as exc:
        raise Zone2Error(400, "bad_request", str(exc)) from None


def passed_on(reply: TaskReply) -> web.Response:
    """A 4xx of the daemon's, to the agent as the daemon sent it (a body that is not a JSON object: in zone 2's
    error shape)."""
    try:
        data = json.loads(reply.body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        return web.Response(status=reply.status, body=reply.body, content_type="application/json")
    code = {404: "not_found", 409: "conflict"}.get(reply.status, "bad_request")
    return error_response(reply.status, code, f"the daemon refused the call ({reply.status})")


def unreachable(exc: DaemonUnreachable | None = None) -> Zone2Error:
    why = f" ({exc})" if exc is not None and str(exc) else ""
    return Zone2Error(503, "daemon_unreachable", f"the daemon did not answer{why}: try again",
                      {"Retry-After": "1"})


def agent_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class TaskRoutes:
    """The three routes, over ``link`` (None: no daemon to ask, every call is a 503)."""

    def __init__(self, link: TaskLink | None, held: HeldTasks, identify: Identify, registry: Registry) -> None:
        self.link = link
        self.held = held
        self.identify = identify
        self.registry = registry
        self.polls: set[asyncio.Task[TaskReply]] = set()  # long-polls relayed now
        self.stopping = False

    def add_to(self, app: web.Application) -> None:
        """Mount the routes (before a catch-all), and end the long-polls when the app shuts down."""
        app.router.add_post("/fleetd/tasks/next", self.next)
        app.router.add_post("/fleetd/tasks/{task_id}/complete", self.complete)
        app.router.add_post("/fleetd/tasks/{task_id}/fail", self.fail)
        app.router.add_route("*", "/fleetd/tasks/{tail:.*}", self.no_route)
        app.router.add_route("*", "/fleetd/tasks", self.no_route)
        app.on_shutdown.append(self.shut_down)

    async def agent(self, request: web.Request) -> Registration:
        reg = await self.identify(request)
        if reg is None:
            raise Zone2Error(403, "unknown_agent", "this address is not a fleetd agent")
        return reg

    async def next(self, request: web.Request) -> web.StreamResponse:
        """POST /fleetd/tasks/next?wait=S: a task (200), or none within S seconds (204)."""
        reg = await self.agent(request)
        wait = wait_of(request.query.get("wait"))
        await read_body(request, MAX_NEXT_BODY, "requests for a task")  # ignored
        reply = await self.next_task(request, reg, wait)
        if reply is None:
            return web.Response(status=CLIENT_GONE)  # nobody reads it: the agent hung up
        if reply.status == 204:
            return web.Response(status=204)
        if reply.lease is None:
            return passed_on(reply)
        return web.Response(body=reply.body, content_type="application/json")

    async def next_task(self, request: web.Request, reg: Registration, wait: float) -> TaskReply | None:
        """The daemon's answer to the agent's request for a task (None: the agent hung up), and what the agent holds
        after it: the lease, or nothing after a 204 (the daemon gives an agent the task it holds before any other)."""
        reply = await self.long_poll(request, self.link_or_503().task_next(TaskNext(reg.agent_id, wait)))
        if reply is None:
            return None
        if reply.lease is not None:
            self.leased(request, reg, reply.lease, len(reply.body))
        elif reply.status == 204:
            self.held.forget(reg.agent_id)
        return reply

    def leased(self, request: web.Request, reg: Registration, lease: TaskLease, size: int) -> None:
        """The agent holds ``lease`` now (its answer ``size`` bytes long, which the guard must let through)."""
        current = self.registry.by_ip.get(reg.ip)
        if current is not None and current.agent_id == reg.agent_id:  # not unregistered meanwhile (then forgotten)
            self.held.hold(reg.agent_id, lease.id, lease.attempt, lease.max_nusd)
        if not request.app[GUARD].take(request, size):
            raise busy()  # the agent holds the task: its next call for one answers it again

    async def complete(self, request: web.Request) -> web.StreamResponse:
        """POST /fleetd/tasks/ID/complete[?next=S] {"output": ..., "attempt": N}."""
        reg = await self.agent(request)
        task_id = task_id_of(request)
        next_wait = next_wait_of(request)
        data, heavy = await read_answer(request, "task completions")
        message = message_of(TaskComplete, data, reg.agent_id, frozenset({"output", "attempt"}))
        link = self.link_or_503()
        return await self.answer(request, reg, task_id, message.attempt, next_wait,
                                 lambda wait: link.task_complete(task_id, replace(message, next_wait=wait), heavy))

    async def fail(self, request: web.Request) -> web.StreamResponse:
        """POST /fleetd/tasks/ID/fail[?next=S] {"error": "...", "retry": true, "attempt": N}."""
        reg = await self.agent(request)
        task_id = task_id_of(request)
        next_wait = next_wait_of(request)
        data, _ = await read_answer(request, "task failures")
        message = message_of(TaskFail, data, reg.agent_id, frozenset({"error", "retry", "attempt"}))
        link = self.link_or_503()
        return await self.answer(request, reg, task_id, message.attempt, next_wait,
                                 lambda wait: link.task_fail(task_id, replace(message, next_wait=wait)))

    async def answer(self, request: web.Request, reg: Registration, task_id: str, attempt: int | None,
                     next_wait: float | None, relay: Callable[[float | None], Awaitable[TaskReply]]
                     ) -> web.StreamResponse:
        """The agent's answer relayed (``relay(next_wait)``), and with ``?next=S`` its next task. ``next=0`` is one
        call to the daemon; a wait is two: the answer first (from then on the agent holds no task, and its LLM calls
        are no finished task's), then a long poll, whose hang-up or 503 loses only the next task, not the answer."""
        try:
            reply = await relay(0.0 if next_wait == 0 else None)
        except DaemonUnreachable as exc:
            raise unreachable(exc) from None
        response = self.answered(request, reg, task_id, attempt, reply)
        if not next_wait or reply.outcome is None:
            return response
        following = await self.next_task(request, reg, next_wait)
        if following is None:
            return web.Response(status=CLIENT_GONE)  # nobody reads it: the agent hung up
        return web.json_response(replace(reply.outcome, asked_next=True, next=following.lease).to_json())

    async def no_route(self, request: web.Request) -> web.StreamResponse:
        raise Zone2Error(404, "not_found", "no such task route: POST /fleetd/tasks/next, /fleetd/tasks/ID/complete "
                         "or /fleetd/tasks/ID/fail")

    def answered(self, request: web.Request, reg: Registration, task_id: str, attempt: int | None,
                 reply: TaskReply) -> web.Response:
        if reply.status in (200, 404, 409):  # done with, or never (any longer) the agent's
            self.held.drop(reg.agent_id, task_id, attempt)
        outcome = reply.outcome
        if outcome is None:
            return passed_on(reply)
        if outcome.next is not None:
            self.leased(request, reg, outcome.next, len(reply.body))
            return web.Response(body=reply.body, content_type="application/json")  # the outcome, as the daemon sent it
        if outcome.asked_next:
            self.held.forget(reg.agent_id)  # as a 204 to next: the daemon would have answered a task it holds
        return web.json_response(outcome.to_json())

    def link_or_503(self) -> TaskLink:
        if self.link is None or self.stopping:
            raise unreachable()
        return self.link

    async def long_poll(self, request: web.Request, call: Coroutine[Any, Any, TaskReply]) -> TaskReply | None:
        """The daemon's answer to ``call`` (a relay that may wait for a task); None when the agent hung up first (the
        relay is cancelled, and the daemon's request with it). 503 when zone 2 shuts down meanwhile."""
        relay = asyncio.ensure_future(call)
        self.polls.add(relay)
        try:
            while not relay.done():
                await asyncio.wait({relay}, timeout=GONE_EVERY)
                if not relay.done() and agent_gone(request):
                    return None
            if relay.cancelled():  # by shut_down
                raise Zone2Error(503, "zone2_stopping", "zone 2 is restarting: try again", {"Retry-After": "1"})
            try:
                return relay.result()
            except DaemonUnreachable as exc:
                raise unreachable(exc) from None
        finally:
            self.polls.discard(relay)
            if not relay.done():
                relay.cancel()
                await asyncio.wait({relay})
            if not relay.cancelled():
                relay.exception()  # retrieved: a relay that failed after its agent left is no error to log

    async def shut_down(self, app: web.Application) -> None:
        """Zone 2 stops: the long-polls end now (503, which the agents retry) rather than hold its stop a minute."""
        self.stopping = True
        for relay in list(self.polls):
            relay.cancel()


def task_id_of(request: web.Request) -> str:
    task_id = request.match_info["task_id"]
    if not TASK_ID.fullmatch(task_id):
        raise Zone2Error(404, "not_found", "no such task: a task id is 16 hexadecimal digits")
    return task_id
