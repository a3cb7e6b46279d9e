"""``fleetd price`` and ``fleetd budget``: what calls cost and what agents have spent."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from cli.common import api_errors, client
from cli.output import print_json, print_table
from fleetd.units import format_usd


def dollars(value: float | None) -> str:
    return format_usd(value)  # one money format (fleetd.units), as zone 2's refusals show it


def per_mtok(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


@click.group()
def price() -> None:
    """Model prices (USD per 1M tokens) that zone 2 meters LLM calls with."""


@price.command("set")
@click.argument("model")
@click.option("--input-per-mtok", type=float, required=True, help="USD per 1M uncached input tokens.")
@click.option("--output-per-mtok", type=float, required=True, help="USD per 1M output tokens (reasoning included).")
@click.option("--cached-input-per-mtok", type=float, help="USD per 1M cached input tokens (default: input).")
@click.option("--cache-write-per-mtok", type=float, help="USD per 1M cache-write tokens (default: input).")
@click.option("--max-output-tokens", type=click.IntRange(min=1),
              help="The model's output limit: bounds the reservation of calls that set no max tokens.")
@click.option("--long-context-above", "long_context_threshold", type=click.IntRange(min=1),
              help="Input tokens above which a call is billed, all of it, at the long-context prices below.")
@click.option("--long-context-input-per-mtok", type=float, help="USD per 1M input tokens in a long-context call.")
@click.option("--long-context-output-per-mtok", type=float, help="USD per 1M output tokens in a long-context call.")
@click.option("--priority-multiplier", type=click.FloatRange(1, 10),
              help="OpenAI: the model's priority-tier prices over these (default 2).")
@click.option("--fast-multiplier", type=click.FloatRange(1, 10),
              help="Anthropic: the model's fast-mode prices over these (default: fast mode refused as unpriced).")
@click.option("--us-inference-multiplier", type=click.FloatRange(1, 10),
              help="Anthropic: the model's US-only inference prices over these (default 1).")
@click.option("--max-input-tokens", type=click.IntRange(min=1),
              help="The model's input limit (its context window): bounds the reservation of a call whose input is "
                   "partly kept upstream (previous_response_id, conversation; default 1050000).")
@click.option("--image-tokens", type=click.IntRange(min=1),
              help="The most input tokens one image costs with the model, as its provider publishes: each image "
                   "in a request is reserved at this (default 48169, the largest any provider publishes).")
@click.option("--image-tokens-low", type=click.IntRange(min=1),
              help="The same at OpenAI's \"detail\": \"low\" (default: --image-tokens).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@api_errors
def price_set(ctx: click.Context, model: str, input_per_mtok: float, output_per_mtok: float,
              cached_input_per_mtok: float | None, cache_write_per_mtok: float | None,
              max_output_tokens: int | None, long_context_threshold: int | None,
              long_context_input_per_mtok: float | None, long_context_output_per_mtok: float | None,
              priority_multiplier: float | None, fast_multiplier: float | None,
              us_inference_multiplier: float | None, max_input_tokens: int | None, image_tokens: int | None,
              image_tokens_low: int | None, as_json: bool) -> None:
    """Set (or override a built-in) price for MODEL.

    Example: fleetd price set gpt-4o --input-per-mtok 2.5 --output-per-mtok 10 --cached-input-per-mtok 1.25
    """
    body = {"input": input_per_mtok, "output": output_per_mtok, "cached_input": cached_input_per_mtok,
            "cache_write": cache_write_per_mtok, "max_output_tokens": max_output_tokens,
            "long_context_threshold": long_context_threshold, "long_context_input": long_context_input_per_mtok,
            "long_context_output": long_context_output_per_mtok, "priority_multiplier": priority_multiplier,
            "max_input_tokens": max_input_tokens, "fast_multiplier": fast_multiplier,
            "us_inference_multiplier": us_inference_multiplier, "image_tokens": image_tokens,
            "image_tokens_low": image_tokens_low}
    record = client(ctx).call("PUT", price_path(model), body)
    if as_json:
        print_json(record)
    else:
        click.echo(f"{record['model']}: ${record['input']:g}/M input, ${record['output']:g}/M output")


@price.command("ls")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@api_errors
def price_ls(ctx: click.Context, as_json: bool) -> None:
    """List the prices in force (built-in, config file, `price set`), USD per 1M tokens.

    Example: fleetd price ls
    """
    records = client(ctx).call("GET", "/v1/prices")
    if as_json:
        print_json(records)
        return
    print_table(["MODEL", "INPUT", "CACHED", "CACHE WRITE", "OUTPUT", "MAX OUT", "MAX IN", "IMAGE", "LONG CONTEXT",
                 "MULTIPLES", "FROM", "AS OF"], [
        [p["model"], per_mtok(p["input"]), per_mtok(p.get("cached_input")), per_mtok(p.get("cache_write")),
         per_mtok(p["output"]), str(p.get("max_output_tokens") or "-"), str(p.get("max_input_tokens") or "-"),
         str(p.get("image_tokens") or "-"), long_context(p), multiples(p), p["origin"], p.get("as_of") or "-"]
        for p in records])


def multiples(price: dict[str, Any]) -> str:
    """"priority 2x, fast 2x, us 1.1x": the modes a call is billed at a multiple of the prices in."""
    named = (("priority", "priority_multiplier"), ("fast", "fast_multiplier"), ("us", "us_inference_multiplier"))
    return ", ".join(f"{mode} {price[key]:g}x" for mode, key in named if price.get(key) is not None) or "-"


def long_context(price: dict[str, Any]) -> str:
    """">200000: 6/22.5": above that many input tokens, a call is billed at these input/output prices."""
    if price.get("long_context_threshold") is None:
        return "-"
    return (f">{price['long_context_threshold']}: {per_mtok(price.get('long_context_input'))}/"
            f"{per_mtok(price.get('long_context_output'))}")


@price.command("rm")
@click.argument("model")
@click.pass_context
@api_errors
def price_rm(ctx: click.Context, model: str) -> None:
    """Remove a price set with `fleetd price set` (a built-in price comes back).

    Example: fleetd price rm my-finetune
    """
    client(ctx).call("DELETE", price_path(model))
    click.echo(model)


def price_path(model: str) -> str:
    """The API path of a model's price: the id is one path segment, a "/" in it percent-encoded."""
    return f"/v1/prices/{quote(model, safe='')}"


def budget_rows(agents: list[dict[str, Any]]) -> list[list[str]]:
    return [[a["id"], a["name"], a["role"], f"{dollars(a['spent_today_usd'])} / {dollars(a['daily_cap_usd'])}",
             f"{dollars(a['spent_month_usd'])} / {dollars(a['monthly_cap_usd'])}", dollars(a["reserved_usd"]),
             f"{a['llm_calls']} / {a['max_llm_calls'] if a['max_llm_calls'] is not None else '-'}"]
            for a in agents]


@click.command()
@click.argument("agent", required=False)
@click.option("-a", "--all", "all_", is_flag=True, help="Exited agents too.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@api_errors
def budget(ctx: click.Context, agent: str | None, all_: bool, as_json: bool) -> None:
    """Spend today and this month against the caps, money reserved in flight, LLM calls used.

    Example: fleetd budget my-agent --json
    """
    if agent:
        record = client(ctx).call("GET", f"/v1/agents/{agent}/budget")
        if as_json:
            print_json(record)
            return
        rows = budget_rows([record])
        print_table(["AGENT", "NAME", "ROLE", "TODAY / CAP", "MONTH / CAP", "RESERVED", "CALLS / MAX"], rows)
        for upstream, breaker in (record.get("breakers") or {}).items():
            if breaker["state"] != "closed":
                click.echo(f"circuit to {upstream}: {breaker['state']}"
                           + (f", half-open in {breaker['reopen_in']:g} s" if breaker.get("reopen_in") else ""))
        return
    report = client(ctx).call("GET", "/v1/budget" + ("?all=1" if all_ else ""))
    if as_json:
        print_json(report)
        return
    print_table(["AGENT", "NAME", "ROLE", "TODAY / CAP", "MONTH / CAP", "RESERVED", "CALLS / MAX"],
                budget_rows(report["agents"]))
    inst = report["instance"]
    click.echo(f"instance: today {dollars(inst['spent_today_usd'])} / {dollars(inst['daily_cap_usd'])}, "
               f"month {dollars(inst['spent_month_usd'])} / {dollars(inst['monthly_cap_usd'])}, "
               f"reserved {dollars(inst['reserved_usd'])}, {inst['llm_calls']} LLM calls")
