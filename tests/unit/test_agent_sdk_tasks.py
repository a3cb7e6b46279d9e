"""fleetd_agent.tasks() (sdk/python) against a loopback server standing in for zone 2's task routes; SIGTERM's drain
in a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

SDK = Path(__file__).resolve().parents[2] / "sdk" / "python"
sys.path.insert(0, str(SDK))

import fleetd_agent  # noqa: E402
from fleetd_agent import Task, TaskError, TaskLost  # noqa: E402

Reply = tuple[int, Any]  # status and JSON body (None: none)
CONFLICT = {"error": {"type": "conflict", "code": "conflict", "message": "attempt 1 is not the current lease"}}


def lease(n: int, attempt: int = 1) -> dict[str, Any]:
    return {"id": f"{n:016x}", "input": {"n": n}, "attempt": attempt, "deadline": "2026-06-01T12:00:00Z"}


def asks_for_a_task(path: str) -> bool:
    return path.startswith("/fleetd/tasks/next")


def outcome(body: dict[str, Any], path: str) -> dict[str, Any]:
    route = path.split("?")[0]
    state = "succeeded" if route.endswith("/complete") else ("queued" if body.get("retry") else "failed")
    return {"id": route.split("/")[3], "state": state, "attempts": body["attempt"]}


@dataclass
class Gateway:
    """Zone 2 as the test scripts it: ``script(path, body)`` answers each request (default: the leases in
    ``leases``, then 204; 200 to every completion and failure)."""

    url: str = ""
    leases: list[dict[str, Any]] = field(default_factory=list)
    script: Callable[[str, Any], Reply] | None = None
    requests: list[tuple[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str, body: Any) -> Reply:
        if self.script is not None:
            return self.script(path, body)
        if path.startswith("/fleetd/tasks/next"):
            with self.lock:
                return (200, self.leases.pop(0)) if self.leases else (204, None)
        if "?next=" in path:  # as zone 2: the answer brings the agent's next task (null: none was ready)
            with self.lock:
                return 200, outcome(body, path) | {"next": self.leases.pop(0) if self.leases else None}
        return 200, outcome(body, path)

    def seen(self, kind: str | None = None) -> list[tuple[str, Any]]:
        with self.lock:
            return [r for r in self.requests if kind is None or kind in r[0]]


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    state = Gateway()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            body = json.loads(raw) if raw else None
            with state.lock:
                state.requests.append((self.path, body))
            status, answer = state.answer(self.path, body)
            data = b"" if answer is None else json.dumps(answer).encode()
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            if not isinstance(sys.exc_info()[1], ConnectionError):  # an agent killed mid-request cuts its own
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("FLEETD_GATEWAY_URL", state.url)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(fleetd_agent, "TASK_RETRY_FIRST", 0.01)
    monkeypatch.setattr(fleetd_agent, "TASK_RETRY_CAP", 0.04)
    fleetd_agent.stopping_event.clear()
    yield
    fleetd_agent.stopping_event.clear()
    assert fleetd_agent._task_idle.is_set()  # no test leaves a task in hand behind


def test_tasks_are_taken_answered_and_the_loop_stops_when_the_agent_should(gateway: Gateway) -> None:
    gateway.leases = [lease(1), {**lease(2, attempt=3), "max_usd": "0.25"}, lease(3)]
    taken: list[Task] = []
    for task in fleetd_agent.tasks(wait=0.5, prefetch=True):
        taken.append(task)
        assert not fleetd_agent._task_idle.is_set()  # in hand: a SIGTERM's drain waits for it
        result = task.complete({"sum": task.input["n"] * 2})
        assert result == {"id": task.id, "state": "succeeded", "attempts": task.attempt}
        assert task.answered and task.outcome == result
        if len(taken) == 2:
            fleetd_agent.stopping_event.set()  # SIGTERM came: finish this one, take no other
    assert [(t.id, t.input, t.attempt, t.deadline, t.max_usd) for t in taken] == [
        (f"{1:016x}", {"n": 1}, 1, "2026-06-01T12:00:00Z", None),
        (f"{2:016x}", {"n": 2}, 3, "2026-06-01T12:00:00Z", "0.25")]
    # Each completion brings the next task (one round trip per task); the one the last brought as SIGTERM came is
    # given back, not handed out.
    assert gateway.seen() == [
        ("/fleetd/tasks/next?wait=0.5", {}),
        (f"/fleetd/tasks/{1:016x}/complete?next=0", {"output": {"sum": 2}, "attempt": 1}),
        (f"/fleetd/tasks/{2:016x}/complete?next=0", {"output": {"sum": 4}, "attempt": 3}),
        (f"/fleetd/tasks/{3:016x}/fail", {"error": fleetd_agent.STOPPING, "retry": True, "attempt": 1}),
    ]


def test_no_task_means_asking_again_with_the_default_wait(gateway: Gateway) -> None:
    calls: list[str] = []

    def script(path: str, body: Any) -> Reply:
        calls.append(path)
        return (204, None) if len(calls) < 3 else (200, lease(7))

    gateway.script = script
    loop = fleetd_agent.tasks()
    task = next(loop)
    assert task.id == f"{7:016x}"
    assert calls == ["/fleetd/tasks/next?wait=30"] * 3
    task.complete()
    loop.close()


def test_a_failure_carries_its_error_retry_and_attempt(gateway: Gateway) -> None:
    gateway.leases = [lease(1, attempt=2), lease(2)]
    loop = fleetd_agent.tasks(wait=0)
    first = next(loop)
    assert first.fail("rate limited") == {"id": first.id, "state": "queued", "attempts": 2}
    second = next(loop)
    second.fail(ValueError("no such page"), retry=False)
    with pytest.raises(RuntimeError, match="answered already"):
        second.complete(1)
    loop.close()
    assert [body for _, body in gateway.seen("/fail")] == [
        {"error": "rate limited", "retry": True, "attempt": 2},
        {"error": "ValueError: no such page", "retry": False, "attempt": 1}]
    assert gateway.seen("/complete") == []


def test_an_error_is_cut_to_what_the_gateway_takes(gateway: Gateway) -> None:
    gateway.leases = [lease(1)]
    for task in fleetd_agent.tasks(wait=0):
        task.fail("x" * 20_000)
        break
    [(_, body)] = gateway.seen("/fail")
    assert len(body["error"]) == fleetd_agent.MAX_TASK_ERROR and body["error"].endswith("…")


def test_a_task_left_unanswered_is_failed_before_the_next_is_taken(gateway: Gateway) -> None:
    gateway.leases = [lease(1), lease(2)]
    loop = fleetd_agent.tasks(wait=0)
    first = next(loop)
    second = next(loop)  # the body forgot to answer the first
    assert first.answered and not second.answered
    assert gateway.seen()[1] == (f"/fleetd/tasks/{1:016x}/fail",
                                 {"error": "not completed by the agent", "retry": True, "attempt": 1})
    second.complete("ok")
    loop.close()


def test_a_loop_ended_by_break_or_an_exception_gives_its_task_back(gateway: Gateway) -> None:
    gateway.leases = [lease(1), lease(2)]
    for _task in fleetd_agent.tasks(wait=0):
        break
    with pytest.raises(ZeroDivisionError):
        for task in fleetd_agent.tasks(wait=0):
            task.input["n"] / 0
    assert [(path, body["error"]) for path, body in gateway.seen("/fail")] == [
        (f"/fleetd/tasks/{n:016x}/fail", fleetd_agent.LOOP_ENDED) for n in (1, 2)]


def test_a_task_an_answer_brought_is_handed_out_without_asking_or_given_back_when_the_loop_ends(
        gateway: Gateway) -> None:
    gateway.leases = [lease(1), lease(2), lease(3)]
    loop = fleetd_agent.tasks(wait=0, prefetch=True)
    first = next(loop)
    first.fail("flaky")  # brings the second
    second = next(loop)
    assert second.id == f"{2:016x}" and second.outcome is None
    assert second.complete() == {"id": second.id, "state": "succeeded", "attempts": 1}  # "next" is the loop's
    loop.close()  # the third, brought by that completion and never handed out, goes back
    assert [(p, b.get("error")) for p, b in gateway.seen()] == [
        ("/fleetd/tasks/next?wait=0", None),
        (f"/fleetd/tasks/{1:016x}/fail?next=0", "flaky"),
        (f"/fleetd/tasks/{2:016x}/complete?next=0", None),
        (f"/fleetd/tasks/{3:016x}/fail", fleetd_agent.LOOP_ENDED)]


def test_without_prefetch_or_outside_a_loop_an_answer_asks_for_no_next(gateway: Gateway) -> None:
    gateway.leases = [lease(1), lease(2)]
    for task in fleetd_agent.tasks(wait=0):  # the default: a body may go on working after its answer
        task.complete("done")
        if task.input["n"] == 2:
            fleetd_agent.stopping_event.set()
    Task(gateway.url, lease(5)).complete("done")
    assert [p for p, _ in gateway.seen()] == [
        "/fleetd/tasks/next?wait=0", f"/fleetd/tasks/{1:016x}/complete", "/fleetd/tasks/next?wait=0",
        f"/fleetd/tasks/{2:016x}/complete", f"/fleetd/tasks/{5:016x}/complete"]


@pytest.mark.parametrize(("status", "body"), [(409, CONFLICT), (404, {"error": {"code": "not_found", "message":
                                                                                  "no such task"}})])
def test_an_answer_refused_409_or_404_is_a_lost_task_and_the_loop_moves_on(
        gateway: Gateway, status: int, body: Any) -> None:
    def script(path: str, sent: Any) -> Reply:
        if path.startswith("/fleetd/tasks/next"):
            return (200, lease(sum(1 for p, _ in gateway.seen() if asks_for_a_task(p))))
        return status, body

    gateway.script = script
    loop = fleetd_agent.tasks(wait=0)
    task = next(loop)
    with pytest.raises(TaskLost) as lost:
        task.complete("late")
    assert isinstance(lost.value, RuntimeError)
    assert (lost.value.status, lost.value.code) == (status, body["error"]["code"])
    assert task.answered
    second = next(loop)  # the lost one is not failed on the way
    assert second.id == f"{2:016x}"
    loop.close()  # the second, unanswered, is given back: refused the same way, which the loop takes quietly
    assert [path for path, _ in gateway.seen("/fail")] == [f"/fleetd/tasks/{second.id}/fail"]


def test_an_unreachable_gateway_or_daemon_is_retried_not_raised(gateway: Gateway) -> None:
    calls: list[str] = []

    def script(path: str, body: Any) -> Reply:
        calls.append(path)
        if len(calls) <= 3:  # next three times, then its complete once
            return 503, {"error": {"code": "daemon_unreachable", "message": "the daemon did not answer"}}
        if len(calls) == 5:
            return 502, None
        return (200, lease(1)) if asks_for_a_task(path) else (200, outcome(body, path))

    gateway.script = script
    loop = fleetd_agent.tasks(wait=0)
    task = next(loop)
    assert task.complete(1)["state"] == "succeeded"
    loop.close()
    assert [p.rsplit("/", 1)[-1] for p in calls] == ["next?wait=0"] * 4 + ["complete"] * 2


def test_a_gateway_that_does_not_answer_is_retried_until_the_agent_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: connections are refused
    monkeypatch.setenv("FLEETD_GATEWAY_URL", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    threading.Timer(0.3, fleetd_agent.stopping_event.set).start()
    assert list(fleetd_agent.tasks(wait=1)) == []
    assert 0.3 <= time.monotonic() - start < 2


def test_an_answer_retried_past_its_patience_raises(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleetd_agent, "TASK_ANSWER_PATIENCE", 0.2)
    gateway.script = lambda path, body: (200, lease(1)) if asks_for_a_task(path) else (503, None)
    loop = fleetd_agent.tasks(wait=0)
    task = next(loop)
    with pytest.raises(TaskError, match="no answer from fleetd") as refused:
        task.complete(1)
    assert not isinstance(refused.value, TaskLost) and not task.answered
    gateway.script = lambda path, body: (200, outcome(body, path))
    task.complete(1)  # still held: it may be answered once fleetd is back
    loop.close()


@pytest.mark.parametrize(("status", "code"), [(403, "unknown_agent"), (400, "bad_request"), (404, "not_found")])
def test_a_refused_request_for_a_task_raises_with_the_gateways_code(gateway: Gateway, status: int, code: str) -> None:
    gateway.script = lambda path, body: (status, {"error": {"type": code, "code": code, "message": "no"}})
    with pytest.raises(TaskError) as refused:
        next(iter(fleetd_agent.tasks(wait=0)))
    assert (refused.value.status, refused.value.code, refused.value.message) == (status, code, "no")
    assert not isinstance(refused.value, TaskLost)
    assert len(gateway.seen()) == 1  # not retried


def test_a_complete_refused_400_leaves_the_task_held_to_be_failed(gateway: Gateway) -> None:
    def script(path: str, body: Any) -> Reply:
        if asks_for_a_task(path):
            return 200, lease(1)
        if "/complete" in path:
            return 413, {"error": {"code": "request_too_large", "message": "task completions are limited to 1 MiB"}}
        return 200, outcome(body, path)

    gateway.script = script
    for task in fleetd_agent.tasks(wait=0):
        with pytest.raises(TaskError) as refused:
            task.complete("x" * 100)
        assert refused.value.code == "request_too_large" and not task.answered
        task.fail("output too large", retry=False)
        break
    assert [body["error"] for _, body in gateway.seen("/fail")] == ["output too large"]


def test_a_task_handed_out_as_the_agent_stops_is_given_back_not_yielded(gateway: Gateway) -> None:
    def script(path: str, body: Any) -> Reply:
        if asks_for_a_task(path):
            fleetd_agent.stopping_event.set()  # SIGTERM during the long-poll
            return 200, lease(1)
        return 200, outcome(body, path)

    gateway.script = script
    assert list(fleetd_agent.tasks(wait=0)) == []
    assert [body["error"] for _, body in gateway.seen("/fail")] == [fleetd_agent.STOPPING]


def test_nothing_is_asked_once_the_agent_should_stop(gateway: Gateway) -> None:
    fleetd_agent.stopping_event.set()
    assert list(fleetd_agent.tasks()) == []
    assert gateway.seen() == []


def test_bad_arguments_and_no_gateway_raise_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    for wait in (-1, 61, float("nan")):
        with pytest.raises(ValueError, match="wait must be from 0 to 60"):
            fleetd_agent.tasks(wait)
    monkeypatch.delenv("FLEETD_GATEWAY_URL", raising=False)
    with pytest.raises(TaskError, match="FLEETD_GATEWAY_URL is not set"):
        fleetd_agent.tasks()


def test_an_output_json_cannot_encode_raises_before_anything_is_sent(gateway: Gateway) -> None:
    gateway.leases = [lease(1)]
    for task in fleetd_agent.tasks(wait=0):
        with pytest.raises(ValueError):
            task.complete(float("nan"))
        with pytest.raises(TypeError):
            task.complete({1, 2})
        task.complete(None)
        break
    assert [body for _, body in gateway.seen("/complete")] == [{"output": None, "attempt": 1}]


# --- SIGTERM drains a worker -----------------------------------------------------------------------------------
WORKER = """
import sys, time
sys.path.insert(0, {sdk!r})
import fleetd_agent
def drain():
    time.sleep(0.3)  # a checkpoint to write: the main thread, done with its task, must not end the process first
    print("drained", flush=True)
fleetd_agent.on_sigterm(drain, timeout={timeout})
for task in fleetd_agent.tasks(wait=5):
    print("working", task.id, flush=True)
    time.sleep({work})
    task.complete({{"done": task.id}})
    print("completed", task.id, flush=True)
"""


def worker(gateway: Gateway, work: float, timeout: float = 5.0) -> subprocess.Popen[str]:
    code = WORKER.format(sdk=str(SDK), work=work, timeout=timeout)
    env = {**os.environ, "FLEETD_GATEWAY_URL": gateway.url}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def test_sigterm_during_a_task_finishes_it_takes_no_other_and_exits_0(gateway: Gateway) -> None:
    gateway.leases = [lease(1), lease(2)]
    process = worker(gateway, work=1.0)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().split() == ["working", f"{1:016x}"]
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "drained" in out
    assert [path.rsplit("/", 1)[-1] for path, _ in gateway.seen()] == ["next?wait=5", "complete"]


def test_sigterm_while_waiting_for_a_task_exits_at_once(gateway: Gateway) -> None:
    asked, done = threading.Event(), threading.Event()

    def script(path: str, body: Any) -> Reply:
        asked.set()
        done.wait(5)  # a long-poll the agent need not wait out
        return 204, None

    gateway.script = script
    process = worker(gateway, work=0)
    try:
        assert asked.wait(10)
        start = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
        assert time.monotonic() - start < 2
    finally:
        done.set()
        process.kill()
    assert process.returncode == 0, err


def test_a_task_outlasting_the_drain_timeout_exits_1_saying_so(gateway: Gateway) -> None:
    gateway.leases = [lease(1)]
    process = worker(gateway, work=5.0, timeout=0.5)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("working")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 1
    assert "the task in hand was not answered within 0.5 s" in err and "drained" not in out
