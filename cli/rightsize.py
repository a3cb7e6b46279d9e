"""``fleetd rightsize ROLE|DEPLOYMENT``: what the finished agents used, and the ``--memory`` to give them (issue 16).

The daemon's report (``GET /v1/rightsize``, ``fleetd.rightsize``) as a small table, the recommendation and the flags.
The name is a deployment's when one has it, else a role's: the deployment is asked for first, the role after a 404.
"""

from __future__ import annotations

from typing import Any

import click

from cli.client import ApiError, Client
from cli.common import api_errors, client
from cli.output import print_json, print_table
from fleetd.rightsize import HEADROOM, MIB, OVERSIZED

FLAG_TEXT = {
    "oom": "{oom_killed} OOM-killed: the memory limit was hit",
    "oversized": f"the memory limit is {OVERSIZED} x the p95 peak or more",
}


def mib(size: float | None) -> str:
    if size is None:
        return "-"
    return f"{size / MIB:.1f} MiB" if size < 10 * MIB else f"{size / MIB:.0f} MiB"


def cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def figure_row(what: str, spread: dict[str, Any] | None, limit: str, show: Any) -> list[str]:
    values = [show(spread[key]) if spread else "-" for key in ("p50", "p95", "max")]
    return [what, *values, limit]


def report_of(api: Client, name: str) -> dict[str, Any]:
    """The deployment's report when there is such a deployment, else the role's; neither: a one-line error."""
    for kind in ("deployment", "role"):
        try:
            found: dict[str, Any] = api.call("GET", "/v1/rightsize", query={kind: name})
            return found
        except ApiError as exc:
            if exc.status != 404:
                raise
    raise click.ClickException(f"no deployment or role named {name!r}")


@click.command()
@click.argument("name", metavar="ROLE|DEPLOYMENT")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
@api_errors
def rightsize(ctx: click.Context, name: str, as_json: bool) -> None:
    """Memory and CPU the finished agents of a deployment (or else a role) used, and the --memory to give them.

    \b
    Over the agents that ran and ended, among the records kept: p50, p95 and
    max of their peak memory, of their average CPU over their run and of their
    peak CPU (the highest ~10 s average), beside the limit in force. With at
    least 5 measured agents it recommends --memory = p95 peak x 2, and flags a
    limit that was hit (agents OOM-killed) or that is 4 x the p95 or more.
    NAME is a deployment when one has that name, else a role.

    \b
    Examples: fleetd rightsize web
              fleetd rightsize researcher --json
    """
    report = report_of(client(ctx), name)
    if as_json:
        print_json(report)
        return
    limits = report["limits"]
    cpus = "-" if limits["cpus"] is None else f"{limits['cpus']:g}"
    click.echo(f"{report['kind']} {report['name']}: {report['agents']} finished agents, {report['measured']} "
               "with a measured peak")
    print_table(["", "P50", "P95", "MAX", "LIMIT"], [
        figure_row("peak memory", report["memory_bytes"], mib(limits["memory"]), mib),
        figure_row("cpu (cores, run average)", report["cpu_cores"], cpus, cores),
        figure_row("peak cpu (cores)", report["peak_cpu_cores"], cpus, cores),
    ])
    recommended = report["recommendation"]
    if recommended is None:
        click.echo(f"no recommendation: {report['note']}")
    else:
        memory = recommended["memory"]
        p95 = mib(report["memory_bytes"]["p95"])
        click.echo(f"recommended: --memory {memory // MIB}m ({HEADROOM} x the p95 peak of {p95})")
    flags = [f"{flag} ({FLAG_TEXT[flag].format(**report)})" if flag in FLAG_TEXT else flag for flag in report["flags"]]
    click.echo("flags: " + ("; ".join(flags) or "none"))
