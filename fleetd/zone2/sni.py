"""The server name (SNI) a TLS ClientHello asks for, read from the first bytes of a CONNECT tunnel (issue 18). Pure.

Zone 2 opens a tunnel to an allowed ``CONNECT host:port`` only after the client's first TLS flight names the same
host. The proxy reads until ``server_name`` stops answering ``Incomplete`` (at most ``MAX_READ`` bytes), then
compares the name with the CONNECT host and forwards the bytes it read unchanged.

What is read (RFC 8446 4.1.2 and 5.1, RFC 5246 7.4.1.2, RFC 6066 3):

- TLS records of content type handshake (22), version 3.0 to 3.4 (a ClientHello's record says 3.1 or 3.3, RFC 5246
  E.1 allows 3.0), each at most 2^14 bytes and not empty. The ClientHello may be split over several records (the
  handshake layer allows it); at most ``MAX_RECORDS`` of them and ``MAX_HELLO`` bytes of handshake message.
- The handshake message must be a ClientHello (type 1) and fill its records exactly: nothing may follow it.
- Inside: version, random, session id (at most 32 bytes), cipher suites (a non-empty, even length), compression
  methods (non-empty), then extensions, which may be absent altogether (a TLS 1.0-1.2 hello without any: no SNI)
  but otherwise must fill the rest of the message exactly. An extension type may appear once (RFC 8446 4.2).
- The server_name extension (type 0) holds a non-empty list with exactly one host_name (type 0) entry (RFC 6066:
  no two names of one type; host_name is the only type defined, any other is refused as unreadable), a non-empty
  ASCII name of letters, digits, ``-``, ``_`` and ``.`` (no NUL, no space: ``allowed.com\\0evil.com`` is refused).

The answer is the name in lowercase (compare it with ``fleetd.egress.canonical_host`` of the CONNECT host), None
when the hello has no server_name extension (an IP as ``server_hostname`` sends none), ``Incomplete(needed)`` when
the input ends before the records that hold the ClientHello do, or ``MalformedClientHello`` for anything else. A
strict prefix of a well-formed hello is always ``Incomplete``, never malformed.

An Encrypted ClientHello (ECH) carries the real name inside; the outer SNI read here is the provider's public name,
which will not match an allowed CONNECT host unless the provider's public name is itself allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RECORD_HEADER = 5
MAX_FRAGMENT = 1 << 14  # RFC 8446 5.1: a record's plaintext is at most 2^14 bytes
HANDSHAKE_HEADER = 4
MAX_HELLO = MAX_FRAGMENT  # the ClientHello message with its 4-byte header; browsers send under 2 KiB
MAX_RECORDS = 4
MAX_READ = MAX_HELLO + RECORD_HEADER * MAX_RECORDS  # the most the proxy ever needs to read

CONTENT_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
EXTENSION_SERVER_NAME = 0
NAME_TYPE_HOST_NAME = 0
MAX_SESSION_ID = 32
_HOST_NAME = re.compile(rb"[A-Za-z0-9_.-]+")


class MalformedClientHello(ValueError):
    """The bytes are not a TLS ClientHello this proxy can read; the tunnel is refused."""


@dataclass(frozen=True)
class Incomplete:
    """More bytes are needed: read until the input holds ``needed`` bytes in all, then ask again."""

    needed: int


def server_name(data: bytes | bytearray | memoryview) -> str | Incomplete | None:
    """The host name the ClientHello at the start of ``data`` asks for (lowercase), None when it names none, or
    ``Incomplete``; raises ``MalformedClientHello`` on anything else (see the module's docstring)."""
    hello = _client_hello(bytes(data))
    if isinstance(hello, Incomplete):
        return hello
    return _name_in(hello)


def _client_hello(data: bytes) -> bytes | Incomplete:
    """The ClientHello message body, reassembled from its records, or how many bytes of input it needs.

    Each record is checked as soon as its bytes arrive: a record that would carry more than the ClientHello, or
    end past ``MAX_READ``, is refused before the proxy waits for it."""
    message = b""
    offset = 0
    for _ in range(MAX_RECORDS):
        length = _record_length(data, offset)
        if isinstance(length, Incomplete):
            return length
        start, end = offset + RECORD_HEADER, offset + RECORD_HEADER + length
        if end > MAX_READ:
            raise MalformedClientHello(f"the ClientHello's records run past {MAX_READ} bytes")
        total = _hello_size(message + data[start:end])
        if total is not None and len(message) + length > total:
            raise MalformedClientHello("more data follows the ClientHello in its records")
        if len(data) < end:
            return Incomplete(end)
        message += data[start:end]
        offset = end
        if len(message) == total:
            return message[HANDSHAKE_HEADER:]
    raise MalformedClientHello(f"the ClientHello is split over more than {MAX_RECORDS} records")


def _hello_size(message: bytes) -> int | None:
    """The size of the ClientHello with its header, once the (possibly partial) message shows it; else None."""
    if len(message) < HANDSHAKE_HEADER:
        return None
    if message[0] != HANDSHAKE_CLIENT_HELLO:
        raise MalformedClientHello(f"the first handshake message is of type {message[0]}, not a ClientHello")
    size = HANDSHAKE_HEADER + int.from_bytes(message[1:4], "big")
    if size > MAX_HELLO:
        raise MalformedClientHello(f"a ClientHello of {size} bytes is longer than {MAX_HELLO}")
    return size


def _record_length(data: bytes, offset: int) -> int | Incomplete:
    """The length of the handshake record at ``offset``, its header checked as soon as each byte arrives."""
    header = data[offset:offset + RECORD_HEADER]
    if len(header) >= 1 and header[0] != CONTENT_HANDSHAKE:
        raise MalformedClientHello(f"not a TLS handshake record (content type {header[0]})")
    if len(header) >= 2 and header[1] != 3:
        raise MalformedClientHello(f"not a TLS record (version {header[1]}.x)")
    if len(header) >= 3 and header[2] > 4:
        raise MalformedClientHello(f"unknown TLS record version 3.{header[2]}")
    if len(header) < RECORD_HEADER:
        return Incomplete(offset + RECORD_HEADER)
    length = int.from_bytes(header[3:5], "big")
    if not 0 < length <= MAX_FRAGMENT:
        raise MalformedClientHello(f"a handshake record of {length} bytes (1 to {MAX_FRAGMENT} allowed)")
    return length


class _Reader:
    """Reads length-prefixed fields from a complete message; every overrun is a ``MalformedClientHello``."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.offset, self.what = data, 0, what

    @property
    def left(self) -> int:
        return len(self.data) - self.offset

    def take(self, size: int, field: str) -> bytes:
        if size > self.left:
            raise MalformedClientHello(f"{self.what}: {field} of {size} bytes overruns its {self.left} left")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def number(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "big")

    def vector(self, length_size: int, field: str) -> bytes:
        return self.take(self.number(length_size, f"{field} length"), field)


def _name_in(hello: bytes) -> str | None:
    reader = _Reader(hello, "ClientHello")
    reader.take(2 + 32, "version and random")
    if len(reader.vector(1, "session id")) > MAX_SESSION_ID:
        raise MalformedClientHello(f"ClientHello: a session id longer than {MAX_SESSION_ID} bytes")
    suites = reader.vector(2, "cipher suites")
    if not suites or len(suites) % 2:
        raise MalformedClientHello(f"ClientHello: cipher suites of {len(suites)} bytes (a non-empty even length)")
    if not reader.vector(1, "compression methods"):
        raise MalformedClientHello("ClientHello: no compression method")
    if not reader.left:
        return None  # no extensions at all (TLS 1.0-1.2)
    extensions = reader.vector(2, "extensions")
    if reader.left:
        raise MalformedClientHello(f"ClientHello: {reader.left} bytes after the extensions")
    return _name_in_extensions(extensions)


def _name_in_extensions(extensions: bytes) -> str | None:
    reader = _Reader(extensions, "extensions")
    seen: set[int] = set()
    name = None
    while reader.left:
        kind = reader.number(2, "extension type")
        body = reader.vector(2, f"extension {kind}")
        if kind in seen:
            raise MalformedClientHello(f"extensions: extension {kind} appears twice")
        seen.add(kind)
        if kind == EXTENSION_SERVER_NAME:
            name = _host_name(body)
    return name


def _host_name(body: bytes) -> str:
    """The one host_name in a server_name extension's body."""
    reader = _Reader(body, "server_name")
    names = reader.vector(2, "server name list")
    if reader.left:
        raise MalformedClientHello(f"server_name: {reader.left} bytes after the name list")
    entries = _Reader(names, "server name list")
    found = []
    while entries.left:
        kind = entries.number(1, "name type")
        if kind != NAME_TYPE_HOST_NAME:
            raise MalformedClientHello(f"server_name: unknown name type {kind}")
        found.append(entries.vector(2, "host name"))
    if len(found) != 1:
        raise MalformedClientHello(f"server_name: {len(found)} host names (exactly one expected)")
    if not _HOST_NAME.fullmatch(found[0]):
        raise MalformedClientHello(f"server_name: {found[0][:80]!r} is not an ASCII host name")
    return found[0].decode("ascii").lower()
