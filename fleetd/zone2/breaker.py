"""The circuit breaker (per agent and upstream) and zone 2's retry policy: pure, with an injected clock.

Breaker: closed until ``threshold`` consecutive 429s arrive within ``window``
seconds; then open, failing fast without touching the upstream, for
``open_seconds``, doubling on each consecutive trip up to ``max_open_seconds``;
then half-open, letting exactly one probe through: a probe that is not a 429
closes the breaker and resets the backoff, a 429 reopens it with the doubled
time. Requests already in flight when it opens still finish (their 429s do not
re-trip it while open).

Retries: only on 429 and 5xx, at most ``max_retries``, with full jitter
``uniform(0, min(cap, base * 2**attempt))``; an upstream ``Retry-After`` is
honoured when it is no longer than ``cap``, and when it is longer the answer is
returned to the agent instead of waiting.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerSettings:
    threshold: int = 5
    window: float = 30.0
    open_seconds: float = 60.0
    max_open_seconds: float = 3600.0


@dataclass(frozen=True)
class Transition:
    """A state change, for the event log."""

    to: BreakerState
    message: str
    open_seconds: float | None = None


@dataclass(frozen=True)
class Admit:
    probe: bool  # this request is the half-open probe
    transition: Transition | None = None


@dataclass(frozen=True)
class Reject:
    retry_after: int  # seconds until the breaker lets a probe through


@dataclass
class Breaker:
    settings: BreakerSettings = field(default_factory=BreakerSettings)
    state: BreakerState = BreakerState.CLOSED
    recent_429s: deque[float] = field(default_factory=deque)
    trips: int = 0  # consecutive trips: the open time is open_seconds * 2**(trips-1)
    reopen_at: float = 0.0
    probing: bool = False

    def open_for(self) -> float:
        return float(min(self.settings.max_open_seconds, self.settings.open_seconds * 2 ** max(0, self.trips - 1)))

    def admit(self, now: float) -> Admit | Reject:
        """May a request go upstream now?"""
        if self.state is BreakerState.OPEN:
            if now < self.reopen_at:
                return Reject(max(1, int(self.reopen_at - now + 0.999)))
            self.state = BreakerState.HALF_OPEN
            self.probing = True
            return Admit(True, Transition(BreakerState.HALF_OPEN, "letting one probe through"))
        if self.state is BreakerState.HALF_OPEN:
            if self.probing:
                return Reject(1)
            self.probing = True
            return Admit(True)
        return Admit(False)

    def record(self, now: float, status: int | None, probe: bool) -> Transition | None:
        """The outcome of an attempt: an HTTP status, or None when no answer came (timeout, reset)."""
        if probe:
            self.probing = False
            if status is None:
                return None  # inconclusive: stay half-open, the next request probes
            if status == 429:
                return self._trip(now)
            self.state = BreakerState.CLOSED
            self.trips = 0
            self.recent_429s.clear()
            return Transition(BreakerState.CLOSED, f"probe answered {status}")
        if self.state is not BreakerState.CLOSED or status is None:
            return None
        if status != 429:
            self.recent_429s.clear()
            return None
        self.recent_429s.append(now)
        while self.recent_429s and self.recent_429s[0] < now - self.settings.window:
            self.recent_429s.popleft()
        if len(self.recent_429s) >= self.settings.threshold:
            return self._trip(now)
        return None

    def _trip(self, now: float) -> Transition:
        self.trips += 1
        self.state = BreakerState.OPEN
        self.recent_429s.clear()
        seconds = self.open_for()
        self.reopen_at = now + seconds
        return Transition(BreakerState.OPEN, f"upstream answered 429 repeatedly: failing fast for {seconds:g} s",
                          seconds)


@dataclass(frozen=True)
class RetrySettings:
    max_retries: int = 2
    base: float = 0.5
    cap: float = 8.0


def retry_delay(settings: RetrySettings, attempt: int, status: int, retry_after: float | None,
                uniform: Callable[[float, float], float] = random.uniform) -> float | None:
    """Seconds to wait before retry number ``attempt + 1``, or None to return this answer to the agent.

    ``attempt`` counts from 0 (the first try). Only 429 and 5xx are retried.
    """
    if attempt >= settings.max_retries or not (status == 429 or 500 <= status <= 599):
        return None
    if retry_after is not None:
        return retry_after if retry_after <= settings.cap else None
    return uniform(0.0, min(settings.cap, settings.base * 2 ** attempt))


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the delta form; an HTTP date is not honoured), also retry-after-ms."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
