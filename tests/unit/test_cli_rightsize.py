"""``fleetd rightsize`` (cli/rightsize.py) against a fake daemon on a Unix socket: the requests it sends (the
deployment first, then the role), what it prints, its exit statuses. The canned answers are fleetd.rightsize's
reports over rows as fleetd.peaks keeps them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli.main import main
from fleetd.models import iso, utcnow
from fleetd.rightsize import report
from tests.unit.fake_daemon import Answer, FakeDaemon, Seen, error, fake_daemon

MIB = 1 << 20
NO_SUCH_DEPLOYMENT = error(404, "not_found", "no such deployment: researcher")
NO_SUCH_ROLE = error(404, "not_found", "no such role: nobody")


@pytest.fixture
def daemon() -> Iterator[FakeDaemon]:
    with fake_daemon() as fake:
        yield fake


def run(daemon: FakeDaemon, *args: str) -> Result:
    return CliRunner().invoke(main, ["--socket", str(daemon.socket_path), *args], prog_name="fleetd")


def finished(peak_mib: int, cpu_seconds: float = 30.0, peak_cores: float = 1.0,
             reason: str = "exited") -> dict[str, Any]:
    start = utcnow() - timedelta(hours=1)
    return {"id": "x", "peak_memory_bytes": peak_mib * MIB, "cpu_ns": int(cpu_seconds * 1e9),
            "peak_cpu_cores": peak_cores, "started_at": iso(start), "finished_at": iso(start + timedelta(minutes=1)),
            "reason": reason}


def answer(kind: str, name: str, rows: list[dict[str, Any]], memory: int | None, nano_cpus: int | None) -> Answer:
    return Answer(200, {"kind": kind, "name": name, **report(rows, memory, nano_cpus)})


def test_a_deployment_is_reported_with_a_table_the_recommendation_and_the_flags(daemon: FakeDaemon) -> None:
    rows = [finished(n * 100) for n in range(1, 6)] + [finished(512, reason="oom_killed")]
    daemon.answers[("GET", "/v1/rightsize")] = answer("deployment", "web", rows, 2048 * MIB, 500_000_000)
    result = run(daemon, "rightsize", "web")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "deployment web: 6 finished agents, 6 with a measured peak"
    assert lines[1].split() == ["P50", "P95", "MAX", "LIMIT"]
    assert lines[2].split() == ["peak", "memory", "300", "MiB", "512", "MiB", "512", "MiB", "2048", "MiB"]
    assert lines[3].split() == ["cpu", "(cores,", "run", "average)", "0.50", "0.50", "0.50", "0.5"]
    assert lines[4].split() == ["peak", "cpu", "(cores)", "1.00", "1.00", "1.00", "0.5"]
    assert lines[5] == "recommended: --memory 1024m (2 x the p95 peak of 512 MiB)"
    assert lines[6] == "flags: oom (1 OOM-killed: the memory limit was hit); oversized (the memory limit is 4 x " \
                       "the p95 peak or more)"
    assert daemon.seen == [Seen("GET", "/v1/rightsize", {"deployment": "web"}, None)]


def test_a_name_that_is_no_deployment_is_a_role(daemon: FakeDaemon) -> None:
    role = answer("role", "researcher", [finished(100)], None, None)
    daemon.answers[("GET", "/v1/rightsize")] = [NO_SUCH_DEPLOYMENT, role]
    result = run(daemon, "rightsize", "researcher")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "role researcher: 1 finished agents, 1 with a measured peak"
    assert lines[2].split()[-1] == "-"  # no memory limit
    assert lines[-2:] == ["no recommendation: 1 of 1 finished agents have a measured peak: a recommendation needs 5",
                          "flags: none"]
    assert [s.query for s in daemon.seen] == [{"deployment": "researcher"}, {"role": "researcher"}]


def test_a_name_that_is_neither_is_a_one_line_error(daemon: FakeDaemon) -> None:
    daemon.answers[("GET", "/v1/rightsize")] = [NO_SUCH_DEPLOYMENT, NO_SUCH_ROLE]
    result = run(daemon, "rightsize", "nobody")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == "Error: no deployment or role named 'nobody'\n"


def test_another_error_is_told_as_it_is_and_asks_no_further(daemon: FakeDaemon) -> None:
    daemon.answers[("GET", "/v1/rightsize")] = [error(500, "internal_error", "internal error: see the daemon's log")]
    result = run(daemon, "rightsize", "web")
    assert (result.exit_code, result.stderr) == (1, "Error: internal error: see the daemon's log\n")
    assert len(daemon.seen) == 1


def test_json_prints_the_report_as_the_daemon_sent_it(daemon: FakeDaemon) -> None:
    sent = answer("deployment", "web", [finished(100)] * 5, None, None)
    daemon.answers[("GET", "/v1/rightsize")] = sent
    result = run(daemon, "rightsize", "web", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == sent.body
