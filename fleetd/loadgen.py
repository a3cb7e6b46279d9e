"""A small HTTP load generator (aiohttp, asyncio), for benchmarking zone 2 against its upstream.

``fleetd loadgen URL --concurrency 100 --duration 10`` keeps ``concurrency``
requests in flight on as many keep-alive connections (closed loop: each
connection sends its next request when the previous answer is complete) and
prints one JSON line::

    {"count": ..., "ok": ..., "errors": {"503": 2, "ClientOSError": 1}, "rps": ...,
     "latency_ms": {"p50": ..., "p90": ..., "p99": ..., "max": ...}, ...}

``--rate R`` makes it an open loop: R requests per second in all, each
connection sending on its own schedule; a request due while its connection is
still busy goes out late, and its latency counts from when it was due (``late``
says how many). Without it, each connection sends as fast as answers come.
``started_at`` and ``ended_at`` (epoch seconds) bound the measured window, for
matching it with samples taken outside (CPU, memory of the server);
``slowest_at`` is when the slowest successful request was sent.
``--stream`` also measures the time to the first byte of the response body
(``ttfb_ms``), e.g. the first server-sent event of a streamed completion.
``--warmup S`` sends for S seconds before measuring (connections opened one by
one over that time, so that equal requests do not stay in lockstep); requests
started in the warm-up are not counted. ``rps`` counts the
successful (2xx) answers per second of the measured window.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class LoadSpec:
    url: str
    concurrency: int = 10
    duration: float | None = None  # seconds of measurement (after the warm-up)
    requests: int | None = None  # or: this many measured requests in all
    method: str | None = None  # default: POST with a body, GET without
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    stream: bool = False
    rate: float | None = None  # open loop: this many requests per second in all, spread over the connections
    warmup: float = 0.0
    timeout: float = 30.0


@dataclass
class Results:
    latency: list[float] = field(default_factory=list)  # seconds, successful requests
    ttfb: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    count: int = 0
    body_bytes: int = 0
    slowest: tuple[float, float] = (0.0, 0.0)  # latency and start (perf_counter) of the slowest success
    late: int = 0  # open loop: requests sent behind schedule (the previous answer on the connection was late)


GOLDEN = (5**0.5 - 1) / 2  # the fractional part of the golden ratio


def start_offsets(concurrency: int, warmup: float) -> list[float]:
    """When each closed-loop connection starts, spread over the warm-up.

    Equal requests started at once would stay in lockstep. An even step (warm-up / concurrency: 10 ms for
    100 connections in 1 s) is no better when it divides a period of the answers (a simulator's 50 ms
    between stream chunks): the streams would stay in a few groups whose chunks and next requests arrive
    together. The golden-ratio sequence spreads the starts evenly at every scale, commensurate with none.
    """
    return [warmup * (index * GOLDEN % 1.0) for index in range(concurrency)]


def percentile(ordered: list[float], pct: float) -> float:
    """Linear-interpolated percentile of sorted values (pct in 0..100)."""
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution_ms(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "p50": round(percentile(ordered, 50) * 1000, 3),
        "p90": round(percentile(ordered, 90) * 1000, 3),
        "p99": round(percentile(ordered, 99) * 1000, 3),
        "max": round(ordered[-1] * 1000, 3),
        "mean": round(sum(ordered) / len(ordered) * 1000, 3),
    }


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Send the load described by ``spec``; return the summary."""
    if spec.duration is None and spec.requests is None:
        raise ValueError("give a duration or a number of requests")
    method = spec.method or ("POST" if spec.body is not None else "GET")
    results = Results()
    connector = aiohttp.TCPConnector(limit=spec.concurrency, force_close=False, enable_cleanup_closed=False)
    timeout = aiohttp.ClientTimeout(total=spec.timeout)
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + spec.warmup
    stop_at = measure_from + spec.duration if spec.duration is not None else math.inf
    remaining = [spec.requests if spec.requests is not None else -1]
    window = [math.inf, 0.0]  # first measured start, last measured end (perf_counter)
    cpu_before = [0.0]

    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:

        async def one(lateness: float = 0.0) -> None:
            # lateness: how long this request has been due (open loop); it counts in its latency.
            t0 = time.perf_counter() - lateness
            measured = loop.time() - lateness >= measure_from
            first = math.nan
            try:
                async with session.request(method, spec.url, headers=spec.headers, data=spec.body) as response:
                    if spec.stream:
                        chunk = await response.content.readany()
                        first = time.perf_counter() - t0
                        size = len(chunk)
                        while chunk:
                            chunk = await response.content.readany()
                            size += len(chunk)
                    else:
                        size = len(await response.read())
                    status = response.status
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                status, error = 0, type(exc).__name__
            else:
                error = ""
            elapsed = time.perf_counter() - t0
            if not measured:
                return
            results.count += 1
            window[0] = min(window[0], t0)
            window[1] = max(window[1], t0 + elapsed)
            if error:
                results.errors[error] += 1
            elif 200 <= status < 300:
                if elapsed > results.slowest[0]:
                    results.slowest = (elapsed, t0)
                results.latency.append(elapsed)
                results.body_bytes += size
                if spec.stream:
                    results.ttfb.append(first)
            else:
                results.errors[str(status)] += 1

        def take() -> bool:
            """May one more request be sent (``--requests``)?"""
            if loop.time() >= measure_from and remaining[0] >= 0:
                if remaining[0] == 0:
                    return False
                remaining[0] -= 1
            return True

        offsets = start_offsets(spec.concurrency, spec.warmup)

        async def worker(index: int) -> None:
            await asyncio.sleep(offsets[index])
            while loop.time() < stop_at and take():
                await one()

        async def paced_worker(index: int, rate: float) -> None:
            # Open loop: connection i sends at start + (k * concurrency + i) / rate. A request due while the
            # previous answer is still coming is sent at once and its latency counts from when it was due
            # (no coordinated omission); one sent on time counts from when it was sent.
            interval = spec.concurrency / rate
            due = start + index / rate
            while due < stop_at and loop.time() < stop_at:
                now = loop.time()
                if now < due:
                    await asyncio.sleep(due - now)
                    lateness = 0.0
                else:
                    lateness = now - due
                    if due >= measure_from:
                        results.late += 1
                if not take():
                    return
                await one(lateness)
                due += interval

        async def mark_cpu() -> None:
            await asyncio.sleep(spec.warmup)
            cpu_before[0] = cpu_seconds()

        marker = asyncio.create_task(mark_cpu())
        rate = spec.rate
        if rate:
            await asyncio.gather(*(paced_worker(i, rate) for i in range(spec.concurrency)))
        else:
            await asyncio.gather(*(worker(i) for i in range(spec.concurrency)))
        await marker
        cpu_used = cpu_seconds() - cpu_before[0]

    elapsed = window[1] - window[0] if results.count else 0.0
    # Wall-clock bounds of the measured window: containers share the host's clock.
    wall_offset = time.time() - time.perf_counter()
    ok = len(results.latency)
    summary: dict[str, Any] = {
        "url": spec.url,
        "method": method,
        "concurrency": spec.concurrency,
        "rate": spec.rate,
        "late": results.late,
        "stream": spec.stream,
        "count": results.count,
        "ok": ok,
        "errors": dict(results.errors),
        "seconds": round(elapsed, 3),
        "rps": round(ok / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": distribution_ms(results.latency),
        "body_bytes_mean": round(results.body_bytes / ok) if ok else 0,
        "cpu_seconds": round(cpu_used, 3),
        "slowest_at": round(results.slowest[1] + wall_offset, 3) if ok else None,
        "started_at": round(window[0] + wall_offset, 3) if results.count else None,
        "ended_at": round(window[1] + wall_offset, 3) if results.count else None,
    }
    if spec.stream:
        summary["ttfb_ms"] = distribution_ms(results.ttfb)
    return summary


def parse_header(value: str) -> tuple[str, str]:
    key, sep, rest = value.partition(":")
    if not sep or not key.strip():
        raise ValueError(f"invalid header {value!r}: expected K:V")
    return key.strip(), rest.strip()


def run(spec: LoadSpec) -> dict[str, Any]:
    result = asyncio.run(run_load(spec))
    print(json.dumps(result), flush=True)
    return result
