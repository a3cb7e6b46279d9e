"""run_probe against loopback listeners the tests start themselves, and exec_status with a fake engine."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
import requests.exceptions
from aiohttp import web

from fleetd.errors import RuntimeFailure, RuntimeUnavailable
from fleetd.health import ProbeSpec
from fleetd.probes import run_probe
from fleetd.runtime import docker_errors
from tests.unit.probe_helpers import LOOPBACK, FakeExecApi, closed_port, http, http_server, runtime_with


def test_http_probe_statuses() -> None:
    async def main() -> None:
        async with http_server() as (port, seen):
            assert await run_probe(http(port, "/status/200"), LOOPBACK, None)
            assert await run_probe(http(port, "/status/204"), LOOPBACK, None)
            assert await run_probe(http(port, "/status/399"), LOOPBACK, None)
            assert not await run_probe(http(port, "/status/400"), LOOPBACK, None)
            assert not await run_probe(http(port, "/status/404"), LOOPBACK, None)
            assert not await run_probe(http(port, "/status/500"), LOOPBACK, None)
            assert not await run_probe(http(port, "/status/503"), LOOPBACK, None)
            # 3xx is success, and the redirect is not followed
            seen.clear()
            assert await run_probe(http(port, "/redirect"), LOOPBACK, None)
            assert seen == ["/redirect"]

    asyncio.run(main())


def test_http_probe_timeout_is_failure() -> None:
    async def main() -> None:
        async with http_server() as (port, seen):
            started = time.monotonic()
            assert not await run_probe(http(port, "/slow", timeout=0.2), LOOPBACK, None)
            assert time.monotonic() - started < 2
            assert seen == ["/slow"]

    asyncio.run(main())


def test_http_probe_closed_port_is_failure() -> None:
    assert not asyncio.run(run_probe(http(closed_port(), "/"), LOOPBACK, None))


def test_http_probe_with_shared_session() -> None:
    async def main() -> None:
        async with http_server() as (port, _seen), aiohttp.ClientSession() as session:
            assert await run_probe(http(port, "/status/200"), LOOPBACK, None, session=session)
            assert not await run_probe(http(port, "/status/500"), LOOPBACK, None, session=session)
            assert not session.closed

    asyncio.run(main())


def test_http_probe_ipv6_literal() -> None:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")

    async def main() -> bool:
        app = web.Application()
        app.router.add_get("/", ok)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "::1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        port = server.sockets[0].getsockname()[1]
        try:
            return await run_probe(ProbeSpec("http", port), "::1", None)
        finally:
            await runner.cleanup()

    assert asyncio.run(main())


async def ok(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def test_tcp_probe_open_and_closed() -> None:
    async def main() -> None:
        accepted: list[bool] = []

        async def on_connect(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(True)
            writer.close()

        server = await asyncio.start_server(on_connect, LOOPBACK, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            assert await run_probe(ProbeSpec("tcp", port, timeout=1), LOOPBACK, None)
        finally:
            server.close()
            await server.wait_closed()
        assert accepted == [True]
        assert not await run_probe(ProbeSpec("tcp", closed_port(), timeout=1), LOOPBACK, None)

    asyncio.run(main())


def test_tcp_probe_bound_but_not_listening_is_failure() -> None:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]
        assert not asyncio.run(run_probe(ProbeSpec("tcp", port, timeout=0.5), LOOPBACK, None))


def test_tcp_probe_timeout_is_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    # A handshake that never completes (a black-holed address) without aiming at one.
    async def never_connects(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        await asyncio.sleep(60)
        raise AssertionError("unreachable")

    monkeypatch.setattr(asyncio, "open_connection", never_connects)
    started = time.monotonic()
    assert not asyncio.run(run_probe(ProbeSpec("tcp", 5432, timeout=0.2), LOOPBACK, None))
    assert time.monotonic() - started < 2


def exec_fn_returning(code: int, calls: list[tuple[tuple[str, ...], float]]) -> Callable[..., Awaitable[int]]:
    async def exec_fn(command: tuple[str, ...], timeout: float) -> int:
        calls.append((command, timeout))
        return code

    return exec_fn


def test_exec_probe() -> None:
    spec = ProbeSpec("exec", command=("cat", "/tmp/ready"), timeout=2)
    calls: list[tuple[tuple[str, ...], float]] = []
    assert asyncio.run(run_probe(spec, LOOPBACK, exec_fn_returning(0, calls)))
    assert calls == [(("cat", "/tmp/ready"), 2)]
    assert not asyncio.run(run_probe(spec, LOOPBACK, exec_fn_returning(1, calls)))
    assert not asyncio.run(run_probe(spec, LOOPBACK, exec_fn_returning(124, calls)))


def test_exec_probe_failures_never_raise() -> None:
    spec = ProbeSpec("exec", command=("true",), timeout=0.1)

    async def hangs(command: tuple[str, ...], timeout: float) -> int:
        await asyncio.sleep(60)
        return 0

    async def breaks(command: tuple[str, ...], timeout: float) -> int:
        raise RuntimeFailure("docker: container is not running")

    started = time.monotonic()
    assert not asyncio.run(run_probe(spec, LOOPBACK, hangs))  # the backstop gives up
    assert time.monotonic() - started < 3
    assert not asyncio.run(run_probe(spec, LOOPBACK, breaks))
    assert not asyncio.run(run_probe(spec, LOOPBACK, None))  # no way to exec: failure


# --------------------------------------------------------------------------- exec_status


def test_exec_status_returns_the_exit_code() -> None:
    api = FakeExecApi(exit_code=3, polls=2)
    assert runtime_with(api).exec_status("c1", ["cat", "/tmp/ready"], 5) == 3
    assert api.created == [{"container": "c1", "cmd": ["cat", "/tmp/ready"], "stdout": False, "stderr": False,
                            "tty": False}]  # fmt: skip
    assert api.started == [{"exec_id": "exec1", "detach": True}]
    assert runtime_with(FakeExecApi(exit_code=0, polls=0)).exec_status("c1", ["true"], 5) == 0


def test_exec_status_gives_up_after_the_timeout() -> None:
    started = time.monotonic()
    assert runtime_with(FakeExecApi(exit_code=0, polls=10**9)).exec_status("c1", ["sleep", "1d"], 0.2) == 124
    assert 0.2 <= time.monotonic() - started < 1.5


def test_exec_status_translates_docker_errors() -> None:
    with pytest.raises(RuntimeFailure, match="not running"):
        runtime_with(FakeExecApi(0, 0, fail_create=True)).exec_status("c1", ["true"], 1)


def test_an_engine_read_timeout_is_a_503_not_a_500() -> None:
    """requests raises Timeout (not ConnectionError) when a wedged dockerd takes a call and never answers."""
    with pytest.raises(RuntimeUnavailable, match="did not answer in time"), docker_errors():
        raise requests.exceptions.ReadTimeout("UnixHTTPConnectionPool: Read timed out. (read timeout=60)")
    with pytest.raises(RuntimeUnavailable, match="cannot reach"), docker_errors():
        raise requests.exceptions.ChunkedEncodingError("connection broken")
