"""``fleetd``: the daemon and its command-line client (click).

Each command makes one API call and prints the result; errors become a one-line
message and exit status 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from cli.client import Client
from cli.common import DURATION, api_errors, client, for_each, spawn_options
from cli.egress import egress
from cli.fleet import deploy, task
from cli.money import budget, price
from cli.output import ago, duration, heartbeat_text, print_json, print_table, ready_text, state_text
from cli.rightsize import rightsize
from cli.spawn_options import EnvError, spawn_request
from cli.template import Render, TemplateError, compile_template, tabulate
from cli.top import top
from fleetd.zone2.kinds import KINDS

VERSION = "0.1.0"




@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", envvar="FLEETD_SOCKET", help="The daemon's socket [env FLEETD_SOCKET].")
@click.version_option(VERSION, prog_name="fleetd")
def main(socket: str | None) -> None:
    """fleetd: supervise fleets of AI-agent containers with hard limits and deadlines."""


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), help="TOML config file.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), help="Where state.db lives.")
@click.option("--socket", "daemon_socket", type=click.Path(path_type=Path), help="Socket to listen on.")
@click.option("--instance", help="Instance name: labels every Docker object (default: default).")
@click.option("--drain-on-exit", is_flag=True, default=None, help="Stop every agent when the daemon stops.")
@click.option("--metrics", metavar="HOST:PORT", help="Serve Prometheus metrics there, e.g. 127.0.0.1:9464.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="debug adds a line per API request.")
@click.pass_context
def daemon(ctx: click.Context, config_file: Path | None, state_dir: Path | None, daemon_socket: Path | None,
           instance: str | None, drain_on_exit: bool | None, metrics: str | None, log_level: str) -> None:
    """Run the daemon in the foreground (systemd runs this).

    Example: fleetd daemon --instance staging --state-dir /var/lib/fleetd-staging
    """
    from fleetd.config import load_config
    from fleetd.daemon import run
    from fleetd.errors import FleetdError

    socket_path = daemon_socket or ctx.find_root().params.get("socket")
    try:
        config = load_config(
            config_file, state_dir=state_dir, socket=Path(socket_path) if socket_path else None,
            instance=instance, drain_on_exit=drain_on_exit, metrics=metrics,
        )
    except FleetdError as exc:
        raise click.ClickException(exc.message) from None
    sys.exit(run(config, log_level))


@main.command(hidden=True)
@click.option("--control-dir", type=click.Path(file_okay=False, path_type=Path), default="/control")
@click.option("--port", type=int, default=8080)
def zone2(control_dir: Path, port: int) -> None:
    """Run the zone 2 gateway (inside the fleetd/zone2 container; the daemon starts it)."""
    from fleetd.zone2.service import run

    sys.exit(run(control_dir, port=port))


@main.command("llm-sim")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--latency-ms", type=click.IntRange(min=0), default=0, help="Delay before each answer.")
@click.option("--chunk-delay-ms", type=click.IntRange(min=0), default=10, help="Delay between streamed chunks.")
@click.option("--output-tokens", type=click.IntRange(min=1), default=16, help="Tokens per answer (max_tokens caps).")
@click.option("--rate-limit", type=click.IntRange(min=0), default=0, help="Answer the next N calls with 429.")
@click.option("--retry-after", type=click.IntRange(min=0), default=1, help="Retry-After on those 429s.")
@click.option("--fail", type=click.IntRange(min=0), default=0, help="Answer the next N calls with --fail-status.")
@click.option("--fail-status", type=click.IntRange(400, 599), default=500, show_default=True)
@click.option("--cached-tokens", type=click.IntRange(min=0), default=0, help="Report this much input as cached.")
@click.option("--cache-write-tokens", type=click.IntRange(min=0), default=0, help="Anthropic cache writes to report.")
@click.option("--cache-write-1h-tokens", type=click.IntRange(min=0), default=0,
              help="Of those, report this many as 1-hour cache writes.")
@click.option("--service-tier", help="OpenAI: the service_tier answers name (default: the one asked for).")
@click.option("--reasoning-tokens", type=click.IntRange(min=0), default=0, help="Report this much output as reasoning.")
@click.option("--break-streams", type=click.IntRange(min=0), default=0, help="Cut the next N streams off halfway.")
@click.option("--image-tokens", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Input tokens each image in a request counts for.")
@click.option("--image-tokens-low", type=click.IntRange(min=0), default=100, show_default=True,
              help="The same for an OpenAI image at detail low.")
@click.option("--served-model", help="Answers name this model whatever was asked (as an Azure deployment does).")
def llm_sim(host: str, port: int, **knobs: Any) -> None:
    """Run a local OpenAI/Anthropic/Gemini-compatible LLM simulator (for demos and tests).

    Example: fleetd llm-sim --port 8000 --rate-limit 5
    """
    from fleetd.llmsim import SimConfig, run

    run(host, port, SimConfig(**knobs))


@main.command(hidden=True)
@click.argument("url")
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Requests in flight (one keep-alive connection each).",
)
@click.option("--duration", "-d", type=click.FloatRange(min=0, min_open=True), help="Seconds to measure.")
@click.option("--requests", "-n", "requests_", type=click.IntRange(min=1), help="Or: measured requests in all.")
@click.option(
    "--warmup", type=click.FloatRange(min=0), default=0, show_default=True, help="Seconds of unmeasured load first."
)
@click.option("--method", "-X", help="HTTP method (default: POST with --body, GET without).")
@click.option("--header", "-H", "headers", multiple=True, help="K:V, repeatable.")
@click.option("--body", help="Request body, a JSON string (Content-Type defaults to application/json).")
@click.option("--stream", is_flag=True, help="Also measure the time to the first byte of the body.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Open loop: requests per second in all.")
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=30, show_default=True, help="Seconds per request."
)
def loadgen(
    url: str,
    concurrency: int,
    duration: float | None,
    requests_: int | None,
    warmup: float,
    method: str | None,
    headers: tuple[str, ...],
    body: str | None,
    stream: bool,
    rate: float | None,
    timeout: float,
) -> None:
    """Send HTTP load to URL and print one JSON line of figures (for benchmarks).

    Example: fleetd loadgen http://zone2:8080/v1/models -H 'Authorization: Bearer $CRED{openai}' -c 100 -d 10
    """
    from fleetd.loadgen import LoadSpec, parse_header, run

    if (duration is None) == (requests_ is None):
        raise click.UsageError("give exactly one of --duration and --requests")
    try:
        header_map = dict(parse_header(h) for h in headers)
        if body is not None:
            json.loads(body)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if body is not None and not any(k.lower() == "content-type" for k in header_map):
        header_map["Content-Type"] = "application/json"
    run(
        LoadSpec(
            url=url,
            concurrency=concurrency,
            duration=duration,
            requests=requests_,
            method=method,
            headers=header_map,
            body=body.encode() if body is not None else None,
            stream=stream,
            rate=rate,
            warmup=warmup,
            timeout=timeout,
        )
    )


@main.group()
def images() -> None:
    """Build fleetd's images."""


@images.command("build")
@click.option("--base", help="Base image (default python:3.11-slim-bookworm; built from apt when absent).")
def images_build(base: str | None) -> None:
    """Build fleetd/zone2 and fleetd/agent-python.

    Example: fleetd images build
    """
    from fleetd.errors import FleetdError
    from fleetd.images import build_images

    try:
        for line in build_images(base):
            click.echo(line)
    except FleetdError as exc:
        raise click.ClickException(exc.message) from None


@main.command(context_settings={"allow_interspersed_args": False})
@spawn_options
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
@api_errors
def spawn(ctx: click.Context, /, image: str, command: tuple[str, ...], **options: Any) -> None:
    """Start an agent container with limits and a deadline, like docker run -d.

    Example: fleetd spawn --ttl 1h --memory 512m --cpus 0.25 fleetd/agent-python python3 agent.py
    """
    try:
        request = spawn_request(image, list(command), options)
    except EnvError as exc:
        raise click.ClickException(str(exc)) from None
    agent = client(ctx).call("POST", "/v1/agents", request)
    if options["as_json"]:
        print_json(agent)
    else:
        click.echo(agent["id"])


PS_COLUMNS = ["ID", "NAME", "IMAGE", "ROLE", "STATE", "READY", "TTL", "HEARTBEAT", "RESTARTS", "CREATED"]


def ps_row(agent: dict[str, Any]) -> dict[str, str]:
    """The columns ``ps`` shows, by the names ``--format`` uses (``{{.ID}}``, ``{{.TTL}}``...)."""
    a = agent
    values = [a["id"], a["name"], a["image"], a["role"], state_text(a), ready_text(a), duration(a["ttl_remaining"]),
              heartbeat_text(a), str(a.get("restarts") or 0), ago(a["created_at"])]
    names = [column.title() if len(column) > 3 else column for column in PS_COLUMNS]
    return dict(zip(names, values, strict=True)) | {
        "Labels": ",".join(f"{k}={v}" for k, v in (a.get("labels") or {}).items())}


def renderer(template: str) -> Render:
    try:
        return compile_template(template)
    except TemplateError as exc:
        raise click.ClickException(str(exc)) from None


def render(show: Render, record: dict[str, Any]) -> str:
    try:
        return show(record)
    except TemplateError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("-a", "--all", "all_", is_flag=True, help="Show exited and removed agents too.")
@click.option("-q", "--quiet", is_flag=True, help="Only ids.")
@click.option("--json", "as_json", is_flag=True)
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Only matching agents (repeatable): state=S, role=R, name=N, id=PREFIX, label=K, label=K=V.")
@click.option("--format", "template", metavar="TEMPLATE",
              help="table, json, or a Go-like template per agent: '{{.ID}} {{.Name}} {{.State}}' (the columns), "
                   "'{{.limits.ttl}}' (the record's fields); 'table TEMPLATE' adds a header.")
@click.pass_context
@api_errors
def ps(ctx: click.Context, all_: bool, quiet: bool, as_json: bool, filters: tuple[str, ...],
       template: str | None) -> None:
    """List agents (live ones unless -a), like docker ps.

    \b
    Examples: fleetd ps -a
              fleetd ps --filter state=exited --filter label=team=a
              fleetd ps --format 'table {{.ID}}\t{{.Name}}\t{{.State}}'
    """
    show, header = None, False
    if template not in (None, "table", "json"):
        assert template is not None
        header = template.startswith("table ")
        show = renderer(template[len("table "):] if header else template)
    agents = client(ctx).call("GET", "/v1/agents", query={"all": all_, "filter": list(filters) or None})
    if as_json:
        return print_json(agents)
    if quiet:
        for agent in agents:
            click.echo(agent["id"])
        return None
    if template == "json":  # one object a line, as docker ps --format json
        for agent in agents:
            click.echo(json.dumps(agent))
        return None
    if show is not None:
        lines = ([show(None)] if header else []) + [render(show, {**agent, **ps_row(agent)}) for agent in agents]
        for line in tabulate(lines) if header else lines:
            click.echo(line)
        return None
    rows = [list(ps_row(a).values())[:len(PS_COLUMNS)] for a in agents]
    print_table(PS_COLUMNS, rows)
    draining_note(ctx)
    return None


def check_time(value: str | None, option: str) -> str | None:
    """A --since/--until value, checked here so that the error names the option (the daemon reads it again)."""
    from fleetd.errors import InvalidRequest
    from fleetd.times import parse_time

    if value is not None:
        try:
            parse_time(value, option)
        except InvalidRequest as exc:
            raise click.ClickException(exc.message) from None
    return value


def draining_note(ctx: click.Context) -> None:
    """Say so (on stderr) when the fleet is draining, as kubectl marks a node SchedulingDisabled."""
    if client(ctx).call("GET", "/v1/status").get("draining"):
        click.echo("fleetd is DRAINING: new spawns are refused until `fleetd undrain`", err=True)


@main.command()
@click.argument("agent")
@click.option("--format", "template", metavar="TEMPLATE",
              help="Print only this, as docker inspect --format: '{{.state}}', '{{.limits.ttl}}', "
                   "'{{json .labels}}'.")
@click.pass_context
@api_errors
def inspect(ctx: click.Context, agent: str, template: str | None) -> None:
    """Show an agent's full record as JSON (spec, limits, transitions).

    \b
    Examples: fleetd inspect 3f9c2a
              fleetd inspect --format '{{.state}} {{.exit_code}}' 3f9c2a
    """
    show = renderer(template) if template is not None else None
    record = client(ctx).call("GET", f"/v1/agents/{agent}")
    if show is None:
        print_json(record)
    else:
        click.echo(render(show, record))


@main.command()
@click.argument("agent")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new output.")
@click.option("-n", "--tail", type=click.IntRange(min=0), help="Only the last N lines.")
@click.option("--since", metavar="TIME",
              help="Only output from this time on: 10m, 1h30m (that long ago), 2026-12-04T10:00:00Z or Unix seconds.")
@click.option("-t", "--timestamps", is_flag=True, help="Begin each line with its time (RFC 3339, nanoseconds).")
@click.pass_context
@api_errors
def logs(ctx: click.Context, agent: str, follow: bool, tail: int | None, since: str | None,
         timestamps: bool) -> None:
    """Print an agent's output (still there after it exits, for the retention period).

    \b
    Examples: fleetd logs -f 3f9c2a
              fleetd logs --since 10m -t 3f9c2a
    """
    out = sys.stdout.buffer
    query = {"follow": follow, "tail": tail, "since": check_time(since, "--since"), "timestamps": timestamps}
    try:
        for chunk in client(ctx).stream(f"/v1/agents/{agent}/logs", query):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        pass


@main.command()
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--since", metavar="TIME",
              help="Only events from this time on (with -f: following starts there): 10m, 1h30m (that long ago), "
                   "2026-12-04T10:00:00Z or Unix seconds, as docker events --since.")
@click.option("--until", metavar="TIME", help="Only events up to this time (with -f: stop following then).")
@click.option("--after", type=click.IntRange(min=0), metavar="ID", help="Only events after this event id.")
@click.option("--agent", help="Only this agent's events.")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@click.pass_context
@api_errors
def events(ctx: click.Context, follow: bool, as_json: bool, since: str | None, until: str | None,
           after: int | None, agent: str | None, limit: int) -> None:
    """Show what happened: spawns, state changes, signals, OOM kills, orphans.

    \b
    Examples: fleetd events -f --json
              fleetd events --since 10m --until 5m
    """
    def show(event: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(event))
        else:
            who = event["agent_id"] or "-"
            click.echo(f"{event['time']}  {event['type']:<20} {who:<12}  {event['message']}")

    query = {"follow": follow, "since": after, "from": check_time(since, "--since"),
             "until": check_time(until, "--until"), "agent": agent, "limit": limit}
    if since is not None and until is not None:
        from fleetd.times import parse_time

        if parse_time(until) < parse_time(since):
            raise click.ClickException(f"--until {until} is before --since {since}")
    if not follow:
        for event in client(ctx).call("GET", "/v1/events", query=query):
            show(event)
        return
    buffer = b""
    try:
        for chunk in client(ctx).stream("/v1/events", query):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    show(json.loads(line))
                    sys.stdout.flush()
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("agents", nargs=-1, required=True)
@click.option("--grace", "-t", type=DURATION,
              help="Time between SIGTERM and SIGKILL: seconds or e.g. 30s, 2m (default: the agent's).")
@click.pass_context
@api_errors
def stop(ctx: click.Context, agents: tuple[str, ...], grace: float | None) -> None:
    """Stop agents: SIGTERM, wait the grace period, SIGKILL.

    Example: fleetd stop --grace 10s 3f9c2a
    """
    for agent in agents:
        body = {} if grace is None else {"grace": grace}
        record = client(ctx).call("POST", f"/v1/agents/{agent}/stop", body)
        click.echo(record["id"])


@main.command()
@click.argument("agents", nargs=-1, required=True)
@click.option("--signal", "-s", default="SIGKILL", show_default=True)
@click.pass_context
@api_errors
def kill(ctx: click.Context, agents: tuple[str, ...], signal: str) -> None:
    """Kill agents now (SIGKILL), or send another signal.

    Example: fleetd kill 3f9c2a
    """
    for agent in agents:
        record = client(ctx).call("POST", f"/v1/agents/{agent}/kill", {"signal": signal})
        click.echo(record["id"])


@main.command()
@click.argument("agents", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Kill a live agent first (SIGKILL), like docker rm -f.")
@click.pass_context
def rm(ctx: click.Context, agents: tuple[str, ...], force: bool) -> None:
    """Remove ended agents' containers (and their logs); the records stay, state removed.

    A removed agent's name is free again. A live agent is refused unless -f.

    Example: fleetd rm 3f9c2a
    """
    api = client(ctx)
    for_each(agents, lambda agent: api.call("DELETE", f"/v1/agents/{agent}", query={"force": force}),
             lambda record: click.echo(record["id"]))


@main.command()
@click.argument("agents", nargs=-1, required=True)
@click.pass_context
def wait(ctx: click.Context, agents: tuple[str, ...]) -> None:
    """Block until agents have ended (exited, failed or removed); print each exit code, like docker wait.

    An agent with no exit code (it never started, or its container was lost) prints -1. An
    unknown agent prints an error and the command exits 1 after the others.

    Example: fleetd wait 3f9c2a
    """
    api = Client(client(ctx).socket_path, timeout=None)
    try:
        for_each(agents, lambda agent: api.call("POST", f"/v1/agents/{agent}/wait"),
                 lambda record: click.echo(-1 if record["exit_code"] is None else record["exit_code"]))
    except KeyboardInterrupt:
        sys.exit(130)


@main.command()
@click.argument("agent")
@click.option("--ttl", type=DURATION, required=True,
              help="New deadline: this long from now (seconds, or e.g. 90m, 1h30m, 2d).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@api_errors
def extend(ctx: click.Context, agent: str, ttl: float, as_json: bool) -> None:
    """Move an agent's deadline to now + TTL.

    Example: fleetd extend 3f9c2a --ttl 90m
    """
    record = client(ctx).call("POST", f"/v1/agents/{agent}/extend", {"ttl": ttl})
    if as_json:
        print_json(record)
    else:
        click.echo(f"{record['id']} deadline {record['deadline']}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@api_errors
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the daemon's health: Docker, agents by state, timers.

    Example: fleetd status
    """
    info = client(ctx).call("GET", "/v1/status")
    if as_json:
        return print_json(info)
    docker = info["docker"]
    counts = ", ".join(f"{n} {s}" for s, n in info["agents"].items() if n) or "none"
    click.echo(f"fleetd {info['version']}  instance {info['instance']}  pid {info['pid']}  "
               f"up {duration(info['uptime_seconds'])}")
    click.echo(f"socket     {info['socket']}")
    click.echo(f"state dir  {info['state_dir']}")
    click.echo(f"docker     {'connected' if docker['connected'] else 'DISCONNECTED'} "
               f"(engine {docker['version']}, {docker['cpus']} CPUs)")
    click.echo(f"agents     {counts}")
    if info.get("draining"):
        click.echo("draining   YES: new spawns are refused until `fleetd undrain`")
    zone2 = info.get("zone2")
    if zone2:
        health = ("healthy" if zone2.get("serving_agents", True) else "STARVED (agents get no answer)") \
            if zone2["healthy"] else "DOWN"
        click.echo(f"zone 2     {health} at {zone2['address'] or '-'} ({zone2['agents_registered'] or 0} agents "
                   f"registered, {zone2['credentials'] or 0} credentials, {zone2['restarts']} restarts)")
        if zone2.get("ledger_error"):
            click.echo(f"           ledger FAILING ({zone2['ledger_error']}): metered calls are refused")
        if zone2.get("code_matches") is False:
            click.echo("           image STALE: zone 2 runs other fleetd code than the daemon "
                       "(run `fleetd images build`, then restart the daemon)")
    return None


@main.command()
@click.option("--timeout", type=DURATION, default="1h", show_default=True,
              help="Time agents get to finish on their own before SIGTERM, grace, SIGKILL (seconds, or e.g. 10m).")
@click.pass_context
@api_errors
def drain(ctx: click.Context, timeout: float) -> None:
    """Stop accepting spawns, wait for agents to finish, then stop the rest (like kubectl drain).

    Example: fleetd drain --timeout 10m
    """
    result = Client(client(ctx).socket_path, timeout=None).call("POST", "/v1/drain", {"timeout": timeout})
    click.echo(f"drained: {result['finished']} agents finished, {result['stopped']} stopped; "
               "new spawns are refused until `fleetd undrain`")


@main.command()
@click.pass_context
@api_errors
def undrain(ctx: click.Context) -> None:
    """Accept spawns again after a drain.

    Example: fleetd undrain
    """
    client(ctx).call("POST", "/v1/undrain")
    click.echo("accepting new agents")


def interactive() -> bool:
    """Whether a person may be asked: standard input is a terminal."""
    return sys.stdin.isatty()


@main.command()
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation on a terminal.")
@click.pass_context
@api_errors
def teardown(ctx: click.Context, force: bool) -> None:
    """Remove every Docker object of this instance (containers, networks, volumes); every agent ends removed.

    On a terminal it asks first, unless -f. Exits 1 when something could not be removed (listed on stderr).

    Example: fleetd teardown -f
    """
    if not force and interactive():
        click.confirm("Remove every agent, container, network and volume of this fleetd instance?", abort=True)
    result = Client(client(ctx).socket_path, timeout=None).call("POST", "/v1/teardown")
    click.echo(", ".join(f"{n} {kind} removed" for kind, n in result["removed"].items()))
    failed = result.get("failed") or []
    for item in failed:
        click.echo(f"Error: could not remove {item['kind']} {item['name']}: {item['error']}", err=True)
    if failed:
        sys.exit(1)


@main.group()
def cred() -> None:
    """Credentials in the vault (secrets never enter an agent)."""


@cred.command("set")
@click.argument("name")
@click.option("--upstream", required=True, help="The only URL this secret is ever sent to.")
@click.option("--provider", type=click.Choice(KINDS),
              help="What the upstream is. Default: inferred from its host when it is a known LLM provider "
                   "(api.openai.com, api.anthropic.com, Azure OpenAI, Gemini, Bedrock, OpenAI-compatible "
                   "vendors), else generic; a rotation keeps the kind it had.")
@click.pass_context
@api_errors
def cred_set(ctx: click.Context, name: str, upstream: str, provider: str | None) -> None:
    """Store (or rotate) a secret, read from standard input, never from an argument.

    \b
    Calls with a credential of an LLM provider (openai, anthropic, azure-openai,
    gemini, bedrock) are default-deny: a POST or PUT to an endpoint zone 2 cannot
    meter (images, audio, batches, an endpoint it does not know) is refused with
    400 endpoint_not_metered unless the agent's role has --allow-unpriced; GET,
    HEAD, DELETE and free calls (token counting, file uploads) go through. A
    generic credential (a search API, a tool) is relayed as is; calls it makes
    to LLM endpoints zone 2 knows are metered all the same.

    Example: printf %s "$OPENAI_API_KEY" | fleetd cred set openai --upstream https://api.openai.com
    """
    if sys.stdin.isatty():
        secret = click.prompt(f"secret for {name}", hide_input=True, err=True)
    else:
        secret = sys.stdin.read().strip("\r\n")
    if not secret:
        raise click.ClickException("no secret on standard input")
    body = {"upstream": upstream, "secret": secret, **({"provider": provider} if provider else {})}
    record = client(ctx).call("PUT", f"/v1/creds/{name}", body)
    click.echo(f"{record['name']} -> {record['upstream']} ({record['provider']})")


@cred.command("ls")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@api_errors
def cred_ls(ctx: click.Context, as_json: bool) -> None:
    """List credentials: names, upstreams and dates, never values.

    Example: fleetd cred ls
    """
    records = client(ctx).call("GET", "/v1/creds")
    if as_json:
        return print_json(records)
    print_table(["NAME", "UPSTREAM", "PROVIDER", "CREATED", "UPDATED"],
                [[r["name"], r["upstream"], r["provider"], ago(r["created_at"]), ago(r["updated_at"])]
                 for r in records])
    return None


@cred.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
@api_errors
def cred_rm(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Remove credentials.

    Example: fleetd cred rm openai
    """
    for name in names:
        client(ctx).call("DELETE", f"/v1/creds/{name}")
        click.echo(name)


@main.group()
def role() -> None:
    """Roles: which credentials their agents may use, and their budget caps."""


INHERIT = "inherit"  # the API's word for "unset this cap of the role"


def max_calls(value: str | None) -> int | str | None:
    """--max-llm-calls of role set: a whole number >= 0, or 'inherit'."""
    if value is None or value == INHERIT:
        return value
    if not value.isdigit():
        raise click.BadParameter(f"expected a whole number >= 0 or '{INHERIT}', got {value!r}",
                                 param_hint="--max-llm-calls")
    return int(value)


@role.command("set")
@click.argument("name")
@click.option("--creds", help="Comma-separated credential names this role may use.")
@click.option("--daily-usd", help="Per-agent cap per UTC day, in US dollars (default 50; 'inherit': from the config).")
@click.option("--monthly-usd", help="Per-agent cap per calendar month, in US dollars (default 200; 'inherit').")
@click.option("--max-llm-calls", help="Per-agent maximum number of LLM calls ('inherit': from the config).")
@click.option("--allow-unpriced", "allow_unpriced", flag_value="true", type=str, default=None,
              help="Let calls to models with no price, and to endpoints zone 2 cannot meter (images, audio, "
                   "batches...), through unmetered, and calls offering server-side tools (web search...) through "
                   "metered for their tokens only (default: refused).")
@click.option("--no-allow-unpriced", "allow_unpriced", flag_value="false", type=str,
              help="Refuse them (400 model_not_priced, endpoint_not_metered, tool_not_metered, "
                   "fallbacks_not_metered).")
@click.option("--inherit-allow-unpriced", "allow_unpriced", flag_value=INHERIT, type=str,
              help="Unset: take allow_unpriced from the config again.")
@click.option("--egress", help="Hosts its agents may reach through zone 2: host, *.domain, either with :port, "
                               "@preset (fleetd egress presets), comma-separated; 'none' (the default): nothing; "
                               "'inherit': from the config.")
@click.option("--egress-max-bytes", help="Per-agent egress bytes per UTC day, in and out (default 1g; 'inherit').")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@api_errors
def role_set(ctx: click.Context, name: str, creds: str | None, daily_usd: str | None, monthly_usd: str | None,
             max_llm_calls: str | None, allow_unpriced: str | None, egress: str | None, egress_max_bytes: str | None,
             as_json: bool) -> None:
    """Create or change a role: its credentials, its agents' budget caps and the hosts they may reach.

    A setting given as 'inherit' is unset: the role's agents take it from the config file's [roles.NAME] or
    [budget] again. Settings not named are kept.

    Example: fleetd role set researcher --creds openai,anthropic --daily-usd 5 --egress @pypi,docs.python.org
    """
    values = {"daily_usd": daily_usd, "monthly_usd": monthly_usd,
              "max_llm_calls": max_calls(max_llm_calls),
              "allow_unpriced": {"true": True, "false": False}.get(allow_unpriced or "", allow_unpriced),
              "egress": egress, "egress_max_bytes": egress_max_bytes}
    body: dict[str, Any] = {k: v for k, v in values.items() if v is not None}
    if creds is not None:
        body["creds"] = [c.strip() for c in creds.split(",") if c.strip()]
    record = client(ctx).call("PUT", f"/v1/roles/{name}", body)
    if as_json:
        print_json(record)
    else:
        egress = record.get("egress")
        click.echo(f"{record['name']}: creds {','.join(record['creds']) or '-'}" + "".join(
            f", {key} {record[key]}" for key in ("daily_usd", "monthly_usd", "max_llm_calls", "allow_unpriced",
                                                  "egress_max_bytes")
            if record.get(key) is not None) + ("" if egress is None else f", egress {','.join(egress) or 'none'}"))


@role.command("ls")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@api_errors
def role_ls(ctx: click.Context, as_json: bool) -> None:
    """List roles.

    Example: fleetd role ls
    """
    records = client(ctx).call("GET", "/v1/roles")
    if as_json:
        return print_json(records)
    def given(value: Any) -> str:
        return "-" if value is None else str(value)

    def egress(value: list[str] | None) -> str:
        return "-" if value is None else ",".join(value) or "none"

    print_table(["NAME", "CREDS", "DAILY USD", "MONTHLY USD", "MAX LLM CALLS", "EGRESS", "UPDATED"], [
        [r["name"], ",".join(r["creds"]) or "-", given(r.get("daily_usd")), given(r.get("monthly_usd")),
         given(r.get("max_llm_calls")), egress(r.get("egress")), ago(r["updated_at"])] for r in records])
    return None


main.add_command(price)
main.add_command(budget)
main.add_command(top)
main.add_command(deploy)
main.add_command(task)
main.add_command(rightsize)
main.add_command(egress)
