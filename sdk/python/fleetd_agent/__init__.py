"""fleetd_agent: what an agent under fleetd needs, in the standard library only.

The protocol (docs/agent-protocol.md) is plain HTTP and a directory; this
module wraps it for Python agents:

- ``heartbeat()`` / ``progress()`` / ``start_heartbeat()``: tell the gateway the
  agent is alive, optionally with progress. The daemon stops an agent that has
  not sent a heartbeat for twice ``FLEETD_HEARTBEAT_INTERVAL``.
- ``on_sigterm()`` / ``should_stop()`` / ``stopping_event``: drain and exit 0
  within the grace period when the daemon stops the agent.
- ``save_checkpoint()`` / ``load_checkpoint()``: state that survives restarts of
  the same agent, written atomically to ``FLEETD_CHECKPOINT_DIR``.

Example::

    import fleetd_agent

    fleetd_agent.on_sigterm(lambda: fleetd_agent.save_checkpoint(state))
    fleetd_agent.start_heartbeat()
    state = fleetd_agent.load_checkpoint(default={"step": 0})
    while state["step"] < 15 and not fleetd_agent.should_stop():
        do_step(state)
        state["step"] += 1
        fleetd_agent.save_checkpoint(state)
        fleetd_agent.progress(state["step"], 15)

A worker of a deployment takes tasks from the daemon's queue with ``tasks()``,
one at a time, and answers each with ``Task.complete()`` or ``Task.fail()``.
With ``on_sigterm()`` installed, SIGTERM drains it: the task in hand is
finished (within the drain timeout), no other is taken, and the process exits
0. A heartbeat thread keeps the daemon from taking it for stuck while a task
runs::

    import fleetd_agent

    fleetd_agent.on_sigterm()
    fleetd_agent.start_heartbeat()
    for task in fleetd_agent.tasks():
        try:
            result = summarise(task.input)
        except Exception as exc:
            task.fail(exc)  # queued again after a backoff while attempts remain
            continue
        try:
            task.complete(result)
        except fleetd_agent.TaskLost:
            pass  # given back or cancelled meanwhile: someone else has it, or nobody wants it
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

__version__ = "0.1.0"

__all__ = [
    "Heartbeater",
    "Task",
    "TaskError",
    "TaskLost",
    "agent_id",
    "checkpoint_dir",
    "gateway_url",
    "heartbeat",
    "load_checkpoint",
    "load_checkpoint_bytes",
    "on_sigterm",
    "progress",
    "save_checkpoint",
    "save_checkpoint_bytes",
    "should_stop",
    "start_heartbeat",
    "stopping_event",
    "tasks",
]

HEARTBEAT_PATH = "/fleetd/heartbeat"
DEFAULT_CHECKPOINT_DIR = "/fleetd/checkpoint"
# Docker's own default stop timeout, used when FLEETD_GRACE_SECONDS is absent.
DEFAULT_GRACE_SECONDS = 10.0
# Time left after draining for flushing and exiting before SIGKILL.
GRACE_MARGIN_SECONDS = 2.0
MIN_DRAIN_SECONDS = 1.0

# The gateway is reached directly: an HTTP(S)_PROXY in the agent's env must not catch heartbeats.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def agent_id() -> str | None:
    """This agent's id (``FLEETD_AGENT_ID``), or None outside fleetd."""
    return os.environ.get("FLEETD_AGENT_ID") or None


def gateway_url() -> str | None:
    """The gateway's base URL (``FLEETD_GATEWAY_URL``) without a trailing slash, or None outside fleetd."""
    url = os.environ.get("FLEETD_GATEWAY_URL", "").strip()
    return url.rstrip("/") or None


def _env_seconds(name: str, default: float) -> float:
    """A non-negative number of seconds from the environment; ``default`` when absent or unusable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):  # also rejects NaN
        print(f"fleetd_agent: ignoring {name}={raw!r}: not a number of seconds", file=sys.stderr)
        return default
    return value


# --- heartbeats --------------------------------------------------------------


def _progress_body(step: int | None, total: int | None, message: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if step is not None:
        body["step"] = step
    if total is not None:
        body["total"] = total
    if message is not None:
        body["message"] = message
    return body


def heartbeat(
    step: int | None = None,
    total: int | None = None,
    message: str | None = None,
    *,
    timeout: float = 2.0,
) -> bool:
    """Send one heartbeat, with whichever progress fields are given; True when the gateway answered 2xx.

    ``POST $FLEETD_GATEWAY_URL/fleetd/heartbeat`` with a JSON body such as
    ``{"step": 8, "total": 15}`` (``{}`` when no field is given). Never raises:
    an unreachable gateway, a timeout or a non-2xx answer all give False, and so
    does a missing ``FLEETD_GATEWAY_URL`` (nothing is sent).
    """
    base = gateway_url()
    if base is None:
        return False
    try:
        body = json.dumps(_progress_body(step, total, message)).encode()
        request = urllib.request.Request(
            base + HEARTBEAT_PATH,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"fleetd-agent/{__version__}"},
        )
        with _opener.open(request, timeout=timeout) as response:
            response.read()
            return 200 <= int(response.status) < 300
    except urllib.error.HTTPError as error:
        error.close()
        return False
    except Exception:  # a heartbeat must never take the agent down
        return False


_progress_lock = threading.Lock()
_progress_state: dict[str, Any] = {}


def _latest_progress() -> dict[str, Any]:
    with _progress_lock:
        return dict(_progress_state)


def progress(step: int | None = None, total: int | None = None, message: str | None = None) -> bool:
    """Record progress and send one heartbeat carrying it right away; returns what ``heartbeat()`` returned.

    Progress accumulates: a field passed as None keeps its previous value, so
    ``progress(total=15)`` once and then ``progress(step=i)`` reports both.
    Pass ``message=""`` to clear the message. A running ``Heartbeater`` sends
    the latest progress with every beat.
    """
    with _progress_lock:
        _progress_state.update(_progress_body(step, total, message))
        latest = dict(_progress_state)
    return heartbeat(latest.get("step"), latest.get("total"), latest.get("message"))


class Heartbeater:
    """A daemon thread that sends a heartbeat every ``interval`` seconds, with the latest ``progress()``.

    The first heartbeat is sent as soon as it starts. ``stop()`` is safe to call
    from any thread and more than once. A Heartbeater with interval 0 is a no-op
    that never starts. Usable as a context manager.
    """

    def __init__(self, interval: float, *, timeout: float = 2.0) -> None:
        if not interval >= 0:
            raise ValueError(f"heartbeat interval must be >= 0 seconds, not {interval!r}")
        self.interval = float(interval)
        self.timeout = timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.beats = 0
        self.failures = 0

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stop.is_set()

    def start(self) -> Heartbeater:
        """Start the thread (once); returns self. Does nothing when the interval is 0."""
        with self._lock:
            if self.interval > 0 and self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="fleetd-heartbeat", daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop sending heartbeats; waits up to ``timeout`` seconds for a heartbeat in flight."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.timeout + 1.0 if timeout is None else timeout)

    def _run(self) -> None:
        deadline = time.monotonic()
        while True:
            latest = _latest_progress()
            ok = heartbeat(latest.get("step"), latest.get("total"), latest.get("message"), timeout=self.timeout)
            self.beats += 1
            self.failures += 0 if ok else 1
            # Keep the cadence even when a heartbeat is slow; after a long stall, start counting afresh.
            now = time.monotonic()
            deadline = max(deadline + self.interval, now)
            if self._stop.wait(deadline - now):
                return

    def __enter__(self) -> Heartbeater:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Heartbeater interval={self.interval} running={self.running} beats={self.beats}>"


def start_heartbeat(interval: float | None = None) -> Heartbeater:
    """Start sending heartbeats every ``interval`` seconds (default: ``FLEETD_HEARTBEAT_INTERVAL``).

    Returns a stopped, no-op Heartbeater when heartbeats are off (interval 0 or
    unset) or there is no gateway (``FLEETD_GATEWAY_URL`` unset), so an agent can
    call this unconditionally, under fleetd or not.
    """
    if interval is None:
        interval = _env_seconds("FLEETD_HEARTBEAT_INTERVAL", 0.0)
    beater = Heartbeater(interval)
    if gateway_url() is None:
        return beater
    return beater.start()


# --- stopping ----------------------------------------------------------------

stopping_event = threading.Event()
"""Set once SIGTERM arrived (after ``on_sigterm()``): take no new work."""


def should_stop() -> bool:
    """True once the daemon asked this agent to stop (SIGTERM, with ``on_sigterm()`` installed)."""
    return stopping_event.is_set()


def _default_drain_timeout() -> float:
    grace = _env_seconds("FLEETD_GRACE_SECONDS", DEFAULT_GRACE_SECONDS)
    return max(MIN_DRAIN_SECONDS, grace - GRACE_MARGIN_SECONDS)


def _flush_streams(timeout: float = 1.0) -> None:
    """Flush stdout and stderr, giving up after ``timeout``: a thread stuck writing may hold their locks."""

    def flush() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except Exception:  # a closed or broken stream must not keep the process alive
                pass

    flusher = threading.Thread(target=flush, name="fleetd-flush", daemon=True)
    flusher.start()
    flusher.join(timeout)


def _say(line: str) -> None:
    """One line to fd 2, bypassing sys.stderr (its lock may be held by a blocked thread)."""
    with contextlib.suppress(OSError):
        os.write(2, f"fleetd_agent: {line}\n".encode(errors="replace"))


def _exit_code_of(stop: SystemExit) -> int:
    if stop.code is None:
        return 0
    return stop.code if isinstance(stop.code, int) else 1


def _run_drain(drain: Callable[[], object], exit_code: int, outcome: list[int]) -> None:
    try:
        drain()
        outcome.append(exit_code)
    except SystemExit as stop:
        outcome.append(_exit_code_of(stop))
    except BaseException:  # any failure of drain means exit 1
        traceback.print_exc()
        _say("drain raised; exiting 1")
        outcome.append(1)


def _after_the_task(drain: Callable[[], object] | None) -> Callable[[], object]:
    """Wait for the task in hand (``tasks()``) to be answered, then drain."""

    def finish() -> object:
        _task_idle.wait()
        return drain() if drain is not None else None

    return finish


def _drain_and_exit(drain: Callable[[], object] | None, timeout: float, exit_code: int) -> None:
    code = exit_code
    if drain is not None or not _task_idle.is_set():
        outcome: list[int] = []
        worker = threading.Thread(
            target=_run_drain, args=(_after_the_task(drain), exit_code, outcome), name="fleetd-drain", daemon=True
        )
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            _flush_streams()
            if not _task_idle.is_set():
                _say(f"the task in hand was not answered within {timeout:g} s; exiting 1 (fleetd gives it back)")
            else:
                _say(f"drain timed out after {timeout:g} s; exiting 1")
            os._exit(1)
        code = outcome[0] if outcome else 1
    _flush_streams()
    os._exit(code)


_sigterm_lock = threading.Lock()
_sigterm_closer: list[threading.Thread] = []  # the thread draining and ending the process, once SIGTERM came


def on_sigterm(
    drain: Callable[[], object] | None = None,
    *,
    timeout: float | None = None,
    exit_code: int = 0,
) -> None:
    """Handle SIGTERM the way fleetd expects: stop taking work, drain, exit within the grace period.

    When SIGTERM arrives:

    1. ``stopping_event`` is set (``should_stop()`` turns True): the agent's
       loop should take no new work (``tasks()`` takes none).
    2. In its own thread, for at most ``timeout`` seconds in all (default:
       ``FLEETD_GRACE_SECONDS`` minus 2 s, at least 1 s; the grace period
       defaults to 10 s when the variable is absent): the task ``tasks()``
       handed out, if one is in hand, is waited for until it is completed or
       failed; then ``drain()`` runs.
    3. stdout and stderr are flushed and the process exits via ``os._exit``:
       with ``exit_code`` (0 by default) when drain returned or there is no
       drain; with 1 when drain raised (the traceback goes to stderr); with the
       code of a ``SystemExit`` drain raised; with 1 and one line on stderr,
       ``fleetd_agent: drain timed out ...``, when drain (or the task in
       hand, which fleetd then gives back to the queue) outlived the timeout.

    The exit does not wait for the main thread, so it happens even when the
    main thread is blocked (in ``sleep``, a socket read, a lock, a long LLM
    call). Because of ``os._exit``, ``atexit`` hooks and ``finally`` blocks of
    other threads do not run: put all cleanup (saving a checkpoint, closing
    files) in ``drain``. Drain runs while the main thread keeps running, so it
    must be safe to call concurrently with the agent's work.

    Python runs signal handlers in the main thread between bytecodes: the
    handler itself is only delayed while the main thread is inside a C
    extension that never releases control. Must be called from the main
    thread (a ``signal`` restriction). Further SIGTERMs while draining are
    ignored. Calling ``on_sigterm`` again replaces the previous settings.
    """
    drain_timeout = _default_drain_timeout() if timeout is None else float(timeout)
    if not drain_timeout > 0:
        raise ValueError(f"drain timeout must be > 0 seconds, not {timeout!r}")
    started: list[threading.Thread] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        # Handlers only set flags and hand off: the work happens in a thread that exits the process.
        stopping_event.set()
        with _sigterm_lock:
            if started:
                return
            closer = threading.Thread(
                target=_drain_and_exit, args=(drain, drain_timeout, exit_code), name="fleetd-sigterm", daemon=True
            )
            started.append(closer)
        closer.start()
        _sigterm_closer[:] = [closer]

    signal.signal(signal.SIGTERM, handle)


# --- tasks -------------------------------------------------------------------

TASKS_PATH = "/fleetd/tasks"
DEFAULT_TASK_WAIT = 30.0  # s a request for a task waits for one (a long-poll)
MAX_TASK_WAIT = 60.0
TASK_POLL_MARGIN = 15.0  # s beyond the wait for the gateway's answer (it gives the daemon 10)
TASK_ANSWER_TIMEOUT = 30.0  # s for the answer to complete() or fail() (the gateway gives the daemon 20)
TASK_RETRY_FIRST = 0.5  # s before retrying an unreachable gateway or daemon, doubling ...
TASK_RETRY_CAP = 5.0  # ... up to this
TASK_ANSWER_PATIENCE = 60.0  # s complete() and fail() keep retrying an unreachable daemon before raising
GIVE_BACK_PATIENCE = 5.0  # s the same for a task the SDK gives back itself
MAX_TASK_ERROR = 10_000  # characters of fail()'s error the gateway takes
NOT_COMPLETED = "not completed by the agent"
LOOP_ENDED = "the agent's task loop ended before the task was completed or failed"
STOPPING = "the agent is stopping (SIGTERM) and took no new task"
_RETRIED = (502, 503, 504)  # the gateway or the daemon is away for now

_task_idle = threading.Event()  # clear while a task handed out by tasks() is not answered (on_sigterm waits for it)
_task_idle.set()


class TaskError(RuntimeError):
    """A task call the gateway refused: ``status`` (0: none was made), ``code`` and ``message`` of its answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({status} {code})" if status else message)
        self.status = status
        self.code = code
        self.message = message


class TaskLost(TaskError):
    """``complete()`` or ``fail()`` refused with 409 (or 404): this attempt no longer holds the task. It was given
    back (a missed heartbeat), cancelled, past its deadline, or answered already. Move on to the next task."""


class _Kept(threading.local):
    """This thread's connection to the gateway, kept alive between task calls: a worker asks for a task and
    answers it on one connection instead of opening one per call (half the work of each task, for zone 2 too)."""

    connection: http.client.HTTPConnection | None = None
    origin: tuple[str, str] = ("", "")
    used: bool = False  # it has answered a request: the server may have closed it since


_kept = _Kept()


def _connection(url: str) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    origin = (parts.scheme, parts.netloc)
    if _kept.connection is None or _kept.origin != origin:
        _drop_connection()
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        _kept.connection, _kept.origin, _kept.used = kind(parts.hostname or "", parts.port), origin, False
    return _kept.connection, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _drop_connection() -> None:
    if _kept.connection is not None:
        _kept.connection.close()
    _kept.connection, _kept.used = None, False


def _post(url: str, body: bytes, timeout: float) -> tuple[int, bytes] | None:
    """POST JSON: the status and body of the answer, or None when none came (unreachable, cut off, timed out).

    On this thread's kept connection; when the gateway had closed it (idle), once more on a new one. The calls
    sent again that way are safe to repeat: ``next`` answers the task already held, a repeated ``complete`` is
    answered as the first was."""
    headers = {"Content-Type": "application/json", "User-Agent": f"fleetd-agent/{__version__}"}
    while True:
        connection, target = _connection(url)
        reused = _kept.used
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        try:
            connection.request("POST", target, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            _drop_connection()
            if reused:
                continue  # closed while kept: nothing of this request was read
            return None
        except (OSError, http.client.HTTPException):  # timeouts, refusals, resets mid-answer
            _drop_connection()
            return None
        _kept.used = True
        if response.will_close:
            _drop_connection()
        return int(response.status), data


def _refusal(status: int, raw: bytes) -> TaskError:
    """The gateway's error answer as an exception (TaskLost for 404 and 409 to complete and fail)."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        code, message = str(error.get("code") or error.get("type") or status), str(error.get("message", ""))
    elif isinstance(error, str):
        code, message = "error", error
    else:
        code, message = f"http_{status}", raw[:200].decode(errors="replace") or f"HTTP {status}"
    return TaskError(status, code, message)


def _post_retrying(url: str, body: bytes, timeout: float, patience: float) -> tuple[int, bytes]:
    """``_post``, retried with a capped backoff while the gateway or the daemon is away, for ``patience`` s."""
    delay = TASK_RETRY_FIRST
    give_up = time.monotonic() + patience
    while True:
        answer = _post(url, body, timeout)
        if answer is not None and answer[0] not in _RETRIED:
            return answer
        if time.monotonic() + delay > give_up:
            status = answer[0] if answer is not None else 0
            raise TaskError(status, "unreachable", f"no answer from fleetd for {patience:g} s: {url}")
        time.sleep(delay)
        delay = min(delay * 2, TASK_RETRY_CAP)


class Task:
    """A task handed out by ``tasks()``: its ``id``, ``input`` (any JSON), ``attempt`` (from 1; the daemon refuses
    an answer from any other), ``deadline`` (ISO 8601: past it the task fails, whatever the attempt) and ``max_usd``
    (the cap on the task's LLM spend, all its attempts together, in US dollars as a decimal string; None: no cap;
    past it zone 2 refuses LLM calls with 429 ``task_budget_exceeded``).

    Answer it once, with ``complete()`` or ``fail()``, from any thread.
    """

    def __init__(self, base: str, lease: dict[str, Any], loop: _Prefetch | None = None) -> None:
        self.id = str(lease["id"])
        self.input: Any = lease.get("input")
        self.attempt = int(lease["attempt"])
        self.deadline = str(lease.get("deadline", ""))
        cap = lease.get("max_usd")
        self.max_usd = None if cap is None else str(cap)
        self.outcome: dict[str, Any] | None = None  # the answer to complete() or fail(): id, state, attempts
        self._url = f"{base}{TASKS_PATH}/{urllib.parse.quote(self.id, safe='')}"
        self._lock = threading.Lock()
        self._answered = False
        self._loop = loop

    @property
    def answered(self) -> bool:
        """True once completed, failed, or lost (TaskLost)."""
        return self._answered

    def complete(self, output: Any = None) -> dict[str, Any]:
        """Record the task as succeeded with ``output`` (any JSON, at most 1 MiB of it); returns
        ``{"id", "state", "attempts"}``.

        Retries for up to a minute while fleetd is unreachable. Raises TaskLost when this attempt no longer holds
        the task, TaskError for another refusal (400 an output that is too large or not JSON: the task is still
        held, so it may be failed instead), TypeError/ValueError for an output JSON cannot encode.
        """
        body = json.dumps({"output": output, "attempt": self.attempt}, separators=(",", ":"), allow_nan=False)
        return self._answer("complete", body.encode(), TASK_ANSWER_PATIENCE, ask_next=True)

    def fail(self, error: str | BaseException, retry: bool = True) -> dict[str, Any]:
        """Record this attempt as failed; returns ``{"id", "state", "attempts"}``.

        ``error``: text (cut to 10,000 characters) or an exception (its type and message). With ``retry`` (the
        default) the task is queued again after a backoff while attempts remain, and is ``dead`` once they are
        spent; ``retry=False`` fails it for good (the input is bad, trying again cannot help). Raises as
        ``complete()`` does.
        """
        return self._fail(error, retry, TASK_ANSWER_PATIENCE, ask_next=True)

    def _fail(self, error: str | BaseException, retry: bool, patience: float, ask_next: bool = False
              ) -> dict[str, Any]:
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"
        text = str(error)
        if len(text) > MAX_TASK_ERROR:
            text = text[: MAX_TASK_ERROR - 1] + "…"
        body = json.dumps({"error": text, "retry": bool(retry), "attempt": self.attempt}, separators=(",", ":"))
        return self._answer("fail", body.encode(), patience, ask_next)

    def _answer(self, verb: str, body: bytes, patience: float, ask_next: bool = False) -> dict[str, Any]:
        """``ask_next``: a task of a ``tasks()`` loop that is not stopping also asks for the loop's next task
        (``?next=0``: one that is ready now, else none), which the loop then hands out without asking again."""
        with self._lock:
            if self._answered:
                raise RuntimeError(f"task {self.id} was answered already")
            loop = self._loop if ask_next and not should_stop() else None
            url = f"{self._url}/{verb}" + ("?next=0" if loop is not None else "")
            status, raw = _post_retrying(url, body, TASK_ANSWER_TIMEOUT, patience)
            if status == 200:
                try:
                    outcome = json.loads(raw)
                except ValueError:
                    outcome = None
                self.outcome = outcome if isinstance(outcome, dict) else {}
                following = self.outcome.pop("next", None)
                if loop is not None and isinstance(following, dict):
                    loop.lease = following
                self._done()
                return self.outcome
            refusal = _refusal(status, raw)
            if status in (404, 409):
                self._done()
                raise TaskLost(refusal.status, refusal.code, refusal.message)
            raise refusal

    def _done(self) -> None:
        self._answered = True
        _task_idle.set()

    def __repr__(self) -> str:
        return f"<Task {self.id} attempt={self.attempt} answered={self._answered}>"


class _Prefetch:
    """A ``tasks()`` loop's next task, as the answer to the task before it brought it (None: ask for one)."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None


def _give_back(task: Task, why: str) -> None:
    """Fail ``task`` for a retry, if it is not answered; never raises (fleetd gives it back when the agent exits)."""
    try:
        if not task.answered:
            task._fail(why, True, GIVE_BACK_PATIENCE)
    except TaskLost:
        pass
    except Exception as exc:  # the loop goes on: the daemon answers the held task again to the next request
        _say(f"could not give task {task.id} back: {exc}")
    finally:
        _task_idle.set()


def tasks(wait: float = DEFAULT_TASK_WAIT, prefetch: bool = False) -> Iterator[Task]:
    """Tasks for this agent, one at a time, for as long as it is not stopping.

    Each request for a task (``POST $FLEETD_GATEWAY_URL/fleetd/tasks/next?wait=..``) waits up to ``wait``
    seconds (0 to 60) for one; when none came it asks again. The loop ends when ``should_stop()`` turns True
    (SIGTERM, with ``on_sigterm()`` installed): the task in hand is finished, no other is taken. A task the
    daemon handed out just as SIGTERM came is given back at once. After SIGTERM the loop does not return:
    it waits for ``on_sigterm``'s drain, which ends the process (the interpreter ending first would cut the
    drain off), so code after the loop runs only when the loop ends for another reason; cleanup belongs in
    the drain.

    Answer every task with ``task.complete(output)`` or ``task.fail(error, retry=...)``. One the loop body
    leaves unanswered is failed (for a retry) before the next is taken, with the error "not completed by the
    agent"; and when the loop ends early (``break``, or an exception in its body), the task in hand is failed
    the same way (the agent's loop ended ...) so that another worker gets it soon. An agent holds one task at
    a time: asked again, the daemon answers the one it holds.

    ``prefetch=True``: each answer given in the loop (before SIGTERM) also asks for the next task ready now
    (``?next=0``), which the loop then hands out without asking again: one round trip per task instead of two,
    for loops whose answer is the last thing they do. The agent holds that task from the answer on, so LLM calls
    made after it count towards the next task; and a task so brought when the loop ends (``break``, SIGTERM) is
    failed for a retry like a task in hand, which uses one of its attempts.

    While the gateway or the daemon is unreachable (no answer, 502, 503, 504) it retries after 0.5 s, doubling
    to 5 s. Other refusals raise TaskError (403: this address is no fleetd agent; 404 or 409: the agent is no
    worker of a deployment). Raises ValueError for a wait out of 0..60, and TaskError at once when
    FLEETD_GATEWAY_URL is unset.
    """
    wait = float(wait)
    if not 0 <= wait <= MAX_TASK_WAIT:
        raise ValueError(f"wait must be from 0 to {MAX_TASK_WAIT:g} seconds, not {wait!r}")
    base = gateway_url()
    if base is None:
        raise TaskError(0, "no_gateway", "FLEETD_GATEWAY_URL is not set: tasks come from fleetd's gateway")
    return _task_loop(base, wait, prefetch)


def _task_loop(base: str, wait: float, prefetching: bool) -> Iterator[Task]:
    url = f"{base}{TASKS_PATH}/next?wait={wait:g}"
    task: Task | None = None
    delay = TASK_RETRY_FIRST
    prefetch = _Prefetch()
    try:
        while True:
            if task is not None:
                _give_back(task, NOT_COMPLETED)
                task = None
            if should_stop():
                break
            lease, prefetch.lease = prefetch.lease, None
            if lease is None:
                answer = _post(url, b"{}", wait + TASK_POLL_MARGIN)
                if answer is None or answer[0] in _RETRIED:
                    stopping_event.wait(delay)
                    delay = min(delay * 2, TASK_RETRY_CAP)
                    continue
                delay = TASK_RETRY_FIRST
                status, raw = answer
                if status == 204:
                    continue
                if status != 200:
                    raise _refusal(status, raw)
                try:
                    lease = json.loads(raw)
                except ValueError as exc:
                    raise TaskError(status, "bad_answer", f"the gateway's task could not be read: {exc}") from None
            try:
                task = Task(base, lease, prefetch if prefetching else None)  # a lease that is no object fails here
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise TaskError(200, "bad_answer", f"the gateway's task could not be read: {exc}") from None
            _task_idle.clear()
            if should_stop():
                _give_back(task, STOPPING)
                task = None
                break
            yield task
    finally:
        if task is not None:
            _give_back(task, LOOP_ENDED)
        if prefetch.lease is not None:  # brought by the last answer, never handed out
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                _give_back(Task(base, prefetch.lease), STOPPING if should_stop() else LOOP_ENDED)
        _task_idle.set()
    _wait_for_the_drain()


def _wait_for_the_drain() -> None:
    """The loop ends because SIGTERM came: with ``on_sigterm()`` installed, its drain is running in a daemon thread
    that ends the process. Wait for it here: the main thread returning from the loop could end the interpreter
    first, and the drain with it, half done."""
    closer = _sigterm_closer[0] if _sigterm_closer else None
    if closer is not None and closer is not threading.current_thread():
        closer.join()


# --- checkpoints -------------------------------------------------------------


def checkpoint_dir() -> Path:
    """The checkpoint directory (``FLEETD_CHECKPOINT_DIR``, default ``/fleetd/checkpoint``).

    Under fleetd it is a volume that survives restarts of the same agent and is
    removed with the agent.
    """
    return Path(os.environ.get("FLEETD_CHECKPOINT_DIR") or DEFAULT_CHECKPOINT_DIR)


def _checkpoint_path(name: str, suffix: str) -> Path:
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"checkpoint name must be a plain file name not starting with '.', not {name!r}")
    return checkpoint_dir() / f"{name}{suffix}"


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, rename over ``path``, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # The rename itself is durable only once the directory is synced.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(data: Any, name: str = "state") -> None:
    """Save ``data`` as JSON in ``<checkpoint_dir>/<name>.json``, atomically.

    A crash or SIGKILL at any moment leaves either the previous checkpoint or
    the new one, never a torn file. Raises TypeError for data JSON cannot
    encode (before anything is written) and OSError when the disk write fails.
    """
    encoded = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    _write_atomically(_checkpoint_path(name, ".json"), encoded)


def load_checkpoint(name: str = "state", default: Any = None) -> Any:
    """The data last saved with ``save_checkpoint(data, name)``, or ``default`` when there is none."""
    try:
        text = _checkpoint_path(name, ".json").read_bytes()
    except FileNotFoundError:
        return default
    return json.loads(text)


def save_checkpoint_bytes(data: bytes, name: str = "state") -> None:
    """Save raw bytes in ``<checkpoint_dir>/<name>.bin``, atomically (as ``save_checkpoint``)."""
    _write_atomically(_checkpoint_path(name, ".bin"), bytes(data))


def load_checkpoint_bytes(name: str = "state", default: bytes | None = None) -> bytes | None:
    """The bytes last saved with ``save_checkpoint_bytes(data, name)``, or ``default`` when there are none."""
    try:
        return _checkpoint_path(name, ".bin").read_bytes()
    except FileNotFoundError:
        return default
