"""What every client command shares: the daemon's address and one-line errors."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from cli.client import ApiError, Client

F = TypeVar("F", bound=Callable[..., Any])


def default_socket() -> str:
    from fleetd.paths import default_socket as socket_path

    return str(socket_path())


def api_errors(func: F) -> F:
    """Turn the daemon's errors into ``click.ClickException``: one line, exit 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ApiError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def client(ctx: click.Context) -> Client:
    root = ctx.find_root()
    return Client(root.params.get("socket") or default_socket())
