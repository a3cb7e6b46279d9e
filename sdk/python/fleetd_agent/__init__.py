"""fleetd_agent: what an agent under fleetd needs, in the standard library only.

The protocol (docs/agent-protocol.md) is plain HTTP and a directory; this
module wraps it for Python agents:

- ``heartbeat()`` / ``progress()`` / ``start_heartbeat()``: tell the gateway the
  agent is alive, optionally with progress. The daemon stops an agent that has
  not sent a heartbeat for twice ``FLEETD_HEARTBEAT_INTERVAL``.
- ``on_sigterm()`` / ``should_stop()`` / ``stopping_event``: drain and exit 0
  within the grace period when the daemon stops the agent.
- ``save_checkpoint()`` / ``load_checkpoint()``: state that survives restarts of
  the same agent, written atomically to ``FLEETD_CHECKPOINT_DIR``.

Example::

    import fleetd_agent

    fleetd_agent.on_sigterm(lambda: fleetd_agent.save_checkpoint(state))
    fleetd_agent.start_heartbeat()
    state = fleetd_agent.load_checkpoint(default={"step": 0})
    while state["step"] < 15 and not fleetd_agent.should_stop():
        do_step(state)
        state["step"] += 1
        fleetd_agent.save_checkpoint(state)
        fleetd_agent.progress(state["step"], 15)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

__version__ = "0.1.0"

__all__ = [
    "Heartbeater",
    "agent_id",
    "checkpoint_dir",
    "gateway_url",
    "heartbeat",
    "load_checkpoint",
    "load_checkpoint_bytes",
    "on_sigterm",
    "progress",
    "save_checkpoint",
    "save_checkpoint_bytes",
    "should_stop",
    "start_heartbeat",
    "stopping_event",
]

HEARTBEAT_PATH = "/fleetd/heartbeat"
DEFAULT_CHECKPOINT_DIR = "/fleetd/checkpoint"
# Docker's own default stop timeout, used when FLEETD_GRACE_SECONDS is absent.
DEFAULT_GRACE_SECONDS = 10.0
# Time left after draining for flushing and exiting before SIGKILL.
GRACE_MARGIN_SECONDS = 2.0
MIN_DRAIN_SECONDS = 1.0

# The gateway is reached directly: an HTTP(S)_PROXY in the agent's env must not catch heartbeats.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def agent_id() -> str | None:
    """This agent's id (``FLEETD_AGENT_ID``), or None outside fleetd."""
    return os.environ.get("FLEETD_AGENT_ID") or None


def gateway_url() -> str | None:
    """The gateway's base URL (``FLEETD_GATEWAY_URL``) without a trailing slash, or None outside fleetd."""
    url = os.environ.get("FLEETD_GATEWAY_URL", "").strip()
    return url.rstrip("/") or None


def _env_seconds(name: str, default: float) -> float:
    """A non-negative number of seconds from the environment; ``default`` when absent or unusable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):  # also rejects NaN
        print(f"fleetd_agent: ignoring {name}={raw!r}: not a number of seconds", file=sys.stderr)
        return default
    return value


# --- heartbeats --------------------------------------------------------------


def _progress_body(step: int | None, total: int | None, message: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if step is not None:
        body["step"] = step
    if total is not None:
        body["total"] = total
    if message is not None:
        body["message"] = message
    return body


def heartbeat(
    step: int | None = None,
    total: int | None = None,
    message: str | None = None,
    *,
    timeout: float = 2.0,
) -> bool:
    """Send one heartbeat, with whichever progress fields are given; True when the gateway answered 2xx.

    ``POST $FLEETD_GATEWAY_URL/fleetd/heartbeat`` with a JSON body such as
    ``{"step": 8, "total": 15}`` (``{}`` when no field is given). Never raises:
    an unreachable gateway, a timeout or a non-2xx answer all give False, and so
    does a missing ``FLEETD_GATEWAY_URL`` (nothing is sent).
    """
    base = gateway_url()
    if base is None:
        return False
    try:
        body = json.dumps(_progress_body(step, total, message)).encode()
        request = urllib.request.Request(
            base + HEARTBEAT_PATH,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"fleetd-agent/{__version__}"},
        )
        with _opener.open(request, timeout=timeout) as response:
            response.read()
            return 200 <= int(response.status) < 300
    except urllib.error.HTTPError as error:
        error.close()
        return False
    except Exception:  # a heartbeat must never take the agent down
        return False


_progress_lock = threading.Lock()
_progress_state: dict[str, Any] = {}


def _latest_progress() -> dict[str, Any]:
    with _progress_lock:
        return dict(_progress_state)


def progress(step: int | None = None, total: int | None = None, message: str | None = None) -> bool:
    """Record progress and send one heartbeat carrying it right away; returns what ``heartbeat()`` returned.

    Progress accumulates: a field passed as None keeps its previous value, so
    ``progress(total=15)`` once and then ``progress(step=i)`` reports both.
    Pass ``message=""`` to clear the message. A running ``Heartbeater`` sends
    the latest progress with every beat.
    """
    with _progress_lock:
        _progress_state.update(_progress_body(step, total, message))
        latest = dict(_progress_state)
    return heartbeat(latest.get("step"), latest.get("total"), latest.get("message"))


class Heartbeater:
    """A daemon thread that sends a heartbeat every ``interval`` seconds, with the latest ``progress()``.

    The first heartbeat is sent as soon as it starts. ``stop()`` is safe to call
    from any thread and more than once. A Heartbeater with interval 0 is a no-op
    that never starts. Usable as a context manager.
    """

    def __init__(self, interval: float, *, timeout: float = 2.0) -> None:
        if not interval >= 0:
            raise ValueError(f"heartbeat interval must be >= 0 seconds, not {interval!r}")
        self.interval = float(interval)
        self.timeout = timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.beats = 0
        self.failures = 0

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stop.is_set()

    def start(self) -> Heartbeater:
        """Start the thread (once); returns self. Does nothing when the interval is 0."""
        with self._lock:
            if self.interval > 0 and self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="fleetd-heartbeat", daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop sending heartbeats; waits up to ``timeout`` seconds for a heartbeat in flight."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.timeout + 1.0 if timeout is None else timeout)

    def _run(self) -> None:
        deadline = time.monotonic()
        while True:
            latest = _latest_progress()
            ok = heartbeat(latest.get("step"), latest.get("total"), latest.get("message"), timeout=self.timeout)
            self.beats += 1
            self.failures += 0 if ok else 1
            # Keep the cadence even when a heartbeat is slow; after a long stall, start counting afresh.
            now = time.monotonic()
            deadline = max(deadline + self.interval, now)
            if self._stop.wait(deadline - now):
                return

    def __enter__(self) -> Heartbeater:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Heartbeater interval={self.interval} running={self.running} beats={self.beats}>"


def start_heartbeat(interval: float | None = None) -> Heartbeater:
    """Start sending heartbeats every ``interval`` seconds (default: ``FLEETD_HEARTBEAT_INTERVAL``).

    Returns a stopped, no-op Heartbeater when heartbeats are off (interval 0 or
    unset) or there is no gateway (``FLEETD_GATEWAY_URL`` unset), so an agent can
    call this unconditionally, under fleetd or not.
    """
    if interval is None:
        interval = _env_seconds("FLEETD_HEARTBEAT_INTERVAL", 0.0)
    beater = Heartbeater(interval)
    if gateway_url() is None:
        return beater
    return beater.start()


# --- stopping ----------------------------------------------------------------

stopping_event = threading.Event()
"""Set once SIGTERM arrived (after ``on_sigterm()``): take no new work."""


def should_stop() -> bool:
    """True once the daemon asked this agent to stop (SIGTERM, with ``on_sigterm()`` installed)."""
    return stopping_event.is_set()


def _default_drain_timeout() -> float:
    grace = _env_seconds("FLEETD_GRACE_SECONDS", DEFAULT_GRACE_SECONDS)
    return max(MIN_DRAIN_SECONDS, grace - GRACE_MARGIN_SECONDS)


def _flush_streams(timeout: float = 1.0) -> None:
    """Flush stdout and stderr, giving up after ``timeout``: a thread stuck writing may hold their locks."""

    def flush() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except Exception:  # a closed or broken stream must not keep the process alive
                pass

    flusher = threading.Thread(target=flush, name="fleetd-flush", daemon=True)
    flusher.start()
    flusher.join(timeout)


def _say(line: str) -> None:
    """One line to fd 2, bypassing sys.stderr (its lock may be held by a blocked thread)."""
    with contextlib.suppress(OSError):
        os.write(2, f"fleetd_agent: {line}\n".encode(errors="replace"))


def _exit_code_of(stop: SystemExit) -> int:
    if stop.code is None:
        return 0
    return stop.code if isinstance(stop.code, int) else 1


def _run_drain(drain: Callable[[], object], exit_code: int, outcome: list[int]) -> None:
    try:
        drain()
        outcome.append(exit_code)
    except SystemExit as stop:
        outcome.append(_exit_code_of(stop))
    except BaseException:  # any failure of drain means exit 1
        traceback.print_exc()
        _say("drain raised; exiting 1")
        outcome.append(1)


def _drain_and_exit(drain: Callable[[], object] | None, timeout: float, exit_code: int) -> None:
    code = exit_code
    if drain is not None:
        outcome: list[int] = []
        worker = threading.Thread(target=_run_drain, args=(drain, exit_code, outcome), name="fleetd-drain", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            _flush_streams()
            _say(f"drain timed out after {timeout:g} s; exiting 1")
            os._exit(1)
        code = outcome[0] if outcome else 1
    _flush_streams()
    os._exit(code)


_sigterm_lock = threading.Lock()


def on_sigterm(
    drain: Callable[[], object] | None = None,
    *,
    timeout: float | None = None,
    exit_code: int = 0,
) -> None:
    """Handle SIGTERM the way fleetd expects: stop taking work, drain, exit within the grace period.

    When SIGTERM arrives:

    1. ``stopping_event`` is set (``should_stop()`` turns True): the agent's
       loop should take no new work.
    2. ``drain()`` runs in its own thread, for at most ``timeout`` seconds
       (default: ``FLEETD_GRACE_SECONDS`` minus 2 s, at least 1 s; the grace
       period defaults to 10 s when the variable is absent).
    3. stdout and stderr are flushed and the process exits via ``os._exit``:
       with ``exit_code`` (0 by default) when drain returned or there is no
       drain; with 1 when drain raised (the traceback goes to stderr); with the
       code of a ``SystemExit`` drain raised; with 1 and one line on stderr,
       ``fleetd_agent: drain timed out ...``, when drain outlived the timeout.

    The exit does not wait for the main thread, so it happens even when the
    main thread is blocked (in ``sleep``, a socket read, a lock, a long LLM
    call). Because of ``os._exit``, ``atexit`` hooks and ``finally`` blocks of
    other threads do not run: put all cleanup (saving a checkpoint, closing
    files) in ``drain``. Drain runs while the main thread keeps running, so it
    must be safe to call concurrently with the agent's work.

    Python runs signal handlers in the main thread between bytecodes: the
    handler itself is only delayed while the main thread is inside a C
    extension that never releases control. Must be called from the main
    thread (a ``signal`` restriction). Further SIGTERMs while draining are
    ignored. Calling ``on_sigterm`` again replaces the previous settings.
    """
    drain_timeout = _default_drain_timeout() if timeout is None else float(timeout)
    if not drain_timeout > 0:
        raise ValueError(f"drain timeout must be > 0 seconds, not {timeout!r}")
    started: list[threading.Thread] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        # Handlers only set flags and hand off: the work happens in a thread that exits the process.
        stopping_event.set()
        with _sigterm_lock:
            if started:
                return
            closer = threading.Thread(
                target=_drain_and_exit, args=(drain, drain_timeout, exit_code), name="fleetd-sigterm", daemon=True
            )
            started.append(closer)
        closer.start()

    signal.signal(signal.SIGTERM, handle)


# --- checkpoints -------------------------------------------------------------


def checkpoint_dir() -> Path:
    """The checkpoint directory (``FLEETD_CHECKPOINT_DIR``, default ``/fleetd/checkpoint``).

    Under fleetd it is a volume that survives restarts of the same agent and is
    removed with the agent.
    """
    return Path(os.environ.get("FLEETD_CHECKPOINT_DIR") or DEFAULT_CHECKPOINT_DIR)


def _checkpoint_path(name: str, suffix: str) -> Path:
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"checkpoint name must be a plain file name not starting with '.', not {name!r}")
    return checkpoint_dir() / f"{name}{suffix}"


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, rename over ``path``, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # The rename itself is durable only once the directory is synced.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(data: Any, name: str = "state") -> None:
    """Save ``data`` as JSON in ``<checkpoint_dir>/<name>.json``, atomically.

    A crash or SIGKILL at any moment leaves either the previous checkpoint or
    the new one, never a torn file. Raises TypeError for data JSON cannot
    encode (before anything is written) and OSError when the disk write fails.
    """
    encoded = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    _write_atomically(_checkpoint_path(name, ".json"), encoded)


def load_checkpoint(name: str = "state", default: Any = None) -> Any:
    """The data last saved with ``save_checkpoint(data, name)``, or ``default`` when there is none."""
    try:
        text = _checkpoint_path(name, ".json").read_bytes()
    except FileNotFoundError:
        return default
    return json.loads(text)


def save_checkpoint_bytes(data: bytes, name: str = "state") -> None:
    """Save raw bytes in ``<checkpoint_dir>/<name>.bin``, atomically (as ``save_checkpoint``)."""
    _write_atomically(_checkpoint_path(name, ".bin"), bytes(data))


def load_checkpoint_bytes(name: str = "state", default: bytes | None = None) -> bytes | None:
    """The bytes last saved with ``save_checkpoint_bytes(data, name)``, or ``default`` when there are none."""
    try:
        return _checkpoint_path(name, ".bin").read_bytes()
    except FileNotFoundError:
        return default
