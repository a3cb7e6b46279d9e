"""Reading the server name from a TLS ClientHello (fleetd.zone2.sni, issue 18): real hellos from Python's ssl
module, hand-built edge cases, every truncation and random corruption."""

from __future__ import annotations

import contextlib
import random
import ssl
import struct

import pytest

from fleetd.egress import canonical_host
from fleetd.zone2.sni import MAX_READ, Incomplete, MalformedClientHello, server_name


def client_hello(server_hostname: str | None, maximum: ssl.TLSVersion | None = None) -> bytes:
    """The first flight Python's ssl sends for ``server_hostname`` (an IP address or None sends no SNI)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if server_hostname is None:
        context.check_hostname = False
    if maximum is not None:
        context.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def extension(kind: int, body: bytes) -> bytes:
    return struct.pack("!HH", kind, len(body)) + body


def sni(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(struct.pack("!BH", name_type, len(n)) + n for n in names)
    return extension(0, struct.pack("!H", len(entries)) + entries)


def hello_body(extensions: bytes | None, session_id: bytes = b"\x01" * 32, suites: bytes = b"\x13\x01\x13\x02",
               compression: bytes = b"\x00") -> bytes:
    body = b"\x03\x03" + b"\x42" * 32
    body += bytes([len(session_id)]) + session_id
    body += struct.pack("!H", len(suites)) + suites
    body += bytes([len(compression)]) + compression
    if extensions is not None:
        body += struct.pack("!H", len(extensions)) + extensions
    return body


def handshake(body: bytes, kind: int = 1) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def records(message: bytes, *sizes: int, version: bytes = b"\x03\x01") -> bytes:
    """``message`` in handshake records of the given sizes (the rest in the last)."""
    out, rest = b"", message
    for size in (*sizes, len(message)):
        if not rest:
            break
        chunk, rest = rest[:size], rest[size:]
        out += b"\x16" + version + struct.pack("!H", len(chunk)) + chunk
    return out


def built(extensions: bytes | None, **fields: bytes) -> bytes:
    return records(handshake(hello_body(extensions, **fields)))


LONG_NAME = "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + ".example"

# --- real hellos --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostname", "name"),
    [("example.com", "example.com"), ("allowed.example.test", "allowed.example.test"),
     ("Files.PythonHosted.ORG", "files.pythonhosted.org"), ("mirror", "mirror"),
     ("bücher.example", "xn--bcher-kva.example"),
     (LONG_NAME, LONG_NAME)],
)
def test_the_name_python_sends_is_read(hostname: str, name: str) -> None:
    data = client_hello(hostname)
    assert server_name(data) == name
    assert canonical_host(name) == canonical_host(hostname)  # what the proxy compares with the CONNECT host


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_hellos(maximum: ssl.TLSVersion) -> None:
    assert server_name(client_hello("example.org", maximum)) == "example.org"


@pytest.mark.parametrize("hostname", [None, "10.0.0.1", "::1", "127.0.0.1"])
def test_a_hello_without_sni_gives_none(hostname: str | None) -> None:
    assert server_name(client_hello(hostname)) is None


def test_extra_bytes_after_the_hello_record_are_not_read() -> None:
    data = client_hello("example.com")
    assert server_name(data + b"\x14\x03\x03\x00\x01\x01" + b"\x17" * 100) == "example.com"


def test_every_prefix_asks_for_more_and_says_how_much() -> None:
    data = client_hello("example.com")
    record_end = 5 + int.from_bytes(data[3:5], "big")
    assert record_end == len(data)
    for cut in range(len(data)):
        answer = server_name(data[:cut])
        assert isinstance(answer, Incomplete), cut
        assert answer.needed == (5 if cut < 5 else record_end)
        assert cut < answer.needed <= MAX_READ


def test_a_memoryview_or_bytearray_is_read_too() -> None:
    data = client_hello("example.com")
    assert server_name(bytearray(data)) == "example.com"
    assert server_name(memoryview(data)) == "example.com"


def test_random_corruption_raises_only_the_malformed_error() -> None:
    rng = random.Random(18)
    originals = [client_hello("example.com"), client_hello(None), client_hello("a.b.example.test")]
    outcomes = set()
    for _ in range(3000):
        data = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(data))
            if rng.random() < 0.5:  # most lengths live in the first ~250 bytes (headers, ids, suites, SNI)
                position = rng.randrange(min(len(data), 260))
            data[position] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data) + 1)]
        try:
            answer = server_name(bytes(data))
        except MalformedClientHello:
            outcomes.add("malformed")
        else:
            assert answer is None or isinstance(answer, str | Incomplete)
            outcomes.add(type(answer).__name__)
    assert {"malformed", "Incomplete", "str"} <= outcomes


def test_random_bytes_raise_only_the_malformed_error() -> None:
    rng = random.Random(6066)
    for size in range(0, 600, 7):
        data = b"\x16\x03\x01" + rng.randbytes(size) if size % 2 else rng.randbytes(size)
        with contextlib.suppress(MalformedClientHello):
            server_name(data)


# --- hand-built edge cases ----------------------------------------------------------------------------------------


def test_built_hello_reads() -> None:
    assert server_name(built(extension(0x0A0A, b"") + sni(b"Example.COM") + extension(43, b"\x02\x03\x04"))) \
        == "example.com"


def test_a_hello_without_extensions_has_no_sni() -> None:
    assert server_name(built(None)) is None
    assert server_name(built(b"")) is None
    assert server_name(built(extension(10, b"\x00\x02\x00\x1d"))) is None


def test_a_hello_split_over_records_is_reassembled() -> None:
    message = handshake(hello_body(sni(b"split.example")))
    for sizes in [(10,), (2,), (1, 1, 1), (50, 60)]:
        data = records(message, *sizes)
        assert server_name(data) == "split.example", sizes
        for cut in range(len(data)):
            assert isinstance(server_name(data[:cut]), Incomplete)


def test_too_many_records_are_refused() -> None:
    with pytest.raises(MalformedClientHello, match="more than 4 records"):
        server_name(records(handshake(hello_body(sni(b"a.example"))), 1, 1, 1, 1))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x17\x03\x03\x00\x10", "not a TLS handshake record"),
        (b"\x17", "not a TLS handshake record"),
        (b"GET / HTTP/1.1\r\n", "not a TLS handshake record"),
        (b"\x80\x2e\x01\x00\x02", "not a TLS handshake record"),  # an SSLv2-style hello
        (b"\x16\x02", "version 2.x"),
        (b"\x16\x03\x05", "version 3.5"),
        (b"\x16\x03\x01\x00\x00", "0 bytes"),
        (b"\x16\x03\x01\x40\x01", "16385 bytes"),
        (records(handshake(b"\x00" * 40, kind=2)), "type 2, not a ClientHello"),
        (records(b"\x01\x00\x40\x00"), "longer than 16384"),
        (records(handshake(hello_body(None)) + b"\x00"), "more data follows"),
        (b"\x16\x03\x01\x00\x30" + b"\x01\x00\x00\x10", "more data follows"),  # refused before the record arrives
        (records(handshake(hello_body(None)[:-2] + b"\x02\x00")), "compression methods of 2 bytes overruns"),
        (built(None, session_id=b"\x00" * 33), "session id longer than 32"),
        (built(None, suites=b""), "cipher suites of 0 bytes"),
        (built(None, suites=b"\x13\x01\x13"), "cipher suites of 3 bytes"),
        (built(None, compression=b""), "no compression method"),
        (records(handshake(hello_body(None) + b"\x00")), "extensions length of 2 bytes overruns"),
        (records(handshake(hello_body(b"") + b"\x00")), "1 bytes after the extensions"),
        (records(handshake(hello_body(None) + b"\x00\x20" + sni(b"ab"))), "extensions of 32 bytes overruns its 11"),
        (built(b"\x00"), "extension type of 2 bytes overruns"),
        (built(b"\x00\x00\x00\x09\x00"), "extension 0 of 9 bytes overruns"),
        (built(sni(b"a.example") + sni(b"b.example")), "extension 0 appears twice"),
        (built(extension(10, b"") + extension(10, b"")), "extension 10 appears twice"),
        (built(sni(b"a.example", b"b.example")), "2 host names"),
        (built(sni()), "0 host names"),
        (built(extension(0, b"")), "server name list length of 2 bytes overruns"),
        (built(extension(0, b"\x00\x06\x00\x00\x09abc")), "host name of 9 bytes overruns"),
        (built(extension(0, b"\x00\x04\x00\x00\x01a\x00")), "1 bytes after the name list"),
        (built(sni(b"a.example", name_type=1)), "unknown name type 1"),
        (built(sni(b"")), "is not an ASCII host name"),
        (built(sni(b"allowed.example\x00evil.example")), "is not an ASCII host name"),
        (built(sni(b"allowed.example evil")), "is not an ASCII host name"),
        (built(sni("bücher.example".encode())), "is not an ASCII host name"),
    ],
)
def test_malformed_hellos_are_refused_with_the_reason(data: bytes, why: str) -> None:
    with pytest.raises(MalformedClientHello, match=why):
        server_name(data)


def test_a_record_version_from_3_0_to_3_4_is_read() -> None:
    message = handshake(hello_body(sni(b"v.example")))
    for minor in range(5):
        assert server_name(records(message, version=bytes([3, minor]))) == "v.example"


def test_the_largest_hello_fits_in_max_read() -> None:
    padding = extension(21, b"\x00" * (16384 - 4 - len(hello_body(sni(b"big.example"))) - 4))
    message = handshake(hello_body(sni(b"big.example") + padding))
    assert len(message) == 16384
    assert server_name(records(message)) == "big.example"
    assert server_name(records(message, 16000)) == "big.example"
    assert len(records(message, 5000, 5000, 5000)) <= MAX_READ
