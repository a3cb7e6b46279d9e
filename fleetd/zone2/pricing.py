"""LLM prices and the exact arithmetic of what a call costs.

Pure: no I/O except reading the packaged price table (``fleetd/data/prices.toml``).

Money is an integer number of nano-dollars (:data:`NANO` per USD) everywhere in zone 2, so
budgets and caps add up without float drift. Prices are quoted the way providers publish
them, in USD per million tokens; a price of ``p`` USD/Mtok is ``p * 1000`` nUSD per token.
Costs are computed exactly (with :class:`fractions.Fraction` over the decimal value the
price was written with) and rounded up to a whole nano-dollar, so fleetd never charges less
than the provider would.
"""

from __future__ import annotations

import functools
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import cache
from importlib import resources
from typing import Any

from fleetd.zone2.llm import Usage

NANO = 1_000_000_000  # money is integer nano-USD everywhere in zone 2 (no float drift in caps)
# OpenAI's priority processing (service_tier "priority") costs 1.75x to 2.5x the standard prices, depending on the
# model. A price names its model's ratio (priority_multiplier); a call to a model whose price names none is charged
# at twice the standard prices, the ratio of most models (GPT-5.5's 2.5x is in the table).
PRIORITY_MULTIPLIER = 2
# Anthropic fast mode (usage.speed "fast"): its price over the standard one when a price names none (the most
# Anthropic has charged: Opus 4.6's 6x; Opus 4.8, 5 and 5.5 cost 2x). A request for fast mode on a model whose price
# names no fast_multiplier is refused unless the agent's role allows unpriced calls, so this applies to those calls
# and to an answer that says "fast" unasked.
FAST_MULTIPLIER = 6
# Anthropic: a write to a 1-hour cache entry costs twice the input price (a 5-minute one 1.25x: cache_write).
ONE_HOUR_CACHE_WRITE_MULTIPLIER = 2
_NUSD_PER_TOKEN_PER_USD_PER_MTOK = Fraction(NANO, 1_000_000)  # p USD/Mtok = p * 1000 nUSD/token

# A dated snapshot (-YYYY-MM-DD or -YYYYMMDD) or the "-latest" alias of a model id.
_SNAPSHOT = re.compile(r"^(?P<base>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{8}|latest)$")

@dataclass(frozen=True)
class PriceField:
    """One field of a price, declared once: the config file, the API, the store, ``fleetd price set`` and the
    checks below all derive from :data:`FIELDS`."""

    name: str
    kind: str  # "usd" (per 1M tokens), "tokens" (a positive whole number), "multiple" (1 to 10), "text"
    flag: str | None = None  # its `fleetd price set` option (None: not set there)
    help: str = ""
    required: bool = False


FIELDS: tuple[PriceField, ...] = (
    PriceField("model", "text", required=True),
    PriceField("input", "usd", "--input-per-mtok", "USD per 1M uncached input tokens.", required=True),
    PriceField("output", "usd", "--output-per-mtok", "USD per 1M output tokens (reasoning included).", required=True),
    PriceField("cached_input", "usd", "--cached-input-per-mtok", "USD per 1M cached input tokens (default: input)."),
    PriceField("cache_write", "usd", "--cache-write-per-mtok", "USD per 1M cache-write tokens (default: input)."),
    PriceField("max_output_tokens", "tokens", "--max-output-tokens",
               "The model's output limit: bounds the reservation of calls that set no max tokens."),
    PriceField("source", "text"),
    PriceField("as_of", "text"),
    PriceField("provider", "text"),
    PriceField("long_context_threshold", "tokens", "--long-context-above",
               "Input tokens above which a call is billed, all of it, at the long-context prices below."),
    PriceField("long_context_input", "usd", "--long-context-input-per-mtok",
               "USD per 1M input tokens in a long-context call."),
    PriceField("long_context_output", "usd", "--long-context-output-per-mtok",
               "USD per 1M output tokens in a long-context call."),
    PriceField("priority_multiplier", "multiple", "--priority-multiplier",
               "OpenAI: the model's priority-tier prices over these (default 2)."),
    PriceField("max_input_tokens", "tokens", "--max-input-tokens",
               "The model's input limit (its context window): bounds the reservation of a call whose input is "
               "partly kept upstream (previous_response_id, conversation; default 1050000)."),
    PriceField("fast_multiplier", "multiple", "--fast-multiplier",
               "Anthropic: the model's fast-mode prices over these (default: fast mode refused as unpriced)."),
    PriceField("us_inference_multiplier", "multiple", "--us-inference-multiplier",
               "Anthropic: the model's US-only inference prices over these (default 1)."),
    PriceField("image_tokens", "tokens", "--image-tokens",
               "The most input tokens one image costs with the model, as its provider publishes: each image in a "
               "request is reserved at this (default 48169, the largest any provider publishes)."),
    PriceField("image_tokens_low", "tokens", "--image-tokens-low",
               'The same at OpenAI\'s "detail": "low" (default: --image-tokens).'),
)
PRICE_FIELDS = tuple(f.name for f in FIELDS)
_MONEY_FIELDS = tuple(f.name for f in FIELDS if f.kind == "usd")
# Fields that count tokens (positive whole numbers) and multiples of the prices (1 to 10), for whoever validates them
TOKEN_FIELDS = tuple(f.name for f in FIELDS if f.kind == "tokens")
MULTIPLIER_FIELDS = tuple(f.name for f in FIELDS if f.kind == "multiple")
_OPTIONAL_PRICES = tuple(f.name for f in FIELDS if f.kind == "usd" and not f.required)


@functools.lru_cache(maxsize=4096)
def _exact(value: float) -> Fraction:
    """The exact decimal a price was written as (0.075 -> 75/1000, not the nearest binary float).

    Cached: a table holds a few dozen distinct prices, and this is on every metered call's path.
    """
    return Fraction(Decimal(str(value)))


@dataclass(frozen=True)
class Price:
    """One model's prices, in USD per 1M tokens."""

    model: str
    input: float  # per 1M uncached input tokens
    output: float  # per 1M output tokens (reasoning tokens included)
    cached_input: float | None = None  # per 1M cache-read tokens; None -> same as input
    cache_write: float | None = None  # per 1M cache-write tokens; None -> same as input
    max_output_tokens: int | None = None
    source: str = ""
    as_of: str = ""
    provider: str = ""
    # Long context: a call whose input (uncached + cache reads + cache writes) is above the threshold is billed
    # at these prices, all of it (Anthropic above 200K input tokens, the newest GPT-5.x above 272K); its cache
    # reads and writes at the input's multiple, as the providers publish them.
    long_context_threshold: int | None = None
    long_context_input: float | None = None
    long_context_output: float | None = None
    # OpenAI: its priority prices over these (all of a model's priority prices are the same multiple); None ->
    # PRIORITY_MULTIPLIER
    priority_multiplier: float | None = None
    # The model's largest possible input (its context window, or the maximum input its provider states): what
    # bounds a call whose input is partly held upstream (a Responses conversation, a stored prompt); None ->
    # costs.DEFAULT_MAX_INPUT
    max_input_tokens: int | None = None
    # Anthropic: fast mode's prices over these (usage.speed "fast"; None: fast mode is not priced for this model)
    fast_multiplier: float | None = None
    # Anthropic: US-only inference's prices over these (usage.inference_geo "us"; Claude 4.6 and later: 1.1;
    # None: the same prices)
    us_inference_multiplier: float | None = None
    # The most input tokens one image can cost with this model, as its provider publishes (at the detail the model
    # uses by default, which is its largest on the newest OpenAI models; None -> costs.DEFAULT_IMAGE_TOKENS), and at
    # OpenAI's "detail": "low" (None -> image_tokens). Images are billed by pixels, not by their bytes in the body.
    image_tokens: int | None = None
    image_tokens_low: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"a price needs a model name, got {self.model!r}")
        for name in _MONEY_FIELDS:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL_PRICES:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"price for model {self.model!r}: {name} must be a number (USD per 1M tokens), "
                                 f"got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"price for model {self.model!r}: {name} must be finite, got {value!r}")
            if value < 0:
                raise ValueError(f"price for model {self.model!r}: {name} must not be negative, got {value!r}")
        for name in TOKEN_FIELDS:
            limit = getattr(self, name)
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
                raise ValueError(f"price for model {self.model!r}: {name} must be a positive integer, got {limit!r}")
        long_context = (self.long_context_threshold, self.long_context_input, self.long_context_output)
        if any(v is not None for v in long_context) and any(v is None for v in long_context):
            raise ValueError(f"price for model {self.model!r}: long_context_threshold, long_context_input and "
                             "long_context_output go together")
        for name in MULTIPLIER_FIELDS:
            multiplier = getattr(self, name)
            if multiplier is not None and (isinstance(multiplier, bool) or not isinstance(multiplier, int | float)
                                           or not math.isfinite(multiplier) or not 1 <= multiplier <= 10):
                raise ValueError(f"price for model {self.model!r}: {name} must be a number from 1 to 10, "
                                 f"got {multiplier!r}")
        if self.long_context_input is not None and self.input == 0 and self.long_context_input != 0:
            raise ValueError(f"price for model {self.model!r}: a long-context price needs an input price above 0")
        for name in ("source", "as_of", "provider"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"price for model {self.model!r}: {name} must be a string")

    # The effective per-1M prices, with the "same as input" defaults applied.
    @property
    def cached_input_price(self) -> float:
        return self.input if self.cached_input is None else self.cached_input

    @property
    def cache_write_price(self) -> float:
        return self.input if self.cache_write is None else self.cache_write

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_dict` turns it back into an equal Price."""
        return {name: getattr(self, name) for name in PRICE_FIELDS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, model: str | None = None) -> Price:
        """Build a Price from a dict like :meth:`to_dict`'s (or a config table, naming the model separately).

        ``input`` and ``output`` are required; unknown keys are refused so a typo cannot
        silently leave a price at its default.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"a price must be a table/object, got {type(d).__name__}")
        name = d.get("model", model)
        if model is not None and name != model:
            raise ValueError(f"price for model {model!r} names a different model {name!r}")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a price needs a model name, got {name!r}")
        unknown = sorted(set(d) - set(PRICE_FIELDS))
        if unknown:
            raise ValueError(f"price for model {name!r}: unknown field(s) {', '.join(unknown)} "
                             f"(known: {', '.join(PRICE_FIELDS[1:])})")
        for required in ("input", "output"):
            if d.get(required) is None:
                raise ValueError(f"price for model {name!r} is missing {required!r} (USD per 1M tokens)")
        return cls(
            model=name, input=d["input"], output=d["output"], cached_input=d.get("cached_input"),
            cache_write=d.get("cache_write"), max_output_tokens=d.get("max_output_tokens"),
            source=d.get("source") or "", as_of=d.get("as_of") or "", provider=d.get("provider") or "",
            long_context_threshold=d.get("long_context_threshold"), long_context_input=d.get("long_context_input"),
            long_context_output=d.get("long_context_output"), priority_multiplier=d.get("priority_multiplier"),
            max_input_tokens=d.get("max_input_tokens"), fast_multiplier=d.get("fast_multiplier"),
            us_inference_multiplier=d.get("us_inference_multiplier"), image_tokens=d.get("image_tokens"),
            image_tokens_low=d.get("image_tokens_low"),
        )


class PriceTable:
    """Prices by model id. Lookups fail closed: a model that is not listed has no price."""

    def __init__(self, prices: Iterable[Price]) -> None:
        self._prices: dict[str, Price] = {}
        for price in prices:
            if not isinstance(price, Price):
                raise TypeError(f"PriceTable holds Price objects, got {type(price).__name__}")
            self._prices[price.model] = price  # later wins

    @classmethod
    def builtin(cls) -> PriceTable:
        """The table shipped with fleetd (``fleetd/data/prices.toml``)."""
        return cls(_builtin_prices())

    def with_overrides(self, prices: Iterable[Price]) -> PriceTable:
        """A new table: this one with ``prices`` replacing (per model) or adding entries."""
        return PriceTable([*self._prices.values(), *prices])

    def lookup(self, model: str) -> Price | None:
        """The price of ``model``: an exact match, else the model a dated snapshot or -latest alias names.

        ``gpt-4o-2024-08-06`` -> ``gpt-4o``, ``claude-3-5-haiku-20241022`` -> ``claude-3-5-haiku``,
        ``claude-3-7-sonnet-latest`` -> ``claude-3-7-sonnet``. Nothing fuzzier: an unknown model
        returns None.
        """
        price = self._prices.get(model)
        if price is not None:
            return price
        match = _SNAPSHOT.match(model)
        if match is None:
            return None
        return self._prices.get(match.group("base"))

    def all(self) -> list[Price]:
        return sorted(self._prices.values(), key=lambda p: p.model)

    def to_list(self) -> list[dict[str, Any]]:
        return [price.to_dict() for price in self.all()]

    @classmethod
    def from_list(cls, items: Iterable[Mapping[str, Any]]) -> PriceTable:
        return cls(Price.from_dict(item) for item in items)

    def __len__(self) -> int:
        return len(self._prices)

    def __contains__(self, model: object) -> bool:
        return model in self._prices

    def __repr__(self) -> str:
        return f"PriceTable({len(self._prices)} models)"


@cache
def _builtin_prices() -> tuple[Price, ...]:
    text = (resources.files("fleetd") / "data" / "prices.toml").read_text(encoding="utf-8")
    return parse_price_toml(text, require_source=True)


def parse_price_toml(text: str, *, require_source: bool = False) -> tuple[Price, ...]:
    """Parse a price table in the format of ``fleetd/data/prices.toml`` (``[models."ID"]`` tables)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"price table is not valid TOML: {e}") from None
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise ValueError("price table has no [models.\"ID\"] tables")
    prices = []
    for name, entry in models.items():
        if not isinstance(entry, dict):
            raise ValueError(f"price for model {name!r} must be a table")
        price = Price.from_dict(entry, model=name)
        if require_source and not (price.source.strip() and price.as_of.strip()):
            raise ValueError(f"price for model {name!r} needs a source and an as_of date")
        prices.append(price)
    return tuple(prices)


def _tokens(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _ceil_nusd(usd_per_mtok_times_tokens: Fraction) -> int:
    return math.ceil(usd_per_mtok_times_tokens * _NUSD_PER_TOKEN_PER_USD_PER_MTOK)


@functools.lru_cache(maxsize=4096)
def _micro(value: float | Fraction) -> int | None:
    """A price (USD per 1M tokens) times 10**6, when that is a whole number (six decimals or fewer)."""
    scaled = _rate(value) * 1_000_000
    return int(scaled) if scaled.denominator == 1 else None


def _rate(value: float | Fraction) -> Fraction:
    return value if isinstance(value, Fraction) else _exact(value)


Rate = float | Fraction


@dataclass(frozen=True)
class _Rates:
    """The per-1M prices one call is billed at (standard, or long context)."""

    input: Rate
    cached_input: Rate
    cache_write: Rate
    cache_write_1h: Rate
    output: Rate


@functools.lru_cache(maxsize=1024)
def _rates(price: Price, long_context: bool) -> _Rates:
    if not long_context or price.long_context_input is None or price.long_context_output is None:
        return _Rates(price.input, price.cached_input_price, price.cache_write_price,
                      price.input * ONE_HOUR_CACHE_WRITE_MULTIPLIER, price.output)
    scale = _exact(price.long_context_input) / _exact(price.input) if price.input else Fraction(0)
    return _Rates(price.long_context_input, _exact(price.cached_input_price) * scale,
                  _exact(price.cache_write_price) * scale,
                  _exact(price.long_context_input) * ONE_HOUR_CACHE_WRITE_MULTIPLIER, price.long_context_output)


def _long_context(price: Price, input_tokens: int) -> bool:
    return price.long_context_threshold is not None and input_tokens > price.long_context_threshold


def _premium(price: Price, priority: bool, fast: bool, us_only: bool) -> Fraction:
    """The multiple of the standard prices a call is billed at: OpenAI's priority tier, Anthropic's fast mode and
    US-only inference (the last two stack, as Anthropic publishes them)."""
    factor = Fraction(1)
    for applies, multiplier, default in ((priority, price.priority_multiplier, PRIORITY_MULTIPLIER),
                                         (fast, price.fast_multiplier, FAST_MULTIPLIER),
                                         (us_only, price.us_inference_multiplier, 1)):
        if applies:
            factor *= Fraction(default) if multiplier is None else _exact(multiplier)
    return factor


def _priced(tokens_at: list[tuple[int, Rate]], factor: Fraction = Fraction(1)) -> int:
    """factor * sum(tokens * price) in nano-USD, rounded up to a whole nano-dollar, exactly.

    p USD per 1M tokens is p * 1000 nano-USD per token, so with P = p * 10**6 (a whole number for
    any price written with six decimals or fewer) the sum is ceil(sum(tokens * P) / 1000): integer
    arithmetic, on every metered call's path. Other prices go through Fractions.
    """
    rates = [_micro(p) for _, p in tokens_at]
    whole = [r for r in rates if r is not None]
    if len(whole) == len(rates):
        total = sum(n * r for (n, _), r in zip(tokens_at, whole, strict=True)) * factor.numerator
        return -(-total // (1000 * factor.denominator))
    return _ceil_nusd(sum((n * _rate(p) for n, p in tokens_at), Fraction(0)) * factor)


def cost_nusd(price: Price, usage: Usage, *, priority: bool = False) -> int:
    """What a call with ``usage`` costs at ``price``, in nano-USD, rounded up to a whole nano-dollar.

    Cache writes to 1-hour entries (part of ``cache_write_tokens``) cost ONE_HOUR_CACHE_WRITE_MULTIPLIER x input;
    a call whose whole input is above the price's ``long_context_threshold`` is billed at its long-context prices;
    ``priority``: the call was served at OpenAI's priority tier (every price times the model's priority_multiplier,
    else PRIORITY_MULTIPLIER). An Anthropic answer served in fast mode (``usage.speed`` "fast") is billed at every
    price times the model's fast_multiplier (else FAST_MULTIPLIER), one served US-only (``usage.inference_geo``
    "us") times its us_inference_multiplier, both when both.
    """
    uncached = _tokens("input_tokens", usage.input_tokens)
    cached = _tokens("cached_input_tokens", usage.cached_input_tokens)
    writes = _tokens("cache_write_tokens", usage.cache_write_tokens)
    one_hour = min(_tokens("cache_write_1h_tokens", usage.cache_write_1h_tokens), writes)
    rates = _rates(price, _long_context(price, uncached + cached + writes))
    return _priced([
        (uncached, rates.input),
        (cached, rates.cached_input),
        (writes - one_hour, rates.cache_write),
        (one_hour, rates.cache_write_1h),
        (_tokens("output_tokens", usage.output_tokens), rates.output),
    ], _premium(price, priority, usage.speed == "fast", usage.inference_geo == "us"))


def bound_nusd(price: Price, input_tokens: int, output_tokens: int, *, priority: bool = False,
               one_hour_cache: bool = False, fast: bool = False, us_only: bool = False) -> int:
    """An upper bound on the cost of a call, for reserving budget before it is made.

    Every input token at the dearest input rate (uncached, cache read or cache write, and a 1-hour cache write
    when the request asks for one), every output token at the output rate, at the long-context prices when the
    input bound is above the threshold, all of it at the priority, fast-mode and US-only multiples that apply: at
    least :func:`cost_nusd` of any usage with at most that total input (uncached + cached + cache-write) and output
    tokens billed at those modes or fewer.
    """
    rates = _rates(price, _long_context(price, _tokens("input_tokens", input_tokens)))
    candidates = [rates.input, rates.cached_input, rates.cache_write]
    if one_hour_cache:
        candidates.append(rates.cache_write_1h)
    return _priced([(input_tokens, max(candidates, key=_rate)),
                    (_tokens("output_tokens", output_tokens), rates.output)], _premium(price, priority, fast, us_only))


def usd(nusd: int) -> float:
    """Nano-USD as (approximate) USD, for display."""
    return nusd / NANO


def nusd(usd: float | str | Decimal) -> int:
    """User-given USD (a cap, a price) as nano-USD: exact decimal, rounded half up to a whole nano-dollar.

    Floats are read as they print (``0.1`` is ten cents, not the nearest binary fraction);
    strings may carry surrounding whitespace and a leading ``$``.
    """
    if isinstance(usd, bool):
        raise ValueError(f"not an amount of money: {usd!r}")
    text = str(usd).strip()
    text = text.removeprefix("$").strip() if isinstance(usd, str) else text
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not an amount of money: {usd!r}") from None
    if not amount.is_finite():
        raise ValueError(f"not an amount of money: {usd!r}")
    scaled = Fraction(amount) * NANO
    rounded = math.floor(abs(scaled) + Fraction(1, 2))  # half up, i.e. away from zero
    return rounded if scaled >= 0 else -rounded
