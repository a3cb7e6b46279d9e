from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from fleetd.config import Config
from fleetd.deployments import Deployments
from fleetd.errors import FleetdError, Unavailable
from fleetd.fleet import Fleet
from fleetd.histograms import Histogram
from fleetd.listen import parse_listen
from fleetd.metrics import STATES, Snapshot, gather, render, serve_metrics
from fleetd.models import Reason, State, iso, utcnow
from fleetd.store import Store
from fleetd.task_costs import TaskCosts
from fleetd.task_queue import Takes, TaskQueue
from fleetd.zone2.ledger import Call, Ledger
from fleetd.zone2.llm import Usage
from tests.unit.wall_clock import WallClock


def parse(body: bytes) -> dict[str, list[Sample]]:
    """Family name (counters without _total, as the parser names them) → samples."""
    return {family.name: family.samples for family in text_string_to_metric_families(body.decode())}


def types(body: bytes) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(body.decode())}


def value(samples: list[Sample], **labels: str) -> float:
    found = [s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (labels, samples)
    return found[0]


AGENTS: list[dict[str, Any]] = [
    {"id": "a1", "name": "alpha", "role": "coder", "state": "running", "reason": None, "ttl_remaining": 120.5,
     "heartbeat_interval": 10, "heartbeat_age": 3.25, "ready": True, "restarts": 1},
    {"id": "a2", "name": "beta", "role": "coder", "state": "running", "ttl_remaining": 50.0,
     "heartbeat_interval": None, "heartbeat_age": None, "ready": False},
    {"id": "a3", "name": "gamma", "role": "critic", "state": "exited", "reason": "ttl_expired",
     "ttl_remaining": None},
    {"id": "a4", "name": "delta", "role": "critic", "state": "exited", "reason": "oom_killed"},
    {"id": "a5", "name": "eps", "state": "stopping", "ttl_remaining": -2.0},  # missing keys are tolerated
]

BUDGET: dict[str, Any] = {
    "agents": [
        {"id": "a1", "name": "alpha", "role": "coder", "spent_today_usd": 0.125, "spent_month_usd": 3.5,
         "reserved_usd": 0.01, "daily_cap_usd": 1.0, "monthly_cap_usd": 20.0, "llm_calls": 42,
         "max_llm_calls": 100,
         "breakers": {"openai": {"state": "open", "reopen_in": 12.0, "trips": 2},
                      "anthropic": {"state": "closed", "reopen_in": None, "trips": 0}}},
        {"id": "a2", "name": "beta", "role": "coder", "spent_today_usd": 0.0, "spent_month_usd": 0.0,
         "reserved_usd": 0.0, "daily_cap_usd": None, "monthly_cap_usd": None, "llm_calls": 0,
         "max_llm_calls": None, "breakers": {}},
    ],
    "instance": {"spent_today_usd": 0.125, "spent_month_usd": 3.5, "reserved_usd": 0.01,
                 "daily_cap_usd": 50.0, "monthly_cap_usd": None, "llm_calls": 42},
}

COUNTS: dict[str, Any] = {
    "spawns": 7,
    "exits_by_reason": {"ttl_expired": 2, "oom_killed": 1, "heartbeat_lost": 1, None: 1},
    "probe_failures": {("a1", "liveness"): 3, ("a2", "liveness"): 1, ("a2", "readiness"): 2},
    "restarts": 4,
}


def full() -> dict[str, Any]:
    return parse(render(Snapshot(agents=AGENTS, counts=COUNTS, budget=BUDGET, zone2_healthy=True)))


def test_every_state_is_present() -> None:
    m = full()
    agents = m["fleetd_agents"]
    assert {s.labels["state"] for s in agents} == set(STATES)
    assert value(agents, state="running") == 2
    assert value(agents, state="exited") == 2
    assert value(agents, state="stopping") == 1
    assert value(agents, state="restarting") == 0 and value(agents, state="failed") == 0
    empty = parse(render(Snapshot(agents=[], counts={}, budget=None, zone2_healthy=False)))
    assert all(s.value == 0 for s in empty["fleetd_agents"]) and len(empty["fleetd_agents"]) == len(STATES)


def test_counters_end_in_total() -> None:
    body = render(Snapshot(agents=AGENTS, counts=COUNTS, budget=BUDGET, zone2_healthy=True))
    text, m, kinds = body.decode(), parse(body), types(body)
    counters = [name for name, kind in kinds.items() if kind == "counter"]
    assert set(counters) >= {"fleetd_spawns", "fleetd_agent_exits", "fleetd_agent_restarts",
                             "fleetd_probe_failures", "fleetd_agent_llm_calls", "fleetd_instance_llm_calls"}
    for name in counters:
        assert all(s.name == name + "_total" for s in m[name]), name
        assert f"# TYPE {name}_total counter" in text
    for name, kind in kinds.items():  # nothing that is not a counter pretends to be one
        assert kind == "counter" or not name.endswith("_total"), name
    assert value(m["fleetd_spawns"]) == 7
    assert value(m["fleetd_agent_restarts"]) == 4
    exits = m["fleetd_agent_exits"]
    assert value(exits, reason="ttl_expired") == 2 and value(exits, reason="unknown") == 1
    assert value(exits, reason="liveness_failed") == 0  # known reasons are there before the first one
    probes = m["fleetd_probe_failures"]
    assert value(probes, probe="liveness") == 4 and value(probes, probe="readiness") == 2
    assert value(probes, probe="startup") == 0
    # The flat {probe: n} shape works too.
    flat = parse(render(Snapshot(counts={"probe_failures": {"startup": 5}})))
    assert value(flat["fleetd_probe_failures"], probe="startup") == 5


def test_per_agent_gauges() -> None:
    m = full()
    heartbeat = m["fleetd_agent_heartbeat_age_seconds"]
    assert [s.labels for s in heartbeat] == [{"agent": "a1", "name": "alpha", "role": "coder"}]
    assert heartbeat[0].value == 3.25
    ready = m["fleetd_agent_ready"]
    assert value(ready, agent="a1") == 1 and value(ready, agent="a2") == 0 and len(ready) == 2
    ttl = m["fleetd_agent_ttl_remaining_seconds"]
    assert value(ttl, agent="a1") == 120.5 and value(ttl, agent="a5", name="eps", role="") == 0
    assert not [s for s in ttl if s.labels["agent"] in ("a3", "a4")]


def test_spend_and_caps() -> None:
    m = full()
    spend = m["fleetd_agent_spend_usd"]
    assert value(spend, agent="a1", name="alpha", role="coder", window="day") == 0.125
    assert value(spend, agent="a1", window="month") == 3.5
    assert value(spend, agent="a2", window="day") == 0
    caps = m["fleetd_agent_budget_cap_usd"]
    assert value(caps, agent="a1", window="day") == 1.0 and value(caps, agent="a1", window="month") == 20.0
    assert not [s for s in caps if s.labels["agent"] == "a2"]  # no cap: no series
    assert value(m["fleetd_agent_reserved_usd"], agent="a1") == 0.01
    assert value(m["fleetd_agent_llm_calls"], agent="a1") == 42
    assert value(m["fleetd_agent_llm_calls_cap"], agent="a1") == 100
    assert value(m["fleetd_instance_spend_usd"], window="day") == 0.125
    assert value(m["fleetd_instance_spend_usd"], window="month") == 3.5
    assert value(m["fleetd_instance_reserved_usd"]) == 0.01
    assert value(m["fleetd_instance_budget_cap_usd"], window="day") == 50
    assert len(m["fleetd_instance_budget_cap_usd"]) == 1
    assert value(m["fleetd_instance_llm_calls"]) == 42
    assert value(m["fleetd_zone2_up"]) == 1


def test_circuit_state_is_one_hot() -> None:
    circuit = full()["fleetd_circuit_state"]
    for upstream, current in (("openai", "open"), ("anthropic", "closed")):
        mine = {s.labels["state"]: s.value for s in circuit if s.labels["upstream"] == upstream}
        assert mine == {state: (1 if state == current else 0) for state in ("closed", "open", "half_open")}
        assert all(s.labels["agent"] == "a1" for s in circuit if s.labels["upstream"] == upstream)
    assert len(circuit) == 6


def test_zone2_down() -> None:
    m = parse(render(Snapshot(agents=AGENTS, counts=COUNTS, budget=None, zone2_healthy=True)))
    assert value(m["fleetd_zone2_up"]) == 0
    assert "fleetd_agent_spend_usd" not in m and "fleetd_instance_spend_usd" not in m
    assert value(m["fleetd_spawns"]) == 7  # the rest is still there
    m = parse(render(Snapshot(agents=AGENTS, counts=COUNTS, budget=BUDGET, zone2_healthy=False)))
    assert value(m["fleetd_zone2_up"]) == 0


def test_label_values_are_escaped() -> None:
    odd = {"id": "x", "name": 'a"b\\c\nd', "role": "r", "state": "running", "ready": True}
    m = parse(render(Snapshot(agents=[odd])))
    assert value(m["fleetd_agent_ready"], agent="x") == 1
    assert m["fleetd_agent_ready"][0].labels["name"] == 'a"b\\c\nd'


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:9464", ("::1", 9464)), ("0.0.0.0:9464", ("0.0.0.0", 9464)),
     ("localhost:1", ("localhost", 1)), (" 10.0.0.2:65535 ", ("10.0.0.2", 65535)), ("[::]:80", ("::", 80))],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [(":9464", "give the address"), ("9464", "HOST:PORT"), ("", "HOST:PORT"), ("127.0.0.1:", "port"),
     ("127.0.0.1:0", "port"), ("127.0.0.1:65536", "port"), ("127.0.0.1:http", "port"), ("::1:9464", "brackets"),
     ("[::1]9464", r"\[IPv6\]:PORT"), ("[::1", r"\[IPv6\]:PORT"), ("[]:9464", "not an IPv6"),
     ("[1.2.3.4]:80", "not an IPv6"), ("bad host:80", "not a host"), ("127.0.0.1:-1", "port"),
     ("127.0.0.1:٣٣", "port")],
)
def test_parse_listen_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_listen(text)
    assert "\n" not in str(info.value)


# -- gather and serve, against a real store -------------------------------------
class FakeGateway:
    def __init__(self, budget: dict[str, Any] | None, healthy: bool = True) -> None:
        self.healthy = healthy
        self.budget = budget
        self.asked: list[list[str]] = []

    async def budget_report(self, agents: list[dict[str, Any]]) -> dict[str, Any]:
        self.asked.append([a["id"] for a in agents])
        if self.budget is None:
            raise Unavailable("zone 2 is not answering")
        return self.budget


class FakeAgents:
    async def stats(self) -> list[dict[str, Any]]:
        return []


class FakeParts:
    """The daemon's parts (fleetd.services.Services) as a scrape reads them."""

    def __init__(self, store: Store, gateway: FakeGateway) -> None:
        self.records = store
        self.zone2 = gateway
        self.agents = FakeAgents()
        self.fleet = Fleet(store, Deployments(store, Config()), TaskQueue(store))

    def agent_json(self, agent: dict[str, Any]) -> dict[str, Any]:
        live = agent["state"] == "running"
        return {"id": agent["id"], "name": agent["name"], "role": agent["role"], "state": agent["state"],
                "reason": agent["reason"], "ttl_remaining": 30.0 if live else None, "heartbeat_interval": 5,
                "heartbeat_age": 1.5 if live else None, "ready": live}


def populated(path: Path) -> Store:
    store = Store(path)
    now = iso(utcnow())
    for agent_id, name in (("a1", "alpha"), ("a2", "beta"), ("a3", "gamma")):
        store.insert_agent(agent_id, name=name, image="img", role="coder", state=State.RUNNING.value,
                           created_at=now, deadline=now, spec="{}")
    store.transition("a2", State.EXITED, Reason.TTL_EXPIRED)
    store.transition("a3", State.EXITED, Reason.OOM_KILLED)
    store.transition("a3", State.REMOVED, Reason.OOM_KILLED)
    # a1 died of its liveness probe and came back; a restart then stopped while waiting is not a second exit.
    store.conn.executemany(
        "INSERT INTO transitions (agent_id, at, from_state, to_state, reason) VALUES ('a1', ?, ?, ?, ?)",
        [(now, "running", "restarting", "liveness_failed"), (now, "restarting", "running", None),
         (now, "running", "restarting", "oom_killed"), (now, "restarting", "exited", "stopped")])
    store.add_event("restarted", "restarted", "a1", {"attempt": 1})
    store.add_event("restarted", "restarted", "a1", {"attempt": 2})
    store.add_event("probe_failed", "liveness failed", "a1", {"probe": "liveness"})
    store.add_event("probe_failed", "liveness failed", "a1", {"probe": "liveness"})
    store.add_event("probe_failed", "startup failed", "a1", {"probe": "startup"})
    store.add_event("probe_failed", "?", "a1", {})
    return store


def test_store_counts(tmp_path: Path) -> None:
    store = populated(tmp_path / "state.db")
    try:
        counts = store.counts()
    finally:
        store.close()
    assert counts == {"spawns": 3, "exits_by_reason": {"ttl_expired": 1, "oom_killed": 2, "liveness_failed": 1},
                      "probe_failures": {"liveness": 2, "startup": 1, "unknown": 1}, "restarts": 2}


def test_retention_removes_old_records_and_the_counters_never_go_down(tmp_path: Path) -> None:
    store = populated(tmp_path / "state.db")
    try:
        before = store.counts()
        store.update("a3", finished_at="2026-01-01T00:00:00+00:00")
        removed = store.purge(records_before=utcnow(), events_before=utcnow() + timedelta(seconds=1))
        assert removed["agents"] == 1 and removed["events"] > 0  # a3 (removed, ended long ago); every event
        assert store.get("a3") is None and store.transitions("a3") == [] and store.events(agent_id="a1") == []
        assert store.get("a1") is not None and store.get("a2") is not None  # live or not removed: kept
        assert store.counts() == before
        assert store.purge(records_before=utcnow(), events_before=utcnow()) == {
            "agents": 0, "transitions": 0, "events": 0}
        assert store.counts() == before  # nothing counted twice
    finally:
        store.close()


def test_gather(tmp_path: Path) -> None:
    store = populated(tmp_path / "state.db")
    gateway = FakeGateway(BUDGET)
    try:
        snap = asyncio.run(gather(FakeParts(store, gateway)))  # type: ignore[arg-type]
        assert [a["id"] for a in snap.agents] == ["a1"]  # rows of live agents only: a scrape follows the fleet
        assert sum(snap.states.values()) == 3 if snap.states else False  # every agent counted, in SQL
        assert gateway.asked == [["a1"]]  # zone 2 is asked about live agents only
        assert snap.budget is BUDGET and snap.zone2_healthy
        assert snap.counts["spawns"] == 3
        assert snap.deployments == {} and snap.tasks_finished["succeeded"] == 0
        down = asyncio.run(gather(FakeParts(store, FakeGateway(None, healthy=False))))  # type: ignore[arg-type]
        assert down.budget is None and not down.zone2_healthy
    finally:
        store.close()
    assert value(parse(render(down))["fleetd_zone2_up"]) == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_metrics(tmp_path: Path) -> None:
    store = populated(tmp_path / "state.db")
    supervisor = FakeParts(store, FakeGateway(BUDGET))

    first = ""

    async def main() -> tuple[int, str, str, int, str]:
        nonlocal first
        port = free_port()
        runner = await serve_metrics(supervisor, "127.0.0.1", port)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    first = await response.text()
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    status, ctype, body = response.status, response.headers["Content-Type"], await response.text()
                async with session.get(f"http://127.0.0.1:{port}/") as response:
                    index_status, index = response.status, await response.text()
            with pytest.raises(FleetdError, match="cannot listen"):  # the port is taken
                await serve_metrics(supervisor, "127.0.0.1", port)
        finally:
            await runner.cleanup()
        return status, ctype, body, index_status, index

    try:
        status, ctype, body, index_status, index = asyncio.run(main())
    finally:
        store.close()
    assert status == 200 and ctype == CONTENT_TYPE_LATEST
    m = parse(body.encode())
    assert value(m["fleetd_agents"], state="running") == 1 and value(m["fleetd_agents"], state="removed") == 1
    assert value(m["fleetd_spawns"]) == 3
    assert value(m["fleetd_agent_exits"], reason="oom_killed") == 2
    assert value(m["fleetd_agent_exits"], reason="stopped") == 0
    assert value(m["fleetd_probe_failures"], probe="liveness") == 2
    assert value(m["fleetd_agent_ready"], agent="a1", name="alpha", role="coder") == 1
    assert value(m["fleetd_zone2_up"]) == 1
    assert index_status == 200 and 'href="/metrics"' in index
    # The daemon's own time for a scrape: none before the first, the first's in the second.
    assert "fleetd_scrape_duration_seconds" not in parse(first.encode())
    assert 0 < value(m["fleetd_scrape_duration_seconds"]) < 10


def test_zone2_counters_agent_usage_and_the_process_itself() -> None:
    budget = {"agents": [], "instance": {}, "counters": {
        "tokens": {"input": 120, "output": 30}, "refusals": {"budget_exceeded": 2, "zone2_busy": 5},
        "upstream_status": {"200": 7, "429": 3, "none": 1}, "breaker_trips": 1}}
    agents = [{"id": "a1", "name": "alpha", "role": "default", "state": "running"}]
    usage = {"a1": {"id": "a1", "memory_bytes": 1 << 20, "memory_limit_bytes": 64 << 20, "cpu_seconds": 2.5}}
    body = render(Snapshot(agents=agents, budget=budget, zone2_healthy=True, usage=usage))
    found, kinds = parse(body), types(body)
    assert value(found["fleetd_llm_tokens"], kind="input") == 120 and kinds["fleetd_llm_tokens"] == "counter"
    assert value(found["fleetd_zone2_refusals"], code="zone2_busy") == 5
    assert value(found["fleetd_upstream_responses"], status="429") == 3
    assert value(found["fleetd_breaker_trips"]) == 1
    assert value(found["fleetd_agent_memory_bytes"], agent="a1") == 1 << 20
    assert value(found["fleetd_agent_cpu_seconds"], agent="a1") == 2.5
    assert "process_resident_memory_bytes" in found and "process_cpu_seconds" in found


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) is not installed here")
def test_promtool_finds_nothing_to_say() -> None:
    body = render(Snapshot(agents=AGENTS, budget=BUDGET, zone2_healthy=True))
    result = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, check=False)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result


def test_deployments_queues_and_finished_tasks(tmp_path: Path) -> None:
    store = populated(tmp_path / "state.db")
    try:
        parts = FakeParts(store, FakeGateway(BUDGET))
        parts.fleet.deployments.apply("web", {"image": "img"}, 2)
        parts.fleet.deployments.apply("idle", {"image": "img"}, 2)
        queue = parts.fleet.queue
        first, _, third = (queue.submit("web", n) for n in range(3))
        assert queue.lease("a1", "web", "v1") is not None
        queue.cancel(third.id)
        parts.fleet.replicas["web"] = {"wanted": 3, "live": 2, "busy": 1, "idle": 1}
        m = parse(render(asyncio.run(gather(parts))))  # type: ignore[arg-type]
    finally:
        store.close()
    assert value(m["fleetd_task_queue_depth"], deployment="web") == 1
    assert value(m["fleetd_tasks_leased"], deployment="web") == 1
    assert value(m["fleetd_task_queue_depth"], deployment="idle") == 0  # every deployment has its series
    assert value(m["fleetd_deployment_replicas"], deployment="web", kind="wanted") == 3
    assert value(m["fleetd_deployment_replicas"], deployment="idle", kind="live") == 0
    assert value(m["fleetd_tasks_finished"], state="cancelled") == 1
    assert value(m["fleetd_tasks_finished"], state="dead") == 0
    assert first.state == "queued"


def sample(samples: list[Sample], name: str, **labels: str) -> float:
    return value([s for s in samples if s.name == name], **labels)


def test_histogram_buckets_are_cumulative_and_a_bound_is_its_own_bucket() -> None:
    histogram = Histogram((1.0, 5.0))
    for observed in (0.5, 1.0, 3.0, 5.0, 7.5):
        histogram.observe(observed)
    assert histogram.buckets() == [("1.0", 2.0), ("5.0", 4.0), ("+Inf", 5.0)]
    assert (histogram.count, histogram.total) == (5, 17.0)
    copy = histogram.copy()
    histogram.observe(1)
    assert copy.count == 5  # a scrape's copy does not move under it


def test_finished_tasks_cost_and_duration_histograms_by_deployment(tmp_path: Path) -> None:
    store = populated(tmp_path / "state.db")
    path = tmp_path / "zone2" / "ledger.db"
    path.parent.mkdir()
    ledger = Ledger(path)
    wall = WallClock()
    try:
        parts = FakeParts(store, FakeGateway(BUDGET))
        queue = TaskQueue(store, clock=wall, backoff_base=0.0)
        parts.fleet = Fleet(store, Deployments(store, Config()), queue, costs=TaskCosts(path))
        costly, cheap, never = (queue.submit("web", n) for n in range(3))
        late = queue.submit("batch", "x", ttl=60)
        for agent in ("a1", "a2", "a3"):
            assert queue.lease(agent, "web" if agent != "a3" else "batch", "v1") is not None
        for cost in (2_000_000, 4_000_000):  # $0.006 in two calls
            ledger.record(Call(uuid.uuid4().hex, wall.now, "a1", "worker", "c", "chat", "m", 200, Usage(), cost, cost,
                               False, 1, task_id=costly.id))
        wall.advance(2)
        queue.fail(cheap.id, "a2", 1, "no", retry=False)
        wall.advance(43)
        queue.complete(costly.id, "a1", 1, "done")
        queue.cancel(never.id)  # never taken: in neither histogram
        wall.advance(30)
        queue.expire()  # batch's task, past its deadline: 75 s after its lease
        assert late.id in {t.id for t in queue.tasks(state="failed")}
        queue.purge(records_before=wall.now + timedelta(days=1))  # retention: the histograms are not read from here
        body = render(asyncio.run(gather(parts)))  # type: ignore[arg-type]
    finally:
        ledger.close()
        store.close()
    m = parse(body)
    assert types(body)["fleetd_task_cost_usd"] == types(body)["fleetd_task_duration_seconds"] == "histogram"
    cost, duration = m["fleetd_task_cost_usd"], m["fleetd_task_duration_seconds"]
    assert sample(cost, "fleetd_task_cost_usd_count", deployment="web") == 2
    assert sample(cost, "fleetd_task_cost_usd_sum", deployment="web") == pytest.approx(0.006)
    assert sample(cost, "fleetd_task_cost_usd_bucket", deployment="web", le="0.001") == 1  # the failed one
    assert sample(cost, "fleetd_task_cost_usd_bucket", deployment="web", le="0.005") == 1
    assert sample(cost, "fleetd_task_cost_usd_bucket", deployment="web", le="0.01") == 2
    assert sample(duration, "fleetd_task_duration_seconds_bucket", deployment="web", le="5.0") == 1
    assert sample(duration, "fleetd_task_duration_seconds_bucket", deployment="web", le="30.0") == 1
    assert sample(duration, "fleetd_task_duration_seconds_bucket", deployment="web", le="60.0") == 2
    assert sample(duration, "fleetd_task_duration_seconds_sum", deployment="web") == 47
    assert sample(duration, "fleetd_task_duration_seconds_sum", deployment="batch") == 75
    assert sample(cost, "fleetd_task_cost_usd_count", deployment="batch") == 1


def test_tasks_finished_per_version_and_the_rollout_under_way(tmp_path: Path) -> None:
    store = populated(tmp_path / "state.db")
    try:
        parts = FakeParts(store, FakeGateway(BUDGET))
        fleet = parts.fleet
        fleet.deployments.apply("web", {"image": "img"}, 2)
        fleet.deployments.apply("web", {"image": "img:2", "canary": 10}, 2)
        queue = fleet.queue
        done = queue.submit("web", 1)
        queue.lease("a1", "web", "v1")
        queue.complete(done.id, "a1", 1, "ok")
        failed = queue.submit("web", 2)
        queue.lease("a2", "web", "v2", Takes.ANY)
        queue.fail(failed.id, "a2", 1, "no", retry=False)
        m = parse(render(asyncio.run(gather(parts))))  # type: ignore[arg-type]
    finally:
        store.close()
    assert value(m["fleetd_version_tasks_finished"], deployment="web", version="v1", state="succeeded") == 1
    assert value(m["fleetd_version_tasks_finished"], deployment="web", version="v2", state="failed") == 1
    assert value(m["fleetd_deployment_rollout"], deployment="web", version="v2", strategy="canary",
                 phase="canary") == 1
    assert value(m["fleetd_canary_percent"], deployment="web", version="v2") == 10
