"""Zone 2 pricing: the built-in price table, lookups, and exact nano-dollar arithmetic."""

from __future__ import annotations

import json
import random
import tomllib
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fleetd.zone2.llm import Usage
from fleetd.zone2.pricing import (
    NANO,
    Price,
    PriceTable,
    bound_nusd,
    cost_nusd,
    nusd,
    parse_price_toml,
    usd,
)

REPO = Path(__file__).resolve().parents[2]
SIM_PROVIDER = "fleetd-llm-sim"


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.builtin()


# -- the built-in table --------------------------------------------------------------------

def test_builtin_table_loads_the_models_asked_for(table: PriceTable) -> None:
    for model in ("gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o",
                  "gpt-4o-mini", "o3", "o4-mini", "o1", "claude-opus-4-1", "claude-opus-4", "claude-sonnet-4",
                  "claude-sonnet-4-5", "claude-3-7-sonnet", "claude-3-5-haiku", "claude-haiku-4-5",
                  "sim-small", "sim-model", "gemini-2.5-pro", "gemini-2.5-flash", "gemini-3-pro-preview"):
        assert model in table, model


def test_every_builtin_entry_is_sourced_dated_and_sane(table: PriceTable) -> None:
    assert len(table) >= 20
    for price in table.all():
        assert price.source.strip(), price.model
        date.fromisoformat(price.as_of)  # an ISO date
        assert date.fromisoformat(price.as_of) <= date(2026, 11, 26), price.model
        assert price.provider in ("openai", "anthropic", "google", SIM_PROVIDER), price.model
        if price.provider != SIM_PROVIDER:
            assert price.source.startswith("https://"), price.model
        assert 0 <= price.cached_input_price <= price.input, price.model
        assert price.cache_write_price >= price.input, price.model
        if price.model.startswith("text-embedding-"):  # input only
            assert price.input > 0 and price.output == 0 and price.max_output_tokens is None, price.model
            continue
        assert 0 < price.input <= price.output, price.model
        assert isinstance(price.max_output_tokens, int) and price.max_output_tokens > 0, price.model


def test_every_chat_model_names_its_input_limit(table: PriceTable) -> None:
    """A call reading a conversation kept upstream, or a PDF, is bounded by this limit."""
    for price in table.all():
        if price.provider == SIM_PROVIDER or price.model.startswith("text-embedding-"):
            continue
        assert price.max_input_tokens is not None and price.max_input_tokens >= 128_000, price.model
        assert price.max_input_tokens >= (price.long_context_threshold or 0), price.model
    assert table.lookup("gpt-5") is not None and table.lookup("gpt-5").max_input_tokens == 272_000  # type: ignore[union-attr]


def test_every_chat_model_names_its_worst_case_image(table: PriceTable) -> None:
    """Images are billed by pixels: without its own worst case a model's images reserve the largest of any."""
    for price in table.all():
        if price.model.startswith("text-embedding-"):
            continue
        assert price.image_tokens is not None and 1000 <= price.image_tokens <= 48_169, price.model
        assert (price.image_tokens_low or price.image_tokens) <= price.image_tokens, price.model
    assert table.lookup("gpt-4o-mini").image_tokens == 48_169  # type: ignore[union-attr]
    assert table.lookup("claude-opus-4-7").image_tokens == 4784  # type: ignore[union-attr]
    assert table.lookup("gemini-3-pro-preview").image_tokens == 2240  # type: ignore[union-attr]


def test_anthropic_cache_prices_follow_the_published_multipliers(table: PriceTable) -> None:
    for price in table.all():
        if price.provider == "anthropic":
            assert Decimal(str(price.cache_write_price)) == Decimal(str(price.input)) * Decimal("1.25"), price.model
            # cache reads: 10% of input, 5% for the Sonnet/Opus 5.5 generation
            assert Decimal(str(price.cached_input_price)) in (Decimal(str(price.input)) / 10,
                                                               Decimal(str(price.input)) / 20), price.model
        if price.provider == "openai":  # cache writes cost extra from GPT-6 (and GPT-5.6) on: 1.25x input
            expected = Decimal("1.25") if price.model.startswith("gpt-6") else Decimal(1)
            assert Decimal(str(price.cache_write_price)) == Decimal(str(price.input)) * expected, price.model


def test_simulator_prices_are_separate_and_made_up(table: PriceTable) -> None:
    for model in ("sim-model", "sim-small"):  # sim-model is what `fleetd llm-sim` calls itself
        price = table.lookup(model)
        assert price is not None
        assert price.provider == SIM_PROVIDER
        assert (price.input, price.output, price.cached_input, price.cache_write) == (1.0, 2.0, 0.5, 1.25)
        assert price.max_output_tokens == 4096
        assert "made-up" in price.source


def test_builtin_returns_a_fresh_table_each_time(table: PriceTable) -> None:
    other = PriceTable.builtin()
    assert other is not table
    assert other.all() == table.all()


def test_price_file_is_shipped_in_the_wheel() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "data/*.toml" in pyproject["tool"]["setuptools"]["package-data"]["fleetd"]


# -- lookup ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "expected"), [
    ("gpt-4o", "gpt-4o"),
    ("gpt-4o-mini", "gpt-4o-mini"),
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("gpt-4.1-2025-04-14", "gpt-4.1"),
    ("o3-2025-04-16", "o3"),
    ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
    ("claude-sonnet-4-20250514", "claude-sonnet-4"),
    ("claude-opus-4-1-20250805", "claude-opus-4-1"),
    ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
    ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
    ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
    ("claude-opus-4-0", "claude-opus-4-0"),
])
def test_lookup_exact_snapshot_and_latest(table: PriceTable, model: str, expected: str) -> None:
    price = table.lookup(model)
    assert price is not None
    assert price.model == expected


def test_a_snapshot_with_its_own_price_is_not_charged_as_the_base_model(table: PriceTable) -> None:
    old = table.lookup("gpt-4o-2024-05-13")
    assert old is not None
    assert old.model == "gpt-4o-2024-05-13"
    assert (old.input, old.output) == (5.0, 15.0)


@pytest.mark.parametrize("model", [
    "gpt-4o-evil", "gpt-4o-mini-evil", "GPT-4O", "gpt-4", "openai/gpt-4o", "gpt-4o ", "", "gpt-4o-2024-08",
    "gpt-4o-20240806x", "gpt-4o-latest-2024-08-06", "chatgpt-4o-latest", "gpt-5-chat-latest", "claude-3-5-sonnet",
    "-latest", "gpt-4o--latest",
])
def test_unknown_models_fail_closed(table: PriceTable, model: str) -> None:
    assert table.lookup(model) is None


def test_lookup_on_an_empty_table() -> None:
    assert PriceTable([]).lookup("gpt-4o") is None


# -- cost ------------------------------------------------------------------------------------

def test_cost_plain_openai_call(table: PriceTable) -> None:
    gpt4o = table.lookup("gpt-4o")
    assert gpt4o is not None
    # 1000 in at $2.50/M = $0.0025; 500 out at $10/M = $0.005
    assert cost_nusd(gpt4o, Usage(input_tokens=1000, output_tokens=500)) == 7_500_000


def test_cost_anthropic_cache_write_and_read() -> None:
    sonnet = Price("claude-sonnet-4-5", input=3.00, output=15.00, cached_input=0.30, cache_write=3.75)
    usage = Usage(input_tokens=100, cache_write_tokens=2000, cached_input_tokens=10_000, output_tokens=300)
    # 100*$3 + 2000*$3.75 + 10000*$0.30 + 300*$15, per million tokens
    # = 300_000 + 7_500_000 + 3_000_000 + 4_500_000 nUSD
    assert cost_nusd(sonnet, usage) == 15_300_000


def test_cost_openai_reasoning_call_with_cached_prompt(table: PriceTable) -> None:
    o3 = table.lookup("o3")
    assert o3 is not None
    # 1200-token prompt, 1000 of it cached; 5000 output tokens of which 4500 are reasoning (already in output)
    usage = Usage(input_tokens=200, cached_input_tokens=1000, output_tokens=5000, reasoning_tokens=4500)
    # 200*$2 + 1000*$0.50 + 5000*$8, per million tokens
    assert cost_nusd(o3, usage) == 400_000 + 500_000 + 40_000_000


def test_cost_defaults_cache_prices_to_input() -> None:
    price = Price("m", input=2.0, output=4.0)
    usage = Usage(input_tokens=1, cached_input_tokens=2, cache_write_tokens=3, output_tokens=4)
    assert cost_nusd(price, usage) == 6 * 2000 + 4 * 4000


def test_cost_is_exact_then_rounded_up() -> None:
    # $0.0003 per M tokens = 0.3 nUSD per token; as floats 10 * 0.0003 * 1000 = 3.0000000000000004
    price = Price("tiny", input=0.0003, output=0.0003)
    assert cost_nusd(price, Usage(input_tokens=10)) == 3
    assert cost_nusd(price, Usage(input_tokens=11)) == 4  # 3.3 -> 4
    assert cost_nusd(price, Usage(input_tokens=1)) == 1  # 0.3 -> 1: never charge less than the provider
    assert cost_nusd(price, Usage()) == 0
    # 0.1 + 0.2 style drift does not creep in either
    assert cost_nusd(Price("m", input=0.1, output=0.2), Usage(input_tokens=1, output_tokens=1)) == 300


def test_cost_of_a_big_month_is_still_exact(table: PriceTable) -> None:
    mini = table.lookup("gpt-4o-mini")
    assert mini is not None
    usage = Usage(input_tokens=10**12, cached_input_tokens=3 * 10**11, output_tokens=7 * 10**11)
    assert cost_nusd(mini, usage) == 10**12 * 150 + 3 * 10**11 * 75 + 7 * 10**11 * 600


def test_negative_token_counts_are_refused() -> None:
    price = Price("m", input=1.0, output=1.0)
    with pytest.raises(ValueError, match="input_tokens"):
        cost_nusd(price, Usage(input_tokens=-1))
    with pytest.raises(ValueError, match="output_tokens"):
        bound_nusd(price, 1, -1)


# -- bound -----------------------------------------------------------------------------------

def test_one_hour_cache_writes_cost_twice_the_input_price() -> None:
    sonnet = Price("claude-sonnet-4-5", input=3.00, output=15.00, cached_input=0.30, cache_write=3.75)
    usage = Usage(input_tokens=100, cache_write_tokens=2000, cache_write_1h_tokens=500, output_tokens=300)
    # 100*$3 + 1500*$3.75 (5-minute writes) + 500*$6 (1-hour writes: 2 x $3) + 300*$15, per million tokens
    assert cost_nusd(sonnet, usage) == 300_000 + 5_625_000 + 3_000_000 + 4_500_000
    # a 1-hour count above the writes it is part of (garbage from upstream) is capped at them
    assert cost_nusd(sonnet, replace(usage, cache_write_1h_tokens=10**6)) == 300_000 + 12_000_000 + 4_500_000


def test_priority_calls_cost_twice_the_standard_prices() -> None:
    gpt = Price("gpt-5", input=1.25, output=10.00, cached_input=0.125)
    usage = Usage(input_tokens=1000, cached_input_tokens=1000, output_tokens=100)
    standard = 1000 * 1250 + 1000 * 125 + 100 * 10_000  # nUSD: $p per 1M tokens is p * 1000 nUSD per token
    assert cost_nusd(gpt, usage) == standard
    assert cost_nusd(gpt, usage, priority=True) == 2 * standard
    assert bound_nusd(gpt, 1000, 100, priority=True) == 2 * bound_nusd(gpt, 1000, 100)


# OpenAI's published priority prices (input, cached input, output per 1M tokens),
# https://openai.com/api-priority-processing/
PRIORITY_PRICES = {"gpt-5.5": ("12.50", "1.250", "75.00"), "gpt-5.4": ("5.00", "0.500", "30.00"),
                   "gpt-5.2": ("3.50", "0.350", "28.00"), "gpt-5.1": ("2.50", "0.250", "20.00"),
                   "gpt-5": ("2.50", "0.250", "20.00"), "gpt-5-mini": ("0.45", "0.045", "3.60"),
                   "gpt-4.1": ("3.50", "0.875", "14.00")}


def test_the_table_priority_multipliers_give_openai_published_priority_prices(table: PriceTable) -> None:
    for model, published in PRIORITY_PRICES.items():
        price = table.lookup(model)
        assert price is not None and price.priority_multiplier is not None, model
        multiple = Decimal(str(price.priority_multiplier))
        ours = (Decimal(str(price.input)) * multiple, Decimal(str(price.cached_input_price)) * multiple,
                Decimal(str(price.output)) * multiple)
        assert ours == tuple(Decimal(v) for v in published), model


def test_openai_cache_writes_are_billed_at_the_cache_write_price(table: PriceTable) -> None:
    astra = table.lookup("gpt-6-astra")
    assert astra is not None
    usage = Usage(input_tokens=793, cached_input_tokens=1000, cache_write_tokens=3207, output_tokens=10)
    assert cost_nusd(astra, usage) == 793 * 10_000 + 1000 * 1000 + 3207 * 12_500 + 10 * 50_000


def test_anthropic_fast_mode_and_us_only_inference_multiply_every_price_and_stack() -> None:
    opus = Price("claude-opus-5", input=5.00, output=25.00, cached_input=0.50, cache_write=6.25, fast_multiplier=2.0,
                 us_inference_multiplier=1.1)
    usage = Usage(input_tokens=1000, cached_input_tokens=2000, cache_write_tokens=300, cache_write_1h_tokens=100,
                  output_tokens=400)
    standard = cost_nusd(opus, usage)
    assert standard == 1000 * 5000 + 2000 * 500 + 200 * 6250 + 100 * 10000 + 400 * 25000
    assert cost_nusd(opus, replace(usage, speed="fast")) == 2 * standard
    assert cost_nusd(opus, replace(usage, speed="standard", inference_geo="global")) == standard
    assert cost_nusd(opus, replace(usage, inference_geo="us")) == standard * 11 // 10
    assert cost_nusd(opus, replace(usage, speed="fast", inference_geo="us")) == standard * 22 // 10
    # a model without a US-only multiple (before Claude 4.6) costs the same; fast mode without one: FAST_MULTIPLIER
    older = replace(opus, fast_multiplier=None, us_inference_multiplier=None)
    assert cost_nusd(older, replace(usage, inference_geo="us")) == standard
    assert cost_nusd(older, replace(usage, speed="fast")) == 6 * standard
    assert bound_nusd(opus, 3300, 400, fast=True, us_only=True, one_hour_cache=True) >= cost_nusd(
        opus, replace(usage, speed="fast", inference_geo="us"))
    for name in ("fast_multiplier", "us_inference_multiplier"):
        with pytest.raises(ValueError, match=name):
            Price.from_dict({"model": "m", "input": 1, "output": 1, name: 0.9})


def test_the_table_prices_fast_mode_and_us_only_inference_as_anthropic_publishes_them(table: PriceTable) -> None:
    for model in ("claude-opus-4-8", "claude-opus-5", "claude-opus-5-5"):
        assert table.lookup(model).fast_multiplier == 2.0, model  # type: ignore[union-attr]
    newer = ("claude-opus-4-6", "claude-sonnet-4-6", "claude-opus-4-7", "claude-opus-4-8", "claude-opus-5",
             "claude-opus-5-5", "claude-sonnet-5", "claude-sonnet-5-5", "claude-fable-5")
    for price in table.all():
        if price.provider == "anthropic":
            assert price.us_inference_multiplier == (1.1 if price.model in newer else None), price.model
        else:
            assert price.fast_multiplier is None and price.us_inference_multiplier is None, price.model


def test_a_priority_call_is_billed_at_its_models_multiple_rounded_up_once() -> None:
    gpt = Price("gpt-5.5", input=5.00, output=30.00, cached_input=0.50, priority_multiplier=2.5)
    usage = Usage(input_tokens=3, cached_input_tokens=1, output_tokens=1)
    assert cost_nusd(gpt, usage) == 3 * 5000 + 500 + 30_000
    assert cost_nusd(gpt, usage, priority=True) == (3 * 5000 + 500 + 30_000) * 5 // 2  # 2.5x, exact
    assert cost_nusd(replace(gpt, input=0.000001), Usage(input_tokens=1), priority=True) == 1  # 0.0025 -> 1
    assert bound_nusd(gpt, 10, 10, priority=True) == (10 * 5000 + 10 * 30_000) * 5 // 2
    assert cost_nusd(replace(gpt, priority_multiplier=None), usage, priority=True) == 2 * cost_nusd(gpt, usage)
    with pytest.raises(ValueError, match="priority_multiplier"):
        replace(gpt, priority_multiplier=0.5)


def test_bound_prices_every_input_token_at_the_dearest_input_rate() -> None:
    sonnet = Price("s", input=3.00, output=15.00, cached_input=0.30, cache_write=3.75)
    assert bound_nusd(sonnet, 1000, 100) == 1000 * 3750 + 100 * 15000
    plain = Price("p", input=2.0, output=8.0)
    assert bound_nusd(plain, 10, 10) == 10 * 2000 + 10 * 8000
    assert bound_nusd(plain, 0, 0) == 0


LONG = Price("long", input=3.00, output=15.00, cached_input=0.30, cache_write=3.75, long_context_threshold=200_000,
             long_context_input=6.00, long_context_output=22.50)


def test_a_call_above_the_long_context_threshold_is_billed_all_at_the_long_context_prices() -> None:
    at = Usage(input_tokens=150_000, cached_input_tokens=40_000, cache_write_tokens=10_000, output_tokens=1000)
    # 200,000 input tokens in all: not above the threshold
    assert cost_nusd(LONG, at) == 150_000 * 3000 + 40_000 * 300 + 10_000 * 3750 + 1000 * 15_000
    above = replace(at, input_tokens=150_001, cache_write_1h_tokens=4000)
    # all of it at the long-context prices, cache reads and writes at the same multiple (2x) of input
    assert cost_nusd(LONG, above) == (150_001 * 6000 + 40_000 * 600 + 6000 * 7500 + 4000 * 12_000
                                      + 1000 * 22_500)
    assert cost_nusd(LONG, above, priority=True) == 2 * cost_nusd(LONG, above)
    # the bound follows the input bound: long-context prices only when it is above the threshold
    assert bound_nusd(LONG, 200_000, 10) == 200_000 * 3750 + 10 * 15_000
    assert bound_nusd(LONG, 200_001, 10) == 200_001 * 7500 + 10 * 22_500
    assert bound_nusd(LONG, 200_001, 10, one_hour_cache=True) == 200_001 * 12_000 + 10 * 22_500


@pytest.mark.parametrize("partial", [{"long_context_threshold": 200_000}, {"long_context_input": 6.0},
                                     {"long_context_threshold": 200_000, "long_context_output": 22.5},
                                     {"long_context_threshold": 0, "long_context_input": 6.0,
                                      "long_context_output": 22.5}])
def test_the_long_context_fields_go_together(partial: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="long_context"):
        Price.from_dict({"model": "m", "input": 3.0, "output": 15.0, **partial})


def test_bound_is_at_least_the_cost_of_any_usage_with_the_same_totals(table: PriceTable) -> None:
    rng = random.Random(20261126)
    prices = [*table.all(), Price("tiny", input=0.0003, output=0.0007, cached_input=0.0001, cache_write=0.0005),
              LONG, replace(LONG, model="odd", long_context_input=3.3333333, priority_multiplier=1.7777)]
    for price in prices:
        for _ in range(200):
            total_in = rng.randrange(0, 2_000_000)
            total_out = rng.randrange(0, 200_000)
            cached = rng.randrange(0, total_in + 1)
            written = rng.randrange(0, total_in - cached + 1)
            one_hour = rng.randrange(0, written + 1)
            usage = Usage(input_tokens=total_in - cached - written, cached_input_tokens=cached,
                          cache_write_tokens=written, output_tokens=total_out)
            assert bound_nusd(price, total_in, total_out) >= cost_nusd(price, usage), (price.model, usage)
            usage = replace(usage, cache_write_1h_tokens=one_hour)
            assert bound_nusd(price, total_in, total_out, one_hour_cache=True) >= cost_nusd(price, usage)
            assert (bound_nusd(price, total_in, total_out, priority=True, one_hour_cache=True)
                    >= cost_nusd(price, usage, priority=True)), (price.model, usage)


# -- overrides and round trips ---------------------------------------------------------------

def test_overrides_win_per_model(table: PriceTable) -> None:
    cheap = Price("gpt-4o", input=1.0, output=2.0, source="a contract", provider="openai")
    mine = Price("my-finetune", input=3.0, output=6.0)
    merged = table.with_overrides([cheap, mine])
    assert merged.lookup("gpt-4o") == cheap
    assert merged.lookup("gpt-4o-2024-08-06") == cheap  # snapshots follow the override
    assert merged.lookup("my-finetune") == mine
    assert merged.lookup("gpt-4o-mini") == table.lookup("gpt-4o-mini")
    assert table.lookup("gpt-4o") != cheap  # the original table is untouched
    assert len(merged) == len(table) + 1


def test_later_prices_win_in_the_constructor() -> None:
    first, second = Price("m", input=1.0, output=1.0), Price("m", input=2.0, output=2.0)
    assert PriceTable([first, second]).lookup("m") == second


def test_all_is_sorted_by_model(table: PriceTable) -> None:
    models = [p.model for p in table.all()]
    assert models == sorted(models)


def test_to_list_from_list_round_trip_through_json(table: PriceTable) -> None:
    data = json.loads(json.dumps(table.to_list()))
    again = PriceTable.from_list(data)
    assert again.all() == table.all()
    assert again.to_list() == table.to_list()


def test_price_dict_round_trip() -> None:
    price = Price("m", input=0.25, output=2.0, cached_input=0.025, cache_write=None, max_output_tokens=128_000,
                  source="https://example.com", as_of="2026-11-26", provider="openai", max_input_tokens=400_000)
    assert Price.from_dict(json.loads(json.dumps(price.to_dict()))) == price
    assert price.to_dict()["cache_write"] is None


def test_from_dict_takes_the_model_from_a_config_table_key() -> None:
    price = Price.from_dict({"input": 1, "output": 2}, model="my-model")
    assert (price.model, price.input, price.output) == ("my-model", 1, 2)
    with pytest.raises(ValueError, match="different model"):
        Price.from_dict({"model": "other", "input": 1, "output": 2}, model="my-model")


# -- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["input", "output", "cached_input", "cache_write"])
def test_negative_prices_are_refused_naming_the_model(field: str) -> None:
    good = Price("gpt-x", input=1.0, output=2.0)
    changes: dict[str, Any] = {field: -0.01}
    with pytest.raises(ValueError, match=rf"gpt-x.*{field}"):
        replace(good, **changes)


@pytest.mark.parametrize("missing", ["input", "output"])
def test_missing_input_or_output_is_refused_naming_the_model(missing: str) -> None:
    entry = {"input": 1.0, "output": 2.0}
    del entry[missing]
    with pytest.raises(ValueError, match=rf"'gpt-x' is missing '{missing}'"):
        Price.from_dict(entry, model="gpt-x")
    with pytest.raises(ValueError, match="gpt-x"):
        parse_price_toml(f'[models."gpt-x"]\n{"output" if missing == "input" else "input"} = 1.0\n')


@pytest.mark.parametrize("bad", [{"input": "1.0"}, {"input": True}, {"input": float("nan")}, {"output": float("inf")},
                                 {"max_output_tokens": 0}, {"max_output_tokens": 1.5}, {"model": ""},
                                 {"max_input_tokens": 0}, {"max_input_tokens": "400000"}, {"max_input_tokens": True}])
def test_malformed_prices_are_refused(bad: dict[str, object]) -> None:
    entry: dict[str, object] = {"model": "gpt-x", "input": 1.0, "output": 2.0, **bad}
    with pytest.raises(ValueError):
        Price.from_dict(entry)


def test_unknown_fields_are_refused_so_typos_do_not_pass() -> None:
    with pytest.raises(ValueError, match="ouput"):
        Price.from_dict({"model": "gpt-x", "input": 1.0, "output": 2.0, "ouput": 3.0})


def test_the_builtin_loader_insists_on_source_and_date() -> None:
    text = '[models."gpt-x"]\ninput = 1.0\noutput = 2.0\n'
    assert parse_price_toml(text)[0].model == "gpt-x"
    with pytest.raises(ValueError, match=r"gpt-x.*source"):
        parse_price_toml(text, require_source=True)
    with pytest.raises(ValueError, match="not valid TOML"):
        parse_price_toml("[models.")
    with pytest.raises(ValueError, match="no \\[models"):
        parse_price_toml("x = 1\n")


# -- money -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "expected"), [
    ("0.1", 100_000_000),
    (0.1, 100_000_000),
    (Decimal("0.1"), 100_000_000),
    (5, 5 * NANO),
    ("$5", 5 * NANO),
    (" 12.345 ", 12_345_000_000),
    ("0.0000000005", 1),  # half a nano-dollar rounds up
    ("0.0000000004999", 0),
    ("0.0000000015", 2),
    ("-0.0000000005", -1),
    ("0", 0),
    ("1e3", 1000 * NANO),
    (1e-9, 1),
])
def test_nusd_parses_exactly(given: float | str | Decimal, expected: int) -> None:
    assert nusd(given) == expected


@pytest.mark.parametrize("given", ["abc", "", "nan", "inf", "1,5", True])
def test_nusd_refuses_non_amounts(given: float | str) -> None:
    with pytest.raises(ValueError):
        nusd(given)


def test_usd_is_for_display() -> None:
    assert usd(1_500_000_000) == 1.5
    assert usd(0) == 0.0
    assert usd(nusd("19.99")) == 19.99


def test_price_fields_are_declared_once_and_everything_follows_them() -> None:
    """fleetd.zone2.pricing.FIELDS is the one list: the Price dataclass, `fleetd price set` and the API schema."""
    import dataclasses
    from pathlib import Path

    import yaml

    from cli.money import price_set
    from fleetd.zone2.pricing import FIELDS, PRICE_FIELDS, Price

    assert {f.name for f in dataclasses.fields(Price)} == set(PRICE_FIELDS)
    options = {p.name: p for p in price_set.params}
    for field in FIELDS:
        if field.flag:
            assert field.flag in options[field.name].opts and options[field.name].required == field.required
    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml").read_text())
    assert set(PRICE_FIELDS) <= set(spec["components"]["schemas"]["Price"]["properties"])
