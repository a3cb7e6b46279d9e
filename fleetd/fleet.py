"""Deployments at work: the controller that keeps each pool as its autoscaler says, and the queue's door for agents.

Once a second (and at once when a task is submitted or a deployment changes) the controller observes every
deployment (tasks queued; each live agent of it: holding a task, ready, draining, its TTL), asks its
``fleetd.autoscale.Autoscaler`` what to do, and does it through the supervisor: starts agents named NAME-<n>
labelled with their deployment and version, and drains agents (they take no new task; once idle they are
stopped: SIGTERM, grace, SIGKILL). Decisions that act are events with their inputs; the last ones are kept for
``deploy inspect``.

Agents reach the queue through zone 2, which relays ``next``, ``complete`` and ``fail`` here over daemon.sock.
``next_task`` is a long poll: it waits on the deployment's signal, set when a task may have become ready.

Rules where the issue is silent:

- A new version drains the agents of the one it replaces; they may still take the retries of tasks bound to their
  version (version affinity), never a new task. A draining version whose last agent has gone is retired, and its
  bound tasks still waiting fail with ``version_removed``.
- A pool that cannot start agents (image gone, a worker that exits before it ever asks for a task) is not started
  again every second: launches back off per deployment, 2 s doubling to 5 minutes, reset by an agent's first poll.
- ``deploy rm --drain`` keeps the pool serving until its queue is empty, then stops it; ``deploy rm`` stops its
  agents now (SIGTERM: the SDK finishes the task in hand within the grace period) and what is left of its queue
  fails with ``deployment_removed``. The deployment is forgotten once no agent of it is left.
- Agents of a deployment that no longer exists (forgotten while the daemon was down) are stopped.
- The autoscaler's history and the set of drained agents live in memory: after a restart of the daemon nothing is
  scaled down for one window, and agents of replaced versions are drained again from their labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from fleetd.autoscale import Autoscaler, Decision, Observation, PoolAgent, ScalingPolicy
from fleetd.background import Background
from fleetd.canary import Action, VersionFigures, judge, version_figures
from fleetd.deployments import Deployment, Deployments, DeploymentState, Outcome, TaskDefaults, Version, VersionState
from fleetd.errors import Conflict, FleetdError, InvalidRequest, NotFound, WaitTimeout
from fleetd.histograms import TASK_COST_BUCKETS, TASK_DURATION_BUCKETS, Histogram
from fleetd.models import LIVE_STATES, AgentSpec, State, iso, parse_iso, utcnow
from fleetd.peaks import finished
from fleetd.rightsize import report
from fleetd.rollouts import Phase, Rollout, pools, takes
from fleetd.store import Store
from fleetd.task_costs import TaskCosts
from fleetd.task_queue import FINISHED_TASK_STATES, Completion, Lease, Takes, Task, TaskQueue
from fleetd.zone2.contract import PoolCap, TaskHold

log = logging.getLogger(__name__)

DEPLOYMENT_LABEL = "fleetd.deployment"
VERSION_LABEL = "fleetd.version"
REPLACES_LABEL = "fleetd.replaces"
TICK = 1.0  # s between two looks at every deployment
WAKE_SPACING = 0.05  # s: at most twenty looks a second, however many submits wake the controller
RECHECK = 1.0  # s a wait for a task's end looks again (a deadline passes unannounced)
MAX_ATTEMPT = (1 << 63) - 1  # an answer's attempt at most (SQLite's largest integer)
POLLS_PER_AGENT = 2  # long polls of one agent that may wait at once; more answer at once (none waits)
MAX_WAIT = 60  # s of a long poll
MAX_BATCH = 1000  # tasks in one submit (POST /v1/tasks/batch); the API's 1 MiB body bounds them too
TASK_FIELDS = ("input", "ttl", "max_usd", "attempts", "key")
DEFAULT_WAIT = 30
DECISIONS_KEPT = 20  # per deployment, for deploy inspect
LAUNCH_BACKOFF = (2.0, 300.0)
DEPLOYMENT_REMOVED = "deployment_removed"
VERSION_REMOVED = "version_removed"
DECISION_EVENT = "scaling_decision"
START_FAILURES = 3  # agents of a rollout's version that end before they ever ask for a task: it is rolled back
PROGRESS_DEADLINE = 600.0  # s a blue-green version may take to have its agents ready (Kubernetes'
# progressDeadlineSeconds): else it is rolled back, instead of standing by for ever
JUDGE_EVERY = 2.0  # s between two verdicts on one canary
FIGURES_ROWS = 5000  # a deployment's newest finished tasks read for per-version figures


class PoolAgents(Protocol):
    """What the controller needs of the supervisor."""

    host_cpus: int
    on_finished: list[Callable[[dict[str, Any]], None]]

    async def launch(self, spec: AgentSpec) -> dict[str, Any]: ...

    async def stop(self, ref: str, grace: Any = None, wait: bool = True) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Member:
    """A live agent of a deployment, read from its record."""

    id: str
    name: str
    deployment: str
    version: int
    replaces: str | None
    state: str
    created_at: datetime
    deadline: datetime

    @classmethod
    def of(cls, agent: dict[str, Any]) -> Member | None:
        labels = json.loads(agent["spec"]).get("labels") or {}
        deployment, version = labels.get(DEPLOYMENT_LABEL), labels.get(VERSION_LABEL)
        if not deployment or not isinstance(version, str) or not version.isdigit():
            return None
        created, deadline = parse_iso(agent["created_at"]), parse_iso(agent["deadline"])
        assert created is not None and deadline is not None
        return cls(agent["id"], agent["name"], deployment, int(version), labels.get(REPLACES_LABEL),
                   agent["state"], created, deadline)


def pool_key(deployment: str, version: int, created_at: str) -> str:
    """The spend pool of a version's agents in zone 2. The version's creation time is in it: the ledger sums a
    pool's spend over all time, and a deployment removed and made again numbers its versions from 1 anew."""
    return f"{deployment}/v{version}@{created_at}"


def member_labels(deployment: str, version: int, replaces: str | None) -> dict[str, str]:
    labels = {DEPLOYMENT_LABEL: deployment, VERSION_LABEL: str(version)}
    if replaces:
        labels[REPLACES_LABEL] = replaces
    return labels


class Answered(NamedTuple):
    """An agent's answer that its task succeeded, as zone 2 relays it (``Fleet.complete_many``): ``attempt`` None is
    the task's current one; ``take_next``: with its next lease when one is ready."""

    task_id: str
    agent_id: str
    attempt: int | None
    output: Any
    take_next: bool = False


@dataclass
class Launches:
    """A deployment's agents being started (by name: each is also a record from early in its launch) and its
    launch backoff."""

    names: dict[str, str | None] = dataclasses.field(default_factory=dict)  # name -> the agent it replaces
    versions: dict[str, int] = dataclasses.field(default_factory=dict)  # name -> its version
    failures: int = 0
    not_before: float = 0.0


class Waiters:
    """The long polls of one deployment, first come first woken: a task made ready wakes one of them, not all (a
    thousand idle agents would each take the queue's write lock for every task).

    A wake carries how many more of the line it may still go to: a woken poll that finds a task it may not take (one
    routed to another version) passes it on, and a poll cancelled before it looked passes it on too, but a wake never
    goes round the line twice. (Passed on without a bound, one wake that no poll could use went round forever, and
    the daemon spun at 100 % CPU until the polls' waits ended.)"""

    def __init__(self) -> None:
        self._queue: deque[asyncio.Future[int]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def join(self) -> asyncio.Future[int]:
        """A place in line, taken before looking at the queue so that no wake falls between the two."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append(future)
        return future

    def leave(self, future: asyncio.Future[int], looked: bool = True) -> None:
        """Out of line. A wake it got goes on when it did not look after it (``looked`` False: cancelled)."""
        if future.done() and not future.cancelled():
            if not looked:
                self.pass_on(future.result() + 1)
        else:
            future.cancel()
            with contextlib.suppress(ValueError):
                self._queue.remove(future)

    def pass_on(self, hops: int) -> None:
        """A wake that its poll could not use goes to the next in line, if it has hops left."""
        if hops > 0:
            self._wake_one(hops - 1)

    def wake(self, count: int = 1) -> None:
        for _ in range(count):
            if not self._wake_one(len(self._queue) - 1):
                return

    def _wake_one(self, hops: int) -> bool:
        while self._queue:
            future = self._queue.popleft()
            if not future.done():
                future.set_result(min(hops, len(self._queue)))
                return True
        return False

    def wake_all(self) -> None:
        """Every poll in line looks again; none passes its wake on (each has one)."""
        while self._queue:
            future = self._queue.popleft()
            if not future.done():
                future.set_result(0)


def task_fields(item: dict[str, Any], extra: set[str], defaults: TaskDefaults) -> dict[str, Any]:
    """A submitted task's fields (``extra`` may be there too, and are left out), its deployment's defaults for those
    it leaves out or null: ``TaskQueue.submit``'s arguments and ``input``."""
    unknown = set(item) - set(TASK_FIELDS) - extra
    if unknown:
        raise InvalidRequest(f"unknown task fields: {sorted(unknown)}")

    def given(field: str, default: Any) -> Any:
        value = item.get(field)
        return default if value is None else value

    return {"input": item.get("input"), "ttl": given("ttl", defaults.ttl),
            "attempts": given("attempts", defaults.attempts), "max_usd": given("max_usd", defaults.max_usd),
            "key": item.get("key")}


class Fleet:
    """Every deployment's controller, and the task queue's verbs for agents and users."""

    def __init__(self, store: Store, deployments: Deployments, queue: TaskQueue,
                 monotonic: Callable[[], float] = time.monotonic, costs: TaskCosts | None = None) -> None:
        self.store = store
        self.costs = costs  # what tasks cost, from zone 2's ledger (None: only what state.db holds)
        # Per deployment, the tasks agents took, as they finish: their LLM cost and time from first lease to end
        # (metrics; in memory, so since the daemon started: a reset to Prometheus, as a restarted process's counters)
        self.cost_histograms: dict[str, Histogram] = {}
        self.duration_histograms: dict[str, Histogram] = {}
        queue.on_finished.append(self._observe_finished)
        queue.router = deployments.rollouts.route  # a canary's split, decided in each submit's transaction
        self.capped: set[str] = set()  # spend pools zone 2 refused a call at (a canary's cap reached)
        # Tell zone 2 every live agent's registration again (``Zone2.push_all``): a promotion takes the promoted
        # version's agents out of the canary's spend pool, which zone 2 learns only from a registration.
        self.repool: Callable[[], Coroutine[Any, Any, None]] | None = None
        self.verdicts: dict[str, dict[str, Any]] = {}  # deployment -> its canary's latest verdict (deploy inspect)
        self._judged: dict[str, float] = {}  # deployment -> when its canary was last judged (monotonic)
        self.start_failures: dict[tuple[str, int], int] = {}  # (deployment, version) -> its agents that never served
        # (deployment, version, final state) -> tasks finished since the daemon started (Prometheus)
        self.version_finished: dict[tuple[str, str, str], int] = {}
        self.agents: PoolAgents | None = None  # given by start(): the supervisor is made after zone 2, which
        # needs the fleet (agents ask it for tasks through zone 2)
        self.deployments = deployments
        self.queue = queue
        self.monotonic = monotonic
        self.scalers: dict[tuple[str, int], Autoscaler] = {}  # (deployment, version) -> its autoscaler
        self.decisions: dict[str, deque[dict[str, Any]]] = {}
        self.replicas: dict[str, dict[str, int]] = {}
        self.polled: set[str] = set()  # agents that have asked for a task: ready
        self.draining: dict[str, str] = {}  # agent id -> why it takes no new task
        self.affine: set[str] = set()  # drained agents of a replaced version: they still take its bound retries
        self.stopped: set[str] = set()  # drained agents asked to stop
        self.launches: dict[str, Launches] = {}
        self.numbers: dict[str, int] = {}  # deployment -> the last NAME-<n> given
        self.background = Background()
        self._waiters: dict[str, Waiters] = {}  # deployment -> its long polls
        self._polls: dict[str, int] = {}  # agent id -> its long polls under way
        self._task_ended = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    # -- the controller -------------------------------------------------------
    def start(self, agents: PoolAgents) -> None:
        """After the supervisor has re-adopted the live agents: give back what the dead held, then run."""
        self.attach(agents)
        self._loop = asyncio.get_running_loop().create_task(self._run(), name="fleet controller")

    def attach(self, agents: PoolAgents) -> None:
        """Hear of every agent's end, and give back the tasks of agents that ended unseen (``start`` without the
        ticks: unit tests tick by hand)."""
        self.agents = agents
        agents.on_finished.append(self._agent_finished)
        live = {a["id"] for a in self.store.agents(tuple(LIVE_STATES))}
        for task in self.queue.give_back_orphans(live):
            self.store.add_event("task_given_back", f"task {task.id}: its agent ended while the daemon was down",
                                 data={"task": task.id, "deployment": task.deployment, "state": task.state.value})

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        await self.background.cancel()

    def wake(self) -> None:
        """Look at the deployments now, not at the next tick (a submit, a change of a deployment)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            started = self.monotonic()
            try:
                await self.tick()
            except Exception:
                log.exception("the fleet controller's tick failed")
            with contextlib.suppress(TimeoutError):  # not wait_for: see fleetd.liveness's loop
                async with asyncio.timeout(TICK):
                    await self._wake.wait()
            # Wakes within WAKE_SPACING of the last tick's start wait out the rest of it: a thousand submits a
            # second would otherwise each cost a look at every deployment, on the loop that serves them.
            await asyncio.sleep(max(0.0, started + WAKE_SPACING - self.monotonic()))
            self._wake.clear()

    async def tick(self) -> None:
        """One look at every deployment, and what it calls for."""
        if self.queue.expire():
            self._ended()
        members: dict[str, list[Member]] = {}
        for agent in self.store.agents(tuple(LIVE_STATES)):
            member = Member.of(agent)
            if member is not None:
                members.setdefault(member.deployment, []).append(member)
        busy = set(self.queue.holders())
        for deployment in self.deployments.list():
            pool = members.pop(deployment.name, [])
            try:  # one deployment's trouble (a bug, a locked database) stops none of the others
                if deployment.state == DeploymentState.REMOVING:
                    self._remove(deployment, pool, busy)
                else:
                    deployment = self._advance(deployment, pool)
                    self._scale(deployment, pool, busy)
                self._retire_versions(deployment, pool)
            except Exception:
                log.exception("the fleet controller's look at deployment %s failed", deployment.name)
        for name, strays in members.items():
            for member in strays:
                self._drain(member.id, f"its deployment {name} is gone")
        for pool in [*members.values()]:
            self._stop_idle(pool, busy)

    def _scale(self, deployment: Deployment, pool: list[Member], busy: set[str]) -> None:
        """Each version that should have agents (the current one; during a rollout the new one too) is scaled on its
        own queue by its own autoscaler; agents of any other version drain."""
        plan = pools(deployment.scaling, deployment.current_version, deployment.rollout)
        retrying: dict[int, int] = {}  # replaced version -> retries bound to it waiting (version affinity)
        for member in pool:
            if member.version not in plan:
                self._drain(member.id, self._replaced(deployment, member.version))
                self.affine.add(member.id)
                if member.version not in retrying:
                    retrying[member.version] = self.queue.queued_for(deployment.name, f"v{member.version}",
                                                                     Takes.BOUND)
        launches = self.launches.setdefault(deployment.name, Launches())
        totals = {"wanted": 0, "live": 0, "busy": 0, "idle": 0}
        for number, (policy, allowed) in plan.items():
            counts = self._scale_version(deployment, deployment.version(number), policy, allowed,
                                         [m for m in pool if m.version == number], busy, launches)
            totals = {k: totals[k] + counts[k] for k in totals}
        totals["live"] = len(pool)
        self.replicas[deployment.name] = totals
        for key in [k for k in self.scalers if k[0] == deployment.name and k[1] not in plan]:
            del self.scalers[key]
        self._stop_idle(pool, busy, retrying)

    # -- rollouts ------------------------------------------------------------------
    def _advance(self, deployment: Deployment, pool: list[Member]) -> Deployment:
        """Move the deployment's rollout on, if it has one: judge a canary (promote, roll back, or wait), switch a
        blue-green version once its agents are ready, end a switched one once the old version is gone. The
        deployment as it is afterwards."""
        rollout = deployment.rollout
        if rollout is None:
            return deployment
        name = deployment.name
        try:
            failures = self.start_failures.get((name, rollout.version), 0)
            if failures >= START_FAILURES and rollout.phase != Phase.SWITCHED:
                return self.rollback(name, f"{failures} agents of version {rollout.version} ended before they ever "
                                           "asked for a task")
            if rollout.phase == Phase.CANARY:
                key = pool_key(name, rollout.version, deployment.version(rollout.version).created_at)
                assert rollout.policy is not None
                if key in self.capped and rollout.policy.max_usd is not None:
                    self.capped.discard(key)
                    return self.rollback(name, f"zone 2 refused a call of the canary at its spend cap "
                                               f"(${rollout.policy.max_usd:g})", by="fleetd")
                return self._judge(deployment, rollout)
            if rollout.phase == Phase.STARTING:
                ready = sum(1 for m in pool if m.version == rollout.version and m.id in self.polled
                            and m.id not in self.draining)
                if ready >= (rollout.target or 1):
                    return self.promote(name, f"{ready} of {rollout.target} agents of version {rollout.version} "
                                              "are ready", by="fleetd")
                began = parse_iso(rollout.started_at)
                if began is not None and (utcnow() - began).total_seconds() > PROGRESS_DEADLINE:
                    return self.rollback(name, f"only {ready} of {rollout.target} agents of version "
                                               f"{rollout.version} were ready after {PROGRESS_DEADLINE:.0f} s",
                                         by="fleetd")
            elif not any(v.number == rollout.previous and v.state != VersionState.RETIRED
                         for v in deployment.versions):
                self.deployments.finish_rollout(name)
                return self.deployments.get(name)
        except (Conflict, NotFound):
            return self.deployments.get(name)  # a user promoted or rolled back meanwhile
        except Exception:  # its pool is still scaled as the rollout stands
            log.exception("deployment %s: its rollout could not be moved on", name)
            return self.deployments.get(name)
        return deployment

    def _judge(self, deployment: Deployment, rollout: Rollout) -> Deployment:
        """Compare the canary's tasks with the current version's since the canary began; act on the verdict. At most
        every JUDGE_EVERY seconds per deployment: each look reads up to FIGURES_ROWS finished tasks."""
        now = self.monotonic()
        if now - self._judged.get(deployment.name, -math.inf) < JUDGE_EVERY:
            return deployment
        self._judged[deployment.name] = now
        assert rollout.policy is not None
        # Each version's own newest tasks: among the deployment's, a small canary's would be too few to judge. The
        # canary's up to promote-after of them, else a verdict that waits for more than FIGURES_ROWS never comes.
        canary_tasks = self.queue.finished_for(deployment.name, rollout.started_at, rollout.label, rollout.label,
                                               max(FIGURES_ROWS, rollout.policy.promote_after))
        current_tasks = self.queue.finished_for(deployment.name, rollout.started_at,
                                                f"v{deployment.current_version}", None, FIGURES_ROWS)
        canary = self._spent_by_agents(deployment, rollout, rollout.version,
                                       version_figures(canary_tasks, self._costs(canary_tasks)))
        current = self._spent_by_agents(deployment, rollout, deployment.current_version,
                                        version_figures(current_tasks, self._costs(current_tasks)))
        verdict = judge(canary, current, rollout.policy, self._canary_spent(deployment, rollout, canary))
        self.verdicts[deployment.name] = {"time": iso(utcnow()), **verdict.to_json()}
        if verdict.action == Action.PROMOTE:
            return self.promote(deployment.name, verdict.reason, verdict.to_json(), by="fleetd")
        if verdict.action == Action.ROLLBACK:
            return self.rollback(deployment.name, verdict.reason, verdict.to_json(), by="fleetd")
        return deployment

    def pool_of(self, agent: dict[str, Any]) -> PoolCap | None:
        """The spend pool of a deployment's agent in zone 2 (``Zone2.pools``): its version's. Every call of the
        version's agents is counted there, those made outside a task too (a version is judged on all it spends:
        calls that no task carries cannot make its tasks look cheaper); capped while that version is a canary with
        ``--canary-max-usd`` (or rolled back, draining)."""
        member = Member.of(agent)
        if member is None:
            return None
        found = self.deployments.spend_cap(member.deployment, member.version)
        if found is None:
            return None
        cap, created_at = found
        return PoolCap(pool_key(member.deployment, member.version, created_at), cap)

    def heard(self, kind: str, data: dict[str, Any] | None) -> None:
        """An event zone 2 sent: a refusal at a canary's spend cap rolls the canary back at the next tick."""
        pool = (data or {}).get("pool")
        if kind == "budget_exceeded" and isinstance(pool, str):
            self.capped.add(pool)
            self.wake()

    def _canary_spent(self, found: Deployment, rollout: Rollout, figures: VersionFigures) -> float:
        """What the canary has cost so far (USD): its spend pool's, every call of its agents, from the ledger; else
        (no cap, so no pool) its tasks' (``figures``, its finished ones', and those its agents hold)."""
        assert rollout.policy is not None
        deployment = found.name
        if rollout.policy.max_usd is not None and self.costs is not None:
            key = pool_key(deployment, rollout.version, found.version(rollout.version).created_at)
            return self.costs.pool_spend(key) / 1e9
        held = [t for t in self.queue.tasks(deployment, "leased", FIGURES_ROWS) if t.version == rollout.label]
        return figures.cost_usd + sum(c for c, _ in self._costs(held).values()) / 1e9

    def _spent_by_agents(self, deployment: Deployment, rollout: Rollout, number: int,
                         figures: VersionFigures) -> VersionFigures:
        """``figures`` with the cost of the calls the version's agents made outside any task since the rollout began
        (its spend pool in the ledger) added: they count against its cost per succeeded task too. (All its spend
        would count the calls of tasks still running, with no success yet to share them.)"""
        if self.costs is None:
            return figures
        started = parse_iso(rollout.started_at)
        key = pool_key(deployment.name, number, deployment.version(number).created_at)
        outside = self.costs.pool_spend(key, started) / 1e9
        return dataclasses.replace(figures, cost_usd=figures.cost_usd + outside) if outside else figures

    def _costs(self, tasks: list[Task]) -> dict[str, tuple[int, int]]:
        """Task id -> (nUSD, LLM calls): what state.db counted plus what the ledger has."""
        ledger = self.costs.of(t.id for t in tasks) if self.costs is not None else {}
        return {t.id: (t.cost_nusd + ledger.get(t.id, (0, 0))[0], t.llm_calls + ledger.get(t.id, (0, 0))[1])
                for t in tasks}

    def figures(self, deployment: Deployment) -> dict[str, VersionFigures]:
        """Version label -> what its newest FIGURES_ROWS finished tasks did (``deploy inspect``): a task counts for
        the version it is bound to, or, never leased (it expired in the queue), the version it was routed to (the
        current one's when none)."""
        found = {}
        for version in deployment.versions:
            route = None if version.number == deployment.current_version else version.label
            tasks = self.queue.finished_for(deployment.name, "", version.label, route, FIGURES_ROWS)
            found[version.label] = version_figures(tasks, self._costs(tasks))
        return found

    def promote(self, name: str, why: str = "promoted by hand", data: dict[str, Any] | None = None,
                by: str = "user") -> Deployment:
        """The rollout's version becomes current (``fleetd deploy promote``, or the verdict)."""
        deployment = self.deployments.promote(name, why, {**(data or {}), "by": by})
        self._after_rollout(name)
        if self.repool is not None:
            self.background.start(self.repool(), f"telling zone 2 that deployment {name}'s pools changed")
        return deployment

    def rollback(self, name: str, why: str = "rolled back by hand", data: dict[str, Any] | None = None,
                 by: str = "user") -> Deployment:
        """The rollout's version drains, its unleased tasks back to the current version (``fleetd deploy
        rollback``, or the verdict)."""
        deployment = self.deployments.rollback(name, why, {**(data or {}), "by": by})
        self._after_rollout(name)
        return deployment

    def _after_rollout(self, name: str) -> None:
        self._judged.pop(name, None)
        for key in [k for k in self.start_failures if k[0] == name]:
            del self.start_failures[key]
        self._signal_all()  # long polls look again: what they may take changed
        self.wake()

    def apply(self, name: str, request: Any, host_cpus: int) -> Any:
        """``fleetd deploy``: a blue-green rollout starts the new version to the current version's live count (its
        version's only: after a restart, a replaced version's agents still finishing a task are not known to drain)."""
        try:
            before: Deployment | None = self.deployments.get(name)
        except NotFound:
            before = None
        current, rolling = (None, None) if before is None else (before.current_version, before.rollout)
        live = sum(1 for m in self._members(name) if m.version == current)
        applied = self.deployments.apply(name, request, host_cpus, live)
        after = applied.deployment.rollout
        if after is None:
            self.verdicts.pop(name, None)
        elif (rolling is not None and rolling.version == after.version and rolling.policy is not None
              and after.policy is not None and rolling.policy.max_usd != after.policy.max_usd
              and self.repool is not None):  # its agents' spend cap changed: zone 2 learns it from their registration
            self.background.start(self.repool(), f"telling zone 2 that deployment {name}'s canary cap changed")
        self.wake()
        return applied

    @staticmethod
    def _replaced(deployment: Deployment, number: int) -> str:
        version = next((v for v in deployment.versions if v.number == number), None)
        if version is not None and version.outcome == Outcome.ROLLED_BACK:
            return f"version {number} was rolled back"
        return f"version {number} is replaced by version {deployment.current_version}"

    def _scale_version(self, deployment: Deployment, version: Version, policy: ScalingPolicy, takes: Takes,
                       pool: list[Member], busy: set[str], launches: Launches) -> dict[str, int]:
        now, wall = self.monotonic(), utcnow()
        named = {m.name for m in pool}
        agents = [self._pool_agent(m, busy, now, wall) for m in pool]
        ttl = float(version.spec.ttl)
        agents += [PoolAgent(name, now, now + ttl, ready=False, replaces=replaces)
                   for name, replaces in launches.names.items()
                   if name not in named and launches.versions.get(name) == version.number]
        if deployment.rollout is None:
            queued = self.queue.queued(deployment.name)  # the counts table: no walk of the queue
        else:
            queued = self.queue.queued_for(deployment.name, version.label, takes)
        scaler = self.scalers.setdefault((deployment.name, version.number), Autoscaler(policy))
        scaler.policy = policy  # a deploy scale keeps the history of the window
        decision = scaler.decide(Observation(queued, tuple(agents)), now)
        counts = {"wanted": decision.desired, "live": len(pool), "busy": decision.observation.busy,
                  "idle": sum(1 for a in agents if a.idle and a.ready)}
        if not decision.acts:
            return counts
        starting = [None] * decision.start + list(decision.replace)
        if starting and now < launches.not_before:
            decision = dataclasses.replace(decision, start=0, replace=(),
                                           reason=decision.reason + f"; launches back off for "
                                                  f"{launches.not_before - now:.0f} s after {launches.failures} "
                                                  "failed")
            starting = []
        self._record(deployment.name, decision, version.number if deployment.rollout is not None else None)
        for replaces in starting:
            self._launch(deployment.name, version, replaces)
        for agent_id in decision.drain:
            self._drain(agent_id, "scale down")
        for agent_id in decision.retire:
            self._drain(agent_id, "near its TTL: replaced")
        return counts

    def _pool_agent(self, member: Member, busy: set[str], now: float, wall: datetime) -> PoolAgent:
        """The member on the autoscaler's monotonic clock."""
        return PoolAgent(
            member.id, now - (wall - member.created_at).total_seconds(),
            now + (member.deadline - wall).total_seconds(), busy=member.id in busy,
            ready=member.id in self.polled,
            draining=member.id in self.draining or member.state not in (State.CREATED, State.RUNNING),
            replaces=member.replaces)

    def _record(self, deployment: str, decision: Decision, version: int | None = None) -> None:
        """The decision as an event with its inputs (not every agent's: a pool may hold a thousand); during a
        rollout each version's autoscaler decides for its own agents, and the decision names the version."""
        obs = decision.observation
        on = "" if version is None else f" (version {version})"
        summary = {
            "deployment": deployment, "version": version, "reason": decision.reason + on, "start": decision.start,
            "replace": list(decision.replace), "drain": list(decision.drain), "retire": list(decision.retire),
            "queued": obs.queued, "busy": obs.busy, "draining": obs.draining, "live": len(obs.agents),
            "raw": decision.raw, "wanted": decision.wanted, "stabilized": decision.stabilized,
            "desired": decision.desired, "current": decision.current, "policy": decision.policy.to_json(),
        }
        self.store.add_event(DECISION_EVENT, f"deployment {deployment}: {summary['reason']}", data=summary)
        kept = self.decisions.setdefault(deployment, deque(maxlen=DECISIONS_KEPT))
        kept.append({"time": iso(utcnow()), **summary})

    def _launch(self, deployment: str, version: Version, replaces: str | None) -> None:
        name = self._next_name(deployment)
        self.launches[deployment].names[name] = replaces
        self.launches[deployment].versions[name] = version.number
        labels = {**version.spec.labels, **member_labels(deployment, version.number, replaces)}
        spec = dataclasses.replace(version.spec, name=name, labels=labels)
        self.background.start(self._launched(deployment, name, spec), f"starting agent {name}")

    async def _launched(self, deployment: str, name: str, spec: AgentSpec) -> None:
        launches = self.launches[deployment]
        assert self.agents is not None
        try:
            await self.agents.launch(spec)
        except FleetdError as exc:
            version = (spec.labels or {}).get(VERSION_LABEL, "0")
            self._launch_failed(deployment, f"agent {name} could not start: {exc.message}",
                                int(version) if version.isdigit() else None)
        finally:
            launches.names.pop(name, None)
            launches.versions.pop(name, None)
            self.wake()

    def _launch_failed(self, deployment: str, why: str, version: int | None = None) -> None:
        if version is not None:  # a rollout's version that cannot start agents is rolled back (START_FAILURES)
            key = (deployment, version)
            self.start_failures[key] = self.start_failures.get(key, 0) + 1
        launches = self.launches.setdefault(deployment, Launches())
        launches.failures += 1
        low, high = LAUNCH_BACKOFF
        delay = min(high, low * 2 ** (launches.failures - 1))
        launches.not_before = self.monotonic() + delay
        self.store.add_event("deployment_launch_failed", f"deployment {deployment}: {why}; next launch in "
                             f"{delay:g} s", data={"deployment": deployment, "failures": launches.failures,
                                                   "backoff_seconds": delay})

    def _next_name(self, deployment: str) -> str:
        """NAME-<n>, n above every number an agent of that name has had (records included)."""
        if deployment not in self.numbers:
            rows = self.store.conn.execute("SELECT name FROM agents WHERE name GLOB ?", (f"{deployment}-[0-9]*",))
            numbers = [int(n) for (name,) in rows if (n := name[len(deployment) + 1:]).isdigit()]
            self.numbers[deployment] = max(numbers, default=0)
        self.numbers[deployment] += 1
        return f"{deployment}-{self.numbers[deployment]}"

    def _drain(self, agent_id: str, why: str) -> None:
        if agent_id not in self.draining:
            self.draining[agent_id] = why
            self.store.add_event("agent_draining", f"draining: {why}", agent_id, {"why": why})
            self._signal_all()  # its long poll answers now

    def _stop_idle(self, pool: list[Member], busy: set[str], retrying: Mapping[int, int] | None = None) -> None:
        """Drained agents holding no task are stopped (once); of a replaced version with retries bound to it waiting
        (``retrying``: version -> how many), as many idle agents as retries wait stay for them (version affinity:
        nothing else may run them), no more."""
        kept = dict(retrying or {})
        for member in pool:
            if (member.id in self.affine and kept.get(member.version, 0) > 0 and member.id not in busy
                    and member.id not in self.stopped):
                kept[member.version] -= 1
                continue
            if (member.id in self.draining and member.id not in busy and member.id not in self.stopped
                    and member.state in (State.CREATED, State.RUNNING)):
                assert self.agents is not None
                self.stopped.add(member.id)
                self.background.start(self.agents.stop(member.id, wait=False), f"stopping drained agent {member.id}")

    def _remove(self, deployment: Deployment, pool: list[Member], busy: set[str]) -> None:
        counts = self.queue.counts(deployment.name)
        if deployment.drain and counts["queued"] + counts["leased"]:
            # It serves its queue first, with no agent kept waiting for work that will not come.
            serving = dataclasses.replace(deployment, scaling=dataclasses.replace(deployment.scaling, min=0, warm=0))
            self._scale(serving, pool, busy)
            return
        for member in pool:
            self._drain(member.id, f"deployment {deployment.name} is removed")
        self._stop_idle(pool, busy if deployment.drain else set())
        if pool or self.launches.get(deployment.name, Launches()).names:
            return
        ended = self.queue.end_unfinished(deployment.name, DEPLOYMENT_REMOVED,
                                          f"deployment {deployment.name} was removed")
        if ended:
            self._ended()
        self.deployments.forget(deployment.name)
        for table in (self.decisions, self.replicas, self.launches, self._waiters, self.cost_histograms,
                      self.duration_histograms, self.verdicts, self._judged):
            table.pop(deployment.name, None)
        for key in [k for k in self.scalers if k[0] == deployment.name]:
            del self.scalers[key]
        # A deployment made again under the name numbers its versions from 1 anew: nothing of these may meet it.
        for key in [k for k in self.start_failures if k[0] == deployment.name]:
            del self.start_failures[key]
        for counted in [k for k in self.version_finished if k[0] == deployment.name]:
            del self.version_finished[counted]
        self.capped = {k for k in self.capped if not k.startswith(f"{deployment.name}/")}
        self.store.add_event("deployment_forgotten", f"deployment {deployment.name} removed: no agent left",
                             data={"deployment": deployment.name, "tasks_failed": len(ended)})

    def _retire_versions(self, deployment: Deployment, pool: list[Member]) -> None:
        live = {m.version for m in pool}
        for version in deployment.versions:
            if version.state == VersionState.DRAINING and version.number not in live:
                ended = self.queue.end_unfinished(deployment.name, VERSION_REMOVED,
                                                  f"version {version.number} has no agent left", version.label)
                if ended:
                    self._ended()
                with contextlib.suppress(NotFound, Conflict):  # removed meanwhile
                    self.deployments.retire_version(deployment.name, version.number)
                self.start_failures.pop((deployment.name, version.number), None)
                self.capped = {k for k in self.capped if not k.startswith(f"{deployment.name}/v{version.number}@")}

    def _agent_finished(self, agent: dict[str, Any]) -> None:
        """The supervisor's word that an agent ended: the task it held goes back to the queue."""
        agent_id = agent["id"]
        member = Member.of(agent)
        task = self.queue.give_back(agent_id, str(agent.get("reason") or "exited"))
        if task is not None:
            self.store.add_event("task_given_back", f"task {task.id} given back: agent {agent_id} ended "
                                 f"({agent.get('reason')}); now {task.state.value}", agent_id,
                                 {"task": task.id, "state": task.state.value, "attempts": task.attempts})
            self._signal(task.deployment)
            if task.state in FINISHED_TASK_STATES:
                self._ended()
        if member is not None and agent_id not in self.polled and agent_id not in self.draining:
            self._launch_failed(member.deployment, f"agent {agent_id} ended ({agent.get('reason')}) before it "
                                "asked for a task", member.version)
        self.polled.discard(agent_id)
        self.draining.pop(agent_id, None)
        self.affine.discard(agent_id)
        self.stopped.discard(agent_id)
        self.wake()

    def _observe_finished(self, tasks: list[Task]) -> None:
        """Tasks reached a final state: those an agent took go into their deployment's histograms, with the cost the
        ledger has of them now (a call still settling then is not in it; the task's views have it later)."""
        ran = [t for t in tasks if t.started_at is not None and t.finished_at is not None]
        ledger = self.costs.of(t.id for t in ran) if self.costs is not None else {}
        for task in tasks:
            key = (task.deployment, task.version or task.route or "", task.state.value)
            self.version_finished[key] = self.version_finished.get(key, 0) + 1
        for task in ran:
            cost = task.cost_nusd + ledger.get(task.id, (0, 0))[0]
            self.cost_histograms.setdefault(task.deployment, Histogram(TASK_COST_BUCKETS)).observe(cost / 1e9)
            started, finished = parse_iso(task.started_at), parse_iso(task.finished_at)
            assert started is not None and finished is not None
            self.duration_histograms.setdefault(task.deployment, Histogram(TASK_DURATION_BUCKETS)).observe(
                max(0.0, (finished - started).total_seconds()))

    # -- the queue's door for agents (through zone 2) ------------------------
    def _member(self, agent_id: str) -> Member:
        agent = self.store.get(agent_id)
        member = Member.of(agent) if agent is not None else None
        if agent is None or member is None:
            raise Conflict(f"agent {agent_id} is not a worker of a deployment: it takes no tasks")
        return member

    async def next_task(self, agent_id: str, wait: float) -> Lease | None:
        """The task the agent holds, else a new one, waiting up to ``wait`` seconds; None when there is none."""
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= MAX_WAIT:
            raise InvalidRequest(f"wait: seconds from 0 to {MAX_WAIT}, got {wait!r}")
        member = self._member(agent_id)
        if agent_id not in self.polled:
            self.polled.add(agent_id)
            self.launches.setdefault(member.deployment, Launches()).failures = 0
            self.start_failures.pop((member.deployment, member.version), None)
            self.wake()  # it is ready: a replacement may retire the agent it replaces
        polls = self._polls.get(agent_id, 0)
        if polls >= POLLS_PER_AGENT:
            wait = 0  # a hostile agent's hundred polls hold no hundred waits in the daemon
        self._polls[agent_id] = polls + 1
        try:
            return await self._poll(member, wait)
        finally:
            if self._polls[agent_id] <= 1:
                del self._polls[agent_id]
            else:
                self._polls[agent_id] -= 1

    async def _poll(self, member: Member, wait: float) -> Lease | None:
        give_up = self.monotonic() + wait
        waiters = self._waiters.setdefault(member.deployment, Waiters())
        hops: int | None = None  # the wake that made it look, and how far it may still go
        while True:
            turn = waiters.join()
            looked = False
            try:
                # Woken while it holds a task (won by another call of its agent's), it answers that task, not the
                # one it was woken for: as one it may not take, the wake goes on.
                lease, held = self._lease(member)
                looked = True
                if (lease is None or held) and hops and self.queue.any_ready(member.deployment):
                    waiters.pass_on(hops)  # a task it may not take: the next in line may
                left = give_up - self.monotonic()
                if lease is not None or left <= 0:
                    return lease
                # Woken by a task made ready, else at the end of the wait or of the nearest retry's backoff.
                ready_in = self.queue.ready_in(member.deployment)
                nap = left if ready_in is None else min(left, max(ready_in, 0.01))
                looked = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(turn), nap)
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    # Woken as its agent hung up: wait_for (3.11) answers the wake and swallows the cancel. Take
                    # nothing for nobody; the wake goes on.
                    raise asyncio.CancelledError
                looked = True  # it looks again at once
                hops = turn.result() if turn.done() else None
            finally:
                waiters.leave(turn, looked)

    def _lease(self, member: Member) -> tuple[Lease | None, bool]:
        """The agent's lease (None: no task for it now), and whether it is the task the agent already held."""
        agent = self.store.get(member.id)
        if agent is None or agent["state"] != State.RUNNING:
            return None, False
        label = f"v{member.version}"
        if self.queue.held(member.id) is not None:  # the one it holds, again (its answer was lost, or zone 2 restarted)
            return self.queue.lease(member.id, member.deployment, label), True
        allowed = self._may_take(member)
        if allowed is None or not self.queue.has_ready(member.deployment, label, allowed):
            return None, False  # a read, before the write lock a lease takes
        return self.queue.lease(member.id, member.deployment, label, allowed), False

    def _may_take(self, member: Member) -> Takes | None:
        """What a running agent may lease now besides a task it holds (None: nothing new)."""
        if member.id in self.draining and member.id not in self.affine:
            return None  # a drained agent takes nothing new (one of a replaced version: only its retries, below)
        found = self.deployments.serving(member.deployment, member.version)
        if found is None:
            return None
        if found.deployment == DeploymentState.REMOVING and not found.drain:
            return None
        allowed = takes(found.version == VersionState.ACTIVE, member.version, found.current, found.rollout)
        return None if allowed == Takes.NONE else allowed

    def held(self, agent_id: str) -> TaskHold | None:
        """The task the agent holds, as zone 2 must know it (in the agent's registration)."""
        task = self.queue.held(agent_id)
        return None if task is None else TaskHold(task.id, task.attempts, task.max_nusd)

    def holds(self) -> dict[str, TaskHold]:
        """Every agent holding a task, and the task (what zone 2 is told after it restarts)."""
        return self.queue.holds()

    def complete(self, task_id: str, agent_id: str, attempt: int | None, output: Any) -> Task:
        return self._one(Answered(task_id, agent_id, attempt, output))[0]

    def complete_and_take(self, task_id: str, agent_id: str, attempt: int | None, output: Any
                          ) -> tuple[Task, Lease | None]:
        """``complete?next``: the completion and, when a task the agent may run is ready, its next lease, in one
        transaction; None when none is ready now (the caller then polls as ``next_task`` does, with its wait)."""
        return self._one(Answered(task_id, agent_id, attempt, output, take_next=True))

    def _one(self, answer: Answered) -> tuple[Task, Lease | None]:
        [done] = self.complete_many([answer])
        if isinstance(done, FleetdError):
            raise done
        return done

    def complete_many(self, answers: list[Answered]) -> list[tuple[Task, Lease | None] | FleetdError]:
        """Completions that zone 2 relays together, in one transaction: each one's task and, when it asked for one
        and a task it may run is ready, its next lease; or the error that refuses it alone (404, 409, 400)."""
        completions: list[Completion] = []
        refused: dict[int, FleetdError] = {}
        for index, answer in enumerate(answers):
            try:
                attempt = self._attempt(answer.task_id, answer.attempt)
            except FleetdError as exc:
                refused[index] = exc
                continue
            then = self._next_for(answer.agent_id) if answer.take_next else None
            completions.append(Completion(answer.task_id, answer.agent_id, attempt, answer.output, then))
        done = iter(self.queue.complete_many(completions) if completions else [])
        results = [refused[index] if index in refused else next(done) for index in range(len(answers))]
        # Only a recorded answer wakes the task waiters and the controller: a refused one (404, 409, 400) changed
        # nothing, and a hostile agent could send them as fast as zone 2 relays them.
        for agent_id in dict.fromkeys(answer.agent_id for answer, result in zip(answers, results, strict=True)
                                      if not isinstance(result, FleetdError)):
            self._after_answer(agent_id)
        return results

    def _next_for(self, agent_id: str) -> tuple[str, str, Takes] | None:
        """What a running worker's next lease may be taken from (deployment, version, what it may take); None when it
        may take nothing new."""
        agent = self.store.get(agent_id)
        member = Member.of(agent) if agent is not None else None
        if agent is None or member is None or agent["state"] != State.RUNNING:
            return None
        allowed = self._may_take(member)
        return None if allowed is None else (member.deployment, f"v{member.version}", allowed)

    def fail(self, task_id: str, agent_id: str, attempt: int | None, error: str, retry: bool) -> Task:
        task = self.queue.fail(task_id, agent_id, self._attempt(task_id, attempt), error, retry=retry)
        self._after_answer(agent_id)
        if task.state == "queued":
            self._signal(task.deployment)
        return task

    def _attempt(self, task_id: str, attempt: int | None) -> int:
        """The attempt an answer is for: the one it names, else the task's current one."""
        if attempt is not None:
            # past SQLite's integers, the fencing query would raise OverflowError: a fault, not a refusal
            if isinstance(attempt, bool) or not isinstance(attempt, int) or not 1 <= attempt <= MAX_ATTEMPT:
                raise InvalidRequest(f"attempt: a whole number from 1 to {MAX_ATTEMPT}, got {str(attempt)[:40]}")
            return attempt
        return self.queue.get(task_id).attempts

    def _after_answer(self, agent_id: str) -> None:
        self._ended()
        if agent_id in self.draining:
            self.wake()  # now idle: the next tick stops it

    # -- the queue's verbs for users ------------------------------------------
    def with_costs(self, tasks: list[Task]) -> list[Task]:
        """The tasks as users see them: with the LLM cost and calls the ledger has of each."""
        return tasks if self.costs is None else self.costs.costed(tasks)

    def with_cost(self, task: Task) -> Task:
        return self.with_costs([task])[0]

    def submit(self, request: dict[str, Any]) -> Task:
        name, defaults = self._accepting(request)
        item = task_fields(request, {"deployment"}, defaults)
        task = self.queue.submit(name, item.pop("input"), **item)
        self._submitted(name, 1)
        return task

    def submit_many(self, request: dict[str, Any]) -> list[Task]:
        """``{"deployment": NAME, "tasks": [{"input", "ttl", "max_usd", "attempts", "key"}, ...]}``: all queued in
        one transaction, or none."""
        name, defaults = self._accepting(request)
        unknown = set(request) - {"deployment", "tasks"}
        if unknown:
            raise InvalidRequest(f"unknown fields: {sorted(unknown)} (a batch is deployment and tasks)")
        items = request.get("tasks")
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            raise InvalidRequest(f"tasks: a list of 1 to {MAX_BATCH} tasks, each an object")
        fields = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise InvalidRequest(f"tasks[{index}]: an object with the task's input, got {type(item).__name__}")
            try:
                fields.append(task_fields(item, set(), defaults))
            except InvalidRequest as exc:
                raise InvalidRequest(f"tasks[{index}]: {exc}") from None
        tasks = self.queue.submit_many(name, fields)
        self._submitted(name, len(tasks))
        return tasks

    def _accepting(self, request: dict[str, Any]) -> tuple[str, TaskDefaults]:
        """The deployment ``request`` submits to, which must take new tasks, and its tasks' defaults."""
        name = request.get("deployment")
        if not isinstance(name, str):
            raise InvalidRequest("deployment: the name of the deployment the task is for")
        state, defaults = self.deployments.task_defaults(name)
        if state == DeploymentState.REMOVING:
            raise Conflict(f"deployment {name} is being removed: it takes no new task")
        return name, defaults

    def _submitted(self, deployment: str, count: int) -> None:
        self._signal(deployment, count)
        self.wake()  # scale up at once

    def cancel(self, task_id: str) -> Task:
        task = self.queue.cancel(task_id)
        self._ended()
        return task

    async def wait_task(self, task_id: str, timeout: float | None) -> Task:
        """The task once it has finished; FleetdError 408 (``timeout``) when ``timeout`` seconds pass first."""
        give_up = None if timeout is None else self.monotonic() + timeout
        while True:
            ended = self._task_ended
            task = self.queue.get(task_id)
            if task.state in FINISHED_TASK_STATES:
                return task
            left = RECHECK if give_up is None else min(RECHECK, give_up - self.monotonic())
            if left <= 0:
                raise WaitTimeout(f"task {task_id} is still {task.state.value} after {timeout:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), left)

    def view(self, deployment: Deployment, detail: bool = False) -> dict[str, Any]:
        """A deployment as ``deploy ls`` (and with ``detail``, ``deploy inspect``) shows it."""
        data = deployment.to_json()
        live = self.replicas.get(deployment.name)
        data["replicas"] = live or {"wanted": 0, "live": 0, "busy": 0, "idle": 0}
        data["queue"] = self.queue.counts(deployment.name)
        if data["rollout"] is not None:
            data["rollout"]["verdict"] = self.verdicts.get(deployment.name)
            starting = deployment.rollout is not None and deployment.rollout.phase == Phase.STARTING
            data["rollout"]["ready"] = (len(self._ready_of(deployment.name, deployment.rollout.version))
                                        if starting and deployment.rollout is not None else None)
        if detail:
            figures = self.figures(deployment)
            for version in data["versions"]:
                found = figures.get(version["label"])
                version["tasks"] = (found or VersionFigures()).to_json(detail=True)
            data["decisions"] = list(self.decisions.get(deployment.name, ()))
            data["rightsize"] = self.rightsize(deployment)
        return data

    def _members(self, deployment: str) -> list[Member]:
        """The deployment's live agents not draining."""
        return [m for a in self.store.agents(tuple(LIVE_STATES)) if (m := Member.of(a)) is not None
                and m.deployment == deployment and m.id not in self.draining]

    def _ready_of(self, deployment: str, version: int) -> list[str]:
        """Agents of the version that have asked for a task and are not draining (a blue-green version's ready)."""
        return [m.id for m in self._members(deployment) if m.version == version and m.id in self.polled]

    def rightsize(self, deployment: Deployment) -> dict[str, Any]:
        """What the deployment's finished agents used (every version's), against its current version's limits."""
        spec = deployment.current.spec
        return {"kind": "deployment", "name": deployment.name,
                **report(finished(self.store, deployment=deployment.name), spec.memory, spec.nano_cpus)}

    # -- signals ----------------------------------------------------------------
    def _signal(self, deployment: str, count: int = 1) -> None:
        """``count`` tasks of ``deployment`` may be ready: as many of its long polls look again."""
        waiters = self._waiters.get(deployment)
        if waiters is not None:
            waiters.wake(count)

    def _signal_all(self) -> None:
        """Every long poll looks again (an agent drained: its poll answers now)."""
        for waiters in self._waiters.values():
            waiters.wake_all()

    def _ended(self) -> None:
        """A task finished: those who wait for one look again."""
        ended, self._task_ended = self._task_ended, asyncio.Event()
        ended.set()
