"""Heartbeats, probes and restarts as pure decisions: no Docker, no I/O, no clock.

Every time here is a float of seconds on one monotonic clock the caller owns
(``time.monotonic()`` in the daemon); callers pass ``now``, tests pass any
number they like. Three independent pieces:

- ``Watchdog`` / ``HeartbeatWatch``: is an agent that promised heartbeats
  still sending them? Paused, fleet-wide, while zone 2 (which receives the
  heartbeats) is down.
- ``ProbeSpec`` / ``ProbeTracker``: startup, readiness and liveness probes with
  Kubernetes semantics. The tracker says which probe to run when, and what a
  result means (ready flipped, restart the container). ``fleetd.probes`` runs
  them.
- ``RestartPolicy`` / ``should_restart`` / ``restart_delay``: whether an ended
  agent comes back, and after how long (CrashLoopBackOff).
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from fleetd import durations

# Reasons for an agent's end that this module adds to ``fleetd.models.Reason``.
# All three are failures of the agent, so a restart policy may bring it back.
HEARTBEAT_LOST = "heartbeat_lost"
LIVENESS_FAILED = "liveness_failed"
STARTUP_FAILED = "startup_failed"


# --------------------------------------------------------------------------- heartbeats


def default_startup_window(interval: float) -> float:
    """How long a new agent may take to send its first heartbeat: ``max(2 * interval, 30)``.

    An agent's first beat comes after its interpreter, imports and SDK set-up,
    which take seconds whatever the interval is; 30 s covers a cold Python
    start on a busy host, and a long interval gets at least the same two
    intervals any later beat gets.
    """
    return max(2 * interval, 30.0)


@dataclass
class HeartbeatWatch:
    """The heartbeat deadline of one agent.

    Rule (``interval > 0``, not paused): the agent is lost when

        now >= max((last_beat or started) + 2 * interval,
                   resumed_at + 2 * interval,
                   started + paused_total + startup_window   # only until the first beat)

    i.e. two whole intervals without a beat, and never sooner than two
    intervals after a pause ended; before its first heartbeat an agent also
    gets the startup window (time to boot, load a model …). Once it has
    beaten, the startup window is over: an agent that beats once and then
    hangs is lost two intervals later, as the seed asks.
    ``interval == 0`` switches the watchdog off for this agent: never lost.

    Pausing (while zone 2, the receiver of heartbeats, is down) freezes the
    watch: never lost while paused. On resume the agent gets a full
    ``2 * interval`` from the resume time, whatever it had left before the
    pause: beats sent just before the outage may have been lost with zone 2,
    and the SDK's own retry may still be waiting, so the silence before the
    pause says nothing. The startup window is shifted by the paused time
    (``paused_total``), so a pause never eats into it.
    """

    interval: float
    started: float
    startup_window: float
    last_beat: float | None = None
    progress: dict[str, Any] | None = None
    paused_total: float = 0.0
    paused_since: float | None = None
    resumed_at: float | None = None

    @classmethod
    def create(cls, interval: float, now: float, startup_window: float | None = None) -> HeartbeatWatch:
        """A watch for an agent started at ``now`` (window defaults to ``default_startup_window``)."""
        if interval < 0 or not math.isfinite(interval):
            raise ValueError(f"heartbeat interval must be a number >= 0, not {interval}")
        window = default_startup_window(interval) if startup_window is None else startup_window
        if window < 0:
            raise ValueError(f"startup window must be >= 0, not {window}")
        return cls(interval=interval, started=now, startup_window=window)

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    @property
    def paused(self) -> bool:
        return self.paused_since is not None

    def beat(self, now: float, progress: dict[str, Any] | None = None) -> None:
        """A heartbeat arrived at ``now``; a beat without progress keeps the last progress."""
        self.last_beat = now if self.last_beat is None else max(self.last_beat, now)
        if progress is not None:
            self.progress = dict(progress)

    def pause(self, now: float) -> None:
        if self.paused_since is None:
            self.paused_since = max(now, self.started)

    def resume(self, now: float) -> None:
        if self.paused_since is None:
            return
        self.paused_total += max(0.0, now - self.paused_since)
        self.paused_since = None
        self.resumed_at = now

    def due(self) -> float | None:
        """When the agent is lost if no beat arrives; None when off or paused (nothing to schedule)."""
        if not self.enabled or self.paused:
            return None
        limit = 2 * self.interval
        candidates = [(self.started if self.last_beat is None else self.last_beat) + limit]
        if self.last_beat is None:
            # The startup window only covers the wait for the first heartbeat: after it, 2 x interval rules.
            candidates.append(self.started + self.paused_total + self.startup_window)
        if self.resumed_at is not None:
            candidates.append(self.resumed_at + limit)
        return max(candidates)

    def lost(self, now: float) -> bool:
        """True once ``now`` reaches ``due()``."""
        due = self.due()
        return due is not None and now >= due


@dataclass
class Watchdog:
    """The heartbeat watches of the fleet, with one fleet-wide pause switch.

    ``pause(now)`` when zone 2 goes down, ``resume(now)`` when it is back;
    agents added meanwhile start paused. Schedule a check at ``next_due()``;
    ``lost(now)`` lists the agents to condemn (reason ``HEARTBEAT_LOST``), and
    the caller ``remove``s them (or replaces the watch on restart).
    """

    watches: dict[str, HeartbeatWatch] = field(default_factory=dict)
    paused_since: float | None = None

    @property
    def paused(self) -> bool:
        return self.paused_since is not None

    def add(self, agent_id: str, interval: float, now: float, startup_window: float | None = None) -> HeartbeatWatch:
        """Watch an agent (re)started at ``now``; replaces any previous watch of that id."""
        watch = HeartbeatWatch.create(interval, now, startup_window)
        if self.paused_since is not None:
            watch.pause(now)
        self.watches[agent_id] = watch
        return watch

    def remove(self, agent_id: str) -> None:
        self.watches.pop(agent_id, None)

    def get(self, agent_id: str) -> HeartbeatWatch | None:
        return self.watches.get(agent_id)

    def beat(self, agent_id: str, now: float, progress: dict[str, Any] | None = None) -> bool:
        """Record a heartbeat; False when the agent is not watched."""
        watch = self.watches.get(agent_id)
        if watch is None:
            return False
        watch.beat(now, progress)
        return True

    def pause(self, now: float) -> None:
        if self.paused_since is not None:
            return
        self.paused_since = now
        for watch in self.watches.values():
            watch.pause(now)

    def resume(self, now: float) -> None:
        if self.paused_since is None:
            return
        self.paused_since = None
        for watch in self.watches.values():
            watch.resume(now)

    def lost(self, now: float) -> list[str]:
        """The agents lost at ``now`` (none while paused), in id order."""
        return sorted(agent_id for agent_id, watch in self.watches.items() if watch.lost(now))

    def next_due(self) -> float | None:
        """The earliest time any watched agent can be lost; None when nothing is due."""
        dues = [due for watch in self.watches.values() if (due := watch.due()) is not None]
        return min(dues, default=None)


# --------------------------------------------------------------------------- probes

ProbeKind = Literal["http", "tcp", "exec"]
Which = Literal["startup", "readiness", "liveness"]
PROBE_KINDS: tuple[str, ...] = get_args(ProbeKind)
WHICH: tuple[Which, ...] = ("startup", "readiness", "liveness")

_SYNTAX = "expected http:PORT[/PATH], tcp:PORT or exec:COMMAND, then options like ,period=5"
# option name in the CLI syntax -> field
_OPTIONS = {
    "delay": "initial_delay",
    "initial_delay": "initial_delay",
    "period": "period",
    "timeout": "timeout",
    "success": "success_threshold",
    "success_threshold": "success_threshold",
    "failure": "failure_threshold",
    "failure_threshold": "failure_threshold",
}
_OPTION_RE = re.compile(r"^\s*([a-z_]+)\s*=\s*(\S*)\s*$")


def _parse_port(text: str, where: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"invalid probe {where!r}: port must be a number from 1 to 65535, not {text!r}")
    return int(text)


@dataclass(frozen=True)
class ProbeSpec:
    """One probe, as in Kubernetes: what to check, when, and how many results count.

    ``http``: GET ``http://IP:port/path``, 200-399 is success (redirects are
    not followed). ``tcp``: a connection to the port opens. ``exec``: the
    command exits 0 inside the container. Times are seconds; the first run is
    ``initial_delay`` after the container started (after the startup probe
    succeeded, for readiness and liveness), then one run every ``period``.
    """

    kind: ProbeKind
    port: int | None = None
    path: str = "/"
    command: tuple[str, ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    def __post_init__(self) -> None:
        if self.kind not in PROBE_KINDS:
            raise ValueError(f"probe kind must be one of {', '.join(PROBE_KINDS)}, not {self.kind!r}")
        if self.kind == "exec":
            if not self.command:
                raise ValueError("an exec probe needs a command")
            if self.port is not None:
                raise ValueError("an exec probe takes no port")
        else:
            if self.port is None or isinstance(self.port, bool) or not 1 <= self.port <= 65535:
                raise ValueError(f"a {self.kind} probe needs a port from 1 to 65535, not {self.port!r}")
            if self.command:
                raise ValueError(f"a {self.kind} probe takes no command")
        if self.kind == "http" and (not self.path.startswith("/") or any(c.isspace() for c in self.path)):
            raise ValueError(f"an http probe path must start with / and contain no spaces, not {self.path!r}")
        for name in ("initial_delay", "period", "timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"probe {name} must be a number, not {value!r}")
        if self.initial_delay < 0:
            raise ValueError(f"probe initial_delay must be >= 0, not {self.initial_delay}")
        if self.period <= 0 or self.timeout <= 0:
            raise ValueError("probe period and timeout must be > 0")
        for name in ("success_threshold", "failure_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"probe {name} must be an integer >= 1, not {value!r}")

    def for_kind(self, which: Which) -> ProbeSpec:
        """This spec, checked for use as a ``which`` probe (liveness and startup need success_threshold 1)."""
        if which not in WHICH:
            raise ValueError(f"probe must be one of {', '.join(WHICH)}, not {which!r}")
        if which != "readiness" and self.success_threshold != 1:
            raise ValueError(f"a {which} probe's success threshold must be 1, not {self.success_threshold}")
        return self

    @classmethod
    def parse(cls, text: str) -> ProbeSpec:
        """Parse the CLI syntax: ``http:8080/healthz``, ``tcp:5432``, ``exec:cat /tmp/ready``.

        Options follow after commas: ``delay=``, ``period=``, ``timeout=``
        (seconds), ``success=``, ``failure=`` (counts). Only trailing
        ``name=value`` segments are options, so an exec command may contain
        commas. Raises ValueError with a one-line message.
        """
        where = " ".join(text.split())  # one line, whatever came in
        parts = text.split(",")
        options: dict[str, str] = {}
        while len(parts) > 1 and (match := _OPTION_RE.match(parts[-1])):
            name, value = match.groups()
            if name not in _OPTIONS:
                known = "delay, period, timeout, success, failure"
                raise ValueError(f"invalid probe {where!r}: unknown option {name!r} (known: {known})")
            key = _OPTIONS[name]
            if key in options:
                raise ValueError(f"invalid probe {where!r}: option {name!r} given twice")
            options[key] = value
            parts.pop()
        target = ",".join(parts).strip()
        kind, sep, rest = target.partition(":")
        kind = kind.strip().lower()
        if not sep or kind not in PROBE_KINDS:
            raise ValueError(f"invalid probe {where!r}: {_SYNTAX}")
        values: dict[str, Any] = {}
        if kind == "exec":
            try:
                command = tuple(shlex.split(rest))
            except ValueError as exc:
                raise ValueError(f"invalid probe {where!r}: exec command: {exc}") from None
            if not command:
                raise ValueError(f"invalid probe {where!r}: an exec probe needs a command")
            values["command"] = command
        else:
            rest = rest.strip()
            port, slash, path = rest.partition("/")
            values["port"] = _parse_port(port, where)
            if kind == "tcp" and slash:
                raise ValueError(f"invalid probe {where!r}: a tcp probe takes no path")
            if kind == "http":
                values["path"] = "/" + path
        for key, value in options.items():
            try:
                if key.endswith("_threshold"):
                    values[key] = int(value)
                else:
                    number = durations.seconds(value)  # 5, 5s, 1m30s, 500ms
                    if number is None:
                        raise ValueError
                    values[key] = number
            except ValueError:
                option = next(name for name, field_ in _OPTIONS.items() if field_ == key)
                what = "a whole number" if key.endswith("_threshold") else "seconds or a duration like 5s"
                raise ValueError(f"invalid probe {where!r}: {option}= needs {what}, not {value!r}") from None
        try:
            return cls(kind=kind, **values)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"invalid probe {where!r}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "port": self.port,
            "path": self.path,
            "command": list(self.command),
            "initial_delay": self.initial_delay,
            "period": self.period,
            "timeout": self.timeout,
            "success_threshold": self.success_threshold,
            "failure_threshold": self.failure_threshold,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeSpec:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown probe field(s): {', '.join(sorted(unknown))}")
        if "kind" not in data:
            raise ValueError("a probe needs a kind")
        values = dict(data)
        for name in ("initial_delay", "period", "timeout"):
            if isinstance(values.get(name), str):  # the API takes "5s" and "1m" as well as numbers
                number = durations.seconds(values[name])
                if number is None:
                    raise ValueError(f"probe {name} must be seconds or a duration like 5s or 1m, not {values[name]!r}")
                values[name] = number
        if "command" in values:
            values["command"] = tuple(values["command"] or ())
        return cls(**values)


@dataclass(frozen=True)
class Verdict:
    """What one probe result means.

    ``ready_changed`` is the new readiness when it flipped, else None.
    ``restart`` asks the caller to kill the container (Kubernetes does): the
    startup or liveness probe failed ``failure_threshold`` times in a row;
    ``reason`` is then ``STARTUP_FAILED`` or ``LIVENESS_FAILED``. ``stale``:
    the result was ignored (the probe was not in flight, e.g. it started
    before ``reset``).
    """

    which: Which
    ok: bool
    started_now: bool = False
    ready_changed: bool | None = None
    restart: bool = False
    reason: str | None = None
    stale: bool = False


@dataclass
class _ProbeState:
    spec: ProbeSpec
    next_run: float | None = None  # None: not scheduled (gated, or done for startup)
    successes: int = 0
    failures: int = 0
    in_flight: bool = False


class ProbeTracker:
    """The probes of one agent and what their results have established.

    Protocol: ``which_due(now)`` returns the probes to run now and marks them
    in flight (the next run of each is due one ``period`` later); run each and
    answer it with ``record(which, ok, now)``. Sleep until ``next_due()``.
    After a restart of the container, ``reset(now)``; results of probes begun
    before that are ignored.

    - ``started``: the startup probe succeeded (or there is none). Until then
      only the startup probe runs; readiness and liveness, including their
      initial delays, begin once it succeeded. The startup probe then stops.
    - ``ready``: False until readiness succeeded ``success_threshold`` times
      in a row, False again after ``failure_threshold`` failures in a row.
      Without a readiness probe, ready as soon as started.
    - a restart verdict stops all probing until ``reset``.
    """

    def __init__(
        self,
        now: float,
        startup: ProbeSpec | None = None,
        readiness: ProbeSpec | None = None,
        liveness: ProbeSpec | None = None,
    ) -> None:
        specs: dict[Which, ProbeSpec | None] = {"startup": startup, "readiness": readiness, "liveness": liveness}
        self.probes: dict[Which, _ProbeState] = {
            which: _ProbeState(spec.for_kind(which)) for which, spec in specs.items() if spec is not None
        }
        self.started = False
        self.ready = False
        self.condemned = False
        self.reset(now)

    @property
    def specs(self) -> dict[Which, ProbeSpec]:
        return {which: state.spec for which, state in self.probes.items()}

    def reset(self, now: float) -> None:
        """The container (re)started at ``now``: forget every result, schedule from scratch."""
        self.condemned = False
        for state in self.probes.values():
            state.successes = state.failures = 0
            state.in_flight = False
            state.next_run = None
        if "startup" in self.probes:
            self.started = False
            self.probes["startup"].next_run = now + self.probes["startup"].spec.initial_delay
        else:
            self._start(now)
        self.ready = self.started and "readiness" not in self.probes

    def _start(self, now: float) -> None:
        self.started = True
        for which in ("readiness", "liveness"):
            state = self.probes.get(which)
            if state is not None:
                state.next_run = now + state.spec.initial_delay

    def which_due(self, now: float) -> list[Which]:
        """The probes to run at ``now``, now marked in flight; each must be answered with ``record``."""
        if self.condemned:
            return []
        due: list[Which] = []
        for which in WHICH:
            state = self.probes.get(which)
            if state is None or state.in_flight or state.next_run is None or state.next_run > now:
                continue
            state.in_flight = True
            # Start to start, like Kubernetes' ticker; a late tick skips the runs it missed.
            following = state.next_run + state.spec.period
            state.next_run = following if following > now else now + state.spec.period
            due.append(which)
        return due

    def next_due(self) -> float | None:
        """When the next probe is due; None when nothing is scheduled (all in flight, or condemned)."""
        if self.condemned:
            return None
        times = [s.next_run for s in self.probes.values() if s.next_run is not None and not s.in_flight]
        return min(times, default=None)

    def record(self, which: Which, ok: bool, now: float) -> Verdict:
        """A result of a probe ``which_due`` handed out."""
        state = self.probes.get(which)
        if state is None or not state.in_flight or self.condemned:
            return Verdict(which, ok, stale=True)
        state.in_flight = False
        if ok:
            state.successes += 1
            state.failures = 0
        else:
            state.failures += 1
            state.successes = 0
        spec = state.spec

        if which == "startup":
            if ok:  # success_threshold is 1 for startup
                state.next_run = None
                was_ready = self.ready
                self._start(now)
                self.ready = "readiness" not in self.probes
                return Verdict(which, ok, started_now=True, ready_changed=self._flip(was_ready))
            if state.failures >= spec.failure_threshold:
                return self._condemn(which, ok, STARTUP_FAILED)
            return Verdict(which, ok)

        if which == "readiness":
            was_ready = self.ready
            if ok and state.successes >= spec.success_threshold:
                self.ready = True
            elif not ok and state.failures >= spec.failure_threshold:
                self.ready = False
            return Verdict(which, ok, ready_changed=self._flip(was_ready))

        if not ok and state.failures >= spec.failure_threshold:
            return self._condemn(which, ok, LIVENESS_FAILED)
        return Verdict(which, ok)

    def _flip(self, was_ready: bool) -> bool | None:
        return None if self.ready == was_ready else self.ready

    def _condemn(self, which: Which, ok: bool, reason: str) -> Verdict:
        was_ready = self.ready
        self.condemned = True
        self.ready = False
        for state in self.probes.values():
            state.in_flight = False
        return Verdict(which, ok, ready_changed=self._flip(was_ready), restart=True, reason=reason)


# --------------------------------------------------------------------------- restarts

RestartMode = Literal["never", "on-failure", "always"]
RESTART_MODES: tuple[str, ...] = get_args(RestartMode)
# ``on-failure`` without a count gives up after this many restarts (Docker's
# ``on-failure`` alone retries forever; a crash-looping agent costs money, so
# fleetd stops by default). ``always`` has no cap, as in Kubernetes.
DEFAULT_ON_FAILURE_MAX = 5

# Ends the daemon (or its user) caused: never restarted, whatever the policy.
DAEMON_STOPS = frozenset({"ttl_expired", "stopped", "killed", "drained", "teardown"})
# Ends that are the agent's failure: restarted under on-failure and always.
FAILURES = frozenset({"oom_killed", HEARTBEAT_LOST, LIVENESS_FAILED, STARTUP_FAILED})

BACKOFF_INITIAL = 10.0
BACKOFF_CAP = 300.0
# A run at least this long resets the backoff (Kubernetes: 10 minutes).
BACKOFF_RESET_AFTER = 600.0


@dataclass(frozen=True)
class RestartPolicy:
    """Whether an agent that ended by itself is started again, like ``docker run --restart``.

    ``never`` (default), ``on-failure[:N]`` (restart after a failure, at most
    N times; N defaults to ``DEFAULT_ON_FAILURE_MAX`` = 5), ``always``
    (restart after a failure or a clean exit, without limit). Stops the
    daemon made (TTL, stop, kill, drain, teardown) are never restarted.
    """

    mode: RestartMode = "never"
    max_restarts: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in RESTART_MODES:
            raise ValueError(f"restart policy must be one of {', '.join(RESTART_MODES)}, not {self.mode!r}")
        if self.mode == "on-failure":
            if self.max_restarts is None:
                object.__setattr__(self, "max_restarts", DEFAULT_ON_FAILURE_MAX)
            elif isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int) or self.max_restarts < 1:
                raise ValueError(f"on-failure:N needs an integer N >= 1, not {self.max_restarts!r}")
        elif self.max_restarts is not None:
            raise ValueError(f"a maximum restart count only goes with on-failure, not {self.mode}")

    @classmethod
    def parse(cls, text: str) -> RestartPolicy:
        """``never`` (or ``no``), ``on-failure``, ``on-failure:3``, ``always``."""
        mode, sep, count = text.strip().lower().partition(":")
        if mode == "no":
            mode = "never"
        if mode not in RESTART_MODES:
            raise ValueError(f"invalid restart policy {text!r}: expected never, on-failure[:N] or always")
        if not sep:
            return cls(mode)  # type: ignore[arg-type]
        if mode != "on-failure":
            raise ValueError(f"invalid restart policy {text!r}: only on-failure takes a maximum count")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"invalid restart policy {text!r}: on-failure:N needs an integer N >= 1")
        return cls("on-failure", int(count))

    def __str__(self) -> str:
        return f"on-failure:{self.max_restarts}" if self.mode == "on-failure" else self.mode

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "max_restarts": self.max_restarts}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RestartPolicy:
        return cls(data.get("mode", "never"), data.get("max_restarts"))


def is_failure(reason: str, exit_code: int | None) -> bool:
    """Whether an end is the agent's failure: OOM, lost heartbeat, failed probe, non-zero exit."""
    if reason in FAILURES:
        return True
    return reason == "exited" and exit_code != 0


def should_restart(
    policy: RestartPolicy, reason: str, exit_code: int | None, restarts_so_far: int, deadline_passed: bool
) -> bool:
    """Whether an agent that ended with ``reason`` is started again.

    Never past its deadline (the TTL bounds the agent, not one container),
    never after a stop the daemon made, never beyond ``max_restarts``
    (``restarts_so_far`` counts every restart of the agent). ``on-failure``
    restarts failures (see ``is_failure``); ``always`` also a clean exit
    (reason ``exited`` with code 0). Other reasons (``start_failed``,
    ``lost``, anything unknown) are not restarted. Callers that wait
    ``restart_delay`` first should pass ``deadline_passed`` for
    ``now + delay``.
    """
    if policy.mode == "never" or deadline_passed or reason in DAEMON_STOPS:
        return False
    if policy.max_restarts is not None and restarts_so_far >= policy.max_restarts:
        return False
    if is_failure(reason, exit_code):
        return True
    return policy.mode == "always" and reason == "exited" and exit_code == 0


def backoff_index(streak: int, last_run_seconds: float) -> int:
    """The backoff step for the next restart: the restarts in a row, or 0 after a run of >= 10 minutes.

    Keep ``streak`` per agent: ``index = backoff_index(streak, ran)``, wait
    ``restart_delay(index)``, then store ``streak = index + 1``.
    """
    return 0 if last_run_seconds >= BACKOFF_RESET_AFTER else max(0, streak)


def restart_delay(restarts_so_far: int) -> float:
    """CrashLoopBackOff: 10 s, doubling with each restart in a row, at most 300 s."""
    if restarts_so_far >= 6:  # 10 * 2**5 = 320 > cap already; avoids huge powers
        return BACKOFF_CAP
    return min(BACKOFF_CAP, BACKOFF_INITIAL * 2.0 ** max(0, restarts_so_far))
