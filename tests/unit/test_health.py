"""Heartbeats, probes and restarts as pure decisions, with explicit times."""

from __future__ import annotations

import pytest

from fleetd.health import (
    HEARTBEAT_LOST,
    LIVENESS_FAILED,
    STARTUP_FAILED,
    HeartbeatWatch,
    ProbeSpec,
    ProbeTracker,
    RestartPolicy,
    Verdict,
    Watchdog,
    backoff_index,
    default_startup_window,
    restart_delay,
    should_restart,
)

# --------------------------------------------------------------------------- watchdog


def test_default_startup_window() -> None:
    assert default_startup_window(5) == 30
    assert default_startup_window(15) == 30
    assert default_startup_window(20) == 40
    assert HeartbeatWatch.create(5, now=100).startup_window == 30
    assert HeartbeatWatch.create(5, now=100, startup_window=7).startup_window == 7


def test_startup_window_before_first_beat() -> None:
    watch = HeartbeatWatch.create(5, now=100)  # window 30, 2*interval 10
    assert watch.due() == 130
    assert not watch.lost(110)  # 2*interval passed, but still inside the startup window
    assert not watch.lost(129.999)
    assert watch.lost(130)


def test_long_interval_window_is_two_intervals() -> None:
    watch = HeartbeatWatch.create(60, now=0)
    assert watch.due() == 120
    assert not watch.lost(119)
    assert watch.lost(120)


def test_lost_exactly_after_two_intervals() -> None:
    watch = HeartbeatWatch.create(5, now=100)
    watch.beat(140)
    assert watch.due() == 150
    assert not watch.lost(149.999)
    assert watch.lost(150)
    watch.beat(150)  # a late beat revives the watch; the daemon decides before it arrives
    assert watch.due() == 160


def test_the_first_beat_ends_the_startup_window() -> None:
    watch = HeartbeatWatch.create(5, now=100)
    assert watch.due() == 130  # no beat yet: the 30 s startup window
    watch.beat(101)
    assert watch.due() == 111  # it has started: two intervals after its last beat
    assert not watch.lost(110.9)
    assert watch.lost(111)


def test_out_of_order_beat_keeps_latest() -> None:
    watch = HeartbeatWatch.create(5, now=0)
    watch.beat(50)
    watch.beat(45)
    assert watch.last_beat == 50


def test_interval_zero_is_never_lost() -> None:
    watch = HeartbeatWatch.create(0, now=0)
    assert not watch.enabled
    assert watch.due() is None
    assert not watch.lost(10**9)


def test_bad_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        HeartbeatWatch.create(-1, now=0)
    with pytest.raises(ValueError, match="window"):
        HeartbeatWatch.create(5, now=0, startup_window=-1)


def test_progress_is_kept() -> None:
    watch = HeartbeatWatch.create(5, now=0)
    progress = {"step": 8, "total": 15, "message": "indexing"}
    watch.beat(1, progress)
    progress["step"] = 99  # the watch keeps its own copy
    watch.beat(2)  # a beat without progress keeps the last one
    assert watch.progress == {"step": 8, "total": 15, "message": "indexing"}
    watch.beat(3, {"step": 9})
    assert watch.progress == {"step": 9}


def test_pause_and_resume_gives_two_full_intervals() -> None:
    dog = Watchdog()
    dog.add("a", 5, now=0)
    dog.beat("a", 35)
    assert dog.next_due() == 45
    dog.pause(40)
    assert dog.paused
    assert dog.next_due() is None
    assert dog.lost(1000) == []  # silence while zone 2 is down condemns nobody
    dog.resume(1000)
    assert not dog.paused
    assert dog.next_due() == 1010  # a full 2*interval from the resume
    assert dog.lost(1009.9) == []
    assert dog.lost(1010) == ["a"]


def test_resume_does_not_eat_the_startup_window() -> None:
    dog = Watchdog()
    dog.add("a", 5, now=0)  # window ends at 30
    dog.pause(10)
    dog.resume(20)  # 10 s paused: the window ends at 40 now
    watch = dog.get("a")
    assert watch is not None
    assert watch.paused_total == 10
    assert dog.next_due() == 40
    assert dog.lost(39) == []
    assert dog.lost(40) == ["a"]


def test_agent_added_while_paused_starts_paused() -> None:
    dog = Watchdog()
    dog.pause(100)
    dog.add("a", 5, now=110)
    assert dog.lost(500) == []
    dog.resume(200)
    # the whole window (30 s) counts from the resume, since it all fell in the pause
    assert dog.next_due() == 230
    assert dog.lost(229) == []
    assert dog.lost(230) == ["a"]


def test_pause_and_resume_are_idempotent() -> None:
    dog = Watchdog()
    dog.add("a", 5, now=0)
    dog.pause(10)
    dog.pause(15)  # keeps the first pause time
    dog.resume(20)
    dog.resume(25)  # ignored: not paused
    watch = dog.get("a")
    assert watch is not None
    assert watch.paused_total == 10
    assert watch.resumed_at == 20


def test_watchdog_lists_and_removes() -> None:
    dog = Watchdog()
    dog.add("b", 5, now=0)
    dog.add("a", 5, now=0)
    dog.add("off", 0, now=0)
    assert dog.beat("a", 25)
    assert not dog.beat("unknown", 25)
    assert dog.next_due() == 30
    assert dog.lost(30) == ["b"]
    assert dog.lost(35) == ["a", "b"]
    dog.remove("b")
    dog.remove("b")  # no error
    assert dog.lost(35) == ["a"]
    dog.add("a", 5, now=35)  # restarted: a fresh watch
    assert dog.lost(35) == []
    assert dog.next_due() == 65


# --------------------------------------------------------------------------- probe specs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http:8080/healthz", ProbeSpec("http", 8080, "/healthz")),
        ("http:8080", ProbeSpec("http", 8080, "/")),
        ("HTTP:80/", ProbeSpec("http", 80, "/")),
        ("http:8080/ready?full=1", ProbeSpec("http", 8080, "/ready?full=1")),
        ("tcp:5432", ProbeSpec("tcp", 5432)),
        ("tcp:65535", ProbeSpec("tcp", 65535)),
        ("exec:cat /tmp/ready", ProbeSpec("exec", command=("cat", "/tmp/ready"))),
        ("exec:sh -c 'test -f /a,b'", ProbeSpec("exec", command=("sh", "-c", "test -f /a,b"))),
        (
            "http:8080/healthz,period=5,timeout=2,failure=3,success=1,delay=10",
            ProbeSpec("http", 8080, "/healthz", initial_delay=10, period=5, timeout=2),
        ),
        ("tcp:1, period = 0.5 ,failure=1", ProbeSpec("tcp", 1, period=0.5, failure_threshold=1)),
        ("exec:pg_isready,success=2", ProbeSpec("exec", command=("pg_isready",), success_threshold=2)),
        (
            "http:80,initial_delay=3,success_threshold=2,failure_threshold=4",
            ProbeSpec("http", 80, initial_delay=3, success_threshold=2, failure_threshold=4),
        ),
    ],
)
def test_probe_parse(text: str, expected: ProbeSpec) -> None:
    assert ProbeSpec.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected http:PORT"),
        ("grpc:50051", "expected http:PORT"),
        ("http", "expected http:PORT"),
        ("8080", "expected http:PORT"),
        ("http:", "port must be a number from 1 to 65535"),
        ("http:0/healthz", "port must be a number from 1 to 65535"),
        ("tcp:65536", "port must be a number from 1 to 65535"),
        ("tcp:-1", "port must be a number from 1 to 65535"),
        ("tcp:abc", "port must be a number from 1 to 65535"),
        ("tcp:5432/x", "tcp probe takes no path"),
        ("http:80/a b", "path"),
        ("exec:", "needs a command"),
        ("exec:   ", "needs a command"),
        ("exec:echo 'unclosed", "exec command"),
        ("http:80,period=0", "period and timeout must be > 0"),
        ("http:80,timeout=-1", "period and timeout must be > 0"),
        ("http:80,delay=-1", "initial_delay must be >= 0"),
        ("http:80,period=fast", "period= needs seconds or a duration"),
        ("http:80,period=nan", "period= needs seconds or a duration"),
        ("http:80,failure=1.5", "failure= needs a whole number"),
        ("http:80,failure=0", "failure_threshold must be an integer >= 1"),
        ("http:80,interval=5", "unknown option 'interval'"),
        ("http:80,period=5,period=6", "given twice"),
    ],
)
def test_probe_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        ProbeSpec.parse(text)
    assert "\n" not in str(info.value)


def test_probe_parse_error_is_one_line() -> None:
    with pytest.raises(ValueError) as info:
        ProbeSpec.parse("grpc:1\nfoo")
    assert "\n" not in str(info.value)


def test_probe_spec_direct_validation() -> None:
    with pytest.raises(ValueError, match="needs a port"):
        ProbeSpec("http")
    with pytest.raises(ValueError, match="takes no port"):
        ProbeSpec("exec", 80, command=("true",))
    with pytest.raises(ValueError, match="takes no command"):
        ProbeSpec("tcp", 80, command=("true",))
    with pytest.raises(ValueError, match="kind"):
        ProbeSpec("udp", 53)  # type: ignore[arg-type]


def test_for_kind() -> None:
    spec = ProbeSpec.parse("http:80,success=2")
    assert spec.for_kind("readiness") is spec
    with pytest.raises(ValueError, match="liveness probe's success threshold must be 1"):
        spec.for_kind("liveness")
    with pytest.raises(ValueError, match="startup probe's success threshold must be 1"):
        spec.for_kind("startup")
    with pytest.raises(ValueError, match="success threshold"):
        ProbeTracker(0, liveness=spec)


def test_probe_dict_round_trip() -> None:
    for text in ("http:8080/healthz,period=5,timeout=2,success=2,delay=1", "tcp:5432", "exec:cat /tmp/ready"):
        spec = ProbeSpec.parse(text)
        data = spec.to_dict()
        assert isinstance(data["command"], list)
        assert ProbeSpec.from_dict(data) == spec
    assert ProbeSpec.from_dict({"kind": "tcp", "port": 1}) == ProbeSpec("tcp", 1)
    with pytest.raises(ValueError, match="unknown probe field"):
        ProbeSpec.from_dict({"kind": "tcp", "port": 1, "host": "x"})
    with pytest.raises(ValueError, match="needs a kind"):
        ProbeSpec.from_dict({"port": 1})


# --------------------------------------------------------------------------- probe tracker


def run(tracker: ProbeTracker, now: float, results: dict[str, bool]) -> dict[str, Verdict]:
    """Take the due probes at ``now`` and record the given result for each."""
    verdicts: dict[str, Verdict] = {}
    for which in tracker.which_due(now):
        verdicts[which] = tracker.record(which, results[which], now)
    return verdicts


def test_no_probes_means_started_and_ready() -> None:
    tracker = ProbeTracker(0)
    assert tracker.started
    assert tracker.ready
    assert tracker.which_due(100) == []
    assert tracker.next_due() is None


def test_startup_gates_readiness_and_liveness() -> None:
    tracker = ProbeTracker(
        100,
        startup=ProbeSpec("tcp", 80, period=2, failure_threshold=10),
        readiness=ProbeSpec("http", 80, initial_delay=5, period=10),
        liveness=ProbeSpec("http", 80, initial_delay=3, period=10),
    )
    assert not tracker.started
    assert not tracker.ready
    assert tracker.next_due() == 100
    assert tracker.which_due(100) == ["startup"]
    verdict = tracker.record("startup", False, 100)
    assert not verdict.started_now and not verdict.restart
    assert tracker.which_due(101) == []  # only the startup probe, every 2 s
    assert tracker.next_due() == 102
    assert tracker.which_due(102) == ["startup"]
    verdict = tracker.record("startup", True, 102.5)
    assert verdict.started_now
    assert verdict.ready_changed is None  # readiness has yet to say so
    assert tracker.started and not tracker.ready
    # Delays count from the startup success; the startup probe is done.
    assert tracker.next_due() == 105.5
    assert tracker.which_due(105.5) == ["liveness"]
    assert tracker.which_due(107.5) == ["readiness"]
    assert tracker.record("readiness", True, 107.6).ready_changed is True
    assert tracker.ready
    assert not tracker.record("liveness", True, 107.7).stale
    assert tracker.record("liveness", True, 107.7).stale  # one run, one result
    assert tracker.next_due() == 115.5


def test_record_without_which_due_is_stale() -> None:
    tracker = ProbeTracker(0, liveness=ProbeSpec("tcp", 80, failure_threshold=1))
    verdict = tracker.record("liveness", False, 0)
    assert verdict.stale and not verdict.restart
    assert tracker.which_due(0) == ["liveness"]
    assert tracker.record("liveness", True, 0).stale is False
    assert tracker.record("liveness", False, 0).stale is True  # answered already
    assert tracker.record("readiness", False, 0).stale is True  # no such probe


def test_startup_success_without_readiness_makes_ready() -> None:
    tracker = ProbeTracker(0, startup=ProbeSpec("tcp", 80))
    assert not tracker.ready
    assert tracker.which_due(0) == ["startup"]
    verdict = tracker.record("startup", True, 1)
    assert verdict.started_now
    assert verdict.ready_changed is True
    assert tracker.ready
    assert tracker.which_due(1000) == []


def test_startup_failure_threshold_restarts() -> None:
    tracker = ProbeTracker(
        0,
        startup=ProbeSpec("tcp", 80, period=1, failure_threshold=3),
        liveness=ProbeSpec("tcp", 80),
    )
    verdicts = [run(tracker, t, {"startup": False})["startup"] for t in (0, 1, 2)]
    assert [v.restart for v in verdicts] == [False, False, True]
    assert verdicts[-1].reason == STARTUP_FAILED
    assert tracker.which_due(100) == []  # nothing runs until reset
    assert tracker.next_due() is None
    tracker.reset(200)
    assert not tracker.started
    assert tracker.which_due(200) == ["startup"]


def test_readiness_flips_both_ways_with_thresholds() -> None:
    tracker = ProbeTracker(0, readiness=ProbeSpec("http", 80, period=10, success_threshold=2, failure_threshold=3))
    assert tracker.started and not tracker.ready
    changes = []
    results = "+-+++--+----++"  # one result every 10 s from 0
    for index, mark in enumerate(results):
        t, ok = index * 10, mark == "+"
        assert tracker.which_due(t) == ["readiness"]
        verdict = tracker.record("readiness", ok, t)
        assert not verdict.restart
        changes.append((t, verdict.ready_changed))
    flips = [(t, c) for t, c in changes if c is not None]
    # two successes in a row: ready at 30; three failures in a row: unready at 100; ready again at 130
    assert flips == [(30, True), (100, False), (130, True)]
    assert tracker.ready


def test_liveness_failure_threshold_restarts() -> None:
    tracker = ProbeTracker(
        0,
        readiness=ProbeSpec("tcp", 80, period=5),
        liveness=ProbeSpec("http", 80, period=5, failure_threshold=3),
    )
    run(tracker, 0, {"readiness": True, "liveness": False})
    assert tracker.ready
    run(tracker, 5, {"readiness": True, "liveness": False})
    verdicts = run(tracker, 10, {"readiness": True, "liveness": True})  # a success resets the count
    assert not verdicts["liveness"].restart
    run(tracker, 15, {"readiness": True, "liveness": False})
    run(tracker, 20, {"readiness": True, "liveness": False})
    assert tracker.which_due(25) == ["readiness", "liveness"]
    assert not tracker.record("readiness", True, 25).restart
    verdict = tracker.record("liveness", False, 25)
    assert verdict.restart
    assert verdict.reason == LIVENESS_FAILED
    assert verdict.ready_changed is False  # a condemned container is not ready
    assert not tracker.ready
    tracker.reset(30)
    assert tracker.started and not tracker.ready
    assert tracker.which_due(30) == ["readiness", "liveness"]


def test_results_from_before_reset_are_ignored() -> None:
    tracker = ProbeTracker(0, startup=ProbeSpec("tcp", 80), liveness=ProbeSpec("tcp", 80))
    assert tracker.which_due(0) == ["startup"]
    tracker.reset(5)  # the container restarted while the probe ran
    verdict = tracker.record("startup", True, 6)
    assert verdict.stale
    assert not tracker.started
    assert tracker.which_due(5) == ["startup"]


def test_initial_delay_and_period_scheduling() -> None:
    tracker = ProbeTracker(100, readiness=ProbeSpec("tcp", 80, initial_delay=10, period=5))
    assert tracker.next_due() == 110
    assert tracker.which_due(109.9) == []
    assert tracker.which_due(110) == ["readiness"]
    assert tracker.next_due() is None  # in flight: nothing to schedule
    assert tracker.which_due(200) == []  # never twice at once, even with a slow probe
    tracker.record("readiness", True, 111)
    # start to start: the next run is one period after the previous one was due
    assert tracker.next_due() == 115
    assert tracker.which_due(114) == []
    assert tracker.which_due(116) == ["readiness"]  # a little late: the next stays on the grid
    tracker.record("readiness", True, 116)
    assert tracker.next_due() == 120
    assert tracker.which_due(200) == ["readiness"]  # very late: missed runs are skipped
    tracker.record("readiness", True, 200)
    assert tracker.next_due() == 205


def test_reset_reschedules_with_initial_delay() -> None:
    tracker = ProbeTracker(0, liveness=ProbeSpec("tcp", 80, initial_delay=30, period=10))
    assert tracker.which_due(30) == ["liveness"]
    tracker.record("liveness", False, 30)
    tracker.reset(1000)
    assert tracker.next_due() == 1030
    state = tracker.probes["liveness"]
    assert state.failures == 0


# --------------------------------------------------------------------------- restart policy


def test_restart_policy_parse() -> None:
    assert RestartPolicy.parse("never") == RestartPolicy()
    assert RestartPolicy.parse("no") == RestartPolicy("never")
    assert RestartPolicy.parse("always") == RestartPolicy("always", None)
    assert RestartPolicy.parse("on-failure") == RestartPolicy("on-failure", 5)
    assert RestartPolicy.parse("On-Failure:3") == RestartPolicy("on-failure", 3)
    assert RestartPolicy("on-failure").max_restarts == 5
    assert str(RestartPolicy.parse("on-failure:3")) == "on-failure:3"
    assert str(RestartPolicy.parse("always")) == "always"
    for policy in (RestartPolicy(), RestartPolicy("always"), RestartPolicy("on-failure", 2)):
        assert RestartPolicy.from_dict(policy.to_dict()) == policy
        assert RestartPolicy.parse(str(policy)) == policy


@pytest.mark.parametrize(
    "text", ["", "sometimes", "unless-stopped", "always:3", "never:1", "on-failure:", "on-failure:0", "on-failure:x"]
)
def test_restart_policy_parse_errors(text: str) -> None:
    with pytest.raises(ValueError, match="restart policy"):
        RestartPolicy.parse(text)


def test_restart_policy_direct_validation() -> None:
    with pytest.raises(ValueError):
        RestartPolicy("always", 3)
    with pytest.raises(ValueError):
        RestartPolicy("on-failure", 0)
    with pytest.raises(ValueError):
        RestartPolicy("sometimes")  # type: ignore[arg-type]


NEVER = RestartPolicy("never")
ON_FAILURE = RestartPolicy("on-failure", 3)
ALWAYS = RestartPolicy("always")


@pytest.mark.parametrize(
    ("reason", "exit_code", "never", "on_failure", "always"),
    [
        ("exited", 0, False, False, True),
        ("exited", 1, False, True, True),
        ("exited", 137, False, True, True),
        ("exited", None, False, True, True),
        ("oom_killed", 137, False, True, True),
        (HEARTBEAT_LOST, 143, False, True, True),
        (LIVENESS_FAILED, 137, False, True, True),
        (STARTUP_FAILED, 137, False, True, True),
        ("ttl_expired", 143, False, False, False),
        ("stopped", 0, False, False, False),
        ("killed", 137, False, False, False),
        ("drained", 0, False, False, False),
        ("teardown", 137, False, False, False),
        ("start_failed", None, False, False, False),
        ("lost", None, False, False, False),
        ("something-new", 1, False, False, False),
    ],
)
def test_should_restart_matrix(reason: str, exit_code: int | None, never: bool, on_failure: bool, always: bool) -> None:
    assert should_restart(NEVER, reason, exit_code, 0, False) is never
    assert should_restart(ON_FAILURE, reason, exit_code, 0, False) is on_failure
    assert should_restart(ALWAYS, reason, exit_code, 0, False) is always


def test_should_restart_limits() -> None:
    assert should_restart(ON_FAILURE, "exited", 1, 2, False)
    assert not should_restart(ON_FAILURE, "exited", 1, 3, False)  # on-failure:3 gives up after 3
    assert not should_restart(RestartPolicy("on-failure"), "exited", 1, 5, False)  # default 5
    assert should_restart(ALWAYS, "exited", 0, 10_000, False)  # always: no cap
    # past the deadline nothing comes back
    assert not should_restart(ALWAYS, "exited", 1, 0, True)
    assert not should_restart(ON_FAILURE, "oom_killed", 137, 0, True)


def test_restart_delay_doubles_to_the_cap() -> None:
    assert [restart_delay(n) for n in range(8)] == [10, 20, 40, 80, 160, 300, 300, 300]
    assert restart_delay(10_000) == 300
    assert restart_delay(-1) == 10


def test_backoff_resets_after_ten_minutes() -> None:
    assert backoff_index(4, 30) == 4
    assert backoff_index(4, 599.9) == 4
    assert backoff_index(4, 600) == 0
    assert backoff_index(4, 3600) == 0
    # the way the daemon keeps the streak
    streak = 0
    delays = []
    for ran in (5, 5, 5, 700, 5, 5):
        index = backoff_index(streak, ran)
        delays.append(restart_delay(index))
        streak = index + 1
    assert delays == [10, 20, 40, 10, 20, 40]
