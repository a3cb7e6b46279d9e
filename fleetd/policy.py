"""What zone 2 enforces, decided by the daemon: budget caps per agent, prices, breaker and retry settings.

Config file keys (all optional)::

    [budget]                    # every agent's caps unless its role or spawn says otherwise
    daily_usd = 50              # per agent, per UTC day
    monthly_usd = 200           # per agent, per calendar month (UTC)
    max_llm_calls = 1000        # per agent, over its lifetime (default: no maximum)
    allow_unpriced = false      # true: unpriced models, unmeterable endpoints and server-side tools pass (else 400)
    instance_daily_usd = 500    # the whole instance (default: no instance cap)
    instance_monthly_usd = 5000

    [roles.researcher]          # besides spawn limits, a role may carry the same four budget keys
    daily_usd = 5

    [breaker]                   # per agent and upstream
    threshold = 5               # consecutive 429s ...
    window = 30                 # ... within this many seconds open the circuit
    open_seconds = 60           # first open period; doubles on each consecutive trip
    max_open_seconds = 3600

    [retry]                     # zone 2's own retries of 429 and 5xx answers to LLM calls
    max_retries = 2
    base = 0.5                  # full jitter: uniform(0, min(cap, base * 2**attempt))
    cap = 8                     # a Retry-After longer than this is returned to the agent instead

    [prices."my-finetune"]      # USD per 1M tokens, over the built-in table
    input = 3.0
    output = 12.0
    cached_input = 1.5          # optional (default: input)
    cache_write = 3.75          # optional (default: input)
    max_output_tokens = 16384   # optional: bounds the reservation when a request sets no max tokens
    long_context_threshold = 200000  # optional, the three together: a call with more input tokens than
    long_context_input = 6.0         # this is billed, all of it, at these prices (cache reads and writes
    long_context_output = 22.5       # at the same multiple of input)
    priority_multiplier = 2.0        # optional: OpenAI priority prices over these (default 2)
    fast_multiplier = 2.0            # optional: Anthropic fast mode's prices over these (default: not priced)
    us_inference_multiplier = 1.1    # optional: Anthropic US-only inference's prices over these (default 1)
    max_input_tokens = 272000        # optional: bounds a call reading input kept upstream (default 1050000)
    image_tokens = 1445              # optional: the most input tokens one image costs (default 48169)
    image_tokens_low = 85            # optional: the same at OpenAI's "detail": "low" (default: image_tokens)

Precedence of an agent's caps, per key: ``spawn --daily-usd`` etc., then ``fleetd role set``,
then ``[roles.NAME]``, then ``[budget]``, then the built-in $50/day and $200/month.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from fleetd.egress import EgressSettings, egress_settings
from fleetd.errors import InvalidRequest
from fleetd.units import parse_usd
from fleetd.zone2.breaker import BreakerSettings, RetrySettings
from fleetd.zone2.budget import Caps
from fleetd.zone2.contract import Zone2Policy
from fleetd.zone2.pricing import MULTIPLIER_FIELDS, PRICE_FIELDS, TOKEN_FIELDS, Price

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

BUDGET_KEYS = ("daily_usd", "monthly_usd", "max_llm_calls", "allow_unpriced")
INSTANCE_KEYS = ("instance_daily_usd", "instance_monthly_usd")
BREAKER_KEYS = {"threshold": int, "window": float, "open_seconds": float, "max_open_seconds": float}
RETRY_KEYS = {"max_retries": int, "base": float, "cap": float}
PRICE_KEYS = set(PRICE_FIELDS) - {"model", "provider"}
NANO = Decimal(10) ** 9


Layered = TypeVar("Layered", bound="DataclassInstance")


def overlay(top: Layered, base: Layered) -> Layered:
    """A frozen dataclass of settings with each field that ``top`` leaves None taken from ``base``."""
    unset = {f.name: getattr(base, f.name) for f in fields(top) if getattr(top, f.name) is None}
    return replace(top, **unset)


@dataclass(frozen=True)
class BudgetCaps:
    """Caps for one agent; ``None`` = not set at this level (fall through)."""

    daily_usd: Decimal | None = None
    monthly_usd: Decimal | None = None
    max_llm_calls: int | None = None
    allow_unpriced: bool | None = None

    def over(self, base: BudgetCaps) -> BudgetCaps:
        return overlay(self, base)

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in asdict(self).items()}


BUILTIN_BUDGET = BudgetCaps(Decimal(50), Decimal(200), None, False)


@dataclass(frozen=True)
class Policy:
    """The config file's part of what zone 2 enforces."""

    budget: BudgetCaps = BUILTIN_BUDGET
    roles: dict[str, BudgetCaps] = field(default_factory=dict)
    instance_daily_usd: Decimal | None = None
    instance_monthly_usd: Decimal | None = None
    breaker: dict[str, Any] = field(default_factory=dict)
    retry: dict[str, Any] = field(default_factory=dict)
    prices: list[dict[str, Any]] = field(default_factory=list)
    egress: dict[str, EgressSettings] = field(default_factory=dict)  # [roles.X] egress, egress_max_bytes


def nusd(amount: Decimal | None) -> int | None:
    return None if amount is None else int((amount * NANO).to_integral_value())


INHERIT = "inherit"  # a role's budget key set to this is unset (fleetd role set --daily-usd inherit)


def budget_caps(table: dict[str, Any], where: str) -> BudgetCaps:
    """The budget keys of a config table (or an API body), validated."""
    values: dict[str, Any] = {}
    for key in BUDGET_KEYS:
        value = table.get(key)
        if value is None:
            continue
        if key in ("daily_usd", "monthly_usd"):
            values[key] = parse_usd(value, f"{where}.{key}")
        elif key == "max_llm_calls":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidRequest(f"{where}.max_llm_calls: must be a whole number >= 0")
            values[key] = value
        else:
            if not isinstance(value, bool):
                raise InvalidRequest(f"{where}.allow_unpriced: must be true or false")
            values[key] = value
    return BudgetCaps(**values)


def _numbers(table: dict[str, Any], kinds: dict[str, type], where: str) -> dict[str, Any]:
    unknown = set(table) - set(kinds)
    if unknown:
        raise InvalidRequest(f"{where}: unknown keys {sorted(unknown)}")
    out: dict[str, Any] = {}
    for key, kind in kinds.items():
        if key not in table:
            continue
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
                kind is int and not isinstance(value, int)):
            raise InvalidRequest(f"{where}.{key}: must be a {'whole ' if kind is int else ''}number >= 0")
        out[key] = kind(value)
    if kinds is BREAKER_KEYS and out.get("threshold") == 0:
        raise InvalidRequest(f"{where}.threshold: must be at least 1")
    return out


def price_entry(model: str, table: dict[str, Any], where: str) -> dict[str, Any]:
    """One price (USD per 1M tokens) from the config file or `fleetd price set`, validated."""
    unknown = set(table) - PRICE_KEYS
    if unknown:
        raise InvalidRequest(f"{where}: unknown keys {sorted(unknown)}")
    if not model or len(model) > 200 or any(c.isspace() for c in model):
        raise InvalidRequest(f"{where}: invalid model name {model!r}")
    entry: dict[str, Any] = {"model": model}
    for key in ("input", "output", "cached_input", "cache_write", "long_context_input", "long_context_output"):
        if table.get(key) is None:
            if key in ("input", "output"):
                raise InvalidRequest(f"{where}: {key} (USD per 1M tokens) is required")
            continue
        entry[key] = float(parse_usd(table[key], f"{where}.{key}"))
    for key in TOKEN_FIELDS:
        limit = table.get(key)
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise InvalidRequest(f"{where}.{key}: must be a whole number >= 1")
            entry[key] = limit
    for key in MULTIPLIER_FIELDS:
        multiplier = table.get(key)
        if multiplier is not None:
            if isinstance(multiplier, bool) or not isinstance(multiplier, int | float):
                raise InvalidRequest(f"{where}.{key}: must be a number from 1 to 10")
            entry[key] = float(multiplier)
    for key in ("source", "as_of"):
        if table.get(key) is not None:
            entry[key] = str(table[key])
    try:
        Price.from_dict(entry)  # the rules that join fields (the long-context ones go together)
    except ValueError as exc:
        raise InvalidRequest(f"{where}: {exc}") from None
    return entry


def load_policy(data: dict[str, Any], role_tables: dict[str, dict[str, Any]]) -> Policy:
    """Pop and parse [budget], [breaker], [retry], [prices] from the config data; budget and egress keys of roles
    (``role_tables``: each role's table, only those keys)."""
    budget = data.pop("budget", {})
    unknown = set(budget) - set(BUDGET_KEYS) - set(INSTANCE_KEYS)
    if unknown:
        raise InvalidRequest(f"budget: unknown keys {sorted(unknown)}")
    roles = {name: budget_caps(table, f"roles.{name}") for name, table in role_tables.items()}
    egress = {name: egress_settings(table, f"roles.{name}") for name, table in role_tables.items()}
    prices = data.pop("prices", {})
    return Policy(
        budget=budget_caps(budget, "budget").over(BUILTIN_BUDGET),
        roles={name: caps for name, caps in roles.items() if caps != BudgetCaps()},
        instance_daily_usd=None if budget.get("instance_daily_usd") is None
        else parse_usd(budget["instance_daily_usd"], "budget.instance_daily_usd"),
        instance_monthly_usd=None if budget.get("instance_monthly_usd") is None
        else parse_usd(budget["instance_monthly_usd"], "budget.instance_monthly_usd"),
        breaker=_numbers(data.pop("breaker", {}), BREAKER_KEYS, "breaker"),
        retry=_numbers(data.pop("retry", {}), RETRY_KEYS, "retry"),
        prices=[price_entry(model, table, f"prices.{model}") for model, table in prices.items()],
        egress={name: settings for name, settings in egress.items() if settings != EgressSettings()},
    )


def resolve_caps(policy: Policy, role: str, role_row: dict[str, Any] | None, spec: dict[str, Any]) -> BudgetCaps:
    """An agent's effective caps: spawn flags, then `role set`, then [roles.X], then [budget]."""
    from_spawn = budget_caps({k: spec.get(k) for k in ("daily_usd", "monthly_usd", "max_llm_calls")}, "spawn")
    from_store = budget_caps({k: (role_row or {}).get(k) for k in BUDGET_KEYS}, f"role {role}")
    from_config = policy.roles.get(role, BudgetCaps())
    return from_spawn.over(from_store).over(from_config).over(policy.budget)


def merged_prices(builtin: list[dict[str, Any]], policy: Policy, stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The price table zone 2 uses: built-in, then the config file, then `fleetd price set` (last wins)."""
    table: dict[str, dict[str, Any]] = {}
    for origin, entries in (("builtin", builtin), ("config", policy.prices), ("price set", stored)):
        for entry in entries:
            table[entry["model"]] = {**entry, "origin": origin}
    return [table[m] for m in sorted(table)]


def zone2_policy(policy: Policy, prices: list[dict[str, Any]]) -> Zone2Policy:
    """What zone 2 enforces besides each agent's caps (PUT /control/policy), from the config and the price table."""
    try:
        table = tuple(Price.from_dict({k: v for k, v in p.items() if k not in ("origin", "updated_at")})
                      for p in prices)
    except ValueError as exc:  # a price stored by a newer fleetd, with a field this one does not know
        raise InvalidRequest(f"price table: {exc}") from None
    return Zone2Policy(table, BreakerSettings(**policy.breaker), RetrySettings(**policy.retry),
                       Caps(nusd(policy.instance_daily_usd), nusd(policy.instance_monthly_usd)))

