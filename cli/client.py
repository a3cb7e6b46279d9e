"""A small HTTP client for the daemon's Unix socket (stdlib only: the CLI starts fast)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode


class ApiError(Exception):
    """The daemon answered with an error, or could not be reached."""


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Client:
    """Calls the daemon's API; raises ``ApiError`` with a one-line message."""

    def __init__(self, socket_path: str, timeout: float | None = 300.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any, query: dict[str, Any] | None,
                 timeout: float | None) -> tuple[UnixHTTPConnection, http.client.HTTPResponse]:
        if query:
            params = {k: ("true" if v is True else v) for k, v in query.items() if v is not None and v is not False}
            if params:
                path = f"{path}?{urlencode(params)}"
        conn = UnixHTTPConnection(self.socket_path, timeout)
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        if response.status >= 400:
            raw = response.read()
            conn.close()
            try:
                message = json.loads(raw)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace").strip() or response.reason
            raise ApiError(message)
        return conn, response

    def _connect_errors(self, method: str, path: str, body: Any, query: dict[str, Any] | None,
                        timeout: float | None) -> tuple[UnixHTTPConnection, http.client.HTTPResponse]:
        try:
            return self._request(method, path, body, query, timeout)
        except FileNotFoundError:
            raise ApiError(
                f"cannot reach fleetd: no socket at {self.socket_path} (is the daemon running? "
                "start it with 'fleetd daemon' or 'systemctl start fleetd')"
            ) from None
        except ConnectionRefusedError:
            raise ApiError(
                f"cannot reach fleetd at {self.socket_path}: connection refused (daemon not running?)"
            ) from None
        except PermissionError:
            raise ApiError(f"permission denied on {self.socket_path}: run as root or join the fleetd group") from None
        except (TimeoutError, OSError) as exc:
            raise ApiError(f"cannot talk to fleetd at {self.socket_path}: {exc}") from None

    def call(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        conn, response = self._connect_errors(method, path, body, query, self.timeout)
        try:
            return json.loads(response.read() or b"null")
        finally:
            conn.close()

    def stream(self, path: str, query: dict[str, Any] | None = None) -> Iterator[bytes]:
        """Chunks of a streaming response, as they arrive."""
        conn, response = self._connect_errors("GET", path, None, query, None)
        try:
            while True:
                chunk = response.read1(65536)
                if not chunk:
                    return
                yield chunk
        finally:
            conn.close()
