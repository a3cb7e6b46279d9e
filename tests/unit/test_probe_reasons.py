"""Why a probe failed: the result's message and data, the exec output the runtime keeps, the event."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

from fleetd.bounds import MAX_MESSAGE_CHARS
from fleetd.health import ProbeSpec, Verdict
from fleetd.liveness import Liveness
from fleetd.probes import MAX_OUTPUT, ProbeResult, probe
from fleetd.runtime import DockerRuntime, _Demux
from fleetd.store import Store
from tests.unit.probe_helpers import LOOPBACK, FakeExecApi, closed_port, http, http_server, runtime_with


def test_http_probe_says_the_status_code() -> None:
    async def main() -> ProbeResult:
        async with http_server() as (port, _seen):
            return await probe(http(port, "/status/500"), LOOPBACK, None)

    result = asyncio.run(main())
    assert not result.ok
    assert result.message == "HTTP probe failed with statuscode: 500"
    assert result.data == {"error": result.message, "status_code": 500}


def test_http_probe_says_connection_refused_and_timeout() -> None:
    port = closed_port()
    result = asyncio.run(probe(http(port, "/healthz"), LOOPBACK, None))
    assert result.message == (f'Get "http://{LOOPBACK}:{port}/healthz": dial tcp {LOOPBACK}:{port}: '
                              "connect: connection refused")

    async def slow() -> ProbeResult:
        async with http_server() as (port, _seen):
            return await probe(http(port, "/slow", timeout=0.2), LOOPBACK, None)

    assert "timeout after 0.2 s" in asyncio.run(slow()).message


def test_tcp_probe_says_connection_refused() -> None:
    port = closed_port()
    result = asyncio.run(probe(ProbeSpec("tcp", port, timeout=1), LOOPBACK, None))
    assert result.message == f"dial tcp {LOOPBACK}:{port}: connect: connection refused"


def test_exec_probe_says_exit_code_and_output_bounded() -> None:
    spec = ProbeSpec("exec", command=("check",), timeout=1)

    def returning(code: int, output: bytes) -> Any:
        async def exec_fn(command: tuple[str, ...], timeout: float) -> tuple[int, bytes]:
            return code, output
        return exec_fn

    result = asyncio.run(probe(spec, LOOPBACK, returning(3, b"not ready yet\n")))
    assert result.message == "command exited with code 3: not ready yet"
    assert result.data == {"error": result.message, "exit_code": 3, "output": "not ready yet\n"}
    long = asyncio.run(probe(spec, LOOPBACK, returning(1, b"x" * (MAX_OUTPUT + 1))))
    assert long.data["output"] == "x" * MAX_OUTPUT + "…"
    assert len(long.message) <= 2 * MAX_OUTPUT
    timed_out = asyncio.run(probe(spec, LOOPBACK, returning(124, b"")))
    assert timed_out.message == "command timed out after 1 s" and timed_out.data["exit_code"] == 124
    assert asyncio.run(probe(spec, LOOPBACK, returning(0, b"fine"))) == ProbeResult(True)


def frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def test_demux_keeps_both_streams_up_to_the_limit() -> None:
    demux = _Demux(10)
    data = frame(1, b"hello ") + frame(2, b"world, and more")
    for i in range(0, len(data), 3):  # however the bytes arrive
        demux.feed(data[i:i + 3])
    assert demux.kept() == b"hello worl"


class SocketExecApi(FakeExecApi):
    """exec_start(socket=True) hands back one end of a socket pair the test writes the output into."""

    def __init__(self, exit_code: int, output: bytes) -> None:
        super().__init__(exit_code, polls=0)
        self.ours, self.theirs = socket.socketpair()
        self.theirs.sendall(output)
        self.theirs.close()

    def exec_start(self, exec_id: str, **kwargs: Any) -> Any:  # type: ignore[override]
        self.started.append({"exec_id": exec_id, **kwargs})
        return self.ours


def test_exec_output_reads_the_multiplexed_stream() -> None:
    api = SocketExecApi(7, frame(1, b"out\n") + frame(2, b"err\n" + b"y" * 5000))
    runtime: DockerRuntime = runtime_with(api)  # type: ignore[arg-type]
    code, output = runtime.exec_output("c1", ["check"], 5, keep=16)
    assert code == 7 and output == b"out\nerr\n" + b"y" * 9
    assert api.created[0]["stdout"] is True and api.created[0]["stderr"] is True
    assert api.started == [{"exec_id": "exec1", "socket": True}]


def test_probe_failed_event_says_why(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")

    async def exec_probe(*args: Any) -> int:
        return 0

    liveness = Liveness(store, exec_probe)
    result = ProbeResult(False, "command exited with code 3: " + "z" * 5000,
                         {"error": "command exited with code 3: " + "z" * 5000, "exit_code": 3, "output": "z" * 5000})
    liveness._act("a1", Verdict("readiness", False), result, "exec")
    event = store.events()[-1]
    assert event["type"] == "probe_failed"
    assert event["message"].startswith("readiness probe failed: command exited with code 3: zzz")
    assert len(event["message"]) <= MAX_MESSAGE_CHARS
    assert event["data"]["probe"] == "readiness" and event["data"]["kind"] == "exec"
    assert event["data"]["exit_code"] == 3 and len(event["data"]["output"]) <= 1024
    assert len(json.dumps(event["data"])) <= 8192
    store.close()
