"""docker and systemd habits of the CLI: ps --filter/--format, inspect --format, events and logs --since,
draining shown by status and ps (issue 15)."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.integration.harness import AGENT_IMAGE, FLEETD, Daemon


def one_line_error(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and words in result.stderr and "Traceback" not in result.stderr


def test_ps_filter_and_format(daemon: Daemon) -> None:
    a = daemon.spawn("--name", "crawl-a", "--label", "team=a", "--label", "tier=x", "--ttl", "600", AGENT_IMAGE,
                     "sleep", "60")
    b = daemon.spawn("--name", "crawl-b", "--label", "team=b", AGENT_IMAGE, "true")
    daemon.wait_state(b, "exited")
    c = daemon.spawn("--name", "writer", AGENT_IMAGE, "sleep", "60")

    def ids(*args: str) -> list[str]:
        return daemon.cli("ps", "-q", *args).stdout.split()

    assert ids("--filter", "label=team=a") == [a]
    assert ids("--filter", "label=team=a", "--filter", "label=team=b") == [a]  # b exited: not without -a
    assert ids("-a", "--filter", "label=team=a", "--filter", "label=team=b") == [a, b]  # one key: ORed
    assert ids("--filter", "label=tier") == [a]
    assert ids("--filter", "state=exited") == [b]  # a state filter needs no -a, as docker's status filter
    assert ids("-a", "--filter", "name=crawl", "--filter", "state=running") == [a]  # two keys: ANDed
    assert ids("-f", "id=" + c[:5]) == [c]
    assert ids("--filter", "role=default", "--filter", "name=writer") == [c]
    assert json.loads(daemon.cli("ps", "--json", "--filter", "label=team=a").stdout)[0]["labels"] == {
        "team": "a", "tier": "x"}

    assert daemon.cli("ps", "--filter", "name=crawl-a", "--format", "{{.ID}} {{.Name}} {{.State}} {{.limits.ttl}}"
                      ).stdout == f"{a} crawl-a running 600\n"
    table = daemon.cli("ps", "--filter", "name=crawl", "-a", "--format", r"table {{.ID}}\t{{.Name}}\t{{.Labels}}"
                       ).stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "LABELS"]
    assert table[1].split() == [a, "crawl-a", "team=a,tier=x"] and table[2].split() == [b, "crawl-b", "team=b"]
    assert table[1].index("crawl-a") == table[0].index("NAME")  # aligned
    lines = daemon.cli("ps", "--format", "json").stdout.splitlines()
    assert [json.loads(line)["id"] for line in lines] == [a, c]
    assert daemon.cli("ps", "--format", "table").stdout.startswith("ID")

    one_line_error(daemon.cli("ps", "--filter", "colour=red", check=False), "bad filter")
    one_line_error(daemon.cli("ps", "--filter", "state=asleep", check=False), "bad filter")
    one_line_error(daemon.cli("ps", "--format", "{{.Nope}}", check=False), "no field .Nope")
    one_line_error(daemon.cli("ps", "--format", "{{range .}}", check=False), "not supported")


def test_inspect_format(daemon: Daemon) -> None:
    agent_id = daemon.spawn("--label", "team=a", "--ttl", "600", AGENT_IMAGE, "sleep", "60")
    out = daemon.cli("inspect", "--format", "{{.state}} {{.limits.ttl}} {{json .labels}} [{{.exit_code}}]",
                     agent_id).stdout
    assert out == 'running 600 {"team":"a"} []\n'
    assert json.loads(daemon.cli("inspect", "--format", "{{json .spec}}", agent_id).stdout)["ttl"] == 600
    one_line_error(daemon.cli("inspect", "--format", "{{.limits.nope}}", agent_id, check=False), "no field")
    one_line_error(daemon.cli("inspect", "--format", "{{if .state}}x{{end}}", agent_id, check=False),
                   "not supported")


def test_status_and_ps_show_draining(daemon: Daemon) -> None:
    assert "draining" not in daemon.cli("status").stdout
    assert "DRAINING" not in daemon.cli("ps").stderr
    daemon.cli("drain", "--timeout", "0")
    assert json.loads(daemon.cli("status", "--json").stdout)["draining"] is True
    assert "draining   YES" in daemon.cli("status").stdout
    ps = daemon.cli("ps")
    assert "DRAINING" in ps.stderr and ps.stdout.startswith("ID")
    assert daemon.cli("ps", "-q").stderr == ""  # scripts' output stays as it was
    daemon.cli("undrain")
    assert json.loads(daemon.cli("status", "--json").stdout)["draining"] is False
    assert "DRAINING" not in daemon.cli("ps").stderr


def events(daemon: Daemon, *args: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in daemon.cli("events", "--json", *args).stdout.splitlines()]


def test_events_since_and_until(daemon: Daemon) -> None:
    first = daemon.spawn(AGENT_IMAGE, "true")
    daemon.wait_state(first, "exited")
    time.sleep(0.05)
    second = daemon.spawn(AGENT_IMAGE, "true")
    daemon.wait_state(second, "exited")
    every = events(daemon)
    middle = next(e for e in every if e["agent_id"] == second)
    cut = str(middle["time"])
    later = [e for e in every if str(e["time"]) >= cut]
    earlier = [e for e in every if str(e["time"]) <= cut]
    assert later and earlier and len(later) < len(every)

    assert events(daemon, "--since", cut) == later
    assert events(daemon, "--until", cut) == earlier
    assert events(daemon, "--since", cut, "--until", cut) == [e for e in every if e["time"] == cut]
    assert events(daemon, "--since", "10m") == every
    assert events(daemon, "--until", "10m") == []
    assert events(daemon, "--since", str(int(time.time()) + 60)) == []  # Unix seconds
    assert events(daemon, "--since", str(int(time.time()) - 600)) == every
    assert events(daemon, "--after", str(middle["id"])) == [e for e in every if e["id"] > middle["id"]]
    one_line_error(daemon.cli("events", "--since", "yesterday", check=False), "since")
    one_line_error(daemon.cli("events", "--since", "1m", "--until", "1h", check=False), "until")

    # -f --since: following starts there; --until: it ends by itself then.
    end = datetime.now(UTC) + timedelta(seconds=4)
    started = time.monotonic()
    with subprocess.Popen([FLEETD, "--socket", str(daemon.socket), "events", "-f", "--json", "--since", cut,
                           "--until", end.isoformat()], stdout=subprocess.PIPE, text=True) as follower:
        third = daemon.spawn(AGENT_IMAGE, "true")
        out, _ = follower.communicate(timeout=30)
    assert follower.returncode == 0 and 3 <= time.monotonic() - started < 20
    followed = [json.loads(line) for line in out.splitlines()]
    assert followed[: len(later)] == later
    assert any(e["agent_id"] == third for e in followed[len(later):])


def test_logs_since_and_timestamps(daemon: Daemon) -> None:
    agent_id = daemon.spawn(AGENT_IMAGE, "sh", "-c", "echo one; sleep 2; echo two")
    daemon.wait_state(agent_id, "exited")
    stamped = daemon.cli("logs", "-t", agent_id).stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["one", "two"]
    times = [datetime.fromisoformat(line.split(" ", 1)[0]) for line in stamped]
    assert times[1] - times[0] >= timedelta(seconds=1.5)
    between = (times[0] + timedelta(seconds=1)).isoformat()
    assert daemon.cli("logs", "--since", between, agent_id).stdout.split() == ["two"]
    assert daemon.cli("logs", "--since", str(int(times[0].timestamp()) - 1), agent_id).stdout.split() == [
        "one", "two"]
    assert daemon.cli("logs", "--since", "1h", "--timestamps", agent_id).stdout.splitlines() == stamped
    assert daemon.cli("logs", "--since", "1ms", agent_id).stdout == ""
    one_line_error(daemon.cli("logs", "--since", "soon", agent_id, check=False), "since")
