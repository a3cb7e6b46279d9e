"""What every client command shares: the daemon's address and one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cli.client import ApiError, Client
from cli.spawn_options import SPAWN_OPTIONS

F = TypeVar("F", bound=Callable[..., Any])


def default_socket() -> str:
    from fleetd.paths import default_socket as socket_path

    return str(socket_path())


def for_each(items: Iterable[str], call: Callable[[str], Any], done: Callable[[Any], None]) -> None:
    """Docker's habit for a verb given several names (``docker rm a b``): ``call`` the daemon for each and hand
    ``done`` its answer; one it refuses is said on stderr in one line and the others go on; exit 1 at the end when
    any was refused."""
    failed = False
    for item in items:
        try:
            answer = call(item)
        except ApiError as exc:
            click.echo(f"Error: {exc}", err=True)
            failed = True
            continue
        done(answer)
    if failed:
        sys.exit(1)


def api_errors(func: F) -> F:
    """Turn the daemon's errors into ``click.ClickException``: one line, exit 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ApiError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


if TYPE_CHECKING:
    _ParamType = click.ParamType[float, Any]  # generic in the click this is checked with
else:
    _ParamType = click.ParamType  # pyproject allows click 8.1, where it is not generic


class Duration(_ParamType):
    """Seconds, or a duration like 90s, 10m, 1h30m, 1.5h, 2d (fleetd.durations); sent as a number of seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int | float):
            return value
        from fleetd.durations import seconds

        found = seconds(str(value))
        if found is None:
            self.fail(f"{value!r} is not a duration: use seconds or e.g. 90s, 10m, 1h30m, 1.5h, 2d", param, ctx)
        return int(found) if found.is_integer() else found


DURATION = Duration()


def client(ctx: click.Context) -> Client:
    root = ctx.find_root()
    return Client(root.params.get("socket") or default_socket())


def spawn_options_except(*dests: str) -> Callable[[F], F]:
    """Click options from the one table (cli.spawn_options) the fast path parses too, but those named (``fleetd
    deploy`` takes every spawn option but ``--name`` and ``--restart``)."""
    types: dict[str, dict[str, Any]] = {
        "int": {"type": int}, "duration": {"type": DURATION}, "str": {}, "multi": {"multiple": True},
        "flag": {"is_flag": True},
    }

    def decorate(func: F) -> F:
        for flags, dest, kind, help_text in reversed(SPAWN_OPTIONS):
            if dest not in dests:
                func = click.option(*flags, dest, help=help_text, **types[kind])(func)
        return func

    return decorate


spawn_options = spawn_options_except()
