"""Zone 2's task routes (fleetd.zone2.tasks) relayed by its daemon link (service.DaemonLink) to a daemon the test plays
on a Unix socket: what reaches the daemon, what reaches the agent, and the task zone 2 takes each agent to hold."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from fleetd.zone2 import service
from fleetd.zone2.contract import (
    MAX_TASK_ERROR,
    Registration,
    TaskAnswer,
    TaskAnswers,
    TaskComplete,
    TaskCompletions,
    TaskFail,
    TaskNext,
)
from fleetd.zone2.guard import Guard, Timeouts, serve_guarded, stop_guarded
from fleetd.zone2.proxy import TASKS, init_gateway, memory_costs
from fleetd.zone2.registry import Registry
from fleetd.zone2.service import DaemonLink, init_control
from fleetd.zone2.tasks import GONE_EVERY, MAX_ANSWER_BODY, HeldTask, HeldTasks
from tests.unit.loopback import serve

TASK = "0123456789abcdef"
LEASE = {"id": TASK, "input": {"q": "summarise sqlite"}, "attempt": 2, "deadline": "2026-06-01T12:00:00Z"}
# The daemon answers a completion with the whole task; zone 2 passes on id, state and attempts.
DONE = {"id": TASK, "deployment": "d1", "state": "succeeded", "attempts": 2, "input": {"q": "x"}, "output": "y"}
CONFLICT = {"error": {"type": "conflict", "code": "conflict", "message": f"task {TASK}: attempt 1 of agent agent1 is "
                      "not the current lease; the task is cancelled at attempt 2"}}

Answer = tuple[int, Any]  # the daemon's status and JSON (None: no body)
Script = Callable[[str, dict[str, Any]], Awaitable[Answer]]


@dataclass
class Rig:
    url: str  # the gateway, as the agent reaches it
    client: aiohttp.ClientSession
    registry: Registry
    held: HeldTasks
    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # what the daemon was sent

    async def post(self, path: str, body: Any = None, data: bytes | None = None) -> tuple[int, bytes]:
        payload = data if data is not None else (b"" if body is None else json.dumps(body).encode())
        async with self.client.post(self.url + path, data=io.BytesIO(payload),
                                    headers={"Content-Type": "application/json"}) as response:
            return response.status, await response.read()


async def say(status: int, body: Any = None) -> Answer:
    return status, body


def daemon_app(seen: list[tuple[str, dict[str, Any]]], script: Script) -> web.Application:
    """The daemon's /control/tasks/* as the test scripts it; each message read with the contract's class."""
    readers: dict[str, Any] = {"next": TaskNext, "complete": TaskComplete, "fail": TaskFail}

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path.removeprefix("/control/tasks/")
        body = await request.json()
        if path == "completions":  # each as the script answers it alone, seen as "ID/complete" after a "completions"
            group = TaskCompletions.from_json(body)
            seen.append((path, {"count": len(group.items)}))
            if any(done.output == "unreadable" for _, done in group.items):
                return web.json_response({"error": {"message": "too deep"}}, status=400)
            answers = []
            for task_id, done in group.items:
                seen.append((f"{task_id}/complete", done.to_json()))
                status, answer = await script(f"{task_id}/complete", done.to_json())
                answers.append(TaskAnswer(status, answer))
            return web.json_response(TaskAnswers(tuple(answers)).to_json())
        readers[path.rsplit("/", 1)[-1]].from_json(body)  # what zone 2 sent reads as its message
        seen.append((path, body))
        status, answer = await script(path, body)
        if answer is None:
            return web.Response(status=status)
        if isinstance(answer, bytes):
            return web.Response(status=status, body=answer)
        return web.json_response(answer, status=status)

    app = web.Application(client_max_size=4 << 20)
    app.router.add_post("/control/tasks/{tail:.*}", handle)
    return app


@asynccontextmanager
async def daemon_socket(app: web.Application) -> AsyncIterator[Path]:
    """``app`` on a Unix socket; its handlers are cancelled when zone 2 hangs up (which the tests look for), and a
    test does not wait for a script's sleep when it ends."""
    site_runner = web.AppRunner(app, handler_cancellation=True)
    await site_runner.setup()
    try:
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:  # short enough for a socket's path
            path = Path(tmp) / "daemon.sock"
            await web.UnixSite(site_runner, str(path)).start()
            yield path
    finally:
        await site_runner.cleanup()


def registry_of(agent: str = "agent1") -> Registry:
    registry = Registry()
    registry.register(Registration(agent, "127.0.0.1"))
    return registry


async def nobody(ip: str) -> Registration | None:
    return None


def run(script: Script, check: Callable[[Rig], Awaitable[None]], *, registered: bool = True,
        daemon_up: bool = True) -> None:
    async def main() -> None:
        seen: list[tuple[str, dict[str, Any]]] = []
        async with daemon_socket(daemon_app(seen, script)) as path:
            link = DaemonLink(path if daemon_up else path.with_name("gone.sock"))
            registry = registry_of() if registered else Registry()
            held = HeldTasks()
            try:
                async with serve(init_gateway(registry, nobody, tasks=link, held=held)) as url, \
                        aiohttp.ClientSession() as client:
                    await check(Rig(url, client, registry, held, seen))
            finally:
                await link.close()

    asyncio.run(main())


def error_code(raw: bytes) -> str:
    return str(json.loads(raw)["error"]["code"])


# -- next ------------------------------------------------------------------------------------------------------------
def test_a_lease_reaches_the_agent_as_the_daemon_sent_it_and_is_held_until_completed() -> None:
    async def script(path: str, body: dict[str, Any]) -> Answer:
        return (200, LEASE) if path == "next" else (200, DONE)

    async def check(rig: Rig) -> None:
        status, raw = await rig.post("/fleetd/tasks/next?wait=5", {})
        assert (status, json.loads(raw)) == (200, LEASE)
        assert rig.seen == [("next", {"agent_id": "agent1", "wait": 5.0})]
        assert rig.held.held("agent1") == HeldTask(TASK, 2)
        status, raw = await rig.post(f"/fleetd/tasks/{TASK}/complete", {"output": {"summary": "é"}, "attempt": 2})
        assert (status, json.loads(raw)) == (200, {"id": TASK, "state": "succeeded", "attempts": 2})
        assert rig.seen[1] == (f"{TASK}/complete", {"agent_id": "agent1", "attempt": 2, "output": {"summary": "é"}})
        assert rig.held.held("agent1") is None

    run(script, check)


def test_a_tasks_cap_reaches_the_agent_in_its_lease_and_is_held_with_the_task() -> None:
    capped = {**LEASE, "max_usd": "0.25"}

    async def script(path: str, body: dict[str, Any]) -> Answer:
        return 200, capped

    async def check(rig: Rig) -> None:
        status, raw = await rig.post("/fleetd/tasks/next?wait=0", {})
        assert (status, json.loads(raw)) == (200, capped)
        assert rig.held.held("agent1") == HeldTask(TASK, 2, 250_000_000)

    run(script, check)


def test_no_task_is_a_204_the_wait_defaults_to_30_s_and_the_agent_holds_none() -> None:
    async def script(path: str, body: dict[str, Any]) -> Answer:
        return 204, None

    async def check(rig: Rig) -> None:
        rig.held.hold("agent1", TASK, 1)  # given back or cancelled since: the daemon would answer it again else
        status, raw = await rig.post("/fleetd/tasks/next")  # no body, no wait
        assert (status, raw) == (204, b"")
        status, _ = await rig.post("/fleetd/tasks/next?wait=0", {})
        assert status == 204
        assert [body["wait"] for _, body in rig.seen] == [30.0, 0.0]
        assert rig.held.held("agent1") is None

    run(script, check)


@pytest.mark.parametrize("wait", ["-1", "60.5", "61", "abc", "nan", "inf", "", "1e3"])
def test_a_wait_out_of_0_to_60_s_is_refused_400_and_not_relayed(wait: str) -> None:
    async def check(rig: Rig) -> None:
        status, raw = await rig.post(f"/fleetd/tasks/next?wait={wait}", {})
        assert (status, error_code(raw)) == (400, "bad_request")
        assert rig.seen == []

    run(lambda path, body: say(204), check)


def test_an_address_that_is_no_agent_is_403_and_nothing_is_relayed() -> None:
    async def check(rig: Rig) -> None:
        for path in ("/fleetd/tasks/next?wait=0", f"/fleetd/tasks/{TASK}/complete", f"/fleetd/tasks/{TASK}/fail"):
            status, raw = await rig.post(path, {"error": "x"})
            assert (status, error_code(raw)) == (403, "unknown_agent"), path
        assert rig.seen == []

    run(lambda path, body: say(204), check, registered=False)


def test_a_lease_for_an_agent_removed_meanwhile_is_not_held() -> None:
    """Zone 2 holds one entry per registered agent: an agent removed while its long-poll was on its way leaves
    none behind."""
    registry: list[Registry] = []

    async def script(path: str, body: dict[str, Any]) -> Answer:
        registry[0].unregister("agent1")
        return 200, LEASE

    async def check(rig: Rig) -> None:
        registry.append(rig.registry)
        status, _ = await rig.post("/fleetd/tasks/next?wait=0")
        assert status == 200
        assert rig.held.held("agent1") is None and len(rig.held) == 0

    run(script, check)


# -- complete and fail -----------------------------------------------------------------------------------------------
def test_a_failure_is_relayed_with_its_retry_and_the_outcome_answered() -> None:
    async def script(path: str, body: dict[str, Any]) -> Answer:
        return 200, {**DONE, "state": "queued", "attempts": 1}

    async def check(rig: Rig) -> None:
        rig.held.hold("agent1", TASK, 1)
        status, raw = await rig.post(f"/fleetd/tasks/{TASK}/fail", {"error": "rate limited", "attempt": 1})
        assert (status, json.loads(raw)) == (200, {"id": TASK, "state": "queued", "attempts": 1})
        status, _ = await rig.post(f"/fleetd/tasks/{TASK}/fail", {"error": "bad input", "retry": False})
        assert status == 200
        assert [body for _, body in rig.seen] == [
            {"agent_id": "agent1", "attempt": 1, "error": "rate limited", "retry": True},
            {"agent_id": "agent1", "attempt": None, "error": "bad input", "retry": False}]
        assert rig.held.held("agent1") is None

    run(script, check)


def test_an_answer_that_asks_for_the_next_task_brings_it_and_zone2_holds_that_one() -> None:
    """``?next=S``: one round trip per task. The daemon's ``next`` reaches the agent as a lease would, zone 2 holds
    it (its LLM calls are the new task's), and a ``next`` of null leaves the agent holding none, as a 204 would."""
    following = {**LEASE, "id": "fedcba9876543210", "attempt": 1, "max_usd": "0.5"}

    async def script(path: str, body: dict[str, Any]) -> Answer:
        if path.endswith("/complete"):
            return 200, {"id": TASK, "state": "succeeded", "attempts": 2, "next": following}
        if path == "next":
            return 204, None
        return 200, {"id": following["id"], "state": "queued", "attempts": 1}

    async def check(rig: Rig) -> None:
        rig.held.hold("agent1", TASK, 2)
        status, raw = await rig.post(f"/fleetd/tasks/{TASK}/complete?next=0", {"output": 1, "attempt": 2})
        assert (status, json.loads(raw)) == (200, {"id": TASK, "state": "succeeded", "attempts": 2,
                                                   "next": following})
        assert rig.seen[0][1] == {"agent_id": "agent1", "attempt": 2, "output": 1, "next_wait": 0.0}
        assert rig.held.held("agent1") == HeldTask(following["id"], 1, 500_000_000)
        # A wait: the failure first (the task is no longer held while the agent waits), then a long poll.
        status, raw = await rig.post(f"/fleetd/tasks/{following['id']}/fail?next=2.5", {"error": "x", "attempt": 1})
        assert (status, json.loads(raw)) == (200, {"id": following["id"], "state": "queued", "attempts": 1,
                                                   "next": None})
        assert rig.seen[1:] == [(f"{following['id']}/fail", {"agent_id": "agent1", "attempt": 1, "error": "x",
                                                              "retry": True}),
                                ("next", {"agent_id": "agent1", "wait": 2.5})]
        assert rig.held.held("agent1") is None

    run(script, check)


def test_while_an_answer_waits_for_the_next_task_the_answered_one_is_held_no_more() -> None:
    """The agent's LLM calls during the wait are no finished task's; hanging up then loses only the next task."""
    waiting = asyncio.Event()

    async def script(path: str, body: dict[str, Any]) -> Answer:
        if path == "next":
            waiting.set()
            await asyncio.sleep(body["wait"])
            return 204, None
        return 200, DONE

    async def check(rig: Rig) -> None:
        rig.held.hold("agent1", TASK, 2)
        answer = asyncio.ensure_future(rig.post(f"/fleetd/tasks/{TASK}/complete?next=30", {"attempt": 2}))
        await asyncio.wait_for(waiting.wait(), 5)
        assert rig.held.held("agent1") is None  # completed: dropped before the wait
        answer.cancel()  # the agent hangs up mid-wait
        with contextlib.suppress(asyncio.CancelledError):
            await answer
        assert [path for path, _ in rig.seen] == [f"{TASK}/complete", "next"]

    run(script, check)


@pytest.mark.parametrize("wait", ["-1", "61", "abc", "nan", ""])
def test_an_answers_next_out_of_0_to_60_s_is_refused_400_and_not_relayed(wait: str) -> None:
    async def check(rig: Rig) -> None:
        status, raw = await rig.post(f"/fleetd/tasks/{TASK}/complete?next={wait}", {"output": 1})
        assert (status, error_code(raw)) == (400, "bad_request") and b"next must be" in raw
        assert rig.seen == []

    run(lambda path, body: say(200, DONE), check)


def test_the_daemons_refusals_reach_the_agent_unchanged() -> None:
    raw_conflict = json.dumps(CONFLICT).encode()

    async def script(path: str, body: dict[str, Any]) -> Answer:
        if path.endswith("complete"):
            return 409, raw_conflict
        if body["error"] == "old daemon":
            return 404, b"404: Not Found"  # a daemon without the route: aiohttp's own text
        return 404, {"error": {"type": "not_found", "code": "not_found", "message": f"no such task: {TASK}"}}

    async def check(rig: Rig) -> None:
        rig.held.hold("agent1", TASK, 1)
        status, raw = await rig.post(f"/fleetd/tasks/{TASK}/complete", {"output": 1, "attempt": 2})
        assert (status, raw) == (409, raw_conflict)
        assert rig.held.held("agent1") == HeldTask(TASK, 1)  # a stale attempt's refusal says nothing of attempt 1
        status, raw = await rig.post(f"/fleetd/tasks/{TASK}/complete", {"output": 1, "attempt": 1})
        assert (status, raw) == (409, raw_conflict)
        assert rig.held.held("agent1") is None  # its lease is over
        rig.held.hold("agent1", TASK, 1)
        status, raw = await rig.post(f"/fleetd/tasks/{TASK}/fail", {"error": "x"})
        assert (status, error_code(raw)) == (404, "not_found")
        assert rig.held.held("agent1") is None
        status, raw = await rig.post(f"/fleetd/tasks/{TASK}/fail", {"error": "old daemon"})
        assert (status, error_code(raw)) == (404, "not_found")  # in zone 2's shape: the daemon's is no JSON

    run(script, check)


BAD_BODIES: list[tuple[str, bytes, int, str]] = [
    ("complete", b"{not json", 400, "not JSON"),
    ("complete", b"[1, 2]", 400, "must be a JSON object"),
    ("complete", b'{"output": NaN}', 400, "NaN is not JSON"),
    ("complete", b'{"output": 1e999}', 400, "out of a float's range"),
    ("complete", b"[" * 100_000 + b"]" * 100_000, 400, "not JSON"),  # deeper than the parser goes
    ("complete", b'{"ouput": 1}', 400, "unknown fields ['ouput']"),
    ("complete", b'{"output": 1, "attempt": 0}', 400, "attempt must be 1 or more"),
    ("complete", b'{"output": 1, "attempt": "1"}', 400, "attempt must be a whole number or null"),
    ("complete", b'{"output": 1, "attempt": true}', 400, "attempt must be a whole number or null"),
    ("fail", b"{}", 400, "error is missing"),
    ("fail", b'{"error": 7}', 400, "error must be a string"),
    ("fail", b'{"error": "x", "retry": "yes"}', 400, "retry must be true or false"),
    ("fail", json.dumps({"error": "x" * (MAX_TASK_ERROR + 1)}).encode(), 400, "at most 10000 characters"),
    ("fail", b'{"error": "x", "agent_id": "someone-else"}', 400, "unknown fields ['agent_id']"),
    ("complete", b'{"output": "' + b"x" * MAX_ANSWER_BODY + b'"}', 413, "limited to 1 MiB"),
]


@pytest.mark.parametrize(("verb", "body", "status", "why"), BAD_BODIES, ids=[why for *_, why in BAD_BODIES])
def test_a_body_zone2_cannot_relay_is_refused_and_not_relayed(verb: str, body: bytes, status: int, why: str) -> None:
    async def check(rig: Rig) -> None:
        got, raw = await rig.post(f"/fleetd/tasks/{TASK}/{verb}", data=body)
        assert got == status, raw[:300]
        assert why in json.loads(raw)["error"]["message"]
        assert rig.seen == []

    run(lambda path, body: say(200, DONE), check)


@pytest.mark.parametrize("path", ["/fleetd/tasks/0123456789ABCDEF/complete", "/fleetd/tasks/0123/complete",
                                  f"/fleetd/tasks/{TASK}x/fail", f"/fleetd/tasks/{TASK}/retry", "/fleetd/tasks",
                                  "/fleetd/tasks/"])
def test_a_task_path_that_is_no_route_is_404_and_not_relayed(path: str) -> None:
    async def check(rig: Rig) -> None:
        status, raw = await rig.post(path, {"output": 1})
        assert (status, error_code(raw)) == (404, "not_found")
        async with rig.client.get(rig.url + "/fleetd/tasks/next") as response:  # the route takes POST only
            assert response.status == 404
        assert rig.seen == []

    run(lambda path, body: say(200, DONE), check)


def test_an_output_of_1_mib_is_relayed_whole_and_compact() -> None:
    output = {"rows": [{"n": i, "text": "é" * 72} for i in range(6000)]}  # heavy: parsed and written in a thread

    async def check(rig: Rig) -> None:
        sent = json.dumps({"output": output, "attempt": 1}, ensure_ascii=False).encode()  # with spaces, as Python's
        assert (1 << 20) - (64 << 10) < len(sent) < MAX_ANSWER_BODY
        status, raw = await rig.post(f"/fleetd/tasks/{TASK}/complete", data=sent)
        assert status == 200, raw[:300]
        assert rig.seen == [(f"{TASK}/complete", {"agent_id": "agent1", "attempt": 1, "output": output})]

    run(lambda path, body: say(200, DONE), check)


# -- the daemon away -------------------------------------------------------------------------------------------------
def test_a_daemon_that_is_down_fails_or_answers_garbage_is_503_daemon_unreachable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "TASK_NEXT_MARGIN", 0.3)

    async def script(path: str, body: dict[str, Any]) -> Answer:
        if path == "next" and body["wait"] == 0:
            await asyncio.sleep(3)  # past wait + margin
            return 204, None
        if path == "next":
            return 200, {"id": TASK, "attempt": 1}  # no input, no deadline: not a lease
        return (500, {"error": "boom"}) if path.endswith("complete") else (200, b"not json")

    async def check(rig: Rig) -> None:
        start = time.monotonic()
        status, raw = await rig.post("/fleetd/tasks/next?wait=0")
        assert (status, error_code(raw)) == (503, "daemon_unreachable")
        assert time.monotonic() - start < 2
        for path in ("/fleetd/tasks/next?wait=1", f"/fleetd/tasks/{TASK}/complete", f"/fleetd/tasks/{TASK}/fail"):
            status, raw = await rig.post(path, {"error": "x"} if path.endswith("fail") else {})
            assert (status, error_code(raw)) == (503, "daemon_unreachable"), path
        assert rig.held.held("agent1") is None

    run(script, check)


def test_a_daemon_not_listening_is_503_daemon_unreachable() -> None:
    async def check(rig: Rig) -> None:
        for path in ("/fleetd/tasks/next?wait=0", f"/fleetd/tasks/{TASK}/complete", f"/fleetd/tasks/{TASK}/fail"):
            status, raw = await rig.post(path, {"error": "x"} if path.endswith("fail") else {})
            assert (status, error_code(raw)) == (503, "daemon_unreachable"), path

    run(lambda path, body: say(204), check, daemon_up=False)


# -- long-polls ------------------------------------------------------------------------------------------------------
TIMEOUTS = Timeouts(head=0.5, idle=1.0, body_stall=0.5, body=2.0, write=1.0, sweep=0.1)


def test_a_long_poll_outlasts_the_guards_idle_and_head_timers() -> None:
    """The guarded server closes a connection idle for 1 s here; a long-poll of 2.5 s is a request being handled."""
    async def script(path: str, body: dict[str, Any]) -> Answer:
        await asyncio.sleep(body["wait"])
        return 200, LEASE

    async def main() -> None:
        seen: list[tuple[str, dict[str, Any]]] = []
        async with daemon_socket(daemon_app(seen, script)) as path:
            link = DaemonLink(path)
            guard = Guard(timeouts=TIMEOUTS)
            runner = web.AppRunner(init_gateway(registry_of(), nobody, guard=guard, tasks=link), access_log=None,
                                   keepalive_timeout=TIMEOUTS.idle)  # as service.serve runs it
            await runner.setup()
            listener, sweeper = await serve_guarded(runner, guard, "127.0.0.1", 0)
            port = listener.sockets[0].getsockname()[1]
            try:
                async with aiohttp.ClientSession() as client:
                    start = time.monotonic()
                    async with client.post(f"http://127.0.0.1:{port}/fleetd/tasks/next?wait=2.5") as response:
                        assert (response.status, await response.json()) == (200, LEASE)
                    assert time.monotonic() - start >= 2.5
                assert guard.dropped_slow == 0
            finally:
                await stop_guarded(listener, sweeper)
                await runner.cleanup()
                await link.close()

    asyncio.run(main())


def test_an_agent_hanging_up_a_long_poll_cancels_the_daemons_request() -> None:
    events: dict[str, asyncio.Event] = {}

    async def next_task(request: web.Request) -> web.Response:
        events["asked"].set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            events["cancelled"].set()
            raise
        return web.Response(status=204)

    async def main() -> None:
        events.update(asked=asyncio.Event(), cancelled=asyncio.Event())
        app = web.Application()
        app.router.add_post("/control/tasks/next", next_task)
        async with daemon_socket(app) as path:
            link = DaemonLink(path)
            try:
                async with serve(init_gateway(registry_of(), nobody, tasks=link)) as url:
                    async with aiohttp.ClientSession() as client:
                        with pytest.raises(TimeoutError):
                            async with client.post(url + "/fleetd/tasks/next?wait=30",
                                                   timeout=aiohttp.ClientTimeout(total=0.5)):
                                pass
                    assert events["asked"].is_set()
                    start = time.monotonic()
                    await asyncio.wait_for(events["cancelled"].wait(), GONE_EVERY + 2)
                    assert time.monotonic() - start < GONE_EVERY + 1
                    assert link.task_session is not None
                    assert link.task_session.connector is not None
                    await asyncio.sleep(0.1)
                    assert len(link.task_session.connector._acquired) == 0  # no connection left held
            finally:
                await link.close()

    asyncio.run(main())


def test_zone2_stopping_ends_its_long_polls_at_once() -> None:
    async def script(path: str, body: dict[str, Any]) -> Answer:
        await asyncio.sleep(body["wait"])
        return 204, None

    async def main() -> None:
        async with daemon_socket(daemon_app([], script)) as path:
            link = DaemonLink(path)
            runner = web.AppRunner(init_gateway(registry_of(), nobody, tasks=link), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            try:
                async with aiohttp.ClientSession() as client:
                    poll = asyncio.ensure_future(client.post(f"http://127.0.0.1:{port}/fleetd/tasks/next?wait=30"))
                    await asyncio.sleep(0.3)
                    start = time.monotonic()
                    await runner.cleanup()
                    assert time.monotonic() - start < 2  # not the minute aiohttp waits for handlers
                    response = await poll
                    assert (response.status, error_code(await response.read())) == (503, "zone2_stopping")
                    response.release()
            finally:
                await link.close()

    asyncio.run(main())


# -- what zone 2 holds -----------------------------------------------------------------------------------------------
def test_the_control_api_forgets_the_tasks_of_agents_it_removes() -> None:
    async def main() -> None:
        registry, held = Registry(), HeldTasks()
        for agent in ("a1", "a2", "a3"):
            held.hold(agent, TASK, 1)
        app = init_control(registry, memory_costs(), Guard(), 0.0, held)
        async with TestClient(TestServer(app)) as client:
            async with client.delete("/control/agents/a1") as response:
                assert response.status == 200
            assert (held.held("a1"), held.held("a2")) == (None, HeldTask(TASK, 1))
            async with client.put("/control/agents", json=[{"agent_id": "a2", "ip": "10.0.0.2"}]) as response:
                assert response.status == 200
            assert (held.held("a2"), held.held("a3"), len(held)) == (HeldTask(TASK, 1), None, 1)

    asyncio.run(main())


def test_the_gateway_keeps_what_agents_hold_in_the_app() -> None:
    held = HeldTasks()
    app = init_gateway(registry_of(), nobody, held=held)
    assert app[TASKS] is held
    assert isinstance(init_gateway(registry_of(), nobody)[TASKS], HeldTasks)


def test_more_long_polls_than_a_connection_pool_holds_reach_the_daemon_side_by_side() -> None:
    """A pool of 100 connections (aiohttp's default) would queue the 101st agent's long-poll behind the others."""
    agents = 150
    arrived: list[int] = []
    everyone = asyncio.Event()

    async def script(path: str, body: dict[str, Any]) -> Answer:
        arrived.append(1)
        if len(arrived) == agents:
            everyone.set()
        await asyncio.wait_for(everyone.wait(), 5)  # a 500, which zone 2 answers 503, if some never come
        return 204, None

    async def check(rig: Rig) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
            async def poll() -> int:
                async with client.post(rig.url + "/fleetd/tasks/next?wait=10") as response:
                    return response.status

            assert await asyncio.gather(*(poll() for _ in range(agents))) == [204] * agents

    run(script, check)


Meanwhile = Callable[[DaemonLink, list["asyncio.Future[Any]"]], Awaitable[None]]


async def relayed_behind_a_first(answers: dict[str, Answer], outputs: list[str], meanwhile: Meanwhile | None = None
                                 ) -> tuple[list[Any], list[tuple[str, dict[str, Any]]]]:
    """Completion t0 goes to the daemon and is held there until the others (t1, t2 ... with ``outputs``) have come
    to zone 2 behind it: they go as one group. The daemon answers an output named in ``answers`` so, the others as
    succeeded. ``meanwhile`` looks at the link before t0 is let go. Each one's reply (or what it raised), and what the
    daemon saw."""
    gate = asyncio.Event()

    async def script(path: str, body: dict[str, Any]) -> Answer:
        if body["output"] == "first":
            await gate.wait()
        if body["output"] in answers:
            return answers[body["output"]]
        return 200, {"id": path.split("/")[0], "state": "succeeded", "attempts": 1}

    seen: list[tuple[str, dict[str, Any]]] = []
    async with daemon_socket(daemon_app(seen, script)) as path:
        link = DaemonLink(path)
        try:
            first = asyncio.ensure_future(link.task_complete("t0", TaskComplete("a0", 1, "first")))
            await asyncio.sleep(0.05)
            rest = [asyncio.ensure_future(link.task_complete(f"t{n}", TaskComplete(f"a{n}", 1, output)))
                    for n, output in enumerate(outputs, 1)]
            await asyncio.sleep(0.01)
            if meanwhile is not None:
                await meanwhile(link, rest)
            gate.set()
            replies = await asyncio.gather(first, *rest, return_exceptions=True)
        finally:
            await link.close()
    return replies, seen


def test_completions_that_come_together_go_to_the_daemon_as_one_group() -> None:
    """The first completion goes alone, at once; those that come while it is on its way go together right after, in
    one request (one transaction in the daemon), each answered as alone. One that waits for its next task, or whose
    output is large, goes alone."""

    async def meanwhile(link: DaemonLink, rest: list[asyncio.Future[Any]]) -> None:
        waits = asyncio.ensure_future(link.task_complete("t4", TaskComplete("a4", 1, "z", next_wait=5)))
        large = asyncio.ensure_future(link.task_complete("t5", TaskComplete("a5", 1, "L" * (20 << 10))))
        await asyncio.sleep(0.05)
        assert not any(r.done() for r in rest), "they wait for the group on its way"
        assert waits.done() and large.done(), "a completion that waits, or a large one, goes alone"

    replies, seen = asyncio.run(relayed_behind_a_first({"stale": (409, CONFLICT)}, ["x", "stale", "y"], meanwhile))
    assert [r.status for r in replies] == [200, 200, 409, 200]
    assert replies[1].outcome is not None and replies[1].outcome.id == "t1"
    assert json.loads(replies[2].body) == CONFLICT
    paths = [p for p, _ in seen]
    assert paths.index("completions") > paths.index("t0/complete")
    assert seen[paths.index("completions")][1] == {"count": 3}
    assert paths[paths.index("completions") + 1:paths.index("completions") + 4] == [
        "t1/complete", "t2/complete", "t3/complete"]


def test_a_group_the_daemon_cannot_read_goes_again_each_alone() -> None:
    """One agent's completion that makes the daemon refuse the whole group (400) must not cost the others theirs:
    each goes again alone, and only the culprit's is refused."""
    refused = (400, {"error": {"type": "invalid_request", "code": "invalid_request", "message": "too deep"}})
    replies, seen = asyncio.run(relayed_behind_a_first({"unreadable": refused}, ["x", "unreadable", "y"]))
    assert [r.status for r in replies] == [200, 200, 400, 200]
    assert [p for p, _ in seen].count("completions") == 1
    assert {p for p, _ in seen} >= {"t1/complete", "t2/complete", "t3/complete"}


def test_an_answer_in_a_group_that_cannot_be_read_fails_that_completion_alone() -> None:
    garbled = (200, {"id": "t1"})  # no state, no attempts: not an outcome
    replies, seen = asyncio.run(relayed_behind_a_first({"garbled": garbled}, ["garbled", "fine"]))
    assert [p for p, _ in seen].count("completions") == 1
    assert isinstance(replies[1], service.DaemonUnreachable)
    assert not isinstance(replies[2], BaseException) and replies[2].status == 200
