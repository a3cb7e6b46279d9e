"""Credential handles and the redaction of secrets: pure functions, no I/O.

An agent writes ``$CRED{name}`` where a secret would go (a header, the query
string). Zone 2 swaps in the secret only toward that credential's own upstream
(what could steer a request elsewhere is refused in ``targets``), and masks any
echo of it in the answer.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Iterable
from urllib.parse import quote

HANDLE = re.compile(r"\$CRED\{([A-Za-z0-9][A-Za-z0-9_.\-]{0,63})\}")
HANDLE_START = "$CRED{"
# In a query string the handle may arrive percent-encoded: $CRED%7Bname%7D or %24CRED%7Bname%7D.
QUERY_HANDLE = re.compile(r"(?:\$|%24)CRED(?:\{|%7B)([A-Za-z0-9][A-Za-z0-9_.\-]{0,63})(?:\}|%7D)", re.IGNORECASE)
QUERY_HANDLE_START = re.compile(r"(?:\$|%24)CRED(?:\{|%7B)", re.IGNORECASE)
# RFC 9110 hop-by-hop headers, plus what a proxy must set itself.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
     "trailer", "transfer-encoding", "upgrade", "host", "content-length"}
)


class BadHandle(ValueError):
    """A malformed handle, or a request target that could move a secret."""


def handles_in(text: str) -> set[str]:
    """The credential names in ``text``; a ``$CRED{`` that is not a whole handle is an error."""
    if HANDLE_START not in text:
        return set()
    found = HANDLE.findall(text)
    if text.count(HANDLE_START) != len(found):
        raise BadHandle("malformed credential handle: expected $CRED{name}")
    return set(found)


def request_handles(headers: Iterable[tuple[str, str]], query: str) -> set[str]:
    """Every handle named in the headers or the (raw) query string."""
    names: set[str] = set()
    for _, value in headers:
        names |= handles_in(value)
    found = QUERY_HANDLE.findall(query)
    if len(QUERY_HANDLE_START.findall(query)) != len(found):
        raise BadHandle("malformed credential handle in the query: expected $CRED{name}")
    return names | set(found)


def substitute(text: str, secrets: dict[str, str]) -> str:
    return HANDLE.sub(lambda m: secrets[m.group(1)], text)


def substitute_query(query: str, secrets: dict[str, str]) -> str:
    """Swap handles in a raw query string; the secret goes in percent-encoded."""
    return QUERY_HANDLE.sub(lambda m: quote(secrets[m.group(1)], safe=""), query)


_MASK = b"[REDACTED]"
MIN_ENCODED = 16  # a base64 piece of a secret shorter than this is not looked for (it would match by chance)


@functools.lru_cache(maxsize=256)
def spellings(secret: str) -> frozenset[bytes]:
    """The forms in which an upstream may echo a secret back: as sent, percent-encoded (as zone 2 puts it in a
    query; upper- and lower-case hex), JSON-escaped, and base64 (standard and URL-safe; of the secret alone and
    inside a longer value, at each of the three offsets a byte string can start at: ``Basic`` credentials)."""
    raw = secret.encode()
    forms = {raw, quote(secret, safe="").encode(), quote(secret).encode(), json.dumps(secret)[1:-1].encode(),
             raw.replace(b"/", b"\\/")}
    forms |= {re.sub(rb"%[0-9A-F]{2}", lambda m: m.group(0).lower(), form) for form in list(forms)}
    for offset in range(3):  # the characters that encode the secret's bits alone, whatever surrounds it
        encoded = base64.b64encode(b"\0" * offset + raw + b"\0\0")
        piece = encoded[(8 * offset + 5) // 6:(8 * (offset + len(raw))) // 6]
        if len(piece) >= MIN_ENCODED:
            forms |= {piece, piece.translate(_URLSAFE)}
    forms |= {base64.b64encode(raw), base64.urlsafe_b64encode(raw)}
    return frozenset(form for form in forms if form)


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _overlaps(s: bytes, t: bytes) -> bool:
    """Can an occurrence of ``t`` begin inside an occurrence of ``s`` and end after it?"""
    j = s.find(t[0], 1)
    while j != -1:
        if len(s) - j < len(t) and t.startswith(s[j:]):
            return True
        j = s.find(t[0], j + 1)
    return False


class _Plan:
    """What a set of secrets compiles to; built once per set (``_plan``) and shared by its redactors."""

    __slots__ = ("ends", "keep", "secrets", "simple")

    def __init__(self, secrets: tuple[bytes, ...]) -> None:
        self.secrets = secrets  # longest first
        self.keep = max((len(s) for s in secrets), default=1) - 1
        # What could be held back, keyed by the last byte c of the data: ends[c] = (by_prev, one) where
        # by_prev[p] lists each proper prefix of a secret of 2 or more bytes that ends in the bytes p c,
        # as (length, secret), longest first, and one says whether c alone begins a secret. Data whose
        # last byte is no key cannot end in the beginning of a secret: nothing to hold back.
        ends: dict[int, tuple[dict[int, list[tuple[int, bytes]]], list[bool]]] = {}
        for s in secrets:
            for m in range(1, len(s)):
                by_prev, one = ends.setdefault(s[m - 1], ({}, [False]))
                if m == 1:
                    one[0] = True
                else:
                    by_prev.setdefault(s[m - 2], []).append((m, s))
        self.ends = {
            c: ({p: tuple(sorted(v, key=lambda e: -e[0])) for p, v in by_prev.items()}, one[0])
            for c, (by_prev, one) in ends.items()
        }
        # Simple: no two occurrences can overlap partially and no secret can match across or inside a
        # MASK. Then any two occurrences in a stream are disjoint or one lies inside the other, and
        # bytes.replace from the longest secret to the shortest masks exactly the occurrences in the
        # input. Otherwise (say one key ends in the byte another one begins with) data that holds a
        # secret takes the general path, which joins overlapping occurrences into one MASK.
        self.simple = not any(_overlaps(s, t) for s in secrets for t in secrets) and not any(
            b"[" in s or b"]" in s or s in _MASK for s in secrets
        )


@functools.lru_cache(maxsize=64)
def _plan(secrets: tuple[bytes, ...]) -> _Plan:
    """A Redactor is made per request, for a few secret sets: building a plan costs 30-80 us, a hit ~0.2 us."""
    return _Plan(secrets)


def _pending(data: bytes, last: tuple[dict[int, tuple[tuple[int, bytes], ...]], bool]) -> int:
    """Where the longest end of ``data`` that is a proper prefix of a secret begins (``len(data)`` if none).

    ``last`` is ``_Plan.ends[data[-1]]``.
    """
    n = len(data)
    by_prev, one = last
    if n > 1:
        candidates = by_prev.get(data[-2])
        if candidates is not None:
            for m, secret in candidates:
                if m <= n and secret.startswith(data[n - m:]):
                    return n - m
    return n - 1 if one else n


class Redactor:
    """Removes secrets from a byte stream, also when one spans two chunks.

    The concatenation of every ``feed()`` output and ``flush()`` is the whole stream with every byte of
    every occurrence of a secret masked: each run of overlapping occurrences becomes one MASK (for
    secrets that cannot overlap, as real keys, that is ``bytes.replace`` from the longest secret to the
    shortest). ``feed()`` holds back only the longest end of the data that could begin a secret.
    """

    MASK = _MASK

    def __init__(self, secrets: Iterable[str | bytes]) -> None:
        self.secrets = sorted({s.encode() if isinstance(s, str) else s for s in secrets if s},
                              key=lambda s: (-len(s), s))
        self._plan = _plan(tuple(self.secrets))
        self.keep = self._plan.keep
        self.tail = b""
        self._open = 0  # general path: the first _open bytes of tail lie in a MASK not yet emitted

    @classmethod
    def for_secrets(cls, secrets: Iterable[str]) -> Redactor:
        """A redactor of every spelling of ``secrets`` an upstream may echo (``spellings``)."""
        return cls(form for secret in secrets if secret for form in spellings(secret))

    def feed(self, chunk: bytes) -> bytes:
        """Redact ``chunk``; hold back the few bytes at its end that might begin a secret."""
        if self.tail:
            data = self.tail + chunk
        elif type(chunk) is bytes:
            data = chunk
        else:
            data = bytes(chunk)
        plan = self._plan
        if not plan.simple:
            if self._open:
                return self._feed_general(data)
            for secret in plan.secrets:
                if data.replace(secret, _MASK) is not data:  # on a miss CPython returns data itself
                    return self._feed_general(data)
        # The usual case, all in C: a dict lookup on the last byte decides, for almost every chunk,
        # that nothing is held back; a replace per secret (on a miss, a search and no copy).
        last = plan.ends.get(data[-1]) if data else None
        if last is None:
            self.tail = b""
        else:
            cut = _pending(data, last)
            self.tail = data[cut:]
            data = data[:cut]
        if plan.simple:
            for secret in plan.secrets:
                data = data.replace(secret, _MASK)
        return data

    def flush(self) -> bytes:
        data, self.tail = self.tail, b""
        if self._open:
            merged = _merge([*self._occurrences(data), (-1, self._open)])
            self._open = 0
            return _render(data, merged, len(data))
        return self.scrub(data)

    def scrub(self, data: bytes) -> bytes:
        """``data`` with every secret masked, on its own (the stream state is neither used nor changed)."""
        if self._plan.simple:
            for secret in self._plan.secrets:
                data = data.replace(secret, _MASK)
            return data
        found = self._occurrences(data)
        return _render(data, _merge(found), len(data)) if found else data

    _scrub = scrub

    def scrub_text(self, text: str) -> str:
        """A header value with every secret masked (surrogate-escaped bytes pass through as they are)."""
        if not self._plan.secrets:
            return text
        return self.scrub(text.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")

    def _occurrences(self, data: bytes) -> list[tuple[int, int]]:
        found = []
        for secret in self._plan.secrets:
            i = data.find(secret)
            while i != -1:
                found.append((i, i + len(secret)))
                i = data.find(secret, i + 1)
        return found

    def _feed_general(self, data: bytes) -> bytes:
        """Secrets that can overlap: find the occurrences, join overlapping ones into one MASK.

        A run of occurrences still open at the cut stays one MASK: the bytes of it before the cut are
        dropped (they will be masked) and ``_open`` remembers how far into the tail the run reaches.
        """
        found = self._occurrences(data)
        if self._open:
            found.append((-1, self._open))  # the run left open by the previous chunk
        merged = _merge(found)
        last = self._plan.ends.get(data[-1]) if data else None
        cut = len(data) if last is None else _pending(data, last)
        end, self._open = cut, 0
        for start, stop in merged:
            if start < cut < stop:
                end, self._open = max(start, 0), stop - cut
                break
        self.tail = data[cut:]
        return _render(data, merged, end)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join overlapping spans (spans that only touch stay apart: two secrets side by side, two MASKs)."""
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(spans):
        if merged and start < merged[-1][1]:
            if stop > merged[-1][1]:
                merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged


def _render(data: bytes, merged: list[tuple[int, int]], end: int) -> bytes:
    """``data[:end]`` with each span that ends by ``end`` replaced by MASK."""
    parts: list[bytes] = []
    pos = 0
    for start, stop in merged:
        if stop > end:
            break
        parts += (data[pos:max(start, 0)], _MASK)
        pos = stop
    parts.append(data[pos:end])
    return b"".join(parts)
