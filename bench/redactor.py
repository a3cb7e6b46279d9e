"""Micro-benchmark: zone 2's response redactor, the previous implementation against the current one.

Every response chunk zone 2 relays goes through ``Redactor.feed()``; for a streaming LLM answer that
is every server-sent event. This times, in one run and side by side, the per-chunk cost of

* ``old``: the implementation before the rewrite (copied below as ``OldRedactor``): scrub
  ``tail + chunk`` with ``bytes.replace`` per secret, then a Python loop over up to ``len(secret)-1``
  positions to find what to hold back;
* ``new``: ``fleetd.zone2.handles.Redactor``.

Workloads (secrets are 51 bytes, like an OpenAI project key; 1 or 3 of them; "overlap": 3 keys of which
one ends in the byte another begins with, so that two echoes could share a byte):

* ``sse``: OpenAI- and Anthropic-style events (``data: {...}\\n\\n``, 150-300 bytes), one per chunk;
* ``sse rechunked``: the same stream cut at random points (64-512 bytes), as a socket read hands it
  over, so a chunk ends in any byte, often in the middle of a word;
* ``sse + echo``: as ``sse``, but one event in 50 echoes a secret (split over two chunks half the time);
* ``64 KiB body``: one ``feed()`` of a 64 KiB JSON body (``ns/chunk`` is then per body);
* ``headers``: ``scrub_text()`` (``_scrub`` + decode for the old one) of 12 typical response headers;
* ``new Redactor``: the constructor, as run once per request.

Each figure is the best of ``--repeat`` rounds (old and new alternate within a round) of a loop that
builds a redactor, feeds the whole workload and flushes. The last column checks that both produced
the same bytes. No assertions, no target: it prints the table and exits 0.

Run: .venv/bin/python bench/redactor.py [--repeat 7] [--events 2000] [--budget 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import string
import sys
import timeit
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleetd.zone2.handles import Redactor


class OldRedactor:
    """The implementation before the rewrite, verbatim (the baseline)."""

    MASK = b"[REDACTED]"

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({s.encode() for s in secrets if s}, key=len, reverse=True)
        self.keep = max((len(s) for s in self.secrets), default=1) - 1
        self.tail = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._scrub(self.tail + chunk)
        if self.keep <= 0:
            self.tail = b""
            return data
        cut = max(0, len(data) - self.keep)
        while cut < len(data) and not any(s.startswith(data[cut:]) for s in self.secrets):
            cut += 1
        self.tail = data[cut:]
        return data[:cut]

    def flush(self) -> bytes:
        data, self.tail = self.tail, b""
        return self._scrub(data)

    def _scrub(self, data: bytes) -> bytes:
        for secret in self.secrets:
            data = data.replace(secret, self.MASK)
        return data

    def scrub_text(self, text: str) -> str:  # what proxy.response_headers did with it
        return self._scrub(text.encode()).decode(errors="replace")


ALNUM = string.ascii_letters + string.digits
WORDS = ("the", " model", " answer", " is", " streaming", " tokens", ",", " and", " redaction", " of",
         " secrets", " happens", " per", " chunk", ".", "\\n", " 42", " {\\\"k\\\": 1}", " Python", " fleetd")


def secrets_51(rng: random.Random, count: int, overlap: bool = False) -> list[str]:
    """``count`` distinct 51-byte keys with the prefixes real providers use, each ending in a digit.

    With ``overlap`` the first one ends in ``s`` instead, the byte the second one begins with: an echo
    of the two could share that byte, so a chunk that holds a secret takes the redactor's general path.
    """
    prefixes = ("sk-proj-", "sk-ant-api03-", "AIzaSy")
    keys = [p + "".join(rng.choice(ALNUM) for _ in range(50 - len(p))) + rng.choice(string.digits)
            for p in prefixes[:count]]
    if overlap:
        keys[0] = keys[0][:-1] + "s"
    return keys


def sse_events(rng: random.Random, n: int) -> list[bytes]:
    """``n`` server-sent events, 150-300 bytes each, OpenAI and Anthropic style."""
    out: list[bytes] = []
    for i in range(n):
        text = "".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
        if i % 2:
            body = {"id": "chatcmpl-9xQ2" + "".join(rng.choice(ALNUM) for _ in range(20)),
                    "object": "chat.completion.chunk", "created": 1718000000 + i, "model": "gpt-4o-2024-08-06",
                    "system_fingerprint": "fp_" + "".join(rng.choice(ALNUM) for _ in range(10)),
                    "choices": [{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}]}
            out.append(b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n")
        else:
            body = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text},
                    "usage": {"output_tokens": i}}
            out.append(b"event: content_block_delta\ndata: " + json.dumps(body, separators=(",", ":")).encode()
                       + b"\n\n")
    return out


def rechunk(rng: random.Random, chunks: list[bytes]) -> list[bytes]:
    """The same bytes cut at random points 64-512 bytes apart."""
    stream = b"".join(chunks)
    out, pos = [], 0
    while pos < len(stream):
        step = rng.randint(64, 512)
        out.append(stream[pos:pos + step])
        pos += step
    return out


def with_echoes(rng: random.Random, chunks: list[bytes], secrets: list[str]) -> list[bytes]:
    """One event in 50 carries a secret; half of those are split across two chunks mid-secret."""
    out: list[bytes] = []
    for i, chunk in enumerate(chunks):
        if i % 50 == 25:
            secret = rng.choice(secrets).encode()
            event = chunk[:-4] + b" key: " + secret + b" " + chunk[-4:]
            if i % 100 == 25:
                cut = event.index(secret) + rng.randint(1, len(secret) - 1)
                out += (event[:cut], event[cut:])
            else:
                out.append(event)
        else:
            out.append(chunk)
    return out


def body_64k(rng: random.Random) -> bytes:
    items: list[str] = []
    size = 0
    while size < 64 * 1024:
        item = json.dumps({"id": len(items), "text": "".join(rng.choice(WORDS) for _ in range(20)),
                           "score": rng.random()})
        items.append(item)
        size += len(item) + 1
    return ("[" + ",".join(items) + "]").encode()[: 64 * 1024]


HEADERS = ["application/json", "chunked", "Tue, 10 Jun 2025 12:00:00 GMT", "req_0123456789abcdef",
           "nosniff", "max-age=31536000; includeSubDomains", "1999", "499", "2025-06-10T12:00:01Z",
           "cf-ray 8a1b2c3d4e5f-AMS", "no-cache, must-revalidate", "h3=\":443\"; ma=86400"]


def stream_runner(cls: type, *, secrets: list[str], chunks: list[bytes]) -> Callable[[], bytes]:
    def run() -> bytes:
        redactor = cls(secrets)
        feed = redactor.feed
        out = [feed(chunk) for chunk in chunks]
        out.append(redactor.flush())
        return b"".join(out)
    return run


def headers_runner(cls: type, *, secrets: list[str]) -> Callable[[], bytes]:
    def run() -> bytes:
        redactor = cls(secrets)
        return "".join(redactor.scrub_text(v) for v in HEADERS).encode()
    return run


def init_runner(cls: type, *, secrets: list[str]) -> Callable[[], bytes]:
    def run() -> bytes:
        cls(secrets)
        return b""
    return run


def loops(fn: Callable[[], bytes], budget: float) -> int:
    """How many calls of ``fn`` take about ``budget`` seconds."""
    number, took = timeit.Timer(fn).autorange()
    return max(1, round(number * budget / took))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7, help="rounds; each figure is the best round")
    parser.add_argument("--events", type=int, default=2000, help="server-sent events per stream workload")
    parser.add_argument("--budget", type=float, default=0.05, help="seconds per timing")
    args = parser.parse_args()

    rng = random.Random(20240611)
    events = sse_events(rng, args.events)
    rechunked = rechunk(rng, events)
    body = body_64k(rng)
    cases: list[tuple[str, int, Callable[[type], Callable[[], bytes]]]] = []
    for label, secrets in (("1 secret", secrets_51(rng, 1)), ("3 secrets", secrets_51(rng, 3)),
                           ("3 secrets, overlap", secrets_51(rng, 3, overlap=True))):
        echoed = with_echoes(rng, events, secrets)
        cases += [
            (f"sse, {label}", len(events), partial(stream_runner, secrets=secrets, chunks=events)),
            (f"sse rechunked, {label}", len(rechunked), partial(stream_runner, secrets=secrets, chunks=rechunked)),
            (f"sse + echo, {label}", len(echoed), partial(stream_runner, secrets=secrets, chunks=echoed)),
        ]
        if label != "3 secrets, overlap":
            cases += [
                (f"64 KiB body, {label}", 1, partial(stream_runner, secrets=secrets, chunks=[body])),
                (f"headers (12), {label}", len(HEADERS), partial(headers_runner, secrets=secrets)),
                (f"new Redactor, {label}", 1, partial(init_runner, secrets=secrets)),
            ]

    print(f"python {platform.python_version()} ({platform.python_implementation()}), {os.cpu_count()} CPUs, "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}; best of {args.repeat} rounds")
    sizes = [len(e) for e in events]
    print(f"sse: {len(events)} events, {min(sizes)}-{max(sizes)} bytes (mean {sum(sizes) // len(sizes)}); "
          f"rechunked: {len(rechunked)} chunks; body: {len(body)} bytes; secrets: 51 bytes")
    print()
    print(f"{'workload':<36} {'chunks':>6} {'old ns/chunk':>13} {'new ns/chunk':>13} {'old/new':>8}  same output")
    for name, chunks, make in cases:
        old_fn, new_fn = make(OldRedactor), make(Redactor)
        old_n, new_n = loops(old_fn, args.budget), loops(new_fn, args.budget)
        old_t: list[float] = []
        new_t: list[float] = []
        for round_ in range(args.repeat):
            pair = ((old_fn, old_n, old_t), (new_fn, new_n, new_t))
            for fn, number, times in pair if round_ % 2 == 0 else reversed(pair):
                times.append(timeit.timeit(fn, number=number) / number)
        old_ns, new_ns = min(old_t) / chunks * 1e9, min(new_t) / chunks * 1e9
        same = "yes" if old_fn() == new_fn() else "NO"
        print(f"{name:<36} {chunks:>6} {old_ns:>13,.0f} {new_ns:>13,.0f} {old_ns / new_ns:>7.1f}x  {same}")


if __name__ == "__main__":
    main()
