"""What the daemon writes to its log (the journal under systemd): one line when it starts serving, and a line
per API request only at --log-level debug (at INFO every `fleetd ps` was a line)."""

from __future__ import annotations

import fleetd
from tests.integration.harness import Daemon


def lines(daemon: Daemon) -> list[str]:
    return [line for line in daemon.log().splitlines() if " INFO " in line or " DEBUG " in line]


def test_one_line_per_start_and_requests_only_at_debug() -> None:
    quiet = Daemon().start()
    try:
        quiet.cli("status")
        quiet.cli("ps")
        quiet.stop()
        started = [line for line in lines(quiet) if "listening on" in line]
        assert len(started) == 1 and f"fleetd {fleetd.__version__}" in started[0]
        assert not [line for line in lines(quiet) if "aiohttp.access" in line or "GET /v1/" in line]
    finally:
        quiet.cleanup()
    loud = Daemon(args=("--log-level", "debug")).start()
    try:
        loud.cli("ps")
        assert [line for line in lines(loud) if "aiohttp.access" in line and "GET /v1/agents" in line]
    finally:
        loud.cleanup()
