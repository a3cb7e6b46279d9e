"""``fleetd top`` against a real daemon: live under a pseudo-terminal, and ``--once`` in a pipe."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import termios
import time
from typing import Any

import pytest

from cli.client import ApiError
from tests.integration.harness import AGENT_IMAGE, FLEETD, Daemon, wait_for

# CSI sequences (colours, cursor moves, ?1049h/l, ?25l/h), other two-byte escapes, carriage returns.
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]|\r")
COLUMNS, LINES = 200, 50


class Terminal:
    """``fleetd top`` running under a pseudo-terminal of its own (its controlling terminal)."""

    def __init__(self, daemon: Daemon, *args: str, sigint: Any = signal.SIG_DFL) -> None:
        argv = [FLEETD, "--socket", str(daemon.socket), "top", *args]
        env = {**os.environ, "TERM": "xterm", "COLUMNS": str(COLUMNS), "LINES": str(LINES)}
        pid, fd = pty.fork()
        if pid == 0:  # the child: exec at once (pty.fork made the slave its stdin/stdout/stderr and tty)
            try:
                signal.signal(signal.SIGINT, sigint)  # as given, whatever the test runner's disposition is
                os.execve(FLEETD, argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
        self.raw = b""
        self.status: int | None = None

    def read(self, timeout: float) -> None:
        """Take what the program wrote in the next ``timeout`` seconds (or until it closes the terminal)."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: the program exited and the slave side is closed
                return
            if not data:
                return
            self.raw += data

    @property
    def screen(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace"))

    def wait_screen(self, *needles: str, timeout: float = 20) -> str:
        end = time.monotonic() + timeout
        while not all(n in self.screen for n in needles):
            if time.monotonic() > end:
                raise AssertionError(f"{needles} not on the screen after {timeout}s:\n{self.screen[-4000:]}")
            self.read(0.2)
        return self.screen

    def send(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait_exit(self, timeout: float) -> int:
        """The exit status, reading the screen meanwhile (a full terminal buffer would block the program)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                self.read(0.1)
                return self.status
            self.read(0.1)
        raise AssertionError(f"fleetd top still running {timeout}s after the key:\n{self.screen[-4000:]}")

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)

    def modes(self) -> int:
        """The terminal's local modes now (ICANON, ECHO, ...)."""
        lflag: int = termios.tcgetattr(self.fd)[3]
        return lflag


def stats_served(daemon: Daemon) -> bool:
    try:
        daemon.api.call("GET", "/v1/stats")
        return True
    except ApiError:
        return False


def test_top_live_under_a_terminal_quits_on_ctrl_c_and_q(daemon: Daemon) -> None:
    agent_id = daemon.spawn("--ttl", "120", AGENT_IMAGE, "sleep", "300")
    daemon.wait_state(agent_id, "running")
    # Started with SIGINT ignored, as from a script run in the background: Ctrl-C must quit all the same.
    term = Terminal(daemon, "--interval", "0.5", sigint=signal.SIG_IGN)
    try:
        screen = term.wait_screen(agent_id, "running", "zone 2 healthy", "q or Ctrl-C to quit")
        assert re.search(r"\b1m[0-5]\ds\b", screen), screen  # the TTL, e.g. 1m58s
        assert "\x1b[?1049h" in term.raw.decode(errors="replace")  # the alternate screen, like htop
        # Keys do not echo while it runs (cbreak), and Ctrl-C still interrupts.
        assert term.modes() & termios.ECHO == 0
        frames = term.screen.count("q or Ctrl-C to quit")
        term.read(1.6)  # three more refreshes at 0.5 s
        assert term.screen.count("q or Ctrl-C to quit") >= frames + 2, "the view is not refreshing"
        if stats_served(daemon):  # a second frame has the CPU delta and memory
            line = next(line for line in reversed(term.screen.splitlines()) if line.startswith(agent_id))
            assert re.search(r"\d+\.\d%", line), line
            assert re.search(r"\d+ / 512 MiB", line), line
        term.send(b"\x03")
        assert term.wait_exit(5) == 0, term.screen[-2000:]
        raw = term.raw.decode(errors="replace")
        assert raw.rindex("\x1b[?1049l") > raw.rindex("\x1b[?1049h")  # back from the alternate screen
        assert raw.rindex("\x1b[?25h") > raw.rindex("\x1b[?25l")  # cursor shown again
        assert "Traceback" not in term.screen and "Aborted" not in term.screen
        assert term.modes() & termios.ICANON and term.modes() & termios.ECHO  # terminal modes restored
    finally:
        term.close()

    term = Terminal(daemon, "--interval", "5")
    try:
        term.wait_screen(agent_id)
        term.send(b"q")  # quits without waiting out the interval
        assert term.wait_exit(3) == 0, term.screen[-2000:]
    finally:
        term.close()


def test_top_once_prints_one_frame_and_all_shows_exited(daemon: Daemon) -> None:
    running = daemon.spawn("--ttl", "120", "--name", "top-runner", AGENT_IMAGE, "sleep", "300")
    gone = daemon.spawn("--ttl", "120", "--name", "top-gone", AGENT_IMAGE, "sleep", "300")
    daemon.wait_state(running, "running")
    daemon.cli("kill", gone)
    daemon.wait_state(gone, "exited")

    result = daemon.cli("top", "--once", timeout=30)
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"fleetd {daemon.instance}") and "1 agent running" in lines[0], lines[0]
    assert lines[1].split()[:7] == ["ID", "NAME", "ROLE", "STATE", "READY", "TTL", "HEARTBEAT"]
    row = next(line for line in lines if line.startswith(running))
    assert "top-runner" in row and "running" in row and "$0.0000 / $50.0000" in row, row
    assert re.search(r"\b1m[0-5]\ds\b|\b2m00s\b", row), row
    assert gone not in result.stdout

    every = daemon.cli("top", "--once", "-a", timeout=30).stdout
    exited = next(line for line in every.splitlines() if line.startswith(gone))
    assert "top-gone" in exited and "exited (killed" in exited, exited

    # The daemon gone: one line, exit 1.
    daemon.stop()
    failed = daemon.cli("top", "--once", check=False, timeout=30)
    assert failed.returncode == 1 and failed.stderr.startswith("Error: cannot "), failed.stderr


# Reports progress once through the gateway (the fleetd_agent SDK is in the agent image), then idles.
PROGRESS_AGENT = ["python3", "-c", "import time, fleetd_agent\n"
                  "print('heartbeat', fleetd_agent.progress(3, 10, 'reading papers'), flush=True)\n"
                  "time.sleep(300)"]


def test_top_shows_heartbeat_age_and_progress(daemon: Daemon) -> None:
    agent_id = daemon.spawn("--ttl", "120", "--heartbeat-interval", "30", AGENT_IMAGE, *PROGRESS_AGENT)
    logs = wait_for(lambda: "heartbeat " in (text := daemon.logs(agent_id)) and text, 30, what="the heartbeat")
    if "heartbeat True" not in logs:
        pytest.skip("this fleetd/zone2 image does not take heartbeats yet: rebuild it with 'fleetd images build'")
    out = daemon.cli("top", "--once", timeout=30).stdout
    row = next(line for line in out.splitlines() if line.startswith(agent_id))
    assert "3/10 reading papers" in row, row
    assert re.search(r"\b\d+s ago\b", row), row
