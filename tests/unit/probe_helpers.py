"""Loopback listeners and a fake docker exec API for the probe tests.

Shared by tests/unit/test_probes.py and test_probe_reasons.py; not a test module itself.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import docker.errors
from aiohttp import web

from fleetd.health import ProbeSpec
from fleetd.runtime import DockerRuntime

LOOPBACK = "127.0.0.1"


def closed_port() -> int:
    """A port nothing listens on: bind one, then close it."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


@asynccontextmanager
async def http_server() -> AsyncIterator[tuple[int, list[str]]]:
    seen: list[str] = []

    async def status(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(status=int(request.match_info["code"]), text="x")

    async def redirect(request: web.Request) -> web.Response:
        seen.append(request.path)
        raise web.HTTPFound("/status/500")  # followed, this would fail

    async def slow(request: web.Request) -> web.Response:
        seen.append(request.path)
        await asyncio.sleep(5)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    port: int = server.sockets[0].getsockname()[1]
    try:
        yield port, seen
    finally:
        await runner.cleanup()


def http(port: int, path: str, timeout: float = 1.0) -> ProbeSpec:
    return ProbeSpec("http", port, path, timeout=timeout)


class FakeExecApi:
    """The three exec calls of docker's low-level API; the command runs for ``polls`` inspections."""

    def __init__(self, exit_code: int, polls: int, fail_create: bool = False) -> None:
        self.exit_code = exit_code
        self.polls = polls
        self.fail_create = fail_create
        self.created: list[dict[str, Any]] = []
        self.started: list[dict[str, Any]] = []

    def exec_create(self, container: str, cmd: list[str], **kwargs: Any) -> dict[str, str]:
        if self.fail_create:
            raise docker.errors.APIError("409", explanation=f"Container {container} is not running")
        self.created.append({"container": container, "cmd": cmd, **kwargs})
        return {"Id": "exec1"}

    def exec_start(self, exec_id: str, **kwargs: Any) -> bytes:
        self.started.append({"exec_id": exec_id, **kwargs})
        return b""

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        if self.polls > 0:
            self.polls -= 1
            return {"Running": True, "ExitCode": None}
        return {"Running": False, "ExitCode": self.exit_code}


def runtime_with(api: FakeExecApi) -> DockerRuntime:
    runtime = DockerRuntime.__new__(DockerRuntime)
    runtime.api = api  # type: ignore[assignment]
    return runtime
