"""docker and systemd habits of the CLI (issue 15): ps --filter/--format, inspect --format, draining shown
by status and ps."""

from __future__ import annotations

import json
import subprocess

from tests.integration.harness import AGENT_IMAGE, Daemon


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
