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


def price_options(command: Any) -> Any:
    """``fleetd price set``'s options, one per price field that has a flag (fleetd.zone2.pricing.FIELDS)."""
    from fleetd.zone2.pricing import FIELDS

    types = {"usd": float, "tokens": click.IntRange(min=1), "multiple": click.FloatRange(1, 10)}
    for field in reversed([f for f in FIELDS if f.flag]):
        command = click.option(str(field.flag), field.name, type=types[field.kind], required=field.required,
                               help=field.help)(command)
    return command


@price.command("set")
@click.argument("model")
@price_options
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@api_errors
def price_set(ctx: click.Context, /, model: str, as_json: bool, **fields: Any) -> None:
    """Set (or override a built-in) price for MODEL.

    Example: fleetd price set gpt-4o --input-per-mtok 2.5 --output-per-mtok 10 --cached-input-per-mtok 1.25
    """
    record = client(ctx).call("PUT", price_path(model), fields)
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
