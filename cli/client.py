"""A small HTTP/1.1 client for the daemon's Unix socket.

Plain sockets and json only: ``fleetd spawn`` is timed against ``docker run``,
and http.client alone (it pulls in email and ssl) costs as much start-up time
as the rest of the CLI.
"""

from __future__ import annotations

import _socket  # socket.py's imports (enum, selectors) cost start-up time a Unix socket does not need

from cli.wire import dumps, loads

TYPE_CHECKING = False  # not typing's: importing typing costs the fast path start-up time

if TYPE_CHECKING:  # kept out of the fast path's start-up
    from collections.abc import Iterator
    from typing import Any


class ApiError(Exception):
    """The daemon answered with an error (its HTTP ``status`` and machine ``code``), or could not be reached (both
    None)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Response:
    """Status, headers and a body read from one socket (``Connection: close``)."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        head = self._read_until(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise ApiError(f"bad answer from the daemon: {lines[0]!r}")
        self.status = int(parts[1])
        self.reason = parts[2] if len(parts) > 2 else ""
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            if not self._fill():
                raise ApiError("the daemon closed the connection mid-answer")
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives (chunked or not)."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    return
                while len(self.buffer) < size + 2:
                    if not self._fill():
                        return
                chunk, self.buffer = self.buffer[:size], self.buffer[size + 2:]
                yield chunk
        length = self.headers.get("content-length")
        remaining = int(length) if length is not None else None
        while remaining is None or remaining > 0:
            if not self.buffer and not self._fill():
                return
            chunk = self.buffer if remaining is None else self.buffer[:remaining]
            self.buffer = self.buffer[len(chunk):]
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk

    def read(self) -> bytes:
        return b"".join(self.chunks())


class Client:
    """Calls the daemon's API; raises ``ApiError`` with a one-line message."""

    def __init__(self, socket_path: str, timeout: float | None = 300.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _connect(self, timeout: float | None) -> _socket.socket:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(self.socket_path)
        except FileNotFoundError:
            sock.close()
            raise ApiError(
                f"cannot reach fleetd: no socket at {self.socket_path} (is the daemon running? "
                "start it with 'fleetd daemon' or 'systemctl start fleetd')"
            ) from None
        except ConnectionRefusedError:
            sock.close()
            raise ApiError(
                f"cannot reach fleetd at {self.socket_path}: connection refused (daemon not running?)"
            ) from None
        except PermissionError:
            sock.close()
            raise ApiError(f"permission denied on {self.socket_path}: run as root or join the fleetd group") from None
        except OSError as exc:
            sock.close()
            raise ApiError(f"cannot talk to fleetd at {self.socket_path}: {exc}") from None
        return sock

    def _request(self, method: str, path: str, body: Any, query: dict[str, Any] | None,
                 timeout: float | None) -> Response:
        if query:
            params = {k: ("true" if v is True else v) for k, v in query.items() if v is not None and v is not False}
            if params:
                from urllib.parse import urlencode

                path = f"{path}?{urlencode(params, doseq=True)}"
        payload = b"" if body is None else dumps(body).encode()
        if not path.isascii() or " " in path:
            from urllib.parse import quote

            path = quote(path, safe="/?=&%:")
        head = f"{method} {path} HTTP/1.1\r\nHost: fleetd\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        sock = self._connect(timeout)
        try:
            sock.sendall(head.encode("latin-1") + b"\r\n" + payload)
            response = Response(sock)
        except OSError as exc:
            sock.close()
            raise ApiError(f"cannot talk to fleetd at {self.socket_path}: {exc}") from None
        except BaseException:
            sock.close()
            raise
        if response.status >= 400:
            raw = response.read()
            sock.close()
            code = None
            try:
                error = loads(raw)["error"]
                message, code = error["message"], error.get("code")
            except (ValueError, KeyError, TypeError, AttributeError):
                message = raw.decode(errors="replace").strip() or response.reason
            raise ApiError(message, response.status, code if isinstance(code, str) else None)
        return response

    def call(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        response = self._request(method, path, body, query, self.timeout)
        try:
            return loads(response.read() or b"null")
        except OSError as exc:
            raise ApiError(f"cannot talk to fleetd at {self.socket_path}: {exc}") from None
        finally:
            response.sock.close()

    def stream(self, path: str, query: dict[str, Any] | None = None) -> Iterator[bytes]:
        """Chunks of a streaming response, as they arrive."""
        response = self._request("GET", path, None, query, None)
        try:
            yield from response.chunks()
        finally:
            response.sock.close()
