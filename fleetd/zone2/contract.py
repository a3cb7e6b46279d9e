"""Every message between the daemon and zone 2, each a frozen dataclass written and read by the same class.

The sender builds a message and sends :meth:`to_json`; the receiver reads it with :meth:`from_json`, which checks
every field and raises :class:`ContractError` when it cannot (one type, which both servers answer 400:
zone2.control). A field with a default may be absent, as from an older peer; a field without one is required; keys
a class does not know are ignored, except in the price table and the breaker and retry settings, where zone 2 must
not meter or retry by settings it cannot read. The wire format is what each side sent before these classes: a
daemon and a zone 2 image built from the code before them understand each other.

``zone2.sock`` (served by zone 2): GET /control/health -> :class:`Health`; PUT /control/policy :class:`Zone2Policy`;
GET /control/budget?agent=ID... -> :class:`BudgetAnswer`; PUT /control/creds :class:`Credentials`; PUT
/control/agents :class:`Registrations`; POST /control/agents :class:`Registration`; DELETE /control/agents/ID.

``daemon.sock`` (served by the daemon): GET /control/whois?ip=IP -> :class:`Registration`; POST /control/heartbeats
:class:`HeartbeatBatch` -> :class:`HeartbeatAnswer`; POST /control/events :class:`Event`; POST /control/tasks/next
:class:`TaskNext` -> :class:`TaskLease` (or 204: none came); POST /control/tasks/ID/complete :class:`TaskComplete` and
POST /control/tasks/ID/fail :class:`TaskFail` -> :class:`TaskOutcome` (or 404/409 with an error body); POST
/control/tasks/completions :class:`TaskCompletions` -> :class:`TaskAnswers`.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol, Self, TypeVar

from fleetd.zone2.breaker import BreakerSettings, RetrySettings
from fleetd.zone2.budget import Caps
from fleetd.zone2.kinds import GENERIC
from fleetd.zone2.pricing import Price


class ContractError(ValueError):
    """A message that is not what its class says: not JSON, a field missing or of the wrong type."""


class Message(Protocol):
    """What every message class is: written with ``to_json``, read (and checked) with ``from_json``."""

    def to_json(self) -> Any: ...

    @classmethod
    def from_json(cls, data: Any) -> Self: ...


# -- reading JSON ----------------------------------------------------------------------------------------------------
class _Required:
    """The default of a field that must be present."""


REQUIRED = _Required()


def _kind(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    for kinds, name in ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"), (list, "an array"),
                        (dict, "an object")):
        if isinstance(value, kinds):
            return name
    return type(value).__name__


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class _Object:
    """A JSON object read as one message: each accessor returns a field of the type it names, or raises
    ContractError naming the message and the field."""

    def __init__(self, data: Any, what: str) -> None:
        if not isinstance(data, dict):
            raise ContractError(f"{what}: expected an object, got {_kind(data)}")
        self.data: dict[str, Any] = data
        self.what = what

    def _field(self, key: str, default: Any, valid: Callable[[Any], bool], expected: str,
               nullable: bool = False) -> Any:
        if key not in self.data:
            if default is REQUIRED:
                raise ContractError(f"{self.what}: {key} is missing")
            return default
        value = self.data[key]
        if not (valid(value) or (nullable and value is None)):
            raise ContractError(f"{self.what}: {key} must be {expected}{' or null' if nullable else ''}, "
                                f"got {_kind(value)}")
        return value

    def text(self, key: str, default: str | _Required = REQUIRED) -> str:
        return str(self._field(key, default, lambda v: isinstance(v, str), "a string"))

    def optional_text(self, key: str, default: _Required | None = REQUIRED) -> str | None:
        value = self._field(key, default, lambda v: isinstance(v, str), "a string", nullable=True)
        return None if value is None else str(value)

    def whole(self, key: str, default: int | _Required = REQUIRED) -> int:
        return int(self._field(key, default, _is_whole, "a whole number"))

    def optional_whole(self, key: str, default: _Required | None = REQUIRED) -> int | None:
        value = self._field(key, default, _is_whole, "a whole number", nullable=True)
        return None if value is None else int(value)

    def number(self, key: str, default: float | _Required = REQUIRED) -> float:
        return float(self._field(key, default, _is_number, "a number"))

    def optional_number(self, key: str, default: _Required | None = REQUIRED) -> float | None:
        value = self._field(key, default, _is_number, "a number", nullable=True)
        return None if value is None else float(value)

    def flag(self, key: str, default: bool | _Required = REQUIRED) -> bool:
        return bool(self._field(key, default, lambda v: isinstance(v, bool), "true or false"))

    def mapping(self, key: str) -> dict[str, Any]:
        """A JSON object (absent: empty)."""
        return dict(self._field(key, {}, lambda v: isinstance(v, dict), "an object"))

    def optional_mapping(self, key: str, default: _Required | None = REQUIRED) -> dict[str, Any] | None:
        value = self._field(key, default, lambda v: isinstance(v, dict), "an object", nullable=True)
        return None if value is None else dict(value)

    def array(self, key: str, default: list[Any] | _Required = REQUIRED) -> list[Any]:
        return list(self._field(key, default, lambda v: isinstance(v, list), "an array"))

    def texts(self, key: str, default: list[str] | _Required = REQUIRED) -> list[str]:
        return [str(v) for v in self._field(key, default, lambda v: isinstance(v, list)
                                            and all(isinstance(s, str) for s in v), "an array of strings")]

    def counts(self, key: str) -> dict[str, int]:
        """An object of whole numbers by name (absent: empty)."""
        return {str(k): int(v) for k, v in self._field(key, {}, lambda v: isinstance(v, dict) and all(
            _is_whole(n) for n in v.values()), "an object of whole numbers").items()}

    def required(self, key: str) -> Any:
        """A field of any type, which must be present (its own class reads it)."""
        if key not in self.data:
            raise ContractError(f"{self.what}: {key} is missing")
        return self.data[key]


NANO = Decimal(10) ** 9


def usd_text(amount_nusd: int) -> str:
    """Nano-USD as an exact decimal string of dollars: ``"0.5"``, ``"12"``, ``"0.000000001"``."""
    return format((Decimal(amount_nusd) / NANO).normalize(), "f")


def _usd_nusd(o: _Object, key: str) -> int | None:
    """An optional amount of dollars as an exact decimal string (``usd_text``), in whole nano-USD; absent or null:
    None."""
    text = o.optional_text(key, None)
    if text is None:
        return None
    try:
        amount = Decimal(text) * NANO
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite() or amount < 0 or amount != amount.to_integral_value():
        raise ContractError(f"{o.what}: {key} must be dollars >= 0 as a decimal string of at most 9 decimals, "
                            f"got {text[:40]!r}")
    return int(amount)


def _array(data: Any, what: str) -> list[Any]:
    if not isinstance(data, list):
        raise ContractError(f"{what}: expected an array, got {_kind(data)}")
    return data


Settings = TypeVar("Settings", BreakerSettings, RetrySettings)


def _settings(kind: type[Settings], data: _Object) -> Settings:
    """Breaker or retry settings: each field a number of its default's kind, absent ones at their default, and no
    key the class does not know (a newer daemon's setting, which this zone 2 would silently not apply)."""
    defaults = asdict(kind())
    unknown = sorted(set(data.data) - set(defaults))
    if unknown:
        raise ContractError(f"{data.what}: unknown keys {unknown}")
    values: dict[str, Any] = {name: data.whole(name, default) if isinstance(default, int)
                              else data.number(name, default) for name, default in defaults.items()}
    return kind(**values)


# -- zone2.sock: the daemon tells zone 2 -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskHold:
    """The task an agent holds, in its registration: zone 2 attributes the agent's LLM calls to it and caps them at
    ``max_nusd`` (None: no cap), also when it has not seen the lease pass (it started after)."""

    id: str
    attempt: int
    max_nusd: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "attempt": self.attempt, "max_nusd": self.max_nusd}

    @classmethod
    def from_json(cls, data: Any) -> TaskHold:
        o = _Object(data, "held task")
        attempt = _attempt(o, required=True)
        assert attempt is not None
        max_nusd = o.optional_whole("max_nusd", None)
        if max_nusd is not None and max_nusd < 0:
            raise ContractError(f"held task: max_nusd must be 0 or more, got {max_nusd}")
        return cls(o.text("id"), attempt, max_nusd)


@dataclass(frozen=True)
class PoolCap:
    """A spend pool in a registration: every agent registered with the same ``key`` (a deployment version's agents)
    spends from one pool: each of their calls' ledger rows names it, so that a version's spend counts every call of
    its agents, those made outside any task too. With ``cap_nusd`` (a canary's ``--canary-max-usd``) the pool is
    capped over all time (not a day's or a month's window): zone 2 refuses the call whose worst case would take the
    pool's spend and reservations past the cap."""

    key: str
    cap_nusd: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "cap_nusd": self.cap_nusd}

    @classmethod
    def from_json(cls, data: Any) -> PoolCap:
        o = _Object(data, "pool")
        key, cap = o.text("key"), o.optional_whole("cap_nusd")
        if not key:
            raise ContractError("pool: key must not be empty")
        if cap is not None and cap < 0:
            raise ContractError(f"pool: cap_nusd must be 0 or more, got {cap}")
        return cls(key, cap)


@dataclass(frozen=True)
class Registration:
    """An agent as zone 2 knows it: PUT/POST /control/agents, and GET /control/whois's answer. ``task``: the task it
    holds as the daemon's queue says (None: none), for a zone 2 that did not see its lease pass. ``pool``: the spend
    pool its calls are capped by too (None: none); a zone 2 from before pools ignores it, a daemon from before them
    sends none. ``egress``: the patterns of the hosts it may reach through zone 2's forward proxy (``()``: none),
    checked by zone 2 with ``fleetd.egress.EgressPolicy.from_json``."""

    agent_id: str
    ip: str
    role: str = "default"
    creds: frozenset[str] = field(default_factory=frozenset)
    caps: Caps = field(default_factory=Caps)
    allow_unpriced: bool = False
    task: TaskHold | None = None
    pool: PoolCap | None = None
    egress: tuple[str, ...] = ()  # the hosts it may reach through the forward proxy (fleetd.egress patterns)
    egress_max_bytes: int | None = None  # per UTC day, in and out together (None: unlimited)

    def to_json(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "ip": self.ip, "role": self.role, "creds": sorted(self.creds),
                "daily_nusd": self.caps.daily_nusd, "monthly_nusd": self.caps.monthly_nusd,
                "max_llm_calls": self.caps.max_llm_calls, "allow_unpriced": self.allow_unpriced,
                "task": None if self.task is None else self.task.to_json(),
                "pool": None if self.pool is None else self.pool.to_json(),
                "egress": list(self.egress), "egress_max_bytes": self.egress_max_bytes}

    @classmethod
    def from_json(cls, data: Any) -> Registration:
        o = _Object(data, "registration")
        caps = Caps(*(o.optional_whole(key, None) for key in ("daily_nusd", "monthly_nusd", "max_llm_calls")))
        task = o.optional_mapping("task", None)
        pool = o.optional_mapping("pool", None)
        return cls(o.text("agent_id"), o.text("ip"), o.text("role", "default"), frozenset(o.texts("creds", [])),
                   caps, o.flag("allow_unpriced", False), None if task is None else TaskHold.from_json(task),
                   None if pool is None else PoolCap.from_json(pool), tuple(o.texts("egress", [])),
                   o.optional_whole("egress_max_bytes", None))


@dataclass(frozen=True)
class Registrations:
    """Every live agent at once (PUT /control/agents, after zone 2 starts): a JSON array of registrations."""

    agents: tuple[Registration, ...]

    def to_json(self) -> list[dict[str, Any]]:
        return [reg.to_json() for reg in self.agents]

    @classmethod
    def from_json(cls, data: Any) -> Registrations:
        return cls(tuple(Registration.from_json(item) for item in _array(data, "registrations")))


@dataclass(frozen=True)
class Upstream:
    """A credential as zone 2 holds it (in memory only): where its calls go and the secret they carry."""

    name: str
    upstream: str  # scheme://host[:port][/base]
    secret: str
    kind: str = GENERIC  # the provider kind (kinds.KINDS): an LLM provider's calls are default-deny

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "upstream": self.upstream, "secret": self.secret, "provider": self.kind}

    @classmethod
    def from_json(cls, data: Any) -> Upstream:
        o = _Object(data, "credential")
        return cls(o.text("name"), o.text("upstream"), o.text("secret"), o.text("provider", GENERIC))


@dataclass(frozen=True)
class Credentials:
    """Every credential at once (PUT /control/creds): a JSON array; rotation takes effect on the next request."""

    creds: tuple[Upstream, ...]

    def to_json(self) -> list[dict[str, Any]]:
        return [cred.to_json() for cred in self.creds]

    @classmethod
    def from_json(cls, data: Any) -> Credentials:
        return cls(tuple(Upstream.from_json(item) for item in _array(data, "credentials")))


@dataclass(frozen=True)
class Zone2Policy:
    """What zone 2 enforces besides each agent's caps (PUT /control/policy): the price table, the breaker and retry
    settings and the instance's caps (of spend: its calls have no maximum); and where its forward proxy never
    connects, whatever name an agent asks for: the host's own addresses and the agents' networks (CIDRs)."""

    prices: tuple[Price, ...] = ()
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    instance: Caps = field(default_factory=Caps)
    host_addresses: tuple[str, ...] = ()
    agent_networks: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"prices": [price.to_dict() for price in self.prices], "breaker": asdict(self.breaker),
                "retry": asdict(self.retry),
                "instance": {"daily_nusd": self.instance.daily_nusd, "monthly_nusd": self.instance.monthly_nusd},
                "host_addresses": list(self.host_addresses), "agent_networks": list(self.agent_networks)}

    @classmethod
    def from_json(cls, data: Any) -> Zone2Policy:
        o = _Object(data, "policy")
        try:
            prices = tuple(Price.from_dict(item) for item in o.array("prices", []))
        except ValueError as exc:  # a price field this zone 2 does not know (a newer daemon's), or a bad value
            raise ContractError(f"policy: {exc}") from None
        instance = _Object(o.mapping("instance"), "policy: instance")
        return cls(prices, _settings(BreakerSettings, _Object(o.mapping("breaker"), "policy: breaker")),
                   _settings(RetrySettings, _Object(o.mapping("retry"), "policy: retry")),
                   Caps(instance.optional_whole("daily_nusd", None), instance.optional_whole("monthly_nusd", None)),
                   _addresses(o.texts("host_addresses", []), ipaddress.ip_address, "host_addresses"),
                   _addresses(o.texts("agent_networks", []), _network, "agent_networks"))


def _network(text: str) -> object:
    return ipaddress.ip_network(text, strict=False)


def _addresses(items: list[str], parse: Callable[[str], object], what: str) -> tuple[str, ...]:
    """``items`` as given, each checked to be an address (or network) the proxy can compare with."""
    for item in items:
        try:
            parse(item)
        except ValueError:
            raise ContractError(f"policy: {what}: {item!r:.60} is not an IP address or network") from None
    return tuple(items)


# -- zone2.sock: what zone 2 answers ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class GatewayLoad:
    """The agent-facing server's connections and memory held (zone2.guard), in the health answer."""

    connections: int
    connections_limit: int
    bytes_held: int
    addresses: int
    refused_connections: int
    dropped_slow: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> GatewayLoad:
        o = _Object(data, "gateway load")
        return cls(**{f.name: o.whole(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class Health:
    """GET /control/health: zone 2 is up, what it holds, and the fleetd code it runs (its image may be stale)."""

    agents: int
    creds: int
    uptime_seconds: float
    pid: int
    ok: bool = True
    ledger_error: str | None = None  # the ledger cannot be written: metered calls are refused
    ledger_unwritten: int = 0  # rows waiting in memory
    code: str | None = None  # fleetd.fingerprint.code_fingerprint (None: a zone 2 older than it)
    gateway: GatewayLoad | None = None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "agents": self.agents, "creds": self.creds, "uptime_seconds": self.uptime_seconds,
                "pid": self.pid, "ledger_error": self.ledger_error, "ledger_unwritten": self.ledger_unwritten,
                "code": self.code, "gateway": None if self.gateway is None else self.gateway.to_json()}

    @classmethod
    def from_json(cls, data: Any) -> Health:
        o = _Object(data, "health")
        gateway = o.optional_mapping("gateway", None)
        return cls(o.whole("agents"), o.whole("creds"), o.number("uptime_seconds"), o.whole("pid"),
                   o.flag("ok", True), o.optional_text("ledger_error", None), o.whole("ledger_unwritten", 0),
                   o.optional_text("code", None), None if gateway is None else GatewayLoad.from_json(gateway))


@dataclass(frozen=True)
class BudgetFigures:
    """Spend and calls as zone 2 counts them (an agent's, or the instance's), in integer nano-USD. Absent figures
    are zero: nothing counted."""

    spent_today_nusd: int = 0  # UTC day
    spent_month_nusd: int = 0  # calendar month (UTC)
    reserved_nusd: int = 0  # held for calls in flight
    llm_calls: int = 0  # metered calls made, lifetime
    inflight_calls: int = 0
    month: str = ""  # YYYY-MM of spent_month_nusd

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(BudgetFigures)}

    @staticmethod
    def _read(o: _Object) -> dict[str, Any]:
        """The figures' fields of a message that extends them, as keyword arguments."""
        return {**{f.name: o.whole(f.name, 0) for f in fields(BudgetFigures) if f.name != "month"},
                "month": o.text("month", "")}


@dataclass(frozen=True)
class BreakerStatus:
    """One circuit breaker of an agent (per upstream), in its budget figures."""

    state: str  # breaker.BreakerState
    reopen_in: float | None  # s until a probe may go, when open
    trips: int  # consecutive

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> BreakerStatus:
        o = _Object(data, "breaker")
        return cls(o.text("state"), o.optional_number("reopen_in"), o.whole("trips"))


@dataclass(frozen=True)
class AgentFigures(BudgetFigures):
    """An agent's figures, with its circuit breakers."""

    breakers: Mapping[str, BreakerStatus] = field(default_factory=dict)  # by upstream

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "breakers": {name: b.to_json() for name, b in self.breakers.items()}}

    @classmethod
    def from_json(cls, data: Any) -> AgentFigures:
        o = _Object(data, "agent's figures")
        return cls(**cls._read(o), breakers={str(name): BreakerStatus.from_json(b)
                                             for name, b in o.mapping("breakers").items()})


@dataclass(frozen=True)
class Counters:
    """Zone 2's lifetime counters (zone2.counters), for the daemon's metrics."""

    tokens: Mapping[str, int] = field(default_factory=dict)  # by kind (counters.TOKEN_KINDS)
    refusals: Mapping[str, int] = field(default_factory=dict)  # by error code
    upstream_status: Mapping[str, int] = field(default_factory=dict)  # by status, "none" when no answer came
    breaker_trips: int = 0
    egress_connections: Mapping[str, int] = field(default_factory=dict)  # the forward proxy's, by decision
    egress_bytes: Mapping[str, int] = field(default_factory=dict)  # by direction: out (agent to host), in

    def to_json(self) -> dict[str, Any]:
        return {"tokens": dict(self.tokens), "refusals": dict(self.refusals),
                "upstream_status": dict(self.upstream_status), "breaker_trips": self.breaker_trips,
                "egress_connections": dict(self.egress_connections), "egress_bytes": dict(self.egress_bytes)}

    @classmethod
    def from_json(cls, data: Any) -> Counters:
        o = _Object(data, "counters")
        return cls(o.counts("tokens"), o.counts("refusals"), o.counts("upstream_status"), o.whole("breaker_trips", 0),
                   o.counts("egress_connections"), o.counts("egress_bytes"))


@dataclass(frozen=True)
class InstanceFigures(BudgetFigures):
    """The instance's figures (every agent's together), with zone 2's counters."""

    counters: Counters = field(default_factory=Counters)

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "counters": self.counters.to_json()}

    @classmethod
    def from_json(cls, data: Any) -> InstanceFigures:
        o = _Object(data, "instance's figures")
        return cls(**cls._read(o), counters=Counters.from_json(o.mapping("counters")))


@dataclass(frozen=True)
class BudgetAnswer:
    """GET /control/budget?agent=ID...: the instance's figures and counters, and the figures of each agent asked."""

    instance: InstanceFigures
    agents: Mapping[str, AgentFigures] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"instance": self.instance.to_json(),
                "agents": {agent_id: figures.to_json() for agent_id, figures in self.agents.items()}}

    @classmethod
    def from_json(cls, data: Any) -> BudgetAnswer:
        o = _Object(data, "budget")
        agents = {str(agent_id): AgentFigures.from_json(figures) for agent_id, figures in o.mapping("agents").items()}
        return cls(InstanceFigures.from_json(o.required("instance")), agents)


# -- daemon.sock: zone 2 tells the daemon ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Heartbeat:
    """An agent's heartbeat, relayed: the optional progress it reported ({"step": 8, "total": 15, ...})."""

    agent_id: str
    progress: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "progress": self.progress}

    @classmethod
    def from_json(cls, data: Any) -> Heartbeat:
        o = _Object(data, "heartbeat")
        return cls(o.text("agent_id"), o.optional_mapping("progress", None))


@dataclass(frozen=True)
class HeartbeatBatch:
    """POST /control/heartbeats: the heartbeats zone 2 gathered while the last batch was on its way (a JSON array)."""

    beats: tuple[Heartbeat, ...]

    def to_json(self) -> list[dict[str, Any]]:
        return [beat.to_json() for beat in self.beats]

    @classmethod
    def from_json(cls, data: Any) -> HeartbeatBatch:
        return cls(tuple(Heartbeat.from_json(item) for item in _array(data, "heartbeats")))


@dataclass(frozen=True)
class HeartbeatAnswer:
    """The daemon's answer to a batch: the agents whose heartbeats it took (the others it does not watch)."""

    taken: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"taken": list(self.taken)}

    @classmethod
    def from_json(cls, data: Any) -> HeartbeatAnswer:
        return cls(tuple(_Object(data, "heartbeat answer").texts("taken")))


@dataclass(frozen=True)
class Event:
    """POST /control/events: something zone 2 saw (a refusal, a breaker's transition, its ledger failing), for the
    daemon's event log."""

    type: str
    agent_id: str | None  # None: about zone 2 or the instance, not one agent
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "agent_id": self.agent_id, "message": self.message, "data": self.data}

    @classmethod
    def from_json(cls, data: Any) -> Event:
        o = _Object(data, "event")
        return cls(o.text("type"), o.optional_text("agent_id"), o.text("message"), o.mapping("data"))


# -- daemon.sock: an agent's tasks, relayed by zone 2 ----------------------------------------------------------------
DEFAULT_TASK_WAIT = 30.0  # s a request for a task waits for one when the agent names no wait
MAX_TASK_WAIT = 60.0  # s it may wait at most (a long-poll: an agent's connection held open meanwhile)
MAX_TASK_ERROR = 10_000  # characters of an agent's account of a failure
MAX_TASK_OUTPUT = 1 << 20  # bytes of a task's output as compact JSON (the daemon's task_queue.MAX_BODY_BYTES)


def _attempt(o: _Object, required: bool) -> int | None:
    """An attempt number (from 1); when not ``required``, it may be null or absent (None)."""
    value = o.whole("attempt") if required else o.optional_whole("attempt", None)
    if value is not None and value < 1:
        raise ContractError(f"{o.what}: attempt must be 1 or more, got {value}")
    return value


def _next_wait(o: _Object) -> float | None:
    """How long an answer's ``next_wait`` asks to wait for the agent's next task (None: it asks for none)."""
    wait = o.optional_number("next_wait", None)
    if wait is not None and not 0 <= wait <= MAX_TASK_WAIT:
        raise ContractError(f"{o.what}: next_wait must be from 0 to {MAX_TASK_WAIT:g} seconds, got {wait:g}")
    return wait


def _with_next_wait(data: dict[str, Any], wait: float | None) -> dict[str, Any]:
    return data if wait is None else {**data, "next_wait": wait}


@dataclass(frozen=True)
class TaskNext:
    """POST /control/tasks/next: an agent asks for a task, waiting up to ``wait`` s for one. The daemon answers the
    task the agent holds, else the next ready one of its deployment (:class:`TaskLease`), or 204 when none came."""

    agent_id: str
    wait: float = DEFAULT_TASK_WAIT

    def to_json(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "wait": self.wait}

    @classmethod
    def from_json(cls, data: Any) -> TaskNext:
        o = _Object(data, "task request")
        wait = o.number("wait", DEFAULT_TASK_WAIT)
        if not 0 <= wait <= MAX_TASK_WAIT:
            raise ContractError(f"task request: wait must be from 0 to {MAX_TASK_WAIT:g} seconds, got {wait:g}")
        return cls(o.text("agent_id"), wait)


@dataclass(frozen=True)
class TaskLease:
    """The daemon's answer to :class:`TaskNext`, passed to the agent as it is: a task and the attempt that fences its
    answer (a completion of any other attempt is refused 409), and the task's cap on LLM spend, all its attempts
    together, which zone 2 enforces (None: none). On the wire the cap is ``max_usd``, dollars as an exact decimal
    string, present only when there is one: the agent reads it as docs/agent-protocol.md says, and an older zone 2
    ignores it."""

    id: str
    input: Any  # any JSON the task was submitted with
    attempt: int  # from 1
    deadline: str  # ISO 8601: past it the task fails (ttl_expired), whatever the attempt
    max_nusd: int | None = None

    def to_json(self) -> dict[str, Any]:
        lease = {"id": self.id, "input": self.input, "attempt": self.attempt, "deadline": self.deadline}
        if self.max_nusd is not None:
            lease["max_usd"] = usd_text(self.max_nusd)
        return lease

    @classmethod
    def from_json(cls, data: Any) -> TaskLease:
        o = _Object(data, "task lease")
        attempt = _attempt(o, required=True)
        assert attempt is not None
        return cls(o.text("id"), o.required("input"), attempt, o.text("deadline"), _usd_nusd(o, "max_usd"))


@dataclass(frozen=True)
class TaskComplete:
    """POST /control/tasks/ID/complete: the agent's task succeeded with ``output``. ``attempt`` None: the agent named
    none (the daemon takes the attempt the agent holds). ``next_wait``: the agent also asks for its next task, as
    :class:`TaskNext` does, waiting up to that many seconds (the answer's ``next``); None: it does not."""

    agent_id: str
    attempt: int | None
    output: Any = None  # any JSON, at most MAX_TASK_OUTPUT bytes of it (the daemon counts them)
    next_wait: float | None = None

    def to_json(self) -> dict[str, Any]:
        return _with_next_wait({"agent_id": self.agent_id, "attempt": self.attempt, "output": self.output},
                               self.next_wait)

    @classmethod
    def from_json(cls, data: Any) -> TaskComplete:
        o = _Object(data, "task completion")
        return cls(o.text("agent_id"), _attempt(o, required=False), o.data.get("output"), _next_wait(o))


@dataclass(frozen=True)
class TaskCompletions:
    """POST /control/tasks/completions: completions that reached zone 2 together, recorded by the daemon in one
    transaction (a group commit: the first goes at once, those that come while it is on its way go together right
    after). Each is ``(task id, completion)``; none waits for a next task (``next_wait`` 0 or absent): a wait is a
    long poll of its own. A JSON array of ``{"task_id", "completion"}``."""

    items: tuple[tuple[str, TaskComplete], ...]

    def to_json(self) -> list[dict[str, Any]]:
        return [{"task_id": task_id, "completion": done.to_json()} for task_id, done in self.items]

    @classmethod
    def from_json(cls, data: Any) -> TaskCompletions:
        items = []
        for item in _array(data, "task completions"):
            o = _Object(item, "task completions")
            done = TaskComplete.from_json(o.required("completion"))
            if done.next_wait:
                raise ContractError("task completions: a completion that waits for its next task goes alone")
            items.append((o.text("task_id"), done))
        return cls(tuple(items))


@dataclass(frozen=True)
class TaskAnswer:
    """The daemon's answer to one completion of a :class:`TaskCompletions`: 200 with its ``outcome``, else the status
    and ``body`` (the API's JSON error) that it would have answered that completion alone."""

    status: int
    body: dict[str, Any]  # the outcome's JSON (200), else the error's

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "body": self.body}

    @classmethod
    def from_json(cls, data: Any) -> TaskAnswer:
        o = _Object(data, "task answer")
        body = o.optional_mapping("body")
        if body is None:
            raise ContractError("task answer: body must be an object, got null")
        return cls(o.whole("status"), body)


@dataclass(frozen=True)
class TaskAnswers:
    """The daemon's answer to :class:`TaskCompletions`: one :class:`TaskAnswer` per completion, in order (an
    array)."""

    answers: tuple[TaskAnswer, ...]

    def to_json(self) -> list[dict[str, Any]]:
        return [answer.to_json() for answer in self.answers]

    @classmethod
    def from_json(cls, data: Any) -> TaskAnswers:
        return cls(tuple(TaskAnswer.from_json(item) for item in _array(data, "task answers")))


@dataclass(frozen=True)
class TaskFail:
    """POST /control/tasks/ID/fail: the agent's attempt failed. ``retry``: the task is queued again after a backoff
    while attempts remain; else it fails for good."""

    agent_id: str
    attempt: int | None
    error: str
    retry: bool = True
    next_wait: float | None = None  # as TaskComplete's

    def to_json(self) -> dict[str, Any]:
        return _with_next_wait({"agent_id": self.agent_id, "attempt": self.attempt, "error": self.error,
                                "retry": self.retry}, self.next_wait)

    @classmethod
    def from_json(cls, data: Any) -> TaskFail:
        o = _Object(data, "task failure")
        error = o.text("error")
        if len(error) > MAX_TASK_ERROR:
            raise ContractError(f"task failure: error must be at most {MAX_TASK_ERROR} characters, got {len(error)}")
        return cls(o.text("agent_id"), _attempt(o, required=False), error, o.flag("retry", True), _next_wait(o))


@dataclass(frozen=True)
class TaskOutcome:
    """The daemon's answer to :class:`TaskComplete` and :class:`TaskFail`: the task as it is now, and when the answer
    asked for the agent's next task (``next_wait``), ``next``: the lease, or null when none came in time. Passed on
    to the agent as it is."""

    id: str
    state: str  # task_queue.TaskState: succeeded; queued again, dead or failed after a failure
    attempts: int  # leases the task has had
    asked_next: bool = False
    next: TaskLease | None = None

    def to_json(self) -> dict[str, Any]:
        outcome: dict[str, Any] = {"id": self.id, "state": self.state, "attempts": self.attempts}
        if self.asked_next:
            outcome["next"] = None if self.next is None else self.next.to_json()
        return outcome

    @classmethod
    def from_json(cls, data: Any) -> TaskOutcome:
        o = _Object(data, "task outcome")
        asked = "next" in o.data
        lease = o.optional_mapping("next", None)
        return cls(o.text("id"), o.text("state"), o.whole("attempts"), asked,
                   None if lease is None else TaskLease.from_json(lease))
