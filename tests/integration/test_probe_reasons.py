"""probe_failed events say why, from a real daemon probing real containers (issue 15)."""

from __future__ import annotations

import re
from typing import Any

from tests.integration.harness import AGENT_IMAGE, Daemon, wait_for

# An HTTP server answering 500 on 8080; nothing listens on 9999.
SERVER = """
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(500); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("", 8080), H).serve_forever()
"""


def failures(daemon: Daemon, agent_id: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events(agent_id) if e["type"] == "probe_failed" and e["data"].get("kind") == kind]


def test_probe_failed_events_say_why(daemon: Daemon) -> None:
    http_agent = daemon.spawn("--ttl", "120", "--readiness-probe", "http:8080/ready,period=1",
                              "--liveness-probe", "tcp:9999,period=1,failure=1000",
                              AGENT_IMAGE, "python3", "-c", SERVER)
    exec_agent = daemon.spawn("--ttl", "120", "--readiness-probe",
                              "exec:sh -c 'echo not ready: db down; head -c 5000 /dev/zero | tr \"\\\\0\" x; exit 3'"
                              ",period=1",
                              AGENT_IMAGE, "sleep", "120")
    refused = daemon.spawn("--ttl", "120", "--readiness-probe", "http:9999/healthz,period=1", AGENT_IMAGE,
                           "sleep", "120")

    http_fail = wait_for(lambda: [e for e in failures(daemon, http_agent, "http")
                                  if "statuscode" in e["message"]], 30, what="an HTTP probe failure")[0]
    assert http_fail["message"] == "readiness probe failed: HTTP probe failed with statuscode: 500"
    assert http_fail["data"]["status_code"] == 500 and http_fail["data"]["probe"] == "readiness"

    tcp_fail = wait_for(lambda: failures(daemon, http_agent, "tcp"), 30, what="a TCP probe failure")[0]
    assert re.fullmatch(r"liveness probe failed: dial tcp [0-9.]+:9999: connect: connection refused",
                        tcp_fail["message"]), tcp_fail
    assert tcp_fail["data"]["error"].endswith("connection refused")

    exec_fail = wait_for(lambda: failures(daemon, exec_agent, "exec"), 30, what="an exec probe failure")[0]
    assert exec_fail["message"].startswith("readiness probe failed: command exited with code 3: not ready: db down")
    assert exec_fail["data"]["exit_code"] == 3
    output = exec_fail["data"]["output"]
    assert output.startswith("not ready: db down\nxxx") and output.endswith("…") and len(output) == 1025

    refused_fail = wait_for(lambda: failures(daemon, refused, "http"), 30, what="a refused HTTP probe")[0]
    assert re.fullmatch(r'readiness probe failed: Get "http://[0-9.]+:9999/healthz": dial tcp [0-9.]+:9999: '
                        "connect: connection refused", refused_fail["message"]), refused_fail
    assert daemon.agent(exec_agent)["ready"] is False
