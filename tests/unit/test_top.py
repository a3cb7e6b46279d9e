"""``fleetd top``'s frame, rendered from fixture answers without a daemon."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from click.testing import CliRunner
from rich.console import Console, Group

from cli.main import main
from cli.top import heartbeat_cell, render

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
MIB = 1024 * 1024


def agent(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": "3f9c2a1b7d0e", "name": "scout", "image": "fleetd/agent-python", "role": "researcher",
        "state": "running", "reason": None, "exit_code": None, "created_at": NOW.isoformat(),
        "deadline": (NOW + timedelta(seconds=252)).isoformat(), "ttl_remaining": 252,
        "last_heartbeat": (NOW - timedelta(seconds=3)).isoformat(), "heartbeat_interval": 10, "heartbeat_age": 3,
        "progress": {"step": 3, "total": 10, "message": "reading papers"}, "ready": True, "restarts": 0,
        "restart_policy": "no", "spec": {"memory": 512 * MIB},
    }
    record.update(fields)
    return record


STATS = [{"id": "3f9c2a1b7d0e", "memory_bytes": 100 * MIB, "memory_limit_bytes": 512 * MIB, "cpu_seconds": 11.0}]
BEFORE = [{"id": "3f9c2a1b7d0e", "memory_bytes": 90 * MIB, "memory_limit_bytes": 512 * MIB, "cpu_seconds": 10.0}]
BUDGET: dict[str, Any] = {
    "agents": [{"id": "3f9c2a1b7d0e", "spent_today_usd": 1.25, "spent_month_usd": 4.0, "reserved_usd": 0.0,
                "daily_cap_usd": 5.0, "monthly_cap_usd": 200.0, "llm_calls": 42, "max_llm_calls": 200}],
    "instance": {"spent_today_usd": 1.25, "spent_month_usd": 4.0, "reserved_usd": 0.0, "daily_cap_usd": 100.0,
                 "monthly_cap_usd": None, "llm_calls": 42},
}
STATUS: dict[str, Any] = {"instance": "prod", "agents": {"running": 1, "exited": 0}, "zone2": {"healthy": True}}


def show(frame: Group, styles: bool = False) -> str:
    console = Console(record=True, width=160, force_terminal=False)
    console.print(frame)
    return console.export_text(styles=styles)


def row(text: str, agent_id: str = "3f9c2a1b7d0e") -> list[str]:
    """The cells of one agent's line (cells are separated by two or more spaces)."""
    line = next(line for line in text.splitlines() if line.startswith(agent_id))
    return [cell.strip() for cell in line.split("  ") if cell.strip()]


def test_every_column_from_full_answers() -> None:
    text = show(render([agent()], STATS, BUDGET, STATUS, BEFORE, 2.0, now=NOW))
    lines = text.splitlines()
    assert lines[1].split() == ["ID", "NAME", "ROLE", "STATE", "READY", "TTL", "HEARTBEAT", "PROGRESS", "MEM",
                                "CPU", "%", "SPEND", "CALLS"]
    assert row(text) == ["3f9c2a1b7d0e", "scout", "researcher", "running", "yes", "4m12s", "3s ago",
                         "3/10 reading papers", "100 / 512 MiB", "50.0%", "$1.2500 / $5.0000", "42/200"]


def test_header_has_instance_totals_and_zone2() -> None:
    first = show(render([agent()], STATS, BUDGET, STATUS, None, None, now=NOW)).splitlines()[0]
    assert "fleetd prod" in first
    assert "1 agent running" in first
    assert "today $1.2500 / $100.0000" in first
    assert "month $4.0000" in first and "month $4.0000 /" not in first  # no monthly instance cap
    assert "42 LLM calls" in first
    assert "zone 2 healthy" in first
    down = show(render([], None, None, {"zone2": {"healthy": False}}, None, None, now=NOW)).splitlines()[0]
    assert "zone 2 DOWN" in down and "spend -" in down and "0 agents running" in down


def test_cpu_is_blank_on_the_first_frame_and_a_delta_after() -> None:
    first = row(show(render([agent()], STATS, BUDGET, STATUS, None, None, now=NOW)))
    assert first[8:] == ["100 / 512 MiB", "$1.2500 / $5.0000", "42/200"]  # the CPU cell is blank
    assert row(show(render([agent()], STATS, BUDGET, STATUS, BEFORE, 0.5, now=NOW)))[9] == "200.0%"
    restarted = [{**BEFORE[0], "cpu_seconds": 99.0}]  # the counter went back: no figure rather than a negative one
    assert not any(c.endswith("%") for c in row(show(render([agent()], STATS, BUDGET, STATUS, restarted, 2.0,
                                                                  now=NOW))))
    gone_before = [{**BEFORE[0], "id": "other"}]  # no earlier sample of this agent
    assert not any(c.endswith("%") for c in row(show(render([agent()], STATS, None, None, gone_before, 2.0,
                                                                  now=NOW))))


def test_missing_stats_budget_and_status_show_dashes() -> None:
    text = show(render([agent()], None, None, None, None, None, now=NOW))
    cells = row(text)
    assert cells[8:] == ["-", "-", "-"]  # MEM, (CPU blank), SPEND, CALLS
    assert "zone 2 -" in text.splitlines()[0]


def test_a_record_without_the_new_fields_shows_dashes() -> None:
    old = {k: v for k, v in agent().items()
           if k not in ("heartbeat_interval", "heartbeat_age", "progress", "ready", "last_heartbeat", "spec")}
    cells = row(show(render([old], None, None, None, None, None, now=NOW)))
    assert cells[4:8] == ["-", "4m12s", "-", "-"]


def test_memory_limit_falls_back_to_the_spec() -> None:
    stats = [{"id": "3f9c2a1b7d0e", "memory_bytes": 64 * MIB, "cpu_seconds": 1.0}]
    assert row(show(render([agent()], stats, None, None, None, None, now=NOW)))[8] == "64 / 512 MiB"
    no_limit = agent(spec={})
    assert row(show(render([no_limit], stats, None, None, None, None, now=NOW)))[8] == "64 MiB / -"


def test_ttl_formats() -> None:
    for seconds, shown in ((252, "4m12s"), (7, "7s"), (3725, "1h02m"), (None, "-")):
        assert row(show(render([agent(ttl_remaining=seconds)], None, None, None, None, None, now=NOW)))[5] == shown


def test_heartbeat_is_red_when_older_than_twice_the_interval() -> None:
    fresh, stale = agent(heartbeat_age=19), agent(heartbeat_age=21, id="aaaaaaaaaaaa")
    text = show(render([fresh, stale], None, None, None, None, None, now=NOW), styles=True)
    red = "\x1b[1;31m"
    fresh_line = next(line for line in text.splitlines() if line.startswith("3f9c2a1b7d0e"))
    stale_line = next(line for line in text.splitlines() if line.startswith("aaaaaaaaaaaa"))
    assert f"{red}21s ago" in stale_line
    assert "19s ago" in fresh_line and red not in fresh_line
    assert heartbeat_cell(agent(heartbeat_age=21), NOW).style == "bold red"
    assert heartbeat_cell(agent(heartbeat_age=19), NOW).style == ""
    # An exited agent's old heartbeat is not an alarm.
    assert heartbeat_cell(agent(heartbeat_age=500, state="exited"), NOW).style == ""


def test_heartbeat_off_never_and_from_the_timestamp() -> None:
    assert heartbeat_cell(agent(heartbeat_interval=0), NOW).plain == "-"
    assert heartbeat_cell(agent(heartbeat_age=None, last_heartbeat=None), NOW).plain == "-"
    computed = agent(heartbeat_age=None, last_heartbeat=(NOW - timedelta(seconds=75)).isoformat())
    assert heartbeat_cell(computed, NOW).plain == "1m15s ago"
    assert heartbeat_cell(computed, NOW).style == "bold red"


def test_exited_agent_shows_reason_and_no_ready() -> None:
    gone = agent(state="exited", reason="ttl_expired", exit_code=143, ttl_remaining=None, ready=None,
                 heartbeat_age=None, last_heartbeat=None, progress={"step": 7, "total": None, "message": None})
    cells = row(show(render([gone], None, None, None, None, None, now=NOW)))
    assert cells[3:8] == ["exited (ttl_expired, 143)", "-", "-", "-", "7"]


def test_long_progress_messages_are_cut() -> None:
    cells = row(show(render([agent(progress={"step": 1, "total": 2, "message": "x" * 100})], None, None, None,
                            None, None, now=NOW)))
    assert cells[7].startswith("1/2 xxxx") and cells[7].endswith("…") and len(cells[7]) < 40


def test_budget_without_call_cap() -> None:
    budget = {"agents": [{**BUDGET["agents"][0], "max_llm_calls": None, "daily_cap_usd": None}],
              "instance": BUDGET["instance"]}
    assert row(show(render([agent()], None, budget, None, None, None, now=NOW)))[-2:] == ["$1.2500 / -", "42/-"]


def test_error_line_is_shown() -> None:
    text = show(render([agent()], None, None, None, None, None, now=NOW, error="cannot reach fleetd"))
    assert "cannot reach fleetd" in text.splitlines()[1]


def test_unreachable_daemon_is_one_line_and_exit_1() -> None:
    result = CliRunner().invoke(main, ["--socket", "/nonexistent/fleetd.sock", "top", "--once"])
    assert result.exit_code == 1
    assert "cannot reach fleetd" in result.output


def test_a_narrow_terminal_keeps_the_important_columns() -> None:
    frame = render([agent(name="a-much-longer-agent-name")], STATS, BUDGET, STATUS, BEFORE, 2.0, now=NOW)
    console = Console(record=True, width=80, force_terminal=False)
    console.print(frame)
    lines = console.export_text().splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("ID "))):]
    assert all(len(line) <= 80 for line in lines)
    assert table[0].split() == ["ID", "NAME", "STATE", "TTL", "HEARTBEAT", "MEM"]
    assert row("\n".join(table)) == ["3f9c2a1b7d0e", "a-much-longer-agent-name", "running", "4m12s", "3s ago",
                                     "100 / 512 MiB"]
    console = Console(record=True, width=64, force_terminal=False)
    console.print(frame)
    narrower = console.export_text()
    assert all(len(line) <= 64 for line in narrower.splitlines())
    assert row(narrower)[1].endswith("…")  # the name is cut before any other column goes
