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
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


class Client:
    """Calls the daemon's API; raises ``ApiError`` with a one-line message."""

    def __init__(self, socket_path: str, timeout: float | None = 300.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _open(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
              timeout: float | None = -1.0) -> http.client.HTTPResponse:
        if query:
            params = {k: ("true" if v is True else v) for k, v in query.items() if v not in (None, False)}
            if params:
                path = f"{path}?{urlencode(params)}"
        conn = UnixHTTPConnection(self.socket_path, self.timeout if timeout == -1.0 else timeout)
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
        except FileNotFoundError:
            raise ApiError(
                f"cannot reach fleetd: no socket at {self.socket_path} (is the daemon running? "
                "start it with 'fleetd daemon' or 'systemctl start fleetd')"
            ) from None
        except ConnectionRefusedError:
            raise ApiError(f"cannot reach fleetd at {self.socket_path}: connection refused (daemon not running?)") from None
        except PermissionError:
            raise ApiError(f"permission denied on {self.socket_path}: run as root or join the fleetd group") from None
        except (TimeoutError, OSError) as exc:
            raise ApiError(f"cannot talk to fleetd at {self.socket_path}: {exc}") from None
        if response.status >= 400:
            raw = response.read()
            try:
                message = json.loads(raw)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace").strip() or response.reason
            raise ApiError(message)
        return response

    def call(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        response = self._open(method, path, body, query)
        return json.loads(response.read() or b"null")

    def stream(self, path: str, query: dict[str, Any] | None = None) -> Iterator[bytes]:
        """Chunks of a streaming response, as they arrive."""
        response = self._open("GET", path, None, query, timeout=None)
        while True:
            chunk = response.read1(65536)
            if not chunk:
                return
            yield chunk
