"""Habits of docker and systemd users (issue 15), through the real CLI and daemon: durations, wait, rm,
--env-file, names held until their agent is removed, teardown without a terminal."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness import AGENT_IMAGE, Daemon


@pytest.fixture(scope="module")
def shared() -> Iterator[Daemon]:
    d = Daemon().start()
    try:
        yield d
    finally:
        d.cleanup()


def test_durations_on_every_command(shared: Daemon) -> None:
    daemon = shared
    agent = daemon.spawn("--ttl", "1h30m", "--grace", "30s", "--heartbeat-interval", "0", AGENT_IMAGE, "sleep", "300")
    record = daemon.agent(agent)
    assert (record["limits"]["ttl"], record["limits"]["grace"]) == (5400, 30)
    # click's path (an option the fast path does not know first) reads them too
    slow = daemon.spawn("--label", "x=y", "--ttl=1.5h", "--grace", "2m", AGENT_IMAGE, "sleep", "300")
    assert (daemon.agent(slow)["limits"]["ttl"], daemon.agent(slow)["limits"]["grace"]) == (5400, 120)
    daemon.cli("extend", agent, "--ttl", "90m")
    assert 5300 < daemon.agent(agent)["ttl_remaining"] <= 5400
    bad = daemon.cli("extend", agent, "--ttl", "2d", check=False)
    assert bad.returncode == 1 and bad.stderr == "Error: --ttl: must be at most 86400, got 172800\n"
    stopped = daemon.cli("stop", "-t", "1s", agent, slow)
    assert stopped.stdout.split() == [agent, slow]
    assert daemon.agent(agent)["state"] == "exited"
