"""`fleetd daemon --metrics`: a real scrape of a real daemon, parsed with prometheus_client's parser."""

from __future__ import annotations

import socket
import subprocess
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import AGENT_IMAGE, Daemon, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def test_metrics_listener_reports_agents_spend_and_exits() -> None:
    port = free_port()
    daemon = Daemon(args=("--metrics", f"127.0.0.1:{port}")).start()
    try:
        running = daemon.spawn("--heartbeat-interval", "5", AGENT_IMAGE, "python3", "-c",
                               "import time, fleetd_agent\nfleetd_agent.start_heartbeat()\ntime.sleep(300)")
        killed = daemon.spawn(AGENT_IMAGE, "sleep", "300")
        daemon.cli("kill", killed)
        wait_for(lambda: daemon.agent(running)["last_heartbeat"] is not None, 30, what="a heartbeat")
        metrics = scrape(port)
        states = {labels["state"]: value for labels, value in metrics["fleetd_agents"]}
        assert states["running"] == 1 and states["exited"] + states.get("removed", 0) == 1
        assert metrics["fleetd_spawns_total"][0][1] == 2
        exits = {labels["reason"]: value for labels, value in metrics["fleetd_agent_exits_total"]}
        assert exits["killed"] == 1
        ages = {labels["agent"]: value for labels, value in metrics["fleetd_agent_heartbeat_age_seconds"]}
        assert 0 <= ages[running] < 15
        caps = {(labels["agent"], labels["window"]): value for labels, value in metrics["fleetd_agent_budget_cap_usd"]}
        assert caps[(running, "day")] == 50 and caps[(running, "month")] == 200
        assert metrics["fleetd_zone2_up"][0][1] == 1
    finally:
        daemon.cli("teardown", check=False)
        daemon.cleanup()


def test_a_bad_metrics_address_is_a_one_line_error() -> None:
    daemon = Daemon(args=("--metrics", ":9464"))
    result = subprocess.run(daemon.command(), capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert result.stderr.strip().startswith("Error:") and "--metrics" in result.stderr
    assert "Traceback" not in result.stderr
    daemon.cleanup()
