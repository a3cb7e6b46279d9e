"""What an agent asks zone 2's forward proxy for (issue 18): one request head, parsed by httptools. Pure: no I/O.

The proxy feeds a connection's bytes to ``ProxyRequest.feed`` until ``head_done``; the head then says where the
agent wants to go (``target``) and, for plain HTTP, what to send there (``origin_head``); the body keeps arriving
through ``feed`` into ``take_body``. Everything refused here is a ``Refused`` the proxy renders: 400 for what is
not a proxy request, 403 for a credential handle.

Only two forms are proxy requests (RFC 9112 3.2.2 and 3.2.3): ``GET http://host[:port]/path HTTP/1.1`` (absolute
form, plain HTTP only: https goes through CONNECT so that zone 2 never holds the TLS session) and
``CONNECT host:port``. The origin form (``GET /``) is a request meant for a server, not a proxy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import httptools

# RFC 9110 7.6.1 hop-by-hop headers and the proxy's own, dropped on the way out; the last three the proxy sets itself.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "upgrade", "transfer-encoding", "content-length", "host"})
# A credential handle, literal or percent-encoded (as a form body or a query would carry it), in any case.
CRED_MARKER = re.compile(rb"(?:\$|%24)CRED(?:\{|%7B)", re.IGNORECASE)
MARKER_CARRY = len(b"%24CRED%7B") - 1  # bytes kept from one piece to find a marker split across two
_PORT = re.compile(r"[0-9]{1,5}")


class Refused(Exception):
    """A connection the proxy refuses: ``status`` and ``code`` for the agent's answer, ``reason`` for the record
    (a short key such as ``not allowed`` or ``sni mismatch``), ``message`` for both, naming the host."""

    def __init__(self, status: int, code: str, reason: str, message: str,
                 headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status, self.code, self.reason, self.message = status, code, reason, message
        self.headers = tuple(headers)


def bad_request(reason: str, message: str) -> Refused:
    return Refused(400, "bad_request", reason, message)


def credential_refused(where: str) -> Refused:
    return Refused(403, "credential_handle_refused", "credential handle",
                   f"a credential handle ($CRED{{...}}) in the {where}: handles are only resolved on zone 2's "
                   "credential path (FLEETD_GATEWAY_URL), never sent through the egress proxy")


class MarkerScan:
    """Finds a credential handle in a body that arrives in pieces, also when one piece ends inside it."""

    def __init__(self) -> None:
        self._tail = b""

    def found(self, piece: bytes) -> bool:
        window = self._tail + piece
        self._tail = window[-MARKER_CARRY:]
        return CRED_MARKER.search(window) is not None


class ProxyRequest:
    """One request head (and, for plain HTTP, its body) as httptools parses it; its callbacks fill the fields."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = bytearray()
        self.headers: list[tuple[str, str]] = []
        self.method = ""
        self.version = "1.1"
        self.head_done = False
        self.head_size = 0  # request line and headers, as parsed
        self.complete = False  # the whole body has been parsed
        self.early = b""  # bytes after a CONNECT head: the start of the tunnel
        self._body: list[bytes] = []

    # -- httptools callbacks (names fixed by httptools) ------------------------------------------------------------
    # Once the request is complete, whatever follows (a second, pipelined request) is not read: one per connection.
    def on_url(self, url: bytes) -> None:
        if not self.complete:
            self.url += url
            self.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.headers.append((name.decode("latin-1"), value.decode("latin-1")))
            self.head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        if not self.complete:
            self.head_done = True
            self.method = self.parser.get_method().decode("ascii", "replace")
            self.version = self.parser.get_http_version()

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self._body.append(bytes(body))

    def on_message_complete(self) -> None:
        self.complete = True

    # -- used by the proxy ---------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Parse more of the connection's bytes; raises ``Refused`` (400) when they are not valid HTTP."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # CONNECT (or an Upgrade request): llhttp stops after the head; what follows is not HTTP
            self.head_done = self.complete = True
            self.early = data[int(upgrade.args[0]):] if self.method == "CONNECT" else b""
        except httptools.HttpParserError as exc:
            if self.complete:
                return  # the bytes past the request are not a request: they are not read
            raise bad_request("bad request", f"not a valid HTTP request: {exc}") from None

    def take_body(self) -> list[bytes]:
        """The body's pieces parsed since the last call, decoded from chunked framing."""
        pieces, self._body = self._body, []
        return pieces

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name]

    @property
    def chunked(self) -> bool:
        return bool(self.header_values("transfer-encoding"))

    def target(self) -> tuple[str, int, str]:
        """The host and port asked for, and (plain HTTP) the path with its query; raises ``Refused`` (400)."""
        url = bytes(self.url)
        if self.method == "CONNECT":
            host, port = _authority(url.decode("latin-1"), None)
            return host, port, ""
        if b"://" not in url:
            raise bad_request("not a proxy request",
                              f"{url[:80].decode('latin-1')!r} is not a proxy request: this port is zone 2's egress "
                              "proxy; ask for http://host/path, or CONNECT host:port for https")
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise bad_request("bad request", f"not a valid URL: {url[:80].decode('latin-1')!r}") from None
        scheme = (parsed.schema or b"").decode("latin-1").lower()
        if scheme != "http":
            raise bad_request("unsupported scheme", f"{scheme}:// URLs are not proxied: plain http:// is relayed, "
                                                    "https goes through CONNECT host:443")
        if parsed.userinfo:
            raise bad_request("bad request", "user information in the URL is not proxied: send an Authorization "
                                             "header instead")
        host = (parsed.host or b"").decode("latin-1")
        if ":" in host:
            host = f"[{host}]"  # an IPv6 literal, as the Host header writes it (the policy refuses it anyway)
        if not host:
            raise bad_request("bad request", "the URL names no host")
        port = _port(str(parsed.port)) if parsed.port is not None else 80
        path = (parsed.path or b"/").decode("latin-1")
        if parsed.query is not None:
            path += "?" + parsed.query.decode("latin-1")
        self._check_host_header(host, port)
        if len(set(self.header_values("content-length"))) > 1:
            raise bad_request("bad request", "conflicting Content-Length headers")
        return host, port, path

    def check_credentials(self) -> None:
        """Refuse a credential handle anywhere in the request line or headers (the body is scanned as it comes)."""
        if CRED_MARKER.search(bytes(self.url)):
            raise credential_refused("request line")
        if any(CRED_MARKER.search(f"{key}: {value}".encode("latin-1")) for key, value in self.headers):
            raise credential_refused("request headers")

    def origin_head(self, host: str, port: int, path: str) -> bytes:
        """The head to send upstream: origin form, hop-by-hop headers dropped, framing restated, one request only."""
        listed = {token.strip().lower() for value in self.header_values("connection") for token in value.split(",")}
        host_header = self.header_values("host")
        lines = [f"{self.method} {path} HTTP/{self.version}",
                 f"Host: {host_header[0] if host_header else _authority_text(host, port)}"]
        lines += [f"{key}: {value}" for key, value in self.headers
                  if key.lower() not in HOP_BY_HOP and key.lower() not in listed]
        lengths = set(self.header_values("content-length"))
        if self.chunked:
            lines.append("Transfer-Encoding: chunked")
        elif lengths:
            lines.append(f"Content-Length: {lengths.pop().strip()}")
        lines.append("Connection: close")  # one request per connection: the answer's end is the upstream's EOF
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _check_host_header(self, host: str, port: int) -> None:
        values = self.header_values("host")
        if len(values) > 1:
            raise bad_request("bad request", "more than one Host header")
        if not values:
            return  # HTTP/1.0 clients may send none; the URL's host is sent
        try:
            named, named_port = _authority(values[0].strip(), 80)
        except Refused:
            raise bad_request("bad request", f"invalid Host header {values[0][:80]!r}") from None
        if _same_name(named) != _same_name(host) or named_port != port:
            raise bad_request("host mismatch", f"the Host header ({values[0][:80]}) names another host than the "
                                               f"URL ({_authority_text(host, port)})")


def _same_name(host: str) -> str:
    return host.lower().removesuffix(".")


def _authority_text(host: str, port: int) -> str:
    return host if port == 80 else f"{host}:{port}"


def _authority(text: str, default: int | None) -> tuple[str, int]:
    """``host`` and ``port`` of ``host:port`` (``[v6]:port`` keeps its brackets: the policy refuses addresses)."""
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[:end + 1], text[end + 1:]
        colon, port = rest[:1], rest[1:]
        if end < 0 or (rest and colon != ":"):
            raise bad_request("bad request", f"invalid authority {text[:80]!r}")
    else:
        host, colon, port = text.rpartition(":")
        if not colon:
            host, port = text, ""
    if not host:
        raise bad_request("bad request", f"no host in {text[:80]!r}")
    if not port:
        if default is None:
            raise bad_request("bad request", f"CONNECT {text[:80]} names no port: use CONNECT host:port")
        return host, default
    return host, _port(port)


def _port(text: str) -> int:
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise bad_request("bad request", f"invalid port {text[:20]!r}")
    return int(text)
