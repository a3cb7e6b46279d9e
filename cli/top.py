"""``fleetd top``: a live view of the fleet, like ``docker stats`` or ``htop``.

Every ``--interval`` seconds it reads ``/v1/agents``, ``/v1/stats``, ``/v1/budget``
and ``/v1/status`` and redraws one table. ``render`` is a pure function of those
answers (plus the previous stats, for CPU %), so it is tested without a daemon.
Anything a daemon does not answer (an older one without ``/v1/stats``, zone 2 down
for ``/v1/budget``, a field not in a record) is shown as ``-``.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from cli.client import ApiError, Client
from cli.common import DURATION, api_errors, client
from cli.money import dollars
from cli.output import duration, state_text

if TYPE_CHECKING:  # rich is imported when top runs, not on every command's start-up
    from rich.console import Console, ConsoleOptions, Group
    from rich.table import Table
    from rich.text import Text

MIB = 1024 * 1024
PROGRESS_MESSAGE_MAX = 28
HEADERS = ["ID", "NAME", "ROLE", "STATE", "READY", "TTL", "HEARTBEAT", "PROGRESS", "MEM", "CPU %", "SPEND", "CALLS"]
RIGHT = ("TTL", "MEM", "CPU %", "SPEND", "CALLS")
# Narrow terminal: these columns shrink first, down to this width; then whole columns go, in this order.
FLOOR = {"NAME": 10, "ROLE": 8, "STATE": 10, "PROGRESS": 12}
DROP_ORDER = ("ROLE", "CALLS", "READY", "PROGRESS", "CPU %", "SPEND")
STATE_STYLES = {"running": "green", "created": "cyan", "restarting": "yellow", "stopping": "yellow",
                "exited": "dim", "removed": "dim", "failed": "red"}


# -- pure formatting ----------------------------------------------------------

def by_id(records: Any) -> dict[str, dict[str, Any]]:
    """Records keyed by their ``id`` (anything that is not a list of dicts: empty)."""
    if not isinstance(records, list):
        return {}
    return {r["id"]: r for r in records if isinstance(r, dict) and "id" in r}


def age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{duration(max(0.0, seconds))} ago"


def heartbeat_age(agent: Mapping[str, Any], now: datetime) -> float | None:
    """Seconds since the last heartbeat: the daemon's figure, else from ``last_heartbeat``."""
    seconds = agent.get("heartbeat_age")
    if isinstance(seconds, int | float):
        return float(seconds)
    last = agent.get("last_heartbeat")
    if not last:
        return None
    try:
        at = datetime.fromisoformat(last)
    except (TypeError, ValueError):
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (now - at).total_seconds()


def heartbeat_cell(agent: Mapping[str, Any], now: datetime) -> Text:
    """``3s ago``; ``-`` when heartbeats are off or none came; red when older than 2 x the interval.

    Only a live agent's old heartbeat is red: an exited one's is history, not an alarm.
    """
    from rich.text import Text

    interval = agent.get("heartbeat_interval")
    if interval == 0:
        return Text("-")
    seconds = heartbeat_age(agent, now)
    if seconds is None:
        return Text("-")
    stale = (isinstance(interval, int | float) and interval > 0 and seconds > 2 * interval
             and agent.get("state") in ("running", "stopping"))
    return Text(age(seconds), style="bold red" if stale else "")


def ready_cell(agent: Mapping[str, Any]) -> Text:
    from rich.text import Text

    ready = agent.get("ready")
    if ready is True:
        return Text("yes", style="green")
    if ready is False:
        return Text("no", style="yellow")
    return Text("-")


def progress_cell(agent: Mapping[str, Any]) -> str:
    progress = agent.get("progress")
    if not isinstance(progress, dict):
        return "-"
    step, total, message = progress.get("step"), progress.get("total"), progress.get("message")
    parts = []
    if step is not None:
        parts.append(f"{step}/{total}" if total is not None else str(step))
    if message:
        text = str(message).replace("\n", " ")
        if len(text) > PROGRESS_MESSAGE_MAX:
            text = text[:PROGRESS_MESSAGE_MAX - 1] + "…"
        parts.append(text)
    return " ".join(parts) or "-"


def memory_limit(agent: Mapping[str, Any], stat: Mapping[str, Any] | None) -> Any:
    """The memory limit: the runtime's figure, else the spec's (``spec`` or ``limits``)."""
    if stat and stat.get("memory_limit_bytes"):
        return stat["memory_limit_bytes"]
    for key in ("spec", "limits"):
        section = agent.get(key)
        if isinstance(section, dict) and section.get("memory"):
            return section["memory"]
    return None


def mem_cell(agent: Mapping[str, Any], stat: Mapping[str, Any] | None) -> str:
    if not stat or not isinstance(stat.get("memory_bytes"), int | float):
        return "-"
    used = f"{stat['memory_bytes'] / MIB:.0f}"
    limit = memory_limit(agent, stat)
    return f"{used} / {limit / MIB:.0f} MiB" if isinstance(limit, int | float) else f"{used} MiB / -"


def cpu_cell(stat: Mapping[str, Any] | None, before: Mapping[str, Any] | None, elapsed: float | None) -> str:
    """CPU % (100 = one core) over the last refresh; blank without two samples."""
    if not stat or not before or not elapsed or elapsed <= 0:
        return ""
    now_s, then_s = stat.get("cpu_seconds"), before.get("cpu_seconds")
    if not isinstance(now_s, int | float) or not isinstance(then_s, int | float) or now_s < then_s:
        return ""  # a restarted container's counter starts over
    return f"{(now_s - then_s) / elapsed * 100:.1f}%"


def spend_cell(record: Mapping[str, Any] | None) -> str:
    if not record:
        return "-"
    return f"{dollars(record.get('spent_today_usd'))} / {dollars(record.get('daily_cap_usd'))}"


def calls_cell(record: Mapping[str, Any] | None) -> str:
    if not record or record.get("llm_calls") is None:
        return "-"
    limit = record.get("max_llm_calls")
    return f"{record['llm_calls']}/{'-' if limit is None else limit}"


def agent_row(agent: Mapping[str, Any], stat: Mapping[str, Any] | None, before: Mapping[str, Any] | None,
              spend: Mapping[str, Any] | None, elapsed: float | None, now: datetime) -> list[Text | str]:
    from rich.text import Text

    def cut(text: str, style: str = "") -> Text:  # a cell of a column that shrinks first: one line, cut with …
        return Text(text, style=style, no_wrap=True, overflow="ellipsis")

    state = str(agent.get("state") or "-")
    ttl = agent.get("ttl_remaining")
    return [
        str(agent.get("id") or "-"), cut(str(agent.get("name") or "-")), cut(str(agent.get("role") or "-")),
        cut(state_text({"state": state, **{k: agent.get(k) for k in ("reason", "exit_code")}}),
            STATE_STYLES.get(state, "")),
        ready_cell(agent),
        duration(ttl) if isinstance(ttl, int | float) else "-",
        heartbeat_cell(agent, now),
        cut(progress_cell(agent)),
        mem_cell(agent, stat),
        cpu_cell(stat, before, elapsed),
        spend_cell(spend),
        calls_cell(spend),
    ]


def money_against(spent: Any, cap: Any) -> str:
    return dollars(spent) + ("" if cap is None else f" / {dollars(cap)}")


def header(agents: list[dict[str, Any]], budget: Mapping[str, Any] | None, status: Mapping[str, Any] | None,
           error: str | None) -> Text:
    """``fleetd <instance>  3 agents running  today $1.20 / $50.00  month ...  zone 2 healthy``."""
    from rich.text import Text

    line = Text()
    line.append("fleetd", style="bold")
    if status and status.get("instance"):
        line.append(f" {status['instance']}", style="bold")
    counts = status.get("agents") if status else None
    running = counts.get("running") if isinstance(counts, dict) else None
    if running is None:
        running = sum(1 for a in agents if a.get("state") == "running")
    line.append(f"   {running} agent{'s' if running != 1 else ''} running")
    instance = budget.get("instance") if budget else None
    if isinstance(instance, dict):
        line.append(f"   today {money_against(instance.get('spent_today_usd'), instance.get('daily_cap_usd'))}")
        line.append(f"   month {money_against(instance.get('spent_month_usd'), instance.get('monthly_cap_usd'))}")
        if instance.get("llm_calls") is not None:
            line.append(f"   {instance['llm_calls']} LLM calls")
    else:
        line.append("   spend -")
    zone2 = status.get("zone2") if status else None
    healthy = zone2.get("healthy") if isinstance(zone2, dict) else None
    line.append("   zone 2 ")
    if healthy is True:
        line.append("healthy", style="green")
    elif healthy is False:
        line.append("DOWN", style="bold red")
    else:
        line.append("-")
    if error:
        line.append(f"\n{error}", style="bold red")
    return line


class FittedTable:
    """The agents' table with as many columns as the width allows.

    In a narrow terminal NAME, ROLE, STATE and PROGRESS give up width first (down to
    ``FLOOR``: rich narrows wrappable columns before all others, and their cells are cut
    to one line, see ``cut``); when that is not enough, whole columns go, least useful
    first (``DROP_ORDER``), so ID, STATE, TTL and HEARTBEAT stay readable at 80 columns.
    """

    def __init__(self, rows: list[list[Text | str]]) -> None:
        self.rows = rows

    def columns(self, width: int) -> list[str]:
        def cells(index: int) -> Iterator[int]:
            yield len(HEADERS[index])
            for row in self.rows:
                cell = row[index]
                yield cell.cell_len if not isinstance(cell, str) else len(cell)

        natural = {name: max(cells(i)) for i, name in enumerate(HEADERS)}
        shown = list(HEADERS)
        for dropped in (None, *DROP_ORDER):
            if dropped is not None:
                shown.remove(dropped)
            needed = sum(min(natural[c], FLOOR.get(c, natural[c])) for c in shown) + 2 * (len(shown) - 1)
            if needed <= width:
                break
        return shown

    def table(self, width: int) -> Table:
        from rich.table import Table

        shown = self.columns(width)
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold reverse")
        for name in shown:
            table.add_column(name, no_wrap=name not in FLOOR, overflow="ellipsis",
                             justify="right" if name in RIGHT else "left")
        keep = [HEADERS.index(name) for name in shown]
        for row in self.rows:
            table.add_row(*(row[i] for i in keep))
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Table]:
        yield self.table(options.max_width)


def render(agents: list[dict[str, Any]], stats: list[dict[str, Any]] | None, budget: Mapping[str, Any] | None,
           status: Mapping[str, Any] | None, previous_stats: list[dict[str, Any]] | None, elapsed: float | None,
           *, now: datetime | None = None, error: str | None = None) -> Group:
    """One frame: the header line and the table (its columns fitted to the width it is printed at).

    ``stats``, ``budget`` and ``status`` are the daemon's answers, ``None`` when it gave none;
    ``previous_stats`` and ``elapsed`` (wall seconds between the two) give CPU %.
    """
    from rich.console import Group

    now = now or datetime.now(UTC)
    current, before = by_id(stats), by_id(previous_stats)
    spends = by_id(budget.get("agents")) if budget else {}
    rows = []
    for agent in agents:
        agent_id = agent.get("id")
        rows.append(agent_row(agent, current.get(agent_id) if agent_id else None,
                              before.get(agent_id) if agent_id else None,
                              spends.get(agent_id) if agent_id else None, elapsed, now))
    return Group(header(agents, budget, status, error), FittedTable(rows))


# -- the daemon's answers -----------------------------------------------------

@dataclass
class Snapshot:
    agents: list[dict[str, Any]]
    stats: list[dict[str, Any]] | None
    budget: dict[str, Any] | None
    status: dict[str, Any] | None
    at: float  # time.monotonic() when the stats were read


def optional(api: Client, path: str) -> Any:
    """An answer the view can do without (404 on an older daemon, 503 with zone 2 down): ``None``."""
    try:
        return api.call("GET", path)
    except ApiError:
        return None


def fetch(api: Client, all_: bool) -> Snapshot:
    """Read everything one frame shows; only ``/v1/agents`` failing raises ``ApiError``."""
    suffix = "?all=1" if all_ else ""
    agents = api.call("GET", "/v1/agents" + suffix)
    stats = optional(api, "/v1/stats")
    at = time.monotonic()
    budget = optional(api, "/v1/budget" + suffix)
    status = optional(api, "/v1/status")
    return Snapshot(
        agents=[a for a in agents if isinstance(a, dict)] if isinstance(agents, list) else [],
        stats=stats if isinstance(stats, list) else None,
        budget=budget if isinstance(budget, dict) else None,
        status=status if isinstance(status, dict) else None,
        at=at,
    )


class Frames:
    """Successive frames: keeps the previous stats for CPU %, and the last good answers on an error."""

    def __init__(self, api: Client, all_: bool) -> None:
        self.api, self.all_ = api, all_
        self.last: Snapshot | None = None

    def next(self) -> Group:
        previous = self.last
        try:
            snap = fetch(self.api, self.all_)
        except ApiError as exc:
            if previous is None:
                raise
            return render(previous.agents, previous.stats, previous.budget, previous.status, None, None,
                          error=str(exc))
        self.last = snap
        before, elapsed = (previous.stats, snap.at - previous.at) if previous else (None, None)
        return render(snap.agents, snap.stats, snap.budget, snap.status, before, elapsed)


# -- the terminal -------------------------------------------------------------

@contextmanager
def keys() -> Iterator[int | None]:
    """Standard input's fd in cbreak mode (keys arrive one by one; Ctrl-C still interrupts), if a terminal."""
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    if fd is None:
        yield None
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def wait_for_quit(fd: int | None, seconds: float) -> bool:
    """Sleep ``seconds``, or less when ``q`` is pressed: then ``True``."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if fd is None:
            time.sleep(left)
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            data = os.read(fd, 64)
            if not data or b"q" in data.lower():
                return True
    return False


def live(console: Console, frames: Frames, interval: float) -> None:
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    hint = Text(f"every {interval:g}s  ·  q or Ctrl-C to quit", style="dim")
    with interruptible(), keys() as fd, Live(console=console, screen=True, auto_refresh=False,
                                             redirect_stdout=False, redirect_stderr=False) as view:
        while True:
            view.update(Group(frames.next(), hint), refresh=True)
            if wait_for_quit(fd, interval):
                return


@contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C quits the live view even when SIGINT came in ignored (a process started from a script in the
    background inherits that), as it quits top and htop, which install their own handler."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@click.command()
@click.option("-n", "--interval", type=DURATION, default=2.0, show_default=True,
              help="Time between refreshes: seconds or e.g. 500ms, 5s (at least 0.1 s).")
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts).")
@click.option("-a", "--all", "all_", is_flag=True, help="Exited agents too.")
@click.pass_context
@api_errors
def top(ctx: click.Context, interval: float, once: bool, all_: bool) -> None:
    """A live view of the fleet: state, TTL, heartbeat, progress, memory, CPU, spend.

    Refreshes every --interval seconds; q or Ctrl-C quits. CPU % is over the last
    refresh (100% = one core), so the first frame leaves it blank.

    Example: fleetd top -n 1
    """
    from rich.console import Console

    if interval < 0.1:
        raise click.BadParameter(f"{interval:g} s is below 0.1 s", param_hint="'-n' / '--interval'")
    api = client(ctx)
    api.timeout = max(10.0, interval * 2)  # a hung daemon shows up as an error line, not a frozen screen
    frames = Frames(api, all_)
    tty = sys.stdout.isatty()
    console = Console(width=None if tty else 250, highlight=False)
    try:
        if once:
            console.print(frames.next())
        elif tty:
            live(console, frames, interval)
        else:  # batch mode, like top -b: one frame after another
            while True:
                console.print(frames.next())
                console.print()
                sys.stdout.flush()
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
