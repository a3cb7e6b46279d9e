"""``fleetd spawn``'s options, in one table: click builds the command from it, and the
fast path (``cli.entry``) parses the common case with it without importing click."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: importing typing costs the fast path start-up time

if TYPE_CHECKING:  # typing costs start-up time the fast path does not have
    from typing import Any

# (flags, destination, kind, help); kind: "int", "duration" (seconds, or 90s, 10m, 1h30m: fleetd.durations),
# "str", "multi" (repeatable) or "flag"
SPAWN_OPTIONS: list[tuple[tuple[str, ...], str, str, str]] = [
    (("--ttl",), "ttl", "duration", "Time until the deadline: seconds or e.g. 90m, 1h30m, 2d (default 1h)."),
    (("--memory", "-m"), "memory", "str", "Memory limit, e.g. 512m (swap disabled)."),
    (("--memory-reservation",), "memory_reservation", "str", "Soft memory limit, e.g. 256m."),
    (("--disk",), "disk", "str",
     "Writable space in all, e.g. 1g (default): /tmp and /fleetd/checkpoint get half each, the rest is read-only."),
    (("--cpus",), "cpus", "str", "CPUs, e.g. 0.25."),
    (("--pids-limit",), "pids_limit", "int", "Max processes (default 256)."),
    (("--grace",), "grace", "duration", "Time between SIGTERM and SIGKILL, e.g. 30s or 2m (default 30s)."),
    (("--role",), "role", "str", "Role whose defaults and credentials apply."),
    (("--name",), "name", "str", "A name, held until the agent that has it is removed (fleetd rm)."),
    (("-e", "--env"), "env", "multi", "KEY=VALUE (or KEY, taken from this shell); wins over --env-file."),
    (("--env-file",), "env_file", "multi",
     "Read env from a file (repeatable): KEY=VALUE lines, # comments, a bare KEY taken from this shell."),
    (("--label", "-l"), "label", "multi", "KEY=VALUE label on the container."),
    (("--daily-usd",), "daily_usd", "str", "This agent's cap per UTC day in US dollars (default: its role's)."),
    (("--monthly-usd",), "monthly_usd", "str", "This agent's cap per calendar month in US dollars."),
    (("--max-llm-calls",), "max_llm_calls", "int", "This agent's maximum number of LLM calls."),
    (("--egress",), "egress", "str",
     "Hosts it may reach through zone 2, narrowing its role's list (e.g. pypi.org; none: nothing)."),
    (("--egress-max-bytes",), "egress_max_bytes", "str",
     "Its egress bytes per UTC day, in and out, at most its role's (e.g. 200m; default: its role's, 1g)."),
    (("--heartbeat-interval",), "heartbeat_interval", "duration",
     "Time between the agent's heartbeats, e.g. 30s; none for 2 x this: SIGTERM (0: off)."),
    (("--restart",), "restart", "str", "never (default), on-failure[:N] or always, as docker run."),
    (("--startup-probe",), "startup_probe", "str", "e.g. http:8080/healthz,period=5 (also tcp:PORT, exec:CMD)."),
    (("--readiness-probe",), "readiness_probe", "str", "Probe whose result is the agent's readiness."),
    (("--liveness-probe",), "liveness_probe", "str", "Probe whose failures restart the agent."),
    (("--json",), "as_json", "flag", "Print the agent record as JSON."),
]


class EnvError(ValueError):
    pass


def env_items(values: tuple[str, ...] | list[str]) -> list[str]:
    """``-e KEY`` takes KEY from this shell, as docker does (skipped when unset)."""
    items = []
    for value in values:
        if "=" in value:
            items.append(value)
        elif not value:
            raise EnvError("invalid env '': expected KEY=VALUE")
        elif value in os.environ:
            items.append(f"{value}={os.environ[value]}")
    return items


def env_file_items(path: str) -> list[str]:
    """``--env-file``, read as ``docker run`` reads it: ``KEY=VALUE`` lines (the value verbatim, quotes
    included), lines starting with ``#`` and blank lines skipped, a bare ``KEY`` taken from this shell
    (skipped when unset)."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError as exc:
        raise EnvError(f"--env-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise EnvError(f"--env-file {path}: not UTF-8 text") from None
    items = []
    for number, line in enumerate(lines, 1):
        text = line.lstrip()
        if not text or text.startswith("#"):
            continue
        key, eq, value = text.partition("=")
        if not key or any(c.isspace() for c in key):
            raise EnvError(f"--env-file {path}, line {number}: invalid variable {key!r}: expected KEY=VALUE")
        if eq:
            items.append(f"{key}={value}")
        elif key in os.environ:
            items.append(f"{key}={os.environ[key]}")
    return items


def spawn_request(image: str, command: list[str], options: dict[str, Any]) -> dict[str, Any]:
    """The API body for a spawn, from parsed options: env files first, then -e (the later value of a key wins)."""
    request = {k: v for k, v in options.items() if v is not None and k not in ("env", "env_file", "label", "as_json")}
    env = [item for path in options.get("env_file") or () for item in env_file_items(path)]
    request.update(image=image, command=list(command), env=env + env_items(options.get("env") or ()),
                   labels=list(options.get("label") or ()))
    return request


def parse_fast(args: list[str]) -> tuple[dict[str, Any], str, list[str]] | None:
    """Parse ``spawn``'s arguments; None for anything unusual (click then gives the full treatment)."""
    by_flag = {flag: (dest, kind) for flags, dest, kind, _ in SPAWN_OPTIONS for flag in flags}
    options: dict[str, Any] = {dest: ([] if kind == "multi" else None) for _, dest, kind, _ in SPAWN_OPTIONS}
    options["as_json"] = False
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg == "-":
            return options, arg, args[i + 1:]
        flag, eq, inline = arg.partition("=")
        if flag not in by_flag:
            return None
        dest, kind = by_flag[flag]
        if kind == "flag":
            if eq:
                return None
            options[dest] = True
            i += 1
            continue
        if eq:
            value = inline
            i += 1
        elif i + 1 < len(args):
            value = args[i + 1]
            i += 2
        else:
            return None
        if kind == "int":
            if not value.strip().lstrip("-").isdigit():
                return None
            options[dest] = int(value)
        elif kind == "duration":
            from fleetd.durations import seconds

            found = seconds(value)
            if found is None:
                return None  # click says what is wrong with it
            options[dest] = int(found) if found.is_integer() else found
        elif kind == "multi":
            options[dest].append(value)
        else:
            options[dest] = value
    return None  # no image
