"""``fleetd egress``: what agents reached through zone 2's forward proxy, and the presets a role's list may name."""

from __future__ import annotations

import click

from cli.common import api_errors, client
from cli.output import ago, print_json, print_table

UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def size(count: int) -> str:
    """Bytes as ``ls -lh`` shows them (binary units, one decimal below 10)."""
    value = float(count)
    for unit in UNITS:
        if value < 1024 or unit == UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" or value >= 10 else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@click.group()
def egress() -> None:
    """Hosts agents reach through zone 2 (a role's --egress list)."""


@egress.command("log")
@click.option("--agent", help="Only this agent's connections (ID or name).")
@click.option("--denied", is_flag=True, help="Only the connections zone 2 refused.")
@click.option("-n", "--tail", "limit", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="The newest N connections.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@api_errors
def egress_log(ctx: click.Context, agent: str | None, denied: bool, limit: int, as_json: bool) -> None:
    """Connections agents asked zone 2's forward proxy for: allowed ones with their bytes, denied ones with why.

    The log keeps the newest 100,000 connections of the last 30 days.

    Example: fleetd egress log --agent researcher-1 --denied
    """
    query = {"limit": limit, **({"agent": agent} if agent else {}), **({"denied": "1"} if denied else {})}
    rows = client(ctx).call("GET", "/v1/egress/log", query=query)
    if as_json:
        return print_json(rows)
    print_table(["WHEN", "AGENT", "METHOD", "HOST", "PORT", "DECISION", "OUT", "IN", "SECONDS", "WHY"], [
        [ago(r["at"]), r["agent_id"] or "-", r["method"], r["host"], str(r["port"]), r["decision"],
         size(r["bytes_out"]), size(r["bytes_in"]), f"{r['duration_s']:.1f}", r["reason"] or "-"] for r in rows])
    return None


@egress.command("presets")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@api_errors
def egress_presets(ctx: click.Context, as_json: bool) -> None:
    """The presets a role's --egress may name (@pypi, @github...), with the hosts each stands for.

    Example: fleetd role set builder --egress @pypi,docs.python.org
    """
    found = client(ctx).call("GET", "/v1/egress/presets")
    if as_json:
        return print_json(found)
    print_table(["PRESET", "HOSTS"], [[f"@{name}", ",".join(hosts)] for name, hosts in found.items()])
    return None
