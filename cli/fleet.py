"""``fleetd deploy`` and ``fleetd task``: pools of identical worker agents and the tasks they take (issue 16).

``fleetd deploy`` is both a verb and a group: ``fleetd deploy NAME [OPTIONS] IMAGE [COMMAND]...`` creates or
updates a deployment, ``fleetd deploy ls|inspect|scale|promote|rollback|rm`` are its subcommands (the daemon
refuses those six as deployment names). ``DeployGroup`` sends any first word that is not a subcommand to the apply
command, with that word as the deployment's name.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import click

from cli.client import ApiError, Client
from cli.common import DURATION, api_errors, client, for_each, spawn_options_except
from cli.output import age, print_json, print_table
from cli.spawn_options import EnvError, spawn_request
from cli.wire import dumps
from fleetd.units import format_usd

TASK_STATES = ("queued", "leased", "succeeded", "failed", "cancelled", "dead")  # fleetd.task_queue.TaskState
TIMEOUT_EXIT = 124  # task wait --timeout ran out, as timeout(1) exits
INTERRUPTED_EXIT = 130


class OneLineUsageError(click.ClickException):
    """A usage error told in one line (``Error: ...``), exit 2 as click's usage errors."""

    exit_code = 2


def duration_text(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A duration option checked here (so that the error names the flag) and sent as typed: the daemon reads
    seconds or a duration string alike."""
    from fleetd.durations import seconds

    if value is not None and seconds(value) is None:
        raise click.BadParameter(f"{value!r} is not a duration: use seconds or e.g. 90s, 10m, 1h30m, 1.5h, 2d",
                                 ctx=ctx, param=param)
    return value


def refused(reason: str) -> Any:
    """A hidden option that is refused with ``reason`` (spawn options a deployment does not take)."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value is not None:
            raise click.BadParameter(reason, ctx=ctx, param=param)

    return callback


def segment(value: str) -> str:
    """A name or id as one path segment of the API."""
    return quote(value, safe="")


def exit_after(failed: bool) -> None:
    if failed:
        sys.exit(1)


# -- fleetd deploy --------------------------------------------------------------------

DEPLOY_FIELDS = ("min", "max", "warm", "tasks_per_agent", "scale_down_window", "task_ttl", "task_attempts",
                 "task_max_usd")  # fleetd.deployments' SCALING_FIELDS + TASK_FIELDS
ROLLOUT_FIELDS = ("strategy", "canary", "promote_after", "max_error_rate_increase", "max_cost_increase",
                  "max_duration_increase", "canary_max_usd")  # how a new version takes over (issue 17)
STRATEGIES = ("rolling", "canary", "blue-green")
DEPLOY_USAGE = "NAME [OPTIONS] IMAGE [COMMAND [ARG]...]"
SUBCOMMANDS_USAGE = "ls|inspect|scale|promote|rollback|rm [ARGS]..."


def finite_number(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A number option sent as a JSON number: click's float takes nan and inf, which JSON has no spelling for."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value!r} is not a finite number", ctx=ctx, param=param)
    return value


def deploy_options(func: Any) -> Any:
    """The deployment's own options; on an update, one not given keeps its value."""
    options: list[tuple[tuple[str, ...], dict[str, Any]]] = [
        (("--min", "min"), {"type": int, "help": "Agents kept running even with no work (default 0)."}),
        (("--max", "max"), {"type": int, "help": "Most agents at once, draining and replacements included "
                                                 "(default 10)."}),
        (("--warm", "warm"), {"type": int, "help": "Idle agents kept ready beyond the busy ones (default 0)."}),
        (("--tasks-per-agent", "tasks_per_agent"),
         {"type": int, "help": "Queued tasks that call for one more agent (default 5)."}),
        (("--scale-down-window", "scale_down_window"),
         {"callback": duration_text, "metavar": "DURATION",
          "help": "How long the pool must have wanted fewer agents before it shrinks: seconds or e.g. 5m "
                  "(default 5m)."}),
        (("--task-ttl", "task_ttl"),
         {"callback": duration_text, "metavar": "DURATION",
          "help": "A task's deadline from its submit, time in the queue included (default 1h)."}),
        (("--task-attempts", "task_attempts"),
         {"type": int, "help": "Leases a task gets before it is dead (default 3)."}),
        (("--task-max-usd", "task_max_usd"),
         {"metavar": "USD", "help": "A task's cap on LLM spend in US dollars; none: no cap (the default)."}),
    ]
    for decls, attrs in reversed(options):
        func = click.option(*decls, **attrs)(func)
    return func


def rollout_options(func: Any) -> Any:
    """How a new version takes over; read by the daemon only when the apply makes one (the agent spec changed)."""
    options: list[tuple[tuple[str, ...], dict[str, Any]]] = [
        (("--strategy", "strategy"),
         {"type": click.Choice(STRATEGIES),
          "help": "How a new version takes over: rolling, at once (the default); canary, on a share of the new "
                  "tasks until a verdict (see --canary); blue-green, once its agents are ready beside the old "
                  "ones."}),
        (("--canary", "canary"),
         {"type": int, "metavar": "PCT",
          "help": "Send PCT percent (1-50) of the newly queued tasks to the new version until the verdict; "
                  "implies --strategy canary."}),
        (("--promote-after", "promote_after"),
         {"type": int, "metavar": "N",
          "help": "Canary tasks finished before the verdict: promote, or roll back (default 100)."}),
        (("--max-error-rate-increase", "max_error_rate_increase"),
         {"type": float, "callback": finite_number, "metavar": "X",
          "help": "Roll the canary back when its error rate exceeds the current version's by more than X, "
                  "absolute (default 0.05: 5 points)."}),
        (("--max-cost-increase", "max_cost_increase"),
         {"type": float, "callback": finite_number, "metavar": "X",
          "help": "Roll the canary back when its cost per succeeded task exceeds the current version's by more "
                  "than X, relative (default 0.20: 20%)."}),
        (("--max-duration-increase", "max_duration_increase"),
         {"type": float, "callback": finite_number, "metavar": "X",
          "help": "Roll the canary back when its median task duration exceeds the current version's by more "
                  "than X, relative (default 0.50: 50%)."}),
        (("--canary-max-usd", "canary_max_usd"),
         {"metavar": "USD",
          "help": "Roll the canary back once the new version's LLM spend reaches USD, in US dollars (default: "
                  "no cap)."}),
    ]
    for decls, attrs in reversed(options):
        func = click.option(*decls, **attrs)(func)
    return func


class ApplyCommand(click.Command):
    """``fleetd deploy NAME ...``: its context's ``info_name`` is the deployment's name (``DeployGroup`` puts it
    there), so that its usage and errors read ``fleetd deploy web [OPTIONS] IMAGE``."""

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [self.options_metavar or "[OPTIONS]", "IMAGE", "[COMMAND [ARG]...]"]


class DeployGroup(click.Group):
    """A group whose first word, when it is no subcommand, is the name of a deployment to create or update."""

    apply: click.Command | None = None

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        if self.apply is None or not args or args[0] in self.commands:
            return super().resolve_command(ctx, args)
        if args[0].startswith("-"):  # the group takes no option but --help: one meant for the apply verb
            if ctx.resilient_parsing:  # shell completion
                return super().resolve_command(ctx, args)
            raise click.UsageError(f"No such option: {args[0]} (options come after the deployment's NAME: "
                                   f"{ctx.command_path} {DEPLOY_USAGE})", ctx)
        return args[0], self.apply, args[1:]

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, DEPLOY_USAGE)
        formatter.write_usage(ctx.command_path, SUBCOMMANDS_USAGE, prefix="   or: ")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if self.apply is not None:  # the apply verb's options: `fleetd deploy --help` shows both usages whole
            self.apply.format_options(click.Context(self.apply, info_name="NAME", parent=ctx), formatter)
        self.format_commands(ctx, formatter)


@click.group(cls=DeployGroup, context_settings={"ignore_unknown_options": True})
def deploy() -> None:
    """Create or update a deployment: a pool of identical worker agents that take tasks from a queue.

    \b
    fleetd deploy NAME [OPTIONS] IMAGE [COMMAND]... applies the deployment, as
    kubectl apply: created, or updated in place (scaling and task options), or
    given a new version when its agent spec changed (the old version's agents
    finish their task and go). The spawn options of `fleetd spawn` apply to each
    agent, except --name (agents are named NAME-<n>) and --restart (the pool
    replaces its agents itself). On an update, options not given keep their
    values; the agent spec is given whole each time. Options after IMAGE belong
    to the COMMAND. ls, inspect, scale, promote, rollback and rm are
    subcommands, never names.

    \b
    A new version takes over at once by default (--strategy rolling). With
    --canary PCT it takes PCT% of the new tasks beside the current version
    until --promote-after of them have finished, then it is promoted, or rolled
    back when its error rate, cost or duration is worse than the current
    version's by more than the bounds. With --strategy blue-green its agents
    start beside the old ones, and it takes over once they are ready. fleetd
    deploy promote|rollback NAME ends a rollout at once.

    \b
    Examples: fleetd deploy web --max 3 --warm 1 fleetd/agent-python python3 worker.py
              fleetd deploy web --canary 10 fleetd/agent-python:2 python3 worker.py
              fleetd deploy ls
              fleetd deploy scale web --max 10
              fleetd deploy promote web
    """


@click.command(cls=ApplyCommand, context_settings={"allow_interspersed_args": False})
@deploy_options
@rollout_options
@spawn_options_except("name", "restart", "as_json")
@click.option("--json", "as_json", is_flag=True, help="Print the deployment as JSON.")
@click.option("--name", hidden=True, expose_value=False,
              callback=refused("a deployment names its agents NAME-<n> after itself"))
@click.option("--restart", hidden=True, expose_value=False,
              callback=refused("a deployment replaces its agents itself; it takes no restart policy"))
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
@api_errors
def deploy_apply(ctx: click.Context, /, image: str, command: tuple[str, ...], **options: Any) -> None:
    """Create or update the deployment NAME (see fleetd deploy --help).

    Example: fleetd deploy web --max 3 fleetd/agent-python python3 worker.py
    """
    name = str(ctx.info_name)
    fields = {field: options.pop(field) for field in DEPLOY_FIELDS + ROLLOUT_FIELDS}
    as_json = options.pop("as_json")
    try:
        body = spawn_request(image, list(command), options)
    except EnvError as exc:
        raise click.ClickException(str(exc)) from None
    body.update({field: value for field, value in fields.items() if value is not None})
    record = client(ctx).call("PUT", f"/v1/deployments/{segment(name)}", body)
    if as_json:
        print_json(record)
    else:
        click.echo(f"deployment {record.get('name', name)} {record.get('message') or 'applied'}")


deploy.apply = deploy_apply

DEPLOY_COLUMNS = ["NAME", "VERSION", "IMAGE", "REPLICAS", "BUSY", "QUEUED", "STATE", "AGE"]


def rollout_text(rollout: dict[str, Any]) -> str:
    """``canary v2 10%``, ``blue-green v2 starting``: a rollout in progress as ``deploy ls`` shows it."""
    strategy, version = rollout.get("strategy"), rollout.get("version")
    if strategy == "canary" and rollout.get("percent") is not None:
        return f"canary v{version} {rollout['percent']}%"
    return f"{strategy} v{version} {rollout.get('phase')}"


def deployment_row(record: dict[str, Any]) -> list[str]:
    replicas = record.get("replicas")
    queue = record.get("queue")
    state = str(record["state"])
    if state == "removing" and record.get("drain"):
        state += " (drain)"
    elif state == "active" and record.get("rollout"):
        state = rollout_text(record["rollout"])
    return [record["name"], f"v{record['current_version']}", record["image"],
            "-" if not replicas else f"{replicas['live']}/{replicas['wanted']}",
            "-" if not replicas else str(replicas["busy"]),
            "-" if queue is None else str(queue.get("queued", 0)), state, age(record.get("created_at"))]


@deploy.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only names.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@api_errors
def deploy_ls(ctx: click.Context, quiet: bool, as_json: bool) -> None:
    """List deployments: version, image, live/wanted agents, busy ones, queued tasks.

    Example: fleetd deploy ls
    """
    records = client(ctx).call("GET", "/v1/deployments")
    if as_json:
        print_json(records)
    elif quiet:
        for record in records:
            click.echo(record["name"])
    else:
        print_table(DEPLOY_COLUMNS, [deployment_row(r) for r in records])


@deploy.command("inspect")
@click.argument("name")
@click.pass_context
@api_errors
def deploy_inspect(ctx: click.Context, name: str) -> None:
    """Show a deployment as JSON: options, versions, replicas, queue, recent scaling decisions, right-sizing.

    Example: fleetd deploy inspect web
    """
    print_json(client(ctx).call("GET", f"/v1/deployments/{segment(name)}"))


@deploy.command("scale")
@click.argument("name")
@click.option("--min", "min_", type=int, help="Agents kept running even with no work.")
@click.option("--max", "max_", type=int, help="Most agents at once.")
@click.option("--warm", type=int, help="Idle agents kept ready beyond the busy ones.")
@click.option("--json", "as_json", is_flag=True, help="Print the deployment as JSON.")
@click.pass_context
@api_errors
def deploy_scale(ctx: click.Context, name: str, min_: int | None, max_: int | None, warm: int | None,
                 as_json: bool) -> None:
    """Change a deployment's --min, --max or --warm (the others keep their values).

    Example: fleetd deploy scale web --min 1 --max 20
    """
    body = {key: value for key, value in (("min", min_), ("max", max_), ("warm", warm)) if value is not None}
    if not body:
        raise OneLineUsageError("deploy scale: give --min, --max or --warm")
    record = client(ctx).call("POST", f"/v1/deployments/{segment(name)}/scale", body)
    if as_json:
        print_json(record)
        return
    scaling = record.get("scaling") or {}
    click.echo(f"deployment {record.get('name', name)}: "
               + ", ".join(f"{key} {scaling[key]}" for key in ("min", "max", "warm") if key in scaling))


@deploy.command("promote")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the deployment as JSON.")
@click.pass_context
@api_errors
def deploy_promote(ctx: click.Context, name: str, as_json: bool) -> None:
    """Promote the new version of a canary or blue-green rollout now, without waiting for the verdict: it takes
    every new task, and the old version's agents finish their task and go.

    Example: fleetd deploy promote web
    """
    record = client(ctx).call("POST", f"/v1/deployments/{segment(name)}/promote")
    if as_json:
        print_json(record)
        return
    click.echo(f"{record.get('name', name)}: version {record['current_version']} promoted")


@deploy.command("rollback")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the deployment as JSON.")
@click.pass_context
@api_errors
def deploy_rollback(ctx: click.Context, name: str, as_json: bool) -> None:
    """Roll back the new version of a canary or blue-green rollout now: the previous version takes every new task
    again, and the new version's agents finish their task and go.

    Example: fleetd deploy rollback web
    """
    record = client(ctx).call("POST", f"/v1/deployments/{segment(name)}/rollback")
    if as_json:
        print_json(record)
        return
    rolled_back = [v["version"] for v in record.get("versions") or [] if v.get("outcome") == "rolled_back"]
    name = record.get("name", name)
    if rolled_back:  # versions only grow: the newest one rolled back is this one
        click.echo(f"{name}: version {max(rolled_back)} rolled back")
    else:
        click.echo(f"{name}: rolled back to version {record['current_version']}")


@deploy.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.option("--drain", is_flag=True, help="Let its agents finish their tasks first (default: stop them now).")
@click.pass_context
def deploy_rm(ctx: click.Context, names: tuple[str, ...], drain: bool) -> None:
    """Remove deployments: their agents are stopped (after their tasks with --drain), then they are forgotten.

    Example: fleetd deploy rm --drain web
    """
    api = client(ctx)

    def remove(name: str) -> str:
        api.call("DELETE", f"/v1/deployments/{segment(name)}", query={"drain": "true" if drain else "false"})
        return name

    for_each(names, remove, lambda name: click.echo(f"deployment {name} removing" + (" (draining)" if drain else "")))


# -- fleetd task ----------------------------------------------------------------------


@click.group()
def task() -> None:
    """Tasks: submit work to a deployment's queue, watch it, wait for it, cancel it."""


def no_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_input(inline: str | None, path: str | None, dash: str | None) -> Any:
    """The task's input from exactly one of --input, --input-file and a ``-`` argument (stdin); none: null."""
    if dash is not None and dash != "-":
        raise OneLineUsageError(f"task submit: unexpected argument {dash!r} (- reads the input from standard input)")
    given = [name for name, value in (("--input", inline), ("--input-file", path), ("-", dash)) if value is not None]
    if len(given) > 1:
        raise OneLineUsageError(f"task submit: give one input, not {' and '.join(given)}")
    if not given:
        return None
    if inline is not None:
        text, source = inline, "--input"
    elif path is None or path == "-":
        text, source = sys.stdin.read(), "standard input"
    else:
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except OSError as exc:
            raise click.ClickException(f"--input-file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise click.ClickException(f"--input-file {path}: not UTF-8 text") from None
        source = f"--input-file {path}"
    if not text.strip():
        raise click.ClickException(f"{source} is empty: give a JSON document (null for no input)")

    try:
        return json.loads(text, parse_constant=no_json_constant)
    except ValueError as exc:  # json.JSONDecodeError too
        raise click.ClickException(f"{source} is not JSON: {exc}") from None


@task.command("submit")
@click.argument("deployment")
@click.argument("stdin", required=False, metavar="[-]")
@click.option("--input", "inline", metavar="JSON", help="The task's input: a JSON document.")
@click.option("--input-file", metavar="FILE", help="Read the input (JSON) from FILE; - for standard input.")
@click.option("--ttl", callback=duration_text, metavar="DURATION",
              help="Deadline from now, time in the queue included (default: the deployment's --task-ttl).")
@click.option("--max-usd", metavar="USD", help="Cap on the task's LLM spend (default: the deployment's).")
@click.option("--attempts", type=int, help="Leases the task gets before it is dead (default: the deployment's).")
@click.option("--key", help="Idempotency key: a second submit with it answers the first task instead.")
@click.option("--inputs-file", metavar="FILE",
              help="Queue one task per line of FILE (JSON Lines; - for standard input), a thousand per request.")
@click.option("--json", "as_json", is_flag=True, help="Print the task as JSON.")
@click.pass_context
@api_errors
def task_submit(ctx: click.Context, deployment: str, stdin: str | None, inline: str | None, input_file: str | None,
                ttl: str | None, max_usd: str | None, attempts: int | None, key: str | None,
                inputs_file: str | None, as_json: bool) -> None:
    """Queue a task for a deployment's agents; print its id.

    The input is one JSON document: --input, --input-file, or standard input
    (- or --input-file -); without one the task's input is null. With
    --inputs-file, each line of the file is a task's input: the tasks are
    queued a thousand at a time (each thousand all or none, in order) and
    their ids printed one per line.

    \b
    Examples: fleetd task submit web --input '{"url": "https://example.com"}'
              jq -c . job.json | fleetd task submit web - --ttl 10m --key job-42
              jq -c '.[]' jobs.json | fleetd task submit web --inputs-file -
    """
    options: dict[str, Any] = {"ttl": ttl, "max_usd": max_usd, "attempts": attempts}
    if inputs_file is not None:
        if key is not None or inline is not None or input_file is not None or stdin is not None:
            raise OneLineUsageError("task submit: --inputs-file gives every input; it takes no --key, --input, "
                                    "--input-file or -")
        records: list[dict[str, Any]] = []
        last_line = 0
        for batch in batches(list(read_inputs(inputs_file))):  # every line read and checked before any is sent
            try:
                answered = client(ctx).call("POST", "/v1/tasks/batch", {
                    "deployment": deployment, "tasks": [{"input": item, **options} for item, _, _ in batch]})
            except ApiError as exc:
                if not records:
                    raise
                if as_json:
                    print_json(records)
                raise click.ClickException(f"{exc} (in the batch from line {batch[0][2]}; the tasks of lines 1 to "
                                           f"{last_line} were queued, {len(records)} ids printed)") from None
            records += answered
            last_line = batch[-1][2]
            if not as_json:
                for record in answered:
                    click.echo(record["id"])
        if as_json:
            print_json(records)
        return
    record = client(ctx).call("POST", "/v1/tasks", {
        "deployment": deployment, "input": read_input(inline, input_file, stdin), **options, "key": key})
    if as_json:
        print_json(record)
    else:
        click.echo(record["id"])


BATCH_TASKS = 1000  # the API's most per request
BATCH_BYTES = 900 << 10  # of inputs per request, under the API's 1 MiB body with the rest of it


def read_inputs(path: str) -> Iterator[tuple[Any, int, int]]:
    """Each non-blank line of ``path`` (- standard input) as JSON, with its size as sent and its line number; a bad
    line is a one-line error."""
    try:
        file = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115  # closed below
    except OSError as exc:
        raise click.ClickException(f"--inputs-file {path}: {exc.strerror or exc}") from None
    try:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line, parse_constant=no_json_constant)
            except ValueError as exc:
                raise click.ClickException(f"--inputs-file {path}, line {number}: not JSON: {exc}") from None
            yield item, len(dumps(item).encode()), number  # its size as the request will carry it
    except UnicodeDecodeError:
        raise click.ClickException(f"--inputs-file {path}: not UTF-8 text") from None
    finally:
        if file is not sys.stdin:
            file.close()


def batches(inputs: list[tuple[Any, int, int]]) -> Iterator[list[tuple[Any, int, int]]]:
    """Inputs in runs of at most BATCH_TASKS and about BATCH_BYTES (one larger input goes alone); none: an error."""
    batch: list[tuple[Any, int, int]] = []
    size = 0
    for line in inputs:
        length = line[1]
        if batch and (len(batch) == BATCH_TASKS or size + length > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(line)
        size += length
    if not batch:
        raise click.ClickException("--inputs-file has no input: give one JSON document per line")
    yield batch


TASK_COLUMNS = ["ID", "DEPLOYMENT", "STATE", "ATTEMPTS", "AGENT", "COST", "AGE"]


def state_text(record: dict[str, Any]) -> str:
    """``failed (ttl_expired)``: the state, and the code of how it ended when that says more."""
    state, code = str(record["state"]), record.get("code")
    return f"{state} ({code})" if code and code != state else state


def task_row(record: dict[str, Any]) -> list[str]:
    return [record["id"], record["deployment"], state_text(record), f"{record['attempts']}/{record['max_attempts']}",
            record.get("agent_id") or "-", format_usd(record.get("cost_usd")), age(record.get("created_at"))]


@task.command("ls")
@click.argument("deployment", required=False)
@click.option("--state", type=click.Choice(TASK_STATES), help="Only tasks in this state.")
@click.option("-n", "--limit", type=click.IntRange(min=1), help="At most this many.")
@click.option("-q", "--quiet", is_flag=True, help="Only ids.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@api_errors
def task_ls(ctx: click.Context, deployment: str | None, state: str | None, limit: int | None, quiet: bool,
            as_json: bool) -> None:
    """List tasks (of one deployment), without their input and output.

    \b
    Examples: fleetd task ls web --state failed
              fleetd task ls -q --state queued
    """
    records = client(ctx).call("GET", "/v1/tasks", query={"deployment": deployment, "state": state, "limit": limit})
    if as_json:
        print_json(records)
    elif quiet:
        for record in records:
            click.echo(record["id"])
    else:
        print_table(TASK_COLUMNS, [task_row(r) for r in records])


@task.command("inspect")
@click.argument("ids", nargs=-1, required=True)
@click.pass_context
def task_inspect(ctx: click.Context, ids: tuple[str, ...]) -> None:
    """Show tasks as JSON, input and output included: one task as an object, several as a list.

    Example: fleetd task inspect 7c1e9b20a4d3
    """
    api = client(ctx)
    records, failed = [], False
    for task_id in ids:
        try:
            records.append(api.call("GET", f"/v1/tasks/{segment(task_id)}"))
        except ApiError as exc:
            click.echo(f"Error: {exc}", err=True)
            failed = True
    if len(ids) == 1 and records:
        print_json(records[0])
    elif len(ids) > 1:
        print_json(records)
    exit_after(failed)


@task.command("wait")
@click.argument("ids", nargs=-1, required=True)
@click.option("--timeout", type=DURATION,
              help="Give up after this long in all (seconds or e.g. 30s, 10m; whole seconds): exit 124.")
@click.pass_context
def task_wait(ctx: click.Context, ids: tuple[str, ...], timeout: float | None) -> None:
    """Block until tasks have finished; print each one's id and final state.

    \b
    Exit status: 0 when every task succeeded; 1 when one failed, was cancelled
    or is dead, or is unknown; else 124 when --timeout ran out first (the
    tasks that finished are printed all the same).

    Example: fleetd task wait 7c1e9b20a4d3 --timeout 10m
    """
    api = Client(client(ctx).socket_path, timeout=None if timeout is None else timeout + 60)
    deadline = None if timeout is None else time.monotonic() + timeout
    failed = timed_out = False
    try:
        for task_id in ids:
            query = None if deadline is None else {"timeout": math.ceil(max(0.0, deadline - time.monotonic()))}
            try:
                record = api.call("POST", f"/v1/tasks/{segment(task_id)}/wait", query=query)
            except ApiError as exc:
                click.echo(f"Error: {exc}", err=True)
                if exc.code == "timeout":
                    timed_out = True
                else:
                    failed = True
                continue
            state = record["state"]
            click.echo(f"{record['id']} {state_text(record)}")
            failed = failed or state != "succeeded"
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED_EXIT)
    if failed:
        sys.exit(1)
    if timed_out:
        sys.exit(TIMEOUT_EXIT)


@task.command("cancel")
@click.argument("ids", nargs=-1, required=True)
@click.pass_context
def task_cancel(ctx: click.Context, ids: tuple[str, ...]) -> None:
    """Cancel queued or running tasks (a running task's agent is told when it reports back).

    Example: fleetd task cancel 7c1e9b20a4d3
    """
    api = client(ctx)
    for_each(ids, lambda task_id: api.call("POST", f"/v1/tasks/{segment(task_id)}/cancel"),
             lambda record: click.echo(record["id"]))
