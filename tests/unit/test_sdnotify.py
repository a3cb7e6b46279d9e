"""fleetd.sdnotify: the sd_notify(3) datagram and the watchdog period, without systemd or a daemon.

The daemon end to end (READY=1, WATCHDOG=1, STOPPING=1) is in tests/integration/test_sdnotify.py.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile

import pytest

from fleetd.sdnotify import notify, watchdog_period


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_watchdog_period_unset(clean_env: pytest.MonkeyPatch) -> None:
    assert watchdog_period() is None
    clean_env.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_period() is None  # a pid alone enables nothing


def test_watchdog_period_is_half_the_timeout(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_period() == 15.0
    clean_env.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_period() == 15.0


@pytest.mark.parametrize("usec", ["0", "", "abc", "-5", "1.5"])
def test_watchdog_period_ignores_unusable_values(clean_env: pytest.MonkeyPatch, usec: str) -> None:
    clean_env.setenv("WATCHDOG_USEC", usec)
    assert watchdog_period() is None


def test_watchdog_period_for_another_process(clean_env: pytest.MonkeyPatch) -> None:
    """systemd names the watched pid; a child that inherited the variables must not ping."""
    clean_env.setenv("WATCHDOG_USEC", "1000000")
    clean_env.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_period() is None


def test_notify_without_systemd(clean_env: pytest.MonkeyPatch) -> None:
    assert notify("READY=1") is False


def test_notify_to_a_path(clean_env: pytest.MonkeyPatch) -> None:
    directory = tempfile.mkdtemp(prefix="fln-", dir="/tmp")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
            receiver.bind(f"{directory}/notify")
            receiver.settimeout(5)
            clean_env.setenv("NOTIFY_SOCKET", f"{directory}/notify")
            assert notify("READY=1\nSTATUS=ok") is True
            assert receiver.recv(4096) == b"READY=1\nSTATUS=ok"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_notify_to_an_abstract_socket(clean_env: pytest.MonkeyPatch) -> None:
    """``@name`` in $NOTIFY_SOCKET is the abstract address ``\\0name`` (what systemd >= 254 may pass)."""
    name = f"fleetd-test-notify-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(5)
        clean_env.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("WATCHDOG=1") is True
        assert receiver.recv(4096) == b"WATCHDOG=1"
