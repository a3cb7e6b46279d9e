"""Prometheus metrics: `fleetd daemon --metrics HOST:PORT` serves GET /metrics over TCP.

Nothing is kept in process-global metric objects: each scrape gathers a
``Snapshot`` from the live daemon (the store, the agents' API records, zone 2's
budget report) and a custom collector turns it into metric families, rendered
by ``prometheus_client`` itself. Counters come from the durable store, so they
survive a daemon restart (Prometheus would take a reset in stride anyway).

Labels stay low-cardinality: per-agent series (``agent``, ``name``, ``role``)
exist only for the agents a scrape sees live, so they are bounded by the fleet.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, ProcessCollector, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from fleetd import __version__
from fleetd.errors import FleetdError
from fleetd.histograms import Histogram
from fleetd.listen import format_listen

if TYPE_CHECKING:
    from fleetd.services import Services

log = logging.getLogger(__name__)

# Every state is always exposed (0 when no agent is in it), known ones first in this order.
STATES = ("created", "running", "stopping", "restarting", "exited", "removed", "failed")
LIVE = ("created", "running", "stopping", "restarting")
# Exit reasons exposed at 0 before the first exit of that kind, so rate() sees the first one.
EXIT_REASONS = (
    "ttl_expired", "heartbeat_lost", "liveness_failed", "oom_killed", "stopped", "killed",
    "exited", "drained", "lost", "teardown",
)
PROBES = ("startup", "readiness", "liveness")
BREAKER_STATES = ("closed", "open", "half_open")
WINDOWS = (("day", "spent_today_usd", "daily_cap_usd"), ("month", "spent_month_usd", "monthly_cap_usd"))
AGENT_LABELS = ("agent", "name", "role")
BUDGET_TIMEOUT = 4.0  # seconds for zone 2's budget report; a scrape must not hang on it


@dataclass
class Snapshot:
    """Everything one scrape shows, gathered (asynchronously) before rendering."""

    agents: list[dict[str, Any]] = field(default_factory=list)  # API records (gather: the live agents')
    states: dict[str, int] | None = None  # agents per state, all of them (None: counted from ``agents``)
    # {"spawns": int, "exits_by_reason": {reason: int}, "probe_failures": {probe: int} or
    #  {(agent_id, probe): int}, "restarts": int}
    counts: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] | None = None  # the body of GET /v1/budget, None when zone 2 does not answer
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)  # agent id -> memory and CPU (Supervisor.stats)
    zone2_healthy: bool = False
    # deployment -> {"queued", "leased", "replicas": {"wanted", "live", "busy", "idle"}}
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks_finished: dict[str, int] = field(default_factory=dict)  # final state -> tasks ever finished
    # deployment -> the cost (USD) and duration (s) of the tasks its agents took, as they finished (since the daemon
    # started: fleet.Fleet keeps them)
    task_costs: dict[str, Histogram] = field(default_factory=dict)
    task_durations: dict[str, Histogram] = field(default_factory=dict)
    # How long the previous scrape took to gather and render, in the daemon (None: this is the first): as exporters'
    # own scrape_duration_seconds, it tells a slow daemon from a slow network or scraper.
    last_scrape_seconds: float | None = None
    # (deployment, version label, final state) -> tasks finished since the daemon started (fleet.Fleet keeps them)
    version_finished: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # deployment -> its rollout's JSON (fleetd.rollouts.Rollout.to_json), for those with one
    rollouts: dict[str, dict[str, Any]] = field(default_factory=dict)


# -- rendering ----------------------------------------------------------------
def render(snapshot: Snapshot) -> bytes:
    """The text exposition of one snapshot (serve it as ``CONTENT_TYPE_LATEST``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    ProcessCollector(registry=registry)  # the daemon's own: process_cpu_seconds_total, resident memory, fds
    return generate_latest(registry)


class SnapshotCollector:
    """A prometheus_client collector over one snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot
        yield from _info()
        yield from _agent_states(snap.agents, snap.states)
        yield from _counters(snap.counts)
        yield from _agent_gauges(snap.agents)
        yield from _agent_usage(snap.agents, snap.usage)
        yield from _budget(snap.budget, snap.zone2_healthy)
        yield from _zone2_counters((snap.budget or {}).get("counters") or {})
        yield from _fleet(snap.deployments, snap.tasks_finished)
        yield from _task_histograms(snap.task_costs, snap.task_durations)
        yield from _versions(snap.version_finished, snap.rollouts)
        if snap.last_scrape_seconds is not None:
            yield GaugeMetricFamily("fleetd_scrape_duration_seconds", "Time the daemon took to gather and render "
                                    "the previous scrape of this endpoint.", value=snap.last_scrape_seconds)


def _info() -> Iterator[Metric]:
    info = GaugeMetricFamily("fleetd_build_info", "fleetd version (always 1).", labels=["version"])
    info.add_metric([__version__], 1)
    yield info


def _agent_states(agents: list[dict[str, Any]], states: dict[str, int] | None) -> Iterator[Metric]:
    counts = dict.fromkeys(STATES, 0)
    if states is not None:
        counts.update(states)
    for agent in agents if states is None else ():
        state = str(agent.get("state") or "unknown")
        counts[state] = counts.get(state, 0) + 1
    family = GaugeMetricFamily("fleetd_agents", "Agents by state (every agent the store knows).", labels=["state"])
    for state, count in counts.items():
        family.add_metric([state], count)
    yield family


def _counters(counts: Mapping[str, Any]) -> Iterator[Metric]:
    yield CounterMetricFamily("fleetd_spawns", "Agents spawned since the state directory was created.",
                              value=_number(counts.get("spawns")) or 0)
    exits = CounterMetricFamily("fleetd_agent_exits", "Agent exits by reason.", labels=["reason"])
    by_reason: dict[str, float] = dict.fromkeys(EXIT_REASONS, 0.0)
    for reason, count in (counts.get("exits_by_reason") or {}).items():
        key = str(reason) if reason else "unknown"
        by_reason[key] = by_reason.get(key, 0.0) + (_number(count) or 0)
    for reason, total in by_reason.items():
        exits.add_metric([reason], total)
    yield exits
    yield CounterMetricFamily("fleetd_agent_restarts", "Agents restarted by their restart policy.",
                              value=_number(counts.get("restarts")) or 0)
    probes = CounterMetricFamily("fleetd_probe_failures", "Failed probes by kind.", labels=["probe"])
    by_probe: dict[str, float] = dict.fromkeys(PROBES, 0.0)
    for key, count in (counts.get("probe_failures") or {}).items():
        probe = key[-1] if isinstance(key, tuple) else key  # {(agent_id, probe): n} or {probe: n}
        name = str(probe) if probe else "unknown"
        by_probe[name] = by_probe.get(name, 0.0) + (_number(count) or 0)
    for probe, total in by_probe.items():
        probes.add_metric([probe], total)
    yield probes


def _agent_usage(agents: list[dict[str, Any]], usage: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    memory = GaugeMetricFamily("fleetd_agent_memory_bytes", "A running agent's memory in use (its cgroup's).",
                               labels=list(AGENT_LABELS))
    limit = GaugeMetricFamily("fleetd_agent_memory_limit_bytes", "A running agent's memory limit.",
                              labels=list(AGENT_LABELS))
    cpu = CounterMetricFamily("fleetd_agent_cpu_seconds", "CPU time a running agent's container used.",
                              labels=list(AGENT_LABELS))
    for agent in agents:
        used = usage.get(str(agent.get("id")))
        if not used:
            continue
        labels = _agent_labels(agent)
        memory.add_metric(labels, _number(used.get("memory_bytes")) or 0)
        if _number(used.get("memory_limit_bytes")):
            limit.add_metric(labels, _number(used.get("memory_limit_bytes")) or 0)
        cpu.add_metric(labels, _number(used.get("cpu_seconds")) or 0)
    yield from (memory, limit, cpu)


def _zone2_counters(counters: Mapping[str, Any]) -> Iterator[Metric]:
    """Zone 2's counters since it started (a restart of zone 2 is a counter reset, which rate() handles)."""
    tokens = CounterMetricFamily("fleetd_llm_tokens", "Tokens of metered LLM calls, by how they are billed.",
                                 labels=["kind"])
    for kind, count in sorted((counters.get("tokens") or {}).items()):
        tokens.add_metric([str(kind)], _number(count) or 0)
    refusals = CounterMetricFamily("fleetd_zone2_refusals", "Answers zone 2 gave itself, by error code.",
                                   labels=["code"])
    for code, count in sorted((counters.get("refusals") or {}).items()):
        refusals.add_metric([str(code)], _number(count) or 0)
    upstream = CounterMetricFamily("fleetd_upstream_responses", "Upstream answers to agents' calls, by HTTP status "
                                   "(none: no answer came).", labels=["status"])
    for status, count in sorted((counters.get("upstream_status") or {}).items()):
        upstream.add_metric([str(status)], _number(count) or 0)
    trips = CounterMetricFamily("fleetd_breaker_trips", "Circuit breakers that opened.",
                                value=_number(counters.get("breaker_trips")) or 0)
    egress = CounterMetricFamily("fleetd_egress_connections", "Connections agents asked zone 2's forward proxy for, "
                                 "by decision.", labels=["decision"])
    for decision in ("allowed", "denied"):
        egress.add_metric([decision], _number((counters.get("egress_connections") or {}).get(decision)) or 0)
    moved = CounterMetricFamily("fleetd_egress_bytes", "Bytes through zone 2's forward proxy, by direction (out: "
                                "agent to host).", labels=["direction"])
    for direction in ("out", "in"):
        moved.add_metric([direction], _number((counters.get("egress_bytes") or {}).get(direction)) or 0)
    yield from (tokens, refusals, upstream, trips, egress, moved)


def _agent_gauges(agents: list[dict[str, Any]]) -> Iterator[Metric]:
    heartbeat = GaugeMetricFamily(
        "fleetd_agent_heartbeat_age_seconds", "Seconds since a running agent's last heartbeat (heartbeats on).",
        labels=list(AGENT_LABELS))
    ready = GaugeMetricFamily("fleetd_agent_ready", "1 when a running agent is ready, else 0.",
                              labels=list(AGENT_LABELS))
    ttl = GaugeMetricFamily("fleetd_agent_ttl_remaining_seconds", "Seconds until a live agent's deadline.",
                            labels=list(AGENT_LABELS))
    for agent in agents:
        state = agent.get("state")
        labels = _agent_labels(agent)
        if state == "running":
            age = _number(agent.get("heartbeat_age"))
            if agent.get("heartbeat_interval") and age is not None:
                heartbeat.add_metric(labels, age)
            if agent.get("ready") is not None:
                ready.add_metric(labels, 1 if agent.get("ready") else 0)
        remaining = _number(agent.get("ttl_remaining"))
        if state in LIVE and remaining is not None:
            ttl.add_metric(labels, max(0.0, remaining))
    yield from (heartbeat, ready, ttl)


def _budget(budget: Mapping[str, Any] | None, zone2_healthy: bool) -> Iterator[Metric]:
    yield GaugeMetricFamily("fleetd_zone2_up", "1 when zone 2 (the LLM gateway) is healthy and answered this scrape.",
                            value=1 if zone2_healthy and budget is not None else 0)
    if budget is None:
        return  # nothing known: absent series, not zeros that would look like real spend
    labels_w = [*AGENT_LABELS, "window"]
    spend = GaugeMetricFamily("fleetd_agent_spend_usd", "An agent's LLM spend in the current window (USD).",
                              labels=labels_w)
    reserved = GaugeMetricFamily("fleetd_agent_reserved_usd", "USD reserved by an agent's calls in flight.",
                                 labels=list(AGENT_LABELS))
    caps = GaugeMetricFamily("fleetd_agent_budget_cap_usd", "An agent's budget cap per window (USD; absent: no cap).",
                             labels=labels_w)
    calls = CounterMetricFamily("fleetd_agent_llm_calls", "LLM calls an agent made through zone 2.",
                                labels=list(AGENT_LABELS))
    max_calls = GaugeMetricFamily("fleetd_agent_llm_calls_cap", "An agent's cap on LLM calls (absent: no cap).",
                                  labels=list(AGENT_LABELS))
    circuit = GaugeMetricFamily("fleetd_circuit_state", "1 for the current state of each agent/upstream breaker.",
                                labels=["agent", "upstream", "state"])
    for agent in budget.get("agents") or []:
        labels = _agent_labels(agent)
        for window, spent_key, cap_key in WINDOWS:
            if (value := _number(agent.get(spent_key))) is not None:
                spend.add_metric([*labels, window], value)
            if (value := _number(agent.get(cap_key))) is not None:
                caps.add_metric([*labels, window], value)
        if (value := _number(agent.get("reserved_usd"))) is not None:
            reserved.add_metric(labels, value)
        if (value := _number(agent.get("llm_calls"))) is not None:
            calls.add_metric(labels, value)
        if (value := _number(agent.get("max_llm_calls"))) is not None:
            max_calls.add_metric(labels, value)
        for upstream, breaker in sorted((agent.get("breakers") or {}).items()):
            current = str((breaker or {}).get("state") or "closed")
            for state in (*BREAKER_STATES, *([current] if current not in BREAKER_STATES else [])):
                circuit.add_metric([labels[0], str(upstream), state], 1 if state == current else 0)
    yield from (spend, reserved, caps, calls, max_calls, circuit)

    instance = budget.get("instance") or {}
    i_spend = GaugeMetricFamily("fleetd_instance_spend_usd", "The instance's LLM spend in the current window (USD).",
                                labels=["window"])
    i_caps = GaugeMetricFamily("fleetd_instance_budget_cap_usd", "The instance's budget cap per window (USD).",
                               labels=["window"])
    for window, spent_key, cap_key in WINDOWS:
        if (value := _number(instance.get(spent_key))) is not None:
            i_spend.add_metric([window], value)
        if (value := _number(instance.get(cap_key))) is not None:
            i_caps.add_metric([window], value)
    yield from (i_spend, i_caps)
    if (value := _number(instance.get("reserved_usd"))) is not None:
        yield GaugeMetricFamily("fleetd_instance_reserved_usd", "USD reserved by calls in flight, instance-wide.",
                                value=value)
    if (value := _number(instance.get("llm_calls"))) is not None:
        yield CounterMetricFamily("fleetd_instance_llm_calls", "LLM calls made through zone 2, instance-wide.",
                                  value=value)


def _fleet(deployments: Mapping[str, Mapping[str, Any]], finished: Mapping[str, int]) -> Iterator[Metric]:
    """Deployments' queues and pools (one series per deployment: bounded by them), tasks finished by final state."""
    depth = GaugeMetricFamily("fleetd_task_queue_depth", "Tasks waiting for an agent, by deployment.",
                              labels=["deployment"])
    leased = GaugeMetricFamily("fleetd_tasks_leased", "Tasks an agent holds now, by deployment.",
                               labels=["deployment"])
    replicas = GaugeMetricFamily("fleetd_deployment_replicas", "A deployment's agents: wanted by its autoscaler, "
                                 "live, busy (holding a task), idle (ready for one).", labels=["deployment", "kind"])
    for name, figures in sorted(deployments.items()):
        depth.add_metric([name], figures.get("queued", 0))
        leased.add_metric([name], figures.get("leased", 0))
        for kind in ("wanted", "live", "busy", "idle"):
            replicas.add_metric([name, kind], (figures.get("replicas") or {}).get(kind, 0))
    yield from (depth, leased, replicas)
    done = CounterMetricFamily("fleetd_tasks_finished", "Tasks finished, by final state (succeeded, failed, "
                               "cancelled, dead).", labels=["state"])
    for state, count in finished.items():
        done.add_metric([state], count)
    yield done


def _task_histograms(costs: Mapping[str, Histogram], durations: Mapping[str, Histogram]) -> Iterator[Metric]:
    """Finished tasks' LLM cost and duration, by deployment: counted in memory as they finished, so a scrape reads
    a few buckets per deployment, never the tasks themselves."""
    for name, doc, by_deployment in (
            ("fleetd_task_cost_usd", "LLM cost of finished tasks (USD, all their attempts), by deployment; tasks an "
             "agent took, since the daemon started.", costs),
            ("fleetd_task_duration_seconds", "Time from a finished task's first lease to its end, by deployment; "
             "since the daemon started.", durations)):
        family = HistogramMetricFamily(name, doc, labels=["deployment"])
        for deployment, histogram in sorted(by_deployment.items()):
            family.add_metric([deployment], histogram.buckets(), histogram.total)
        yield family


def _versions(finished: Mapping[tuple[str, str, str], int],
              rollouts: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    """Tasks finished per version (a canary's numbers beside the current version's) and each rollout under way."""
    done = CounterMetricFamily("fleetd_version_tasks_finished", "Tasks finished, by deployment, version (the one a "
                               "task was bound to) and final state; since the daemon started.",
                               labels=["deployment", "version", "state"])
    for (deployment, version, state), count in sorted(finished.items()):
        done.add_metric([deployment, version, state], count)
    yield done
    rollout = GaugeMetricFamily("fleetd_deployment_rollout", "1 for each deployment's rollout under way: its new "
                                "version, strategy and phase.", labels=["deployment", "version", "strategy", "phase"])
    percent = GaugeMetricFamily("fleetd_canary_percent", "The share of new tasks (%) a canary version is routed.",
                                labels=["deployment", "version"])
    for name, found in sorted(rollouts.items()):
        version = f"v{found['version']}"
        rollout.add_metric([name, version, str(found["strategy"]), str(found["phase"])], 1)
        if found.get("percent") is not None:
            percent.add_metric([name, version], found["percent"])
    yield from (rollout, percent)


def _agent_labels(agent: Mapping[str, Any]) -> list[str]:
    return [str(agent.get("id") or ""), str(agent.get("name") or ""), str(agent.get("role") or "")]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


# -- gathering ----------------------------------------------------------------
async def gather(parts: Services) -> Snapshot:
    """Take a snapshot of the live daemon: agents, counters from the store, zone 2's budget report."""
    store = parts.records
    # Live agents' rows only, and the states counted in SQL: a scrape's cost follows the fleet, not its history.
    rows: list[dict[str, Any]] = store.agents(LIVE)
    agents = [parts.agent_json(row) for row in rows]
    states = store.state_counts()
    counts = store.counts()  # lifetime: they survive restarts and the store's retention
    budget: dict[str, Any] | None = None
    try:
        budget = await asyncio.wait_for(parts.zone2.budget_report(rows), BUDGET_TIMEOUT)
    except FleetdError:
        budget = None  # zone 2 is down or restarting: fleetd_zone2_up says so
    except TimeoutError:
        log.warning("metrics: zone 2's budget report took more than %.0f s", BUDGET_TIMEOUT)
    except Exception:
        log.exception("metrics: zone 2's budget report failed")
    usage: dict[str, dict[str, Any]] = {}
    try:
        usage = {str(u["id"]): u for u in await parts.agents.stats()}
    except Exception:
        log.exception("metrics: cannot read agents' memory and CPU")
    fleet = parts.fleet
    live = fleet.queue.live_counts()
    listed = fleet.deployments.list()
    deployments = {d.name: {"queued": 0, "leased": 0, **live.get(d.name, {}),
                            "replicas": fleet.replicas.get(d.name, {})} for d in listed}
    return Snapshot(agents=agents, states=states, counts=counts, budget=budget, zone2_healthy=parts.zone2.healthy,
                    usage=usage, deployments=deployments, tasks_finished=fleet.queue.finished_totals(),
                    task_costs={d: h.copy() for d, h in fleet.cost_histograms.items()},
                    task_durations={d: h.copy() for d, h in fleet.duration_histograms.items()},
                    version_finished=dict(fleet.version_finished),
                    rollouts={d.name: d.rollout.to_json() for d in listed if d.rollout is not None})


# -- serving ------------------------------------------------------------------
async def serve_metrics(parts: Services, host: str, port: int) -> web.AppRunner:
    """Listen on HOST:PORT (TCP) with GET /metrics; the caller cleans the returned runner up."""

    previous: list[float] = []  # the last scrape's duration (s), shown by the next one

    async def metrics(request: web.Request) -> web.Response:
        started = time.perf_counter()
        snapshot = await gather(parts)
        snapshot.last_scrape_seconds = previous[-1] if previous else None
        body = render(snapshot)
        previous[:] = [time.perf_counter() - started]
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def index(request: web.Request) -> web.Response:
        text = (f"<html><head><title>fleetd {html.escape(__version__)}</title></head>"
                '<body><h1>fleetd</h1><p><a href="/metrics">Metrics</a></p></body></html>\n')
        return web.Response(text=text, content_type="text/html")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise FleetdError(f"metrics: cannot listen on {format_listen(host, port)}: {exc.strerror or exc}") from exc
    log.info("metrics on http://%s/metrics", format_listen(host, port))
    return runner
