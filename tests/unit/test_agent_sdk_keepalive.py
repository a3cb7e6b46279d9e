"""The SDK's task calls keep one connection to the gateway alive, and survive the gateway closing it."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sdk" / "python"))

import fleetd_agent


class Gateway(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.connections = 0
        self.requests: list[str] = []
        self.close_next = False  # close the connection after the next answer, without saying so


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Gateway

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.requests.append(self.path)
        body = json.dumps({"id": "0123456789abcdef", "state": "succeeded", "attempts": 1}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.server.close_next:
            self.server.close_next = False
            self.close_connection = True  # a keep-alive connection the server drops while idle

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    server = Gateway()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("FLEETD_GATEWAY_URL", f"http://127.0.0.1:{server.server_address[1]}")
    fleetd_agent._drop_connection()
    yield server
    fleetd_agent._drop_connection()
    server.shutdown()
    server.server_close()


def test_task_calls_share_one_kept_connection(gateway: Gateway) -> None:
    url = f"{fleetd_agent.gateway_url()}/fleetd/tasks/0123456789abcdef/complete"
    for _ in range(5):
        assert fleetd_agent._post(url, b"{}", 5) is not None
    assert len(gateway.requests) == 5 and gateway.connections == 1


def test_a_connection_the_gateway_closed_is_replaced_without_losing_the_call(gateway: Gateway) -> None:
    url = f"{fleetd_agent.gateway_url()}/fleetd/tasks/next?wait=0"
    assert fleetd_agent._post(url, b"{}", 5) is not None
    gateway.close_next = True
    assert fleetd_agent._post(url, b"{}", 5) is not None  # answered, then the gateway closes it
    answer = fleetd_agent._post(url, b"{}", 5)  # on the dead kept connection first, then on a new one
    assert answer is not None and answer[0] == 200
    assert len(gateway.requests) == 3 and gateway.connections == 2
