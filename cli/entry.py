"""The ``fleetd`` console script.

``fleetd spawn`` is timed against ``docker run``: its common case is parsed and
sent here with the standard library alone; anything else (help, an unusual or
wrong argument, every other command) goes to the click application.
"""

from __future__ import annotations

import os
import sys


def socket_path(args: list[str]) -> tuple[str, list[str]] | None:
    """Take a leading ``--socket PATH`` off the arguments (else env or the default)."""
    path = os.environ.get("FLEETD_SOCKET")
    if args[:1] == ["--socket"] and len(args) > 1:
        path, args = args[1], args[2:]
    elif args[:1] and args[0].startswith("--socket="):
        path, args = args[0].partition("=")[2], args[1:]
    if path is None:
        from fleetd.paths import default_socket

        path = str(default_socket())
    return path, args


def fast_spawn(argv: list[str]) -> int | None:
    found = socket_path(argv)
    if found is None:
        return None
    path, args = found
    if args[:1] != ["spawn"]:
        return None
    from cli.spawn_options import EnvError, parse_fast, spawn_request

    parsed = parse_fast(args[1:])
    if parsed is None:
        return None
    options, image, command = parsed
    from cli.client import ApiError, Client

    try:
        agent = Client(path).call("POST", "/v1/agents", spawn_request(image, command, options))
    except (ApiError, EnvError) as exc:
        sys.stderr.write(f"Error: {exc}\n")
        return 1
    if options["as_json"]:
        import json

        sys.stdout.write(json.dumps(agent, indent=2) + "\n")
    else:
        sys.stdout.write(agent["id"] + "\n")
    return 0


def main() -> None:
    code = fast_spawn(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from cli.main import main as click_main

    click_main()
