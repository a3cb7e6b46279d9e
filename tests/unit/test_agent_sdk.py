"""fleetd_agent, the agent SDK (sdk/python): heartbeats against a real loopback server,
checkpoints on disk, and on_sigterm in a real subprocess that gets a real SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

SDK = Path(__file__).resolve().parents[2] / "sdk" / "python"
sys.path.insert(0, str(SDK))

import fleetd_agent  # noqa: E402


@dataclass
class Seen:
    method: str
    path: str
    content_type: str
    body: Any


@dataclass
class Gateway:
    url: str
    status: int = 200
    requests: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def seen(self) -> list[Seen]:
        with self.lock:
            return list(self.requests)


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    """A loopback HTTP server standing in for zone 2; FLEETD_GATEWAY_URL points at it."""
    state = Gateway(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.requests.append(
                    Seen("POST", self.path, self.headers.get("Content-Type", ""), json.loads(raw or b"null"))
                )
            self.answer()

        def do_GET(self) -> None:
            with state.lock:
                state.requests.append(Seen("GET", self.path, "", None))
            self.answer()

        def answer(self) -> None:
            body = json.dumps({"ok": state.status < 300}).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("FLEETD_GATEWAY_URL", state.url + "/")  # a trailing slash is tolerated
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def clean_progress() -> Iterator[None]:
    yield
    with fleetd_agent._progress_lock:
        fleetd_agent._progress_state.clear()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# --- heartbeat ---------------------------------------------------------------


def test_heartbeat_posts_json_progress(gateway: Gateway) -> None:
    assert fleetd_agent.heartbeat(8, 15, "step 8") is True
    assert fleetd_agent.heartbeat() is True
    first, second = gateway.seen()
    assert (first.method, first.path, first.content_type) == ("POST", "/fleetd/heartbeat", "application/json")
    assert first.body == {"step": 8, "total": 15, "message": "step 8"}
    assert second.body == {}


def test_heartbeat_sends_only_given_fields(gateway: Gateway) -> None:
    assert fleetd_agent.heartbeat(message="warming up")
    assert gateway.seen()[0].body == {"message": "warming up"}


def test_heartbeat_false_on_non_2xx(gateway: Gateway) -> None:
    gateway.status = 503
    assert fleetd_agent.heartbeat(1, 2) is False
    assert len(gateway.seen()) == 1


def test_heartbeat_unreachable_is_false_and_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETD_GATEWAY_URL", f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    assert fleetd_agent.heartbeat(1, 2, timeout=1.0) is False
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1:1/", "http://[::1"])
def test_heartbeat_never_raises_on_bad_url(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("FLEETD_GATEWAY_URL", url)
    assert fleetd_agent.heartbeat(timeout=0.5) is False


def test_heartbeat_without_gateway_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETD_GATEWAY_URL", raising=False)
    assert fleetd_agent.heartbeat(1, 2) is False
    assert fleetd_agent.gateway_url() is None


def test_progress_accumulates_and_sends_at_once(gateway: Gateway) -> None:
    assert fleetd_agent.progress(total=15, message="loading")
    assert fleetd_agent.progress(step=3)
    assert [s.body for s in gateway.seen()] == [
        {"total": 15, "message": "loading"},
        {"step": 3, "total": 15, "message": "loading"},
    ]


# --- Heartbeater -------------------------------------------------------------


def test_heartbeater_sends_repeatedly_with_latest_progress(gateway: Gateway) -> None:
    beater = fleetd_agent.start_heartbeat(0.05)
    try:
        assert beater.running
        wait_for(lambda: len(gateway.seen()) >= 3)
        fleetd_agent.progress(8, 15, "halfway")
        count = len(gateway.seen())
        wait_for(lambda: len(gateway.seen()) >= count + 2)
    finally:
        beater.stop()
    assert not beater.running
    bodies = [s.body for s in gateway.seen()]
    assert bodies[0] == {}
    assert bodies[-1] == {"step": 8, "total": 15, "message": "halfway"}
    assert all(s.path == "/fleetd/heartbeat" and s.method == "POST" for s in gateway.seen())
    after_stop = len(gateway.seen())
    time.sleep(0.2)
    assert len(gateway.seen()) == after_stop


def test_heartbeater_interval_from_env(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETD_HEARTBEAT_INTERVAL", "0.05")
    with fleetd_agent.start_heartbeat() as beater:
        assert beater.interval == 0.05
        wait_for(lambda: len(gateway.seen()) >= 2)
    assert not beater.running


@pytest.mark.parametrize("value", [None, "0", "", "nonsense", "-1"])
def test_heartbeater_off_is_a_stopped_no_op(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("FLEETD_HEARTBEAT_INTERVAL", raising=False)
    else:
        monkeypatch.setenv("FLEETD_HEARTBEAT_INTERVAL", value)
    beater = fleetd_agent.start_heartbeat()
    assert not beater.running
    beater.stop()
    time.sleep(0.1)
    assert gateway.seen() == []


def test_heartbeater_without_gateway_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETD_GATEWAY_URL", raising=False)
    assert not fleetd_agent.start_heartbeat(0.05).running


def test_heartbeater_stop_is_safe_from_many_threads(gateway: Gateway) -> None:
    beater = fleetd_agent.start_heartbeat(0.02)
    wait_for(lambda: len(gateway.seen()) >= 1)
    stoppers = [threading.Thread(target=beater.stop) for _ in range(4)]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join(5)
    assert not beater.running
    beater.stop()


def test_heartbeater_rejects_negative_interval() -> None:
    with pytest.raises(ValueError):
        fleetd_agent.Heartbeater(-1)


# --- checkpoints -------------------------------------------------------------


@pytest.fixture
def checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "checkpoint"
    monkeypatch.setenv("FLEETD_CHECKPOINT_DIR", str(directory))
    return directory


def test_checkpoint_dir_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETD_CHECKPOINT_DIR", raising=False)
    assert fleetd_agent.checkpoint_dir() == Path("/fleetd/checkpoint")


def test_checkpoint_round_trip(checkpoints: Path) -> None:
    assert fleetd_agent.load_checkpoint() is None
    assert fleetd_agent.load_checkpoint(default={"step": 0}) == {"step": 0}
    state = {"step": 8, "done": ["a", "b"], "note": "ünïcode"}
    fleetd_agent.save_checkpoint(state)
    fleetd_agent.save_checkpoint({"step": 9, "done": ["a", "b", "c"], "note": "ünïcode"})
    assert fleetd_agent.load_checkpoint() == {"step": 9, "done": ["a", "b", "c"], "note": "ünïcode"}
    fleetd_agent.save_checkpoint([1, 2], name="other")
    assert fleetd_agent.load_checkpoint("other") == [1, 2]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["other.json", "state.json"]  # no temp files left


def test_checkpoint_bytes_round_trip(checkpoints: Path) -> None:
    assert fleetd_agent.load_checkpoint_bytes("blob") is None
    fleetd_agent.save_checkpoint_bytes(b"\x00\x01binary", name="blob")
    assert fleetd_agent.load_checkpoint_bytes("blob") == b"\x00\x01binary"
    assert (checkpoints / "blob.bin").read_bytes() == b"\x00\x01binary"


def test_checkpoint_unencodable_keeps_previous(checkpoints: Path) -> None:
    fleetd_agent.save_checkpoint({"step": 1})
    with pytest.raises(TypeError):
        fleetd_agent.save_checkpoint({"step": object()})
    assert fleetd_agent.load_checkpoint() == {"step": 1}
    assert [p.name for p in checkpoints.iterdir()] == ["state.json"]


def test_checkpoint_failed_write_leaves_previous_and_no_temp(
    checkpoints: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleetd_agent.save_checkpoint({"step": 1})

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(fleetd_agent.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        fleetd_agent.save_checkpoint({"step": 2})
    monkeypatch.undo()
    assert json.loads((checkpoints / "state.json").read_text()) == {"step": 1}
    assert [p.name for p in checkpoints.iterdir()] == ["state.json"]


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden"])
def test_checkpoint_rejects_path_names(checkpoints: Path, name: str) -> None:
    with pytest.raises(ValueError):
        fleetd_agent.save_checkpoint({}, name=name)


def test_checkpoint_concurrent_saves_never_tear(checkpoints: Path) -> None:
    big = {"payload": "x" * 200_000}
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        while not stop.is_set():
            fleetd_agent.save_checkpoint({**big, "n": n})

    def reader() -> None:
        while not stop.is_set():
            try:
                value = fleetd_agent.load_checkpoint()
                assert value is None or len(value["payload"]) == 200_000
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)] + [threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert errors == []


# --- on_sigterm --------------------------------------------------------------

AGENT = """
import os, sys, time
sys.path.insert(0, {sdk!r})
import fleetd_agent

marker = {marker!r}

def drain():
    assert fleetd_agent.should_stop()
    {drain}

fleetd_agent.on_sigterm(drain, {options})
print("ready", flush=True)
print("buffered, flushed at exit", end="")
time.sleep(60)  # the main thread is blocked: the SDK must exit the process anyway
sys.exit(99)
"""


def run_agent(
    tmp_path: Path, drain: str, options: str = "", env: dict[str, str] | None = None
) -> tuple[int, str, str, float]:
    """Start an agent using on_sigterm, SIGTERM it once ready; (exit code, stdout, stderr, seconds to exit)."""
    marker = tmp_path / "drained"
    code = AGENT.format(sdk=str(SDK), marker=str(marker), drain=drain, options=options)
    # stdout block-buffered in the agent, so that the test sees the SDK flush it before exiting
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    # Unbuffered here: readline must not swallow bytes that communicate() would then miss.
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
        env={**environment, **(env or {})},
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
        return process.returncode, out.decode(), err.decode(), time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_sigterm_drains_and_exits_0(tmp_path: Path) -> None:
    code, out, err, took = run_agent(tmp_path, "time.sleep(0.2); open(marker, 'w').write('drained')")
    assert code == 0, err
    assert (tmp_path / "drained").read_text() == "drained"
    assert out == "buffered, flushed at exit"
    assert took < 10


def test_sigterm_exit_code_option(tmp_path: Path) -> None:
    code, _, err, _ = run_agent(tmp_path, "open(marker, 'w').write('x')", "exit_code=3")
    assert code == 3, err


def test_sigterm_without_drain_exits_at_once(tmp_path: Path) -> None:
    code = "import sys, time; sys.path.insert(0, {!r}); import fleetd_agent; fleetd_agent.on_sigterm(); "
    code += "print('ready', flush=True); time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", code.format(str(SDK))], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    process.stdout.close()


def test_sigterm_drain_timeout_exits_1(tmp_path: Path) -> None:
    code, _, err, took = run_agent(tmp_path, "time.sleep(30)", "timeout=0.5")
    assert code == 1
    assert "drain timed out" in err
    assert len(err.strip().splitlines()) == 1
    assert took < 5


def test_sigterm_default_timeout_from_grace(tmp_path: Path) -> None:
    # grace 3 s minus the 2 s margin: drain gets 1 s
    code, _, err, took = run_agent(tmp_path, "time.sleep(30)", env={"FLEETD_GRACE_SECONDS": "3"})
    assert code == 1
    assert "drain timed out after 1 s" in err
    assert 0.9 < took < 5


def test_sigterm_drain_raising_exits_1(tmp_path: Path) -> None:
    code, _, err, _ = run_agent(tmp_path, "raise RuntimeError('cannot drain')")
    assert code == 1
    assert "RuntimeError: cannot drain" in err


def test_sigterm_second_signal_does_not_restart_drain(tmp_path: Path) -> None:
    drain = "open(marker, 'a').write('d'); time.sleep(0.5)"
    marker = tmp_path / "drained"
    code = AGENT.format(sdk=str(SDK), marker=str(marker), drain=drain, options="")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    process.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=10)
    assert process.returncode == 0
    assert marker.read_text() == "d"


def test_on_sigterm_rejects_bad_timeout() -> None:
    with pytest.raises(ValueError):
        fleetd_agent.on_sigterm(timeout=0)
