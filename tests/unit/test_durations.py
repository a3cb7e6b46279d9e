"""Durations everywhere a time is taken: ``90s``, ``10m``, ``1h30m``, ``1.5h``, ``2d``; a plain number is seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import main as cli_main
from cli.spawn_options import parse_fast
from fleetd.config import Config, load_config
from fleetd.errors import InvalidRequest
from fleetd.health import ProbeSpec
from fleetd.spec import build_spec, grace_seconds, ttl_seconds
from fleetd.units import parse_duration, parse_heartbeat_interval, parse_whole_seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("10m", 600), ("1h30m", 5400), ("1.5h", 5400), ("2d", 172800), ("500ms", 0.5),
     (".5h", 1800), ("1h 30min", 5400), ("2 days", 172800), ("45sec", 45), ("1H", 3600), (" 5m ", 300),
     ("0", 0), ("1.5", 1.5), (30, 30), (2.5, 2.5)],
)
def test_durations_read_like_go_kubectl_and_systemd(text: str | float, seconds: float) -> None:
    assert parse_duration(text, "--ttl") == seconds


@pytest.mark.parametrize("text", ["soon", "", "1h30", "h", "1..5s", "5x", "inf", "nan", "1e3", "--5", True, None,
                                  [1], float("inf")])
def test_bad_durations_say_what_is_expected(text: object) -> None:
    with pytest.raises(InvalidRequest, match=r"--ttl: invalid duration .*e\.g\.|--ttl: invalid duration .*90s"):
        parse_duration(text, "--ttl")


def test_whole_seconds_and_bounds() -> None:
    assert parse_whole_seconds("1.5h", "--ttl", 1, 86400) == 5400
    with pytest.raises(InvalidRequest, match="whole number of seconds"):
        parse_whole_seconds("1.5s", "--ttl", 1)
    with pytest.raises(InvalidRequest, match="at least 1"):
        parse_whole_seconds("-5", "--ttl", 1)
    with pytest.raises(InvalidRequest, match="at most 86400"):
        parse_whole_seconds("2d", "--ttl", 1, 86400)


def test_spawn_extend_and_stop_take_durations() -> None:
    config = Config()
    spec = build_spec({"image": "i", "ttl": "1h", "grace": "30s", "heartbeat_interval": "1m"}, config, 2)
    assert (spec.ttl, spec.grace, spec.heartbeat_interval) == (3600, 30, 60)
    assert ttl_seconds("90m", config) == 5400 and grace_seconds("2m", config) == 120
    assert parse_heartbeat_interval("500ms") == 0.5
    with pytest.raises(InvalidRequest, match="--grace: invalid duration"):
        build_spec({"image": "i", "grace": "later"}, config, 2)


def test_probe_intervals_take_durations() -> None:
    spec = ProbeSpec.parse("http:8080/healthz,period=1m,timeout=500ms,delay=1m30s")
    assert (spec.period, spec.timeout, spec.initial_delay) == (60, 0.5, 90)
    assert ProbeSpec.from_dict({"kind": "tcp", "port": 80, "period": "5s"}).period == 5
    with pytest.raises(ValueError, match="period= needs seconds or a duration"):
        ProbeSpec.parse("http:80,period=often")


def test_config_values_take_durations(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('max_ttl = "2d"\nlog_retention = "30m"\nmax_grace = 120\n'
                    '[defaults]\nttl = "1h30m"\ngrace = "45s"\nheartbeat_interval = "10s"\n'
                    '[roles.r]\nttl = "2h"\n[retention]\nrecords = "1d"\nevents = "30d"\n')
    config = load_config(path)
    assert (config.max_ttl, config.log_retention, config.max_grace) == (172800, 1800, 120)
    assert (config.retention_records, config.retention_events) == (86400, 30 * 86400)
    assert (config.defaults.ttl, config.defaults.grace, config.defaults.heartbeat_interval) == (5400, 45, 10)
    assert config.roles["r"].ttl == 7200
    path.write_text('log_retention = "a while"\n')
    with pytest.raises(InvalidRequest, match="log_retention: invalid duration"):
        load_config(path)


def test_cli_fast_path_sends_seconds() -> None:
    parsed = parse_fast(["--ttl", "1h", "--grace=30s", "--heartbeat-interval", "500ms", "img"])
    assert parsed is not None
    options, image, _ = parsed
    assert (options["ttl"], options["grace"], options["heartbeat_interval"], image) == (3600, 30, 0.5, "img")
    assert parse_fast(["--ttl", "soon", "img"]) is None  # click reports it


@pytest.mark.parametrize("args", [["spawn", "--ttl", "soon", "img"], ["extend", "x", "--ttl", "1x"],
                                  ["stop", "-t", "later", "x"], ["drain", "--timeout", "ages"]])
def test_cli_refuses_bad_durations_in_one_line(args: list[str]) -> None:
    result = CliRunner().invoke(cli_main, ["--socket", "/nonexistent", *args])
    assert result.exit_code == 2 and "is not a duration" in result.output
    assert "Traceback" not in result.output


def test_top_interval_takes_a_duration() -> None:
    runner = CliRunner()
    bad = runner.invoke(cli_main, ["--socket", "/nonexistent", "top", "--once", "-n", "often"])
    assert bad.exit_code == 2 and "is not a duration" in bad.output
    short = runner.invoke(cli_main, ["--socket", "/nonexistent", "top", "--once", "-n", "50ms"])
    assert short.exit_code == 2 and "below 0.1 s" in short.output
    good = runner.invoke(cli_main, ["--socket", "/nonexistent", "top", "--once", "-n", "500ms"])
    assert good.exit_code == 1 and "cannot reach fleetd" in good.output  # past the parsing, to the daemon
