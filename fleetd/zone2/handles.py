"""Credential handles and request-target safety: pure functions, no I/O.

An agent writes ``$CRED{name}`` where a secret would go (a header, the query
string). Zone 2 swaps in the secret only toward that credential's own upstream,
so everything that could steer a request elsewhere is refused here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, unquote

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
    names = set(HANDLE.findall(text))
    if text.count(HANDLE_START) != len(HANDLE.findall(text)):
        raise BadHandle("malformed credential handle: expected $CRED{name}")
    return names


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


def safe_path(raw_target: str) -> tuple[str, str]:
    """Split an origin-form request target into (path, query), refusing anything that could re-route it.

    Refused: absolute-form (``http://host/…``), authority-form, ``//host`` paths,
    dot segments (also percent-encoded), backslashes and control characters.
    """
    if not raw_target.startswith("/") or raw_target.startswith("//"):
        raise BadHandle("the request target must be a path starting with a single /")
    path, _, query = raw_target.partition("?")
    decoded = unquote(path)
    if any(ch in decoded for ch in ("\\", "\0", "\r", "\n")) or decoded.startswith("//"):
        raise BadHandle("the request path has characters a proxy cannot pass on safely")
    segments = decoded.split("/")
    if any(segment in (".", "..") for segment in segments):
        raise BadHandle("the request path may not contain dot segments")
    return path, query


class Redactor:
    """Removes secrets from a byte stream, also when one spans two chunks."""

    MASK = b"[REDACTED]"

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({s.encode() for s in secrets if s}, key=len, reverse=True)
        self.keep = max((len(s) for s in self.secrets), default=1) - 1
        self.tail = b""

    def feed(self, chunk: bytes) -> bytes:
        """Redact ``chunk``; hold back a few bytes that might begin a secret."""
        data = self._scrub(self.tail + chunk)
        if self.keep <= 0:
            self.tail = b""
            return data
        cut = max(0, len(data) - self.keep)
        # Only hold back as far as a possible secret prefix reaches.
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
