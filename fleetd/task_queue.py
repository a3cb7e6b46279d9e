"""The durable task queue of deployments: each task is a row of state.db, moved by one state machine.

::

    submit ─► queued ──lease──► leased ──complete──► succeeded
                ▲                 │ ├──fail(retry=False)──► failed
                │                 │ ├──fail(retry) / give_back, attempts spent──► dead
                └── after backoff ┘ └──fail(retry) / give_back, attempts left: attempt + 1
    queued | leased ──cancel──► cancelled        queued | leased ──deadline passed──► failed (ttl_expired)

Every change is one ``BEGIN IMMEDIATE`` transaction, so that two connections (or a daemon killed and started
again) never hand one task to two agents, and a lease survives a restart as the row it is. A lease is fenced by
(task id, agent id, attempt): a completion or failure from any other attempt is refused with 409.

Rules where the issue is silent:

- ``attempts`` counts the leases a task has had; the agent sees its attempt from 1. After attempt n ends without
  success the next one waits a full-jitter backoff ``uniform(0, min(cap, base * 2**(n-1)))`` (the exponent counts
  from 0, as in zone 2's ``retry_delay``); base 10 s and cap 6 min, as Kubernetes Jobs back off failed pods.
- ``dead`` means the attempts are spent (a dead letter, kept for inspection); ``failed`` means retrying cannot help:
  the agent said so (``retry: false``), or the deadline passed. The deadline is the submit time plus the ttl and
  bounds the whole task, time in the queue included (Kubernetes Jobs' ``activeDeadlineSeconds``), so an expired
  task is ``failed`` with code ``ttl_expired``: no attempt would be allowed to run.
- Expiry is applied at the start of every transition (lease, complete, fail, give back, cancel), so no task is
  handed out or completed past its deadline even before a sweeper calls :meth:`TaskQueue.expire`.
- The queue keeps no lease timer of its own: an agent's liveness is its heartbeat watchdog, and the daemon calls
  :meth:`TaskQueue.give_back` when an agent exits, is killed or misses heartbeats (and
  :meth:`TaskQueue.give_back_orphans` after a restart). The deadline bounds every lease.
- Cancelling a leased task ends it at once; its agent's completion then gets 409, and the agent may lease another.
- A retried task keeps its place: FIFO is by submit order, among tasks whose backoff has elapsed.
- An idempotency key is remembered as long as its task's record (retention). The same key with another input is
  refused (409) rather than answered with a task that does not do what was asked.
- At most ``max_pending`` unfinished tasks per deployment (Invariant 10: state has a bound): 409 beyond.
- Cost may be added in any state: money spent is counted even when the completion came first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import secrets
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

from fleetd.bounds import MAX_MESSAGE_CHARS, MAX_TEXT_CHARS, MAX_TYPE_CHARS, clip
from fleetd.errors import Conflict, FleetdError, InvalidRequest, NotFound
from fleetd.models import iso, utcnow
from fleetd.store import Store
from fleetd.units import NAME_PATTERN, parse_usd, parse_whole_seconds
from fleetd.zone2.contract import TaskHold, TaskLease
from fleetd.zone2.pricing import nusd, usd

log = logging.getLogger(__name__)


class TaskState(StrEnum):
    QUEUED = "queued"
    LEASED = "leased"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD = "dead"


LIVE_TASK_STATES = (TaskState.QUEUED, TaskState.LEASED)
FINISHED_TASK_STATES = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.DEAD)
TTL_EXPIRED = "ttl_expired"
CANCELLED = "cancelled"
AGENT_ERROR = "agent_error"  # the code of a fail() that names none

DEFAULT_TTL = 3600  # seconds; the deployment defaults
DEFAULT_ATTEMPTS = 3
MAX_TTL = 7 * 86400  # a task's ttl counts its time in the queue too: up to a week, the records' retention
MAX_ATTEMPTS = 100
MAX_BODY_BYTES = 1 << 20  # a task's input, and its output, as JSON
MAX_PENDING = 10_000  # unfinished tasks per deployment
BACKOFF_BASE = 10.0
BACKOFF_CAP = 360.0
SUMMARY_COLUMNS = ("id, deployment, version, route, state, attempts, max_attempts, agent_id, NULL AS input, "
                   "NULL AS output, error, code, cost_nusd, max_nusd, llm_calls, idempotency_key, created_at, "
                   "deadline, retry_at, started_at, finished_at")
_LIVE = "state IN ('queued', 'leased')"
ID_CHUNK = 500  # task ids per query (SQLite's bound parameters)


@dataclass(frozen=True)
class Task:
    """A task as ``task inspect`` shows it. Listings leave ``input`` and ``output`` out (None): up to 1 MiB each."""

    id: str
    deployment: str
    version: str | None  # bound by the first lease
    route: str | None  # the version its submit routed it to during a canary (None: the current one)
    state: TaskState
    attempts: int
    max_attempts: int
    agent_id: str | None  # the holder while leased, the last holder once finished
    input: Any
    output: Any
    error: str | None
    code: str | None
    cost_nusd: int
    max_nusd: int | None
    llm_calls: int
    key: str | None
    created_at: str
    deadline: str
    retry_at: str  # not leased before this (backoff)
    started_at: str | None  # the first lease
    finished_at: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Task:
        def body(text: str | None) -> Any:
            return None if text is None else json.loads(text)

        return cls(row["id"], row["deployment"], row["version"], row["route"], TaskState(row["state"]),
                   row["attempts"], row["max_attempts"], row["agent_id"], body(row["input"]), body(row["output"]),
                   row["error"], row["code"], row["cost_nusd"], row["max_nusd"], row["llm_calls"],
                   row["idempotency_key"], row["created_at"], row["deadline"], row["retry_at"], row["started_at"],
                   row["finished_at"])

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "deployment": self.deployment, "version": self.version, "route": self.route,
                "state": self.state.value,
                "attempts": self.attempts, "max_attempts": self.max_attempts, "agent_id": self.agent_id,
                "input": self.input, "output": self.output, "error": self.error, "code": self.code,
                "cost_usd": usd(self.cost_nusd), "max_usd": None if self.max_nusd is None else usd(self.max_nusd),
                "llm_calls": self.llm_calls, "key": self.key, "created_at": self.created_at,
                "deadline": self.deadline, "retry_at": self.retry_at, "started_at": self.started_at,
                "finished_at": self.finished_at}


class Takes(StrEnum):
    """Which queued tasks of its deployment an agent of version ``v`` may lease."""

    ANY = "any"  # the current version's: unrouted unbound tasks, those routed to v, those bound to v
    ROUTED = "routed"  # a canary's: those routed to v, those bound to v
    BOUND = "bound"  # a replaced (draining) version's: only retries of tasks bound to v
    NONE = "none"  # a blue-green version still starting: nothing yet


_TAKES = {
    Takes.ANY: "((version IS NULL AND (route IS NULL OR route = :v)) OR version = :v)",
    Takes.ROUTED: "((version IS NULL AND route = :v) OR version = :v)",
    Takes.BOUND: "version = :v",
    Takes.NONE: "0",
}


# What ``POST /fleetd/tasks/next`` answers an agent, through zone 2: (id, attempt) fence its completion, and the
# task's cap (max_nusd) is enforced by zone 2. The contract's message, so that both sides write and read one class.
Lease = TaskLease


def json_body(value: Any, what: str) -> str:
    """``value`` as compact JSON within MAX_BODY_BYTES, else InvalidRequest."""
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidRequest(f"task {what}: not JSON: {exc}") from None
    size = len(text.encode())
    if size > MAX_BODY_BYTES:
        raise InvalidRequest(f"task {what}: {size} bytes of JSON, at most {MAX_BODY_BYTES}")
    return text


def check_deployment(deployment: object) -> None:
    if not isinstance(deployment, str) or not NAME_PATTERN.fullmatch(deployment):
        raise InvalidRequest(f"invalid deployment {deployment!r}: 1-63 letters, digits, _ . - starting with a "
                             "letter or digit")


class _NewTask(NamedTuple):
    """A task to queue, checked: its input as JSON text, ttl in seconds, attempts, cap in nUSD, idempotency key."""

    text: str
    ttl: int
    attempts: int
    max_nusd: int | None
    key: str | None


LEASE_BYTES_PER_COMMIT = 1 << 20  # input a group of completions' next leases carries at most (one answer to zone 2)


class Completion(NamedTuple):
    """An agent's answer that its task succeeded (``complete_many``); ``then``: its next lease, of (deployment,
    version, what it may take), is taken in the same transaction."""

    task_id: str
    agent_id: str
    attempt: int
    output: Any
    then: tuple[str, str, Takes] | None = None


def _lease_of(row: dict[str, Any]) -> Lease:
    return Lease(row["id"], json.loads(row["input"]), row["attempts"], row["deadline"], row["max_nusd"])


class TaskQueue:
    """Tasks of every deployment, in the store's state.db; ``clock`` and ``rng`` injected for the tests.

    Each transition is one store transaction: do not call these methods inside another one.
    """

    def __init__(self, store: Store, clock: Callable[[], datetime] = utcnow, rng: random.Random | None = None,
                 backoff_base: float = BACKOFF_BASE, backoff_cap: float = BACKOFF_CAP,
                 max_pending: int = MAX_PENDING) -> None:
        self.store = store
        self.conn = store.conn
        self.clock = clock
        self.rng = rng or random.Random()
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_pending = max_pending
        # Which version a new task of a deployment goes to (None: the current one); called inside the submit's
        # transaction, once per task actually queued (not for an idempotent replay): a canary's split.
        self.router: Callable[[str], str | None] | None = None
        # Hear of the tasks each transition finished (final state), after its commit: the fleet's histograms.
        self.on_finished: list[Callable[[list[Task]], None]] = []
        self._finished: list[str] = []  # ids finished by the transaction under way
        self._told: dict[str, Task] = {}  # the tasks the last transaction finished, as on_finished heard of them

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """One transition's transaction; once it has committed, ``on_finished`` hears of the tasks it finished."""
        self._finished = []
        try:
            with self.store.transaction():
                yield
        except BaseException:
            self._finished = []
            raise
        finished, self._finished = self._finished, []
        self._told = {}
        if finished and self.on_finished:
            tasks = self._summaries(finished)
            self._told = {task.id: task for task in tasks}
            for listener in self.on_finished:
                try:
                    listener(tasks)
                except Exception:  # the transition is done: what listens (metrics) must not undo the answer
                    log.exception("a listener to finished tasks failed")

    def _summaries(self, ids: list[str]) -> list[Task]:
        """The tasks ``ids`` without their input and output."""
        found: list[Task] = []
        for start in range(0, len(ids), ID_CHUNK):
            chunk = ids[start:start + ID_CHUNK]
            marks = ", ".join("?" for _ in chunk)
            found += [Task.from_row(r) for r in self.store.rows(
                f"SELECT {SUMMARY_COLUMNS} FROM tasks WHERE id IN ({marks}) ORDER BY seq", chunk)]
        return found

    def _summary(self, task_id: str) -> Task:
        return self._summaries([task_id])[0]

    def _row(self, sql: str, params: Collection[Any] | dict[str, Any]) -> dict[str, Any] | None:
        rows = self.store.rows(sql, params if isinstance(params, dict) else list(params))
        return rows[0] if rows else None

    def submit(self, deployment: str, payload: Any, *, ttl: object = DEFAULT_TTL,
               attempts: object = DEFAULT_ATTEMPTS, max_usd: object = None, key: str | None = None) -> Task:
        """Queue a task; with ``key``, a second submit to the same deployment answers the first task."""
        check_deployment(deployment)
        new = self._prepare(payload, ttl, attempts, max_usd, key)
        with self._changing():
            task_id = self._insert(deployment, new, self.clock())
        return self.get(task_id)

    def submit_many(self, deployment: str, items: list[dict[str, Any]]) -> list[Task]:
        """Queue several tasks (each a dict of ``submit``'s keyword arguments and ``input``) in one transaction: all
        of them, or none (the error names the first bad one by its index). Answered without their input."""
        check_deployment(deployment)
        prepared = []
        for index, item in enumerate(items):
            try:
                prepared.append(self._prepare(item.get("input"), item.get("ttl", DEFAULT_TTL),
                                              item.get("attempts", DEFAULT_ATTEMPTS), item.get("max_usd"),
                                              item.get("key")))
            except InvalidRequest as exc:
                raise InvalidRequest(f"tasks[{index}]: {exc}") from None
        now = self.clock()
        ids = []
        with self._changing():
            for index, new in enumerate(prepared):
                try:
                    ids.append(self._insert(deployment, new, now))
                except Conflict as exc:
                    raise Conflict(f"tasks[{index}]: {exc}") from None
        found = {task.id: task for task in self._summaries(list(dict.fromkeys(ids)))}
        return [found[task_id] for task_id in ids]

    def _prepare(self, payload: Any, ttl: object, attempts: object, max_usd: object, key: object) -> _NewTask:
        ttl_s = parse_whole_seconds(ttl, "--ttl", 1, MAX_TTL)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= MAX_ATTEMPTS:
            raise InvalidRequest(f"--attempts: a whole number from 1 to {MAX_ATTEMPTS}, got {attempts!r}")
        max_nusd = None if max_usd is None else nusd(parse_usd(max_usd, "--max-usd"))
        if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= MAX_TEXT_CHARS):
            raise InvalidRequest(f"--key: 1 to {MAX_TEXT_CHARS} characters, got {key!r}")
        return _NewTask(json_body(payload, "input"), ttl_s, attempts, max_nusd, key)

    def _insert(self, deployment: str, new: _NewTask, now: datetime) -> str:
        """Inside a transaction: the id of the task ``new`` queued, or of the one its key was used for."""
        if new.key is not None:
            same = self._row("SELECT id, input FROM tasks WHERE deployment = ? AND idempotency_key = ?",
                             (deployment, new.key))
            if same is not None:
                if json.loads(same["input"]) != json.loads(new.text):
                    raise Conflict(f"idempotency key {new.key!r} was used for task {same['id']} with another input")
                return str(same["id"])
        pending = self._live(deployment)
        if pending >= self.max_pending:
            raise Conflict(f"deployment {deployment} has {pending} unfinished tasks, at most {self.max_pending}")
        task_id = secrets.token_hex(8)
        route = self.router(deployment) if self.router is not None else None
        self.conn.execute(
            "INSERT INTO tasks (id, deployment, route, state, max_attempts, input, max_nusd, idempotency_key, "
            "created_at, deadline, retry_at) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
            (task_id, deployment, route, new.attempts, new.text, new.max_nusd, new.key, iso(now),
             iso(now + timedelta(seconds=new.ttl)), iso(now)))
        return task_id

    def lease(self, agent_id: str, deployment: str, version: str, takes: Takes = Takes.ANY) -> Lease | None:
        """The task ``agent_id`` holds, else the oldest ready task of ``deployment`` it may run, else None.

        Ready: queued, its backoff over, and one ``takes`` allows an agent of ``version`` (the first lease binds it
        to that version): an agent of a replaced version takes only retries bound to it, no new work.
        """
        now = self.clock()
        with self._changing():
            self._expire_due(now)
            return self._take(agent_id, deployment, version, takes, iso(now))

    def _take(self, agent_id: str, deployment: str, version: str, takes: Takes, at: str | None) -> Lease | None:
        """``lease``'s work, inside a transaction."""
        row = self._take_row(agent_id, deployment, version, takes, at)
        return None if row is None else _lease_of(row)

    def _take_row(self, agent_id: str, deployment: str, version: str, takes: Takes, at: str | None
                  ) -> dict[str, Any] | None:
        """The row of the task ``agent_id`` holds, else of the one it was just leased, else None."""
        row = self._row("SELECT * FROM tasks WHERE agent_id = ? AND state = 'leased'", (agent_id,))
        if row is None:
            row = self._row("SELECT * FROM tasks WHERE deployment = :d AND state = 'queued' AND retry_at <= :at "
                            f"AND {_TAKES[takes]} ORDER BY seq LIMIT 1",
                            {"d": deployment, "at": at, "v": version})
            if row is None:
                return None
            self.conn.execute(
                "UPDATE tasks SET state = 'leased', agent_id = ?, attempts = attempts + 1, "
                "version = COALESCE(version, ?), started_at = COALESCE(started_at, ?) WHERE seq = ?",
                (agent_id, version, at, row["seq"]))
            row = {**row, "attempts": row["attempts"] + 1}
        return row

    def held(self, agent_id: str) -> Task | None:
        """The task leased to ``agent_id`` (zone 2 attributes its LLM spend to it), if any."""
        row = self._row("SELECT * FROM tasks WHERE agent_id = ? AND state = 'leased'", (agent_id,))
        return Task.from_row(row) if row else None

    def complete(self, task_id: str, agent_id: str, attempt: int, output: Any) -> Task:
        """``succeeded`` with ``output``; 409 unless this is the task's current lease. The same completion again
        (its answer was lost, and the agent retried) is answered as the first was, with the task as it is. Answered
        without its input and output (``get`` has them): up to 1 MiB each, for an agent that has them."""
        return self._complete(task_id, agent_id, attempt, output, None)[0]

    def complete_and_take(self, task_id: str, agent_id: str, attempt: int, output: Any, deployment: str,
                          version: str, takes: Takes = Takes.ANY) -> tuple[Task, Lease | None]:
        """``complete``, then, in the same transaction, ``lease`` for the same agent (None: no task is ready): one
        commit for an agent's answer and its next task instead of two. A completion of an attempt that already
        succeeded leases nothing here (the caller asks as for any other poll)."""
        return self._complete(task_id, agent_id, attempt, output, (deployment, version, takes))

    def _complete(self, task_id: str, agent_id: str, attempt: int, output: Any,
                  then: tuple[str, str, Takes] | None) -> tuple[Task, Lease | None]:
        [done] = self.complete_many([Completion(task_id, agent_id, attempt, output, then)])
        if isinstance(done, FleetdError):
            raise done
        return done

    def complete_many(self, completions: list[Completion]) -> list[tuple[Task, Lease | None] | FleetdError]:
        """Completions in one transaction (those zone 2 relays together: one commit for a group of answers), each
        as ``complete`` (``then`` None) or ``complete_and_take`` would answer it alone: its task and next lease, or the
        error that refuses it (404, 409, 400), which leaves the others be. Leases stop once they carry
        ``LEASE_BYTES_PER_COMMIT`` of input: a later completion's agent then asks for its next task on its own."""
        texts: list[str | FleetdError] = []
        for done in completions:
            try:
                texts.append(json_body(done.output, "output"))
            except FleetdError as exc:
                texts.append(exc)
        now = self.clock()
        at = iso(now)
        answers: list[Lease | FleetdError | None] = []
        leased_bytes = 0
        with self._changing():
            self._expire_due(now)
            for done, text in zip(completions, texts, strict=True):
                if isinstance(text, FleetdError):
                    answers.append(text)
                    continue
                stale = self._stale(done.task_id, done.agent_id, done.attempt)
                if stale is not None:  # already done by this very attempt: answered as then, nothing to change
                    again = self._row("SELECT 1 FROM tasks WHERE id = ? AND state = 'succeeded' AND agent_id = ? AND "
                                      "attempts = ?", (done.task_id, done.agent_id, done.attempt)) is not None
                    answers.append(None if again else stale)
                    continue
                self.conn.execute("UPDATE tasks SET state = 'succeeded', output = ?, error = NULL, code = NULL, "
                                  "finished_at = ? WHERE id = ?", (text, at, done.task_id))
                self._finished.append(done.task_id)
                row = None
                if done.then is not None and leased_bytes < LEASE_BYTES_PER_COMMIT:
                    row = self._take_row(done.agent_id, *done.then, at)
                    leased_bytes += 0 if row is None else len(row["input"])
                answers.append(None if row is None else _lease_of(row))
        told, self._told = self._told, {}  # what the listeners were told: the tasks as this commit left them
        results: list[tuple[Task, Lease | None] | FleetdError] = []
        for done, answer in zip(completions, answers, strict=True):
            if isinstance(answer, FleetdError):  # raised after the commit: the expiry above stays done
                results.append(answer)
            else:
                results.append((told.get(done.task_id) or self._summary(done.task_id), answer))
        return results

    def fail(self, task_id: str, agent_id: str, attempt: int, error: str, *, retry: bool = True,
             code: str = AGENT_ERROR) -> Task:
        """The agent's attempt failed: queued again (after a backoff) when ``retry`` and attempts remain, ``dead``
        when they are spent, ``failed`` when not ``retry``. 409 unless this is the task's current lease. Answered
        without its input and output, as ``complete``."""
        now = self.clock()
        with self._changing():
            self._expire_due(now)
            stale = self._stale(task_id, agent_id, attempt)
            if stale is None:
                row = self._row("SELECT * FROM tasks WHERE id = ?", (task_id,))
                assert row is not None  # _stale found it in this transaction
                if retry:
                    self._release(row, code, error, now)
                else:
                    self._finish(row["id"], TaskState.FAILED, code, error, now)
        if stale is not None:
            raise stale
        return self._summary(task_id)

    def give_back(self, agent_id: str, reason: str) -> Task | None:
        """The agent exited, was killed or missed heartbeats (``reason``, a short code): its task, if it held one,
        is queued again for its next attempt after a backoff, or ``dead`` when its attempts are spent."""
        now = self.clock()
        with self._changing():
            self._expire_due(now)
            row = self._row("SELECT * FROM tasks WHERE agent_id = ? AND state = 'leased'", (agent_id,))
            if row is None:
                return None
            self._release(row, reason, f"agent {agent_id} gave the task back: {reason}", now)
        return self.get(row["id"])

    def give_back_orphans(self, live_agents: Collection[str], reason: str = "lost") -> list[Task]:
        """After a restart: give back every lease held by an agent not in ``live_agents`` (it ended unseen)."""
        now = self.clock()
        orphans = []
        with self._changing():
            self._expire_due(now)
            for row in self.store.rows("SELECT * FROM tasks WHERE state = 'leased' ORDER BY seq"):
                if row["agent_id"] not in live_agents:
                    self._release(row, reason, f"agent {row['agent_id']} gave the task back: {reason}", now)
                    orphans.append(row["id"])
        return [self.get(task_id) for task_id in orphans]

    def cancel(self, task_id: str) -> Task:
        """End a queued or leased task now (its agent's completion then gets 409); a cancelled task stays so."""
        now = self.clock()
        with self._changing():
            self._expire_due(now)
            task = self.get(task_id)
            if task.state in LIVE_TASK_STATES:
                self._finish(task_id, TaskState.CANCELLED, CANCELLED, "cancelled", now)
        if task.state not in (*LIVE_TASK_STATES, TaskState.CANCELLED):
            raise Conflict(f"task {task_id} is already {task.state.value}: it cannot be cancelled")
        return self.get(task_id)

    def expire(self) -> list[str]:
        """Queued and leased tasks past their deadline become ``failed`` (``ttl_expired``); their ids."""
        with self._changing():
            return self._expire_due(self.clock())

    def add_cost(self, task_id: str, cost_nusd: int, llm_calls: int = 1) -> tuple[int, int]:
        """Attribute LLM spend to a task; its new (cost_nusd, llm_calls)."""
        if cost_nusd < 0 or llm_calls < 0:
            raise InvalidRequest(f"task cost: amounts >= 0, got {cost_nusd} nUSD and {llm_calls} calls")
        with self._changing():
            self.conn.execute("UPDATE tasks SET cost_nusd = cost_nusd + ?, llm_calls = llm_calls + ? WHERE id = ?",
                              (cost_nusd, llm_calls, task_id))
            row = self.conn.execute("SELECT cost_nusd, llm_calls FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise NotFound(f"no such task: {task_id}")
        return row[0], row[1]

    def end_unfinished(self, deployment: str, code: str, message: str, version: str | None = None) -> list[str]:
        """Every queued or leased task of ``deployment`` (with ``version``: only those bound to it) is ``failed``
        with ``code``: its deployment (or version) is gone, and nothing would ever run it. Their ids."""
        now = self.clock()
        bound = "" if version is None else " AND version = :version"
        with self._changing():
            self._expire_due(now)
            ids = [r[0] for r in self.conn.execute(
                f"SELECT id FROM tasks WHERE deployment = :deployment AND {_LIVE}{bound} ORDER BY seq",
                {"deployment": deployment, "version": version})]
            for task_id in ids:
                self._finish(task_id, TaskState.FAILED, code, message, now)
        return ids

    def has_ready(self, deployment: str, version: str, takes: Takes = Takes.ANY) -> bool:
        """Whether ``lease`` would find a task for an agent of ``version`` now: a read, without the write lock."""
        return self.conn.execute(
            f"SELECT 1 FROM tasks WHERE deployment = :d AND state = 'queued' AND retry_at <= :at AND {_TAKES[takes]} "
            "LIMIT 1", {"d": deployment, "at": iso(self.clock()), "v": version}).fetchone() is not None

    def any_ready(self, deployment: str) -> bool:
        """Whether a task of ``deployment`` is ready for some agent of it, whichever its version."""
        return self.conn.execute(
            "SELECT 1 FROM tasks WHERE deployment = ? AND state = 'queued' AND retry_at <= ? LIMIT 1",
            (deployment, iso(self.clock()))).fetchone() is not None

    def queued_for(self, deployment: str, version: str, takes: Takes) -> int:
        """Tasks of ``deployment`` waiting that an agent of ``version`` may take (a version's own queue depth during a
        rollout, what its autoscaler reads; backoffs not yet over included, as ``queued``)."""
        count: int = self.conn.execute(
            f"SELECT COUNT(*) FROM tasks WHERE deployment = :d AND state = 'queued' AND {_TAKES[takes]}",
            {"d": deployment, "v": version}).fetchone()[0]
        return count

    def finished_for(self, deployment: str, since: str, version: str, route: str | None, limit: int) -> list[Task]:
        """``deployment``'s tasks of one version that reached a final state at or after ``since`` (ISO time): those
        bound to ``version``, and those never leased that were routed to ``route`` (None: the current version's),
        newest first, at most ``limit``, without their input and output. On the index tasks_version_finished."""
        marks = ", ".join("?" for _ in FINISHED_TASK_STATES)
        found = []
        for clause, value in (("version = ?", version), ("version IS NULL AND route IS ?", route)):
            found += self.store.rows(
                f"SELECT {SUMMARY_COLUMNS} FROM tasks WHERE deployment = ? AND {clause} AND finished_at >= ? AND "
                f"state IN ({marks}) ORDER BY finished_at DESC LIMIT ?",
                [deployment, value, since, *FINISHED_TASK_STATES, limit])
        found.sort(key=lambda r: r["finished_at"], reverse=True)
        return [Task.from_row(r) for r in found[:limit]]

    def ready_in(self, deployment: str) -> float | None:
        """Seconds until the nearest backoff of a queued task of ``deployment`` ends, None when none waits for one."""
        row = self.conn.execute("SELECT MIN(retry_at) FROM tasks WHERE deployment = ? AND state = 'queued' AND "
                                "retry_at > ?", (deployment, iso(self.clock()))).fetchone()
        if row[0] is None:
            return None
        return (datetime.fromisoformat(row[0]) - self.clock()).total_seconds()

    def queued(self, deployment: str) -> int:
        """Tasks of ``deployment`` waiting for an agent (its queue depth, what the autoscaler reads)."""
        return self.counts(deployment)[TaskState.QUEUED]

    def live_counts(self) -> dict[str, dict[str, int]]:
        """Deployment -> queued and leased tasks, for every deployment with either (read from live rows only)."""
        found: dict[str, dict[str, int]] = {}
        for deployment, state, count in self.conn.execute(
                f"SELECT deployment, state, value FROM task_counts WHERE {_LIVE}"):
            found.setdefault(deployment, {TaskState.QUEUED.value: 0, TaskState.LEASED.value: 0})[state] = count
        return found

    def holds(self) -> dict[str, TaskHold]:
        """Agent id -> the task it holds (id, attempt, cap), for every leased task: what zone 2 is told."""
        return {agent_id: TaskHold(task_id, attempts, max_nusd) for agent_id, task_id, attempts, max_nusd in
                self.conn.execute("SELECT agent_id, id, attempts, max_nusd FROM tasks WHERE state = 'leased'")}

    def holders(self) -> dict[str, str]:
        """Agent id -> the id of the task it holds, for every leased task."""
        return dict(self.conn.execute("SELECT agent_id, id FROM tasks WHERE state = 'leased'").fetchall())

    def _live(self, deployment: str) -> int:
        """Queued and leased tasks of ``deployment`` (one row each of task_counts)."""
        count: int = self.conn.execute(f"SELECT COALESCE(SUM(value), 0) FROM task_counts WHERE deployment = ? AND "
                                       f"{_LIVE}", (deployment,)).fetchone()[0]
        return count

    def get(self, task_id: str) -> Task:
        row = self._row("SELECT * FROM tasks WHERE id = ?", (task_id,))
        if row is None:
            raise NotFound(f"no such task: {task_id}")
        return Task.from_row(row)

    def tasks(self, deployment: str | None = None, state: str | None = None, limit: int = 1000) -> list[Task]:
        """Tasks in submit order, without their input and output (``get`` one for them)."""
        if state is not None and state not in set(TaskState):
            raise InvalidRequest(f"--state: one of {', '.join(TaskState)}, got {state!r}")
        where = [clause for clause, value in (("deployment = :deployment", deployment), ("state = :state", state))
                 if value is not None]
        sql = (f"SELECT {SUMMARY_COLUMNS} FROM tasks" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY seq LIMIT :limit")
        return [Task.from_row(r) for r in self.store.rows(sql, {"deployment": deployment, "state": state,
                                                                    "limit": limit})]

    def counts(self, deployment: str | None = None) -> dict[str, int]:
        """Tasks in each state now (queue depth), every state present."""
        sql = ("SELECT state, SUM(value) FROM task_counts" + (" WHERE deployment = ?" if deployment else "")
               + " GROUP BY 1")
        found = dict(self.conn.execute(sql, (deployment,) if deployment else ()).fetchall())
        return {state.value: found.get(state.value, 0) for state in TaskState}

    def finished_totals(self) -> dict[str, int]:
        """Tasks ever finished, per final state: those kept plus those retention removed (counters never go down)."""
        totals = {state.value: 0 for state in FINISHED_TASK_STATES}
        for name in totals:
            totals[name] = self.conn.execute(
                "SELECT (SELECT COALESCE(SUM(value), 0) FROM task_counts WHERE state = :s) + "
                "COALESCE((SELECT value FROM retired_counts WHERE name = 'tasks' AND key = :s), 0)", {"s": name},
            ).fetchone()[0]
        return totals

    def purge(self, records_before: datetime) -> int:
        """Retention, as ``Store.purge`` does for agents: finished tasks that ended before ``records_before`` go,
        counted first in ``retired_counts`` (name ``tasks``, key the final state). How many went."""
        marks = ", ".join("?" for _ in FINISHED_TASK_STATES)
        params = [*FINISHED_TASK_STATES, iso(records_before)]
        doomed = f"state IN ({marks}) AND finished_at < ?"
        with self.store.transaction():
            self.conn.execute(f"INSERT INTO retired_counts SELECT 'tasks', state, COUNT(*) FROM tasks WHERE {doomed} "
                              "GROUP BY 2 ON CONFLICT (name, key) DO UPDATE SET value = value + excluded.value",
                              params)
            gone: int = self.conn.execute(f"DELETE FROM tasks WHERE {doomed}", params).rowcount
        return gone

    # -- inside a transaction ------------------------------------------------
    def backoff(self, attempt: int) -> float:
        """Seconds before the next attempt after attempt number ``attempt`` (from 1) ended: full jitter."""
        return self.rng.uniform(0.0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))

    def _expire_due(self, now: datetime) -> list[str]:
        at = iso(now)
        due = [r[0] for r in self.conn.execute(f"SELECT id FROM tasks WHERE {_LIVE} AND deadline <= ? ORDER BY seq",
                                               (at,))]
        for task_id in due:
            self.conn.execute("UPDATE tasks SET state = 'failed', code = ?, error = ?, finished_at = ? WHERE id = ?",
                              (TTL_EXPIRED, "the task's deadline passed", at, task_id))
        self._finished += due
        return due

    def _stale(self, task_id: str, agent_id: str, attempt: int) -> FleetdError | None:
        """Why (task, agent, attempt) is not the task's current lease, or None when it is."""
        row = self._row("SELECT id, state, agent_id, attempts, code FROM tasks WHERE id = ?", (task_id,))
        if row is None:
            return NotFound(f"no such task: {task_id}")
        if row["state"] == TaskState.LEASED and row["agent_id"] == agent_id and row["attempts"] == attempt:
            return None
        if row["state"] == TaskState.LEASED:
            now = f"leased to agent {row['agent_id']} at attempt {row['attempts']}"
        else:  # the code says why it ended or was given back (ttl_expired, heartbeat_lost ...)
            code = f" ({row['code']})" if row["code"] and row["code"] != row["state"] else ""
            now = f"{row['state']}{code} at attempt {row['attempts']}"
        return Conflict(f"task {task_id}: attempt {attempt} of agent {agent_id} is not the current lease; "
                        f"the task is {now}")

    def _release(self, row: dict[str, Any], code: str, error: str, now: datetime) -> None:
        """A leased task's attempt ended without success: queued for the next one after a backoff, or dead."""
        if row["attempts"] >= row["max_attempts"]:
            self._finish(row["id"], TaskState.DEAD, code,
                         f"attempts spent ({row['attempts']} of {row['max_attempts']}); the last: {error}", now)
            return
        retry_at = now + timedelta(seconds=self.backoff(row["attempts"]))
        self.conn.execute("UPDATE tasks SET state = 'queued', agent_id = NULL, code = ?, error = ?, retry_at = ? "
                          "WHERE id = ?", (clip(code, MAX_TYPE_CHARS), clip(error, MAX_MESSAGE_CHARS),
                                           iso(retry_at), row["id"]))

    def _finish(self, task_id: str, state: TaskState, code: str, error: str, now: datetime) -> None:
        self._finished.append(task_id)
        self.conn.execute("UPDATE tasks SET state = ?, code = ?, error = ?, finished_at = ? WHERE id = ?",
                          (state.value, clip(code, MAX_TYPE_CHARS), clip(error, MAX_MESSAGE_CHARS), iso(now),
                           task_id))

