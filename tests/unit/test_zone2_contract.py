"""The daemon <-> zone 2 contract (fleetd.zone2.contract): each message is written by one side and read by the other
with the same class, in the wire format each side sent before; a message its class cannot read is refused, and either
server answers it 400 with a JSON error, changing nothing."""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from fleetd.errors import Unavailable
from fleetd.gateway import Zone2
from fleetd.store import Store
from fleetd.vault import Vault
from fleetd.zone2.breaker import BreakerSettings, RetrySettings
from fleetd.zone2.budget import Caps, Reservation
from fleetd.zone2.contract import (
    AgentFigures,
    BreakerStatus,
    BudgetAnswer,
    ContractError,
    Counters,
    Credentials,
    Event,
    GatewayLoad,
    Health,
    Heartbeat,
    HeartbeatAnswer,
    HeartbeatBatch,
    InstanceFigures,
    PoolCap,
    Registration,
    Registrations,
    TaskAnswer,
    TaskAnswers,
    TaskComplete,
    TaskCompletions,
    TaskFail,
    TaskHold,
    TaskLease,
    TaskNext,
    TaskOutcome,
    Upstream,
    Zone2Policy,
)
from fleetd.zone2.costs import CostTracker
from fleetd.zone2.guard import Guard
from fleetd.zone2.ledger import Ledger
from fleetd.zone2.pricing import Price, PriceTable
from fleetd.zone2.registry import Registry
from fleetd.zone2.service import CONTROL_SOCKET, DAEMON_SOCKET, DaemonLink, init_control
from fleetd.zone2.tasks import HeldTask, HeldTasks
from tests.unit.supervisor_rig import insert

FIGURES = {"spent_today_nusd": 5, "spent_month_nusd": 9, "reserved_nusd": 1, "llm_calls": 3, "inflight_calls": 1,
           "month": "2026-12"}
HEALTH = Health(2, 1, 3.5, 7, ledger_error="database or disk is full", ledger_unwritten=3, code="0123456789abcdef",
                gateway=GatewayLoad(4, 1024, 2048, 2, 1, 0))
REG = Registration("a1b2c3d4e5f6", "10.0.0.9", "researcher", frozenset({"openai", "search"}),
                   Caps(5_000_000_000, None, 100), allow_unpriced=True)

MESSAGES: list[Any] = [
    REG,
    Registrations((REG, Registration("b2", "10.0.0.10", "default"))),
    Registration("c3", "10.0.0.11", "worker", task=TaskHold("0123456789abcdef", 2, 500_000_000)),
    Registration("c3", "10.0.0.11", task=TaskHold("0123456789abcdef", 1)),
    Registration("c4", "10.0.0.12", "worker", pool=PoolCap("web:v2", 2_500_000_000)),
    PoolCap("web:v2", 0),
    Credentials((Upstream("openai", "https://api.openai.com", "sk-1", "openai"),
                 Upstream("search", "http://search:8080/base", "k"))),
    Zone2Policy((Price("my-finetune", 3.0, 12.0, cached_input=1.5, max_output_tokens=16384),
                 *PriceTable.builtin().all()[:3]),
                BreakerSettings(threshold=3, window=10.0), RetrySettings(max_retries=0), Caps(500_000_000_000, None)),
    HEALTH,
    BudgetAnswer(InstanceFigures(**FIGURES, counters=Counters({"input": 3, "output": 10}, {"model_not_priced": 1},
                                                             {"200": 2, "none": 1}, 1)),
                 {"a1": AgentFigures(**FIGURES, breakers={"https://api.openai.com": BreakerStatus("open", 12.5, 2)}),
                  "a2": AgentFigures(month="2026-12")}),
    HeartbeatBatch((Heartbeat("a1", {"step": 8, "total": 15, "message": "halfway"}), Heartbeat("a2"))),
    HeartbeatAnswer(("a1",)),
    Event("circuit_open", "a1", "circuit to openai open", {"upstream": "openai", "open_seconds": 60}),
    Event("ledger_write_failed", None, "zone 2 cannot write its ledger"),
    TaskNext("a1", 0.0),
    TaskNext("a1", 60.0),
    TaskLease("0123456789abcdef", {"q": "sqlite", "n": [1, 2.5, None]}, 2, "2026-06-01T12:00:00Z"),
    TaskLease("0123456789abcdef", None, 1, "2026-06-01T12:00:00Z"),
    TaskLease("0123456789abcdef", "x", 1, "2026-06-01T12:00:00Z", max_nusd=1_250_000_001),
    TaskLease("0123456789abcdef", "x", 1, "2026-06-01T12:00:00Z", max_nusd=0),
    TaskComplete("a1", 3, {"summary": "é", "rows": [[1], []]}),
    TaskComplete("a1", None),
    TaskFail("a1", 1, "rate limited", retry=True),
    TaskFail("a1", None, "bad input", retry=False),
    TaskOutcome("0123456789abcdef", "queued", 1),
    TaskCompletions((("0123456789abcdef", TaskComplete("a1", 3, {"n": 1}, next_wait=0.0)),
                     ("fedcba9876543210", TaskComplete("a2", None)))),
    TaskCompletions(()),
    TaskAnswers((TaskAnswer(200, {"id": "t", "state": "succeeded", "attempts": 1, "next": None}),
                 TaskAnswer(409, {"error": {"type": "conflict", "code": "conflict", "message": "stale"}}))),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_the_wire_both_ways(message: Any) -> None:
    assert type(message).from_json(json.loads(json.dumps(message.to_json()))) == message


def test_the_wire_keeps_the_names_each_side_sent_before() -> None:
    """A zone 2 image built from the code before the contract reads what this daemon sends, and the other way."""
    wire = json.loads(json.dumps(REG.to_json()))
    assert wire["creds"] == ["openai", "search"] and wire["monthly_nusd"] is None
    assert list(Credentials((Upstream("x", "http://x", "s"),)).to_json()[0]) == ["name", "upstream", "secret",
                                                                                "provider"]
    policy = Zone2Policy().to_json()
    assert (set(policy), set(policy["instance"])) == ({"prices", "breaker", "retry", "instance", "host_addresses",
                                                       "agent_networks"}, {"daily_nusd", "monthly_nusd"})
    # a daemon from before egress sends no addresses: the proxy then refuses only the addresses it always refuses
    before = {k: v for k, v in policy.items() if k not in ("host_addresses", "agent_networks")}
    assert Zone2Policy.from_json(before) == Zone2Policy()
    # an egress policy, on the wire
    told = Zone2Policy(host_addresses=("192.0.2.2", "fd00::2"), agent_networks=("172.30.0.0/24",))
    assert Zone2Policy.from_json(json.loads(json.dumps(told.to_json()))) == told
    assert Registration("a", "i", egress=("pypi.org", "*.example.test:8443"), egress_max_bytes=5).to_json()[
        "egress"] == ["pypi.org", "*.example.test:8443"]
    assert BreakerSettings(**policy["breaker"]) == BreakerSettings()  # as zone 2 before the contract read them
    assert RetrySettings(**policy["retry"]) == RetrySettings()
    assert set(HEALTH.to_json()) == {"ok", "agents", "creds", "uptime_seconds", "pid", "ledger_error",
                                     "ledger_unwritten", "code", "gateway"}
    assert HeartbeatBatch((Heartbeat("a1"),)).to_json() == [{"agent_id": "a1", "progress": None}]
    assert HeartbeatAnswer(("a1",)).to_json() == {"taken": ["a1"]}
    assert Event("t", None, "m").to_json() == {"type": "t", "agent_id": None, "message": "m", "data": {}}
    # the task calls, as docs/agent-protocol.md and the daemon's task queue name their fields
    assert TaskNext("a1").to_json() == {"agent_id": "a1", "wait": 30.0}
    assert TaskComplete("a1", None).to_json() == {"agent_id": "a1", "attempt": None, "output": None}
    assert TaskFail("a1", 2, "e").to_json() == {"agent_id": "a1", "attempt": 2, "error": "e", "retry": True}
    assert set(TaskLease("t", 1, 1, "d").to_json()) == {"id", "input", "attempt", "deadline"}
    # a task's cap, as the agent reads it (docs/agent-protocol.md): dollars as an exact decimal string
    assert [TaskLease("t", 1, 1, "d", n).to_json()["max_usd"] for n in (500_000_000, 12 * 10**9, 1, 0)] == [
        "0.5", "12", "0.000000001", "0"]
    assert REG.to_json()["task"] is None
    assert Registration("a", "i", task=TaskHold("t", 2, 7)).to_json()["task"] == {"id": "t", "attempt": 2,
                                                                                  "max_nusd": 7}
    # a spend pool (a canary version's): its key and cap; none is null
    assert REG.to_json()["pool"] is None
    assert Registration("a", "i", pool=PoolCap("web:v2", 7)).to_json()["pool"] == {"key": "web:v2", "cap_nusd": 7}


def test_a_task_message_reads_with_its_optional_fields_absent() -> None:
    assert TaskNext.from_json({"agent_id": "a1"}) == TaskNext("a1", 30.0)
    assert TaskComplete.from_json({"agent_id": "a1"}) == TaskComplete("a1", None, None)
    assert TaskFail.from_json({"agent_id": "a1", "error": "e"}) == TaskFail("a1", None, "e", True)
    # the daemon answers a completion with the whole task: the rest is not zone 2's to read
    assert TaskOutcome.from_json({"id": "t", "state": "succeeded", "attempts": 2, "input": [1], "output": 2,
                                  "cost_usd": "0.01"}) == TaskOutcome("t", "succeeded", 2)


def test_what_an_older_peer_sends_still_reads() -> None:
    bare = Registration.from_json({"agent_id": "x", "ip": "10.0.0.2"})
    assert (bare.role, bare.creds, bare.caps, bare.allow_unpriced, bare.task, bare.pool) == (
        "default", frozenset(), Caps(), False, None, None)
    # a daemon before spend pools: a registration as it wrote them (no pool), read as one without a pool
    old_daemon = {k: v for k, v in REG.to_json().items() if k != "pool"}
    assert Registration.from_json(old_daemon) == REG and Registration.from_json({**old_daemon, "pool": None}) == REG
    # a daemon before per-task caps: its leases name no cap
    lease = TaskLease.from_json({"id": "t", "input": 1, "attempt": 1, "deadline": "d"})
    assert lease.max_nusd is None and TaskLease.from_json({**lease.to_json(), "max_usd": None}) == lease
    # a daemon before the contract sent only the breaker and retry keys its config set
    policy = Zone2Policy.from_json({"prices": [{"model": "m", "input": 1, "output": 2}], "breaker": {"threshold": 3},
                                    "retry": {}, "instance": {"daily_nusd": None, "monthly_nusd": 5}})
    assert (policy.prices, policy.breaker, policy.retry, policy.instance) == (
        (Price("m", 1, 2),), BreakerSettings(threshold=3), RetrySettings(), Caps(None, 5))
    # a zone 2 older than the ledger's error, the code fingerprint and the guard
    health = Health.from_json({"ok": True, "agents": 2, "creds": 1, "uptime_seconds": 3.5, "pid": 1})
    assert (health.ledger_error, health.ledger_unwritten, health.code, health.gateway) == (None, 0, None, None)
    # zone 2's budget answer as the code before the contract wrote it
    old = {"instance": {**FIGURES, "counters": {"tokens": {"input": 3}, "refusals": {}, "upstream_status": {"200": 1},
                                                "breaker_trips": 0}},
           "agents": {"a1": {**FIGURES, "breakers": {"openai": {"state": "half_open", "reopen_in": None, "trips": 1}}}}}
    budget = BudgetAnswer.from_json(old)
    new = budget.to_json()  # with the egress counters (none counted) that a zone 2 from before egress lacks
    counters = new["instance"]["counters"]
    assert counters.pop("egress_connections") == counters.pop("egress_bytes") == {}
    assert new == old and budget.agents["a1"].breakers["openai"].state == "half_open"


REFUSED: list[tuple[Any, Any, str]] = [
    (Registration, {"agent_id": "a1"}, "registration: ip is missing"),
    (Registration, {"agent_id": "a1", "ip": "10.0.0.2", "daily_nusd": "5"},
     "registration: daily_nusd must be a whole number or null, got a string"),
    (Registration, {"agent_id": "a1", "ip": "10.0.0.2", "max_llm_calls": True}, "max_llm_calls must be a whole number"),
    (Registration, {"agent_id": "a1", "ip": "10.0.0.2", "creds": ["openai", 7]}, "creds must be an array of strings"),
    (Registrations, {"agent_id": "a1", "ip": "10.0.0.2"}, "registrations: expected an array, got an object"),
    (Credentials, [{"name": "openai", "upstream": "https://api.openai.com"}], "credential: secret is missing"),
    (Credentials, [{"name": "x", "upstream": "u", "secret": "s", "provider": None}],
     "provider must be a string, got null"),
    (Zone2Policy, [1, 2], "policy: expected an object, got an array"),
    (Zone2Policy, {"prices": [{"model": "m", "input": 1, "output": 1, "speed_multiplier": 3.0}]},
     "unknown field(s) speed_multiplier"),
    (Zone2Policy, {"prices": {"model": "m"}}, "policy: prices must be an array, got an object"),
    (Zone2Policy, {"breaker": {"threshold": 2.5}}, "policy: breaker: threshold must be a whole number, got a number"),
    (Zone2Policy, {"retry": {"cap": "8"}}, "policy: retry: cap must be a number, got a string"),
    (Zone2Policy, {"retry": {"tries": 1}}, "policy: retry: unknown keys ['tries']"),
    (Zone2Policy, {"instance": {"daily_nusd": 1.5}}, "policy: instance: daily_nusd must be a whole number"),
    (Health, {"agents": 2, "creds": 1, "pid": 1}, "health: uptime_seconds is missing"),
    (Health, {"agents": 2, "creds": 1, "pid": 1, "uptime_seconds": 1, "gateway": {"connections": 1}},
     "gateway load: connections_limit is missing"),
    (BudgetAnswer, {"agents": {}}, "budget: instance is missing"),
    (BudgetAnswer, {"instance": {"spent_today_nusd": "5"}},
     "instance's figures: spent_today_nusd must be a whole number, got a string"),
    (BudgetAnswer, {"instance": {}, "agents": {"a1": {"breakers": {"u": {"state": "open", "trips": 1}}}}},
     "breaker: reopen_in is missing"),
    (BudgetAnswer, {"instance": {"counters": {"tokens": {"input": 1.5}}}},
     "counters: tokens must be an object of whole numbers"),
    (HeartbeatBatch, {"agent_id": "a1"}, "heartbeats: expected an array, got an object"),
    (HeartbeatBatch, [{"agent_id": "a1", "progress": "halfway"}],
     "heartbeat: progress must be an object or null, got a string"),
    (HeartbeatAnswer, {}, "heartbeat answer: taken is missing"),
    (HeartbeatAnswer, {"taken": "a1"}, "taken must be an array of strings"),
    (Event, {"type": "x", "message": "m"}, "event: agent_id is missing"),
    (Event, {"type": "x", "agent_id": 7, "message": "m"}, "event: agent_id must be a string or null, got a number"),
    (Event, {"type": "x", "agent_id": None, "message": "m", "data": [1]},
     "event: data must be an object, got an array"),
    (TaskNext, {"wait": 5}, "task request: agent_id is missing"),
    (TaskNext, {"agent_id": "a1", "wait": "5"}, "task request: wait must be a number, got a string"),
    (TaskNext, {"agent_id": "a1", "wait": 61}, "task request: wait must be from 0 to 60 seconds, got 61"),
    (TaskNext, {"agent_id": "a1", "wait": -0.5}, "task request: wait must be from 0 to 60 seconds, got -0.5"),
    (TaskLease, {"id": "t", "attempt": 1, "deadline": "d"}, "task lease: input is missing"),
    (TaskLease, {"id": "t", "input": 1, "deadline": "d"}, "task lease: attempt is missing"),
    (TaskLease, {"id": "t", "input": 1, "attempt": 0, "deadline": "d"}, "task lease: attempt must be 1 or more"),
    (TaskLease, {"id": 7, "input": 1, "attempt": 1, "deadline": "d"}, "task lease: id must be a string"),
    (TaskLease, [1], "task lease: expected an object, got an array"),
    (TaskLease, {"id": "t", "input": 1, "attempt": 1, "deadline": "d", "max_usd": 0.5},
     "task lease: max_usd must be a string or null, got a number"),
    (TaskLease, {"id": "t", "input": 1, "attempt": 1, "deadline": "d", "max_usd": "0.0000000001"},
     "task lease: max_usd must be dollars >= 0 as a decimal string of at most 9 decimals"),
    (TaskLease, {"id": "t", "input": 1, "attempt": 1, "deadline": "d", "max_usd": "-1"}, "max_usd must be dollars"),
    (TaskLease, {"id": "t", "input": 1, "attempt": 1, "deadline": "d", "max_usd": "Infinity"},
     "max_usd must be dollars"),
    (TaskLease, {"id": "t", "input": 1, "attempt": 1, "deadline": "d", "max_usd": "$1"}, "max_usd must be dollars"),
    (Registration, {"agent_id": "a1", "ip": "10.0.0.2", "task": {"id": "t"}}, "held task: attempt is missing"),
    (Registration, {"agent_id": "a1", "ip": "10.0.0.2", "task": {"id": "t", "attempt": 1, "max_nusd": -1}},
     "held task: max_nusd must be 0 or more"),
    (Registration, {"agent_id": "a1", "ip": "10.0.0.2", "task": "t"}, "registration: task must be an object or null"),
    (Registration, {"agent_id": "a1", "ip": "10.0.0.2", "pool": "web:v2"},
     "registration: pool must be an object or null, got a string"),
    (Registration, {"agent_id": "a1", "ip": "10.0.0.2", "pool": {"key": "web:v2"}}, "pool: cap_nusd is missing"),
    (PoolCap, {"key": "web:v2", "cap_nusd": -1}, "pool: cap_nusd must be 0 or more, got -1"),
    (PoolCap, {"key": "web:v2", "cap_nusd": 1.5}, "pool: cap_nusd must be a whole number or null, got a number"),
    (PoolCap, {"key": "", "cap_nusd": 1}, "pool: key must not be empty"),
    (PoolCap, {"key": 7, "cap_nusd": 1}, "pool: key must be a string, got a number"),
    (TaskComplete, {"attempt": 1, "output": 1}, "task completion: agent_id is missing"),
    (TaskComplete, {"agent_id": "a1", "attempt": 1.5}, "task completion: attempt must be a whole number or null"),
    (TaskComplete, {"agent_id": "a1", "attempt": -1}, "task completion: attempt must be 1 or more, got -1"),
    (TaskFail, {"agent_id": "a1"}, "task failure: error is missing"),
    (TaskFail, {"agent_id": "a1", "error": None}, "task failure: error must be a string, got null"),
    (TaskFail, {"agent_id": "a1", "error": "e", "retry": 1}, "task failure: retry must be true or false"),
    (TaskFail, {"agent_id": "a1", "error": "e" * 10_001}, "error must be at most 10000 characters, got 10001"),
    (TaskOutcome, {"id": "t", "state": "succeeded"}, "task outcome: attempts is missing"),
    (TaskCompletions, {"task_id": "t"}, "task completions: expected an array, got an object"),
    (TaskCompletions, [{"task_id": "t"}], "task completions: completion is missing"),
    (TaskCompletions, [{"task_id": "t", "completion": {"agent_id": "a1", "next_wait": 5}}],
     "a completion that waits for its next task goes alone"),
    (TaskAnswers, [{"status": 200}], "task answer: body is missing"),
    (TaskAnswers, [{"status": 200, "body": None}], "task answer: body must be an object, got null"),
]


@pytest.mark.parametrize(("cls", "data", "why"), REFUSED, ids=[why for _, _, why in REFUSED])
def test_a_message_its_class_cannot_read_is_refused_saying_why(cls: Any, data: Any, why: str) -> None:
    with pytest.raises(ContractError) as refusal:
        cls.from_json(data)
    assert why in str(refusal.value)


# -- on the control sockets ------------------------------------------------------------------------------------------
async def answer(app: web.Application, method: str, path: str, body: bytes) -> tuple[int, str]:
    """The status and body ``app`` answers a request with."""
    async with TestClient(TestServer(app)) as client, client.request(method, path, data=body) as response:
        return response.status, await response.text()


def refused(answered: tuple[int, str]) -> bool:
    """400, saying why in a JSON object's ``error``."""
    status, body = answered
    return status == 400 and isinstance(json.loads(body).get("error"), str)


def daemon(tmp_path: Path) -> Zone2:
    """The daemon's side of zone 2 on a store of its own, where agent a1's address is 10.0.0.2."""
    async def call(fn: Any, *args: Any) -> Any:
        return fn(*args)

    store = Store(tmp_path / "state.db")
    runtime = SimpleNamespace(instance="t-contract", agent_addresses=lambda: {"10.0.0.2": "a1"},
                              agent_networks=lambda: ("10.0.0.0/24",))
    return Zone2(tmp_path, store, Vault(store, secrets.token_bytes(32)), runtime, call,  # type: ignore[arg-type]
                 Watching())


Beats = list[tuple[str, dict[str, Any] | None]]


class Watching:
    """A heartbeat watchdog that watches agent a1 alone, and keeps the heartbeats it is given."""

    def __init__(self) -> None:
        self.beats: Beats = []

    def beat(self, agent_id: str, progress: dict[str, Any] | None) -> bool:
        self.beats.append((agent_id, progress))
        return agent_id == "a1"

    def pause(self, why: str) -> None:
        pass

    def resume(self) -> None:
        pass


def watched(zone2: Zone2) -> Beats:
    """The heartbeats the daemon's side ``zone2`` gave its watchdog."""
    assert isinstance(zone2.questions.watchdog, Watching)
    return zone2.questions.watchdog.beats


@asynccontextmanager
async def on_socket(app: web.Application, name: str) -> AsyncIterator[Path]:
    """``app`` served on a Unix socket called ``name``, in a directory of its own under /tmp (short enough for a
    socket's path)."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            path = Path(tmp) / name
            await web.UnixSite(runner, str(path)).start()
            yield path
    finally:
        await runner.cleanup()


@asynccontextmanager
async def asking(zone2: Zone2, app: web.Application) -> AsyncIterator[None]:
    """The daemon's side ``zone2`` talking to ``app`` as zone 2's control socket."""
    async with on_socket(app, CONTROL_SOCKET) as path:
        zone2.control.open(path)
        try:
            yield
        finally:
            await zone2.control.close()


# -- zone2.sock ----------------------------------------------------------------------------------------------------
ZONE2_MALFORMED = [
    ("PUT", "/control/policy", b'{"breaker": {"threshold": "5"}}'),
    ("PUT", "/control/policy", b'{"instance": {"daily_nusd": "lots"}}'),
    ("PUT", "/control/policy", b'{"prices": [{"model": "m", "input": 1, "output": 2}], "retry": {"tries": 1}}'),
    ("PUT", "/control/creds", b'[{"name": "openai", "upstream": "https://api.openai.com"}]'),
    ("PUT", "/control/creds", b'{"name": "openai", "upstream": "https://api.openai.com", "secret": "sk"}'),
    ("PUT", "/control/agents", b'[{"agent_id": "a1", "ip": "10.0.0.2"}, {"ip": "10.0.0.3"}]'),
    ("POST", "/control/agents", b'{"agent_id": "a1", "ip": "10.0.0.2", "daily_nusd": "lots"}'),
    ("POST", "/control/agents", b'{"agent_id": "a1", "ip": "10.0.0.2", "creds": "openai"}'),
    ("POST", "/control/agents", b"not JSON"),
]


@pytest.mark.parametrize(("method", "path", "body"), ZONE2_MALFORMED)
def test_zone2_answers_a_malformed_control_message_400_and_keeps_what_it_had(
        tmp_path: Path, method: str, path: str, body: bytes) -> None:
    registry = Registry()
    costs = CostTracker(Ledger(tmp_path / "ledger.db"), lambda *e: None)
    try:
        assert refused(asyncio.run(answer(init_control(registry, costs, Guard(), 0.0), method, path, body)))
        assert (registry.creds, registry.by_ip, len(costs.prices)) == ({}, {}, 0)
        assert (costs.breaker_settings, costs.retry, costs.budgets.instance_caps) == (
            BreakerSettings(), RetrySettings(), Caps())
    finally:
        costs.ledger.close()


class Holding:
    """The task door (fleetd.fleet.Fleet) where agent a1 holds a task with a cap."""

    HOLD = TaskHold("0123456789abcdef", 2, 250_000_000)

    async def next_task(self, agent_id: str, wait: float) -> None:
        return None

    def complete(self, *args: Any) -> Any:
        raise AssertionError("not relayed here")

    def fail(self, *args: Any) -> Any:
        raise AssertionError("not relayed here")

    def held(self, agent_id: str) -> TaskHold | None:
        return self.HOLD if agent_id == "a1" else None

    def holds(self) -> dict[str, TaskHold]:
        return {"a1": self.HOLD}


def test_the_registrations_name_the_task_an_agent_holds_and_zone2_holds_it_after_a_restart(tmp_path: Path) -> None:
    zone2 = daemon(tmp_path)
    zone2.tasks = Holding()
    insert(zone2.store, "a1", state="running")
    registry, costs = Registry(), CostTracker(Ledger(tmp_path / "ledger.db"), lambda *e: None)
    held = HeldTasks(on_release=costs.release_task)

    async def main() -> Registration | None:
        async with asking(zone2, init_control(registry, costs, Guard(), 0.0, held)):
            await zone2.push_all()  # as after zone 2 (re)started
        return zone2.registration("a1", "10.0.0.2", zone2.held("a1"))

    try:
        reg = asyncio.run(main())
    finally:
        zone2.store.close()
        costs.ledger.close()
    assert reg is not None and reg.task == Holding.HOLD
    assert registry.by_ip["10.0.0.2"] == reg
    assert held.held("a1") == HeldTask(Holding.HOLD.id, 2, 250_000_000)


def test_the_registrations_name_the_spend_pool_the_fleet_gives_an_agent(tmp_path: Path) -> None:
    zone2 = daemon(tmp_path)
    insert(zone2.store, "a1", state="running")
    registry, costs = Registry(), CostTracker(Ledger(tmp_path / "ledger.db"), lambda *e: None)
    asked: list[str] = []

    def pools(agent: dict[str, Any]) -> PoolCap | None:
        asked.append(agent["id"])  # the agent's store record
        return PoolCap("web:v2", 2_000_000_000)

    async def main() -> None:
        async with asking(zone2, init_control(registry, costs, Guard(), 0.0)):
            reg = zone2.registration("a1", "10.0.0.2")
            assert reg is not None and reg.pool is None  # no pools yet
            zone2.pools = pools
            await zone2.push_all()  # as after zone 2 (re)started

    try:
        asyncio.run(main())
    finally:
        zone2.store.close()
        costs.ledger.close()
    assert registry.by_ip["10.0.0.2"].pool == PoolCap("web:v2", 2_000_000_000) and asked == ["a1"]
    assert registry.pools() == {"web:v2"}


def test_the_daemon_reports_budgets_as_zone2_counts_them(tmp_path: Path) -> None:
    zone2 = daemon(tmp_path)
    insert(zone2.store, "a1", state="running")
    costs = CostTracker(Ledger(tmp_path / "ledger.db"), lambda *e: None)
    held = costs.budgets.reserve("a1", Caps(), 2_000_000_000)
    assert isinstance(held, Reservation)
    costs.budgets.settle(held, 1_500_000_000)
    costs.budgets.reserve("a1", Caps(), 250_000_000)  # in flight
    costs.breaker_record("a1", "openai", 429, probe=False)

    async def main() -> dict[str, Any]:
        async with asking(zone2, init_control(Registry(), costs, Guard(counts=costs.counts), 0.0)):
            return await zone2.budget_report([zone2.store.get("a1")])  # type: ignore[list-item]

    try:
        report = asyncio.run(main())
    finally:
        zone2.store.close()
        costs.ledger.close()
    (agent,) = report["agents"]
    assert (agent["spent_today_usd"], agent["reserved_usd"], agent["llm_calls"], agent["calls_in_flight"]) == (
        1.5, 0.25, 1, 1)
    assert agent["daily_cap_usd"] == 50.0 and agent["breakers"] == {
        "openai": {"state": "closed", "reopen_in": None, "trips": 0}}
    assert (report["instance"]["spent_month_usd"], report["instance"]["llm_calls"]) == (1.5, 1)
    assert report["counters"]["upstream_status"] == {"429": 1} and report["counters"]["tokens"]["input"] == 0


def test_an_answer_the_daemon_cannot_read_is_no_answer_and_is_said(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A zone 2 built from other code, whose answers this daemon cannot read: as if it had not answered, and logged
    naming the stale image."""
    async def garbled(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "agents": "two"})

    zone2 = daemon(tmp_path)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/control/health", garbled)
        app.router.add_get("/control/budget", garbled)
        async with asking(zone2, app):
            assert await zone2.control.health() is None and zone2.control.last_health is None
            with pytest.raises(Unavailable):
                await zone2.budget_report([])

    try:
        asyncio.run(main())
    finally:
        zone2.store.close()
    assert "health: agents must be a whole number" in caplog.text and "fleetd images build" in caplog.text
    assert "budget: agents must be an object" in caplog.text


# -- daemon.sock ---------------------------------------------------------------------------------------------------
DAEMON_MALFORMED = [
    ("/control/events", b'{"agent_id": null, "message": "no type"}'),
    ("/control/events", b'{"type": "circuit_open", "agent_id": null, "message": "m", "data": [1]}'),
    ("/control/events", b'["circuit_open"]'),
    ("/control/heartbeats", b'[{"agent_id": "a1"}, {"progress": {"step": 1}}]'),
    ("/control/heartbeats", b'[{"agent_id": "a1", "progress": "halfway"}]'),
    ("/control/heartbeats", b'{"agent_id": "a1"}'),
    ("/control/heartbeats", b'[{"agent_id": 7}]'),
    ("/control/heartbeats", b""),
]


@pytest.mark.parametrize(("path", "body"), DAEMON_MALFORMED)
def test_the_daemon_answers_a_malformed_message_of_zone2_400_and_records_nothing(
        tmp_path: Path, path: str, body: bytes) -> None:
    zone2 = daemon(tmp_path)
    beats = watched(zone2)
    try:
        assert refused(asyncio.run(answer(zone2.questions.app(), "POST", path, body)))
        assert beats == [] and zone2.store.events() == []
    finally:
        zone2.store.close()


def test_zone2s_link_and_the_daemon_read_each_other(tmp_path: Path) -> None:
    """Zone 2's side of daemon.sock (DaemonLink) against the daemon's: who an address is, heartbeats, events."""
    zone2 = daemon(tmp_path)
    beats = watched(zone2)
    insert(zone2.store, "a1", state="running")

    async def main() -> None:
        async with on_socket(zone2.questions.app(), DAEMON_SOCKET) as path:
            link = DaemonLink(path)
            try:
                assert await link.whois("10.0.0.2") == zone2.registration("a1", "10.0.0.2") is not None
                zone2.tasks = Holding()  # the daemon's answer names the task the agent holds
                assert (await link.whois("10.0.0.2")).task == Holding.HOLD  # type: ignore[union-attr]
                assert await link.whois("10.0.0.3") is None
                assert await asyncio.gather(link.heartbeat("a1", {"step": 1}), link.heartbeat("gone", None)) == [
                    True, False]
                link.emit("circuit_open", "a1", "circuit to openai open", {"upstream": "openai"})
                link.emit("ledger_write_failed", "gone", "zone 2 cannot write its ledger", {})
            finally:
                await link.close()  # once the events are sent

    try:
        asyncio.run(main())
        assert beats == [("a1", {"step": 1}), ("gone", None)]
        events = {e["type"]: e for e in zone2.store.events()}
        assert (events["circuit_open"]["agent_id"], events["circuit_open"]["data"]) == ("a1", {"upstream": "openai"})
        assert events["ledger_write_failed"]["agent_id"] is None  # an agent the daemon does not know
    finally:
        zone2.store.close()
