"""The official OpenAI and Anthropic SDKs in agents through zone 2: the bench and the runner.

Shared by tests/integration/test_zone2_sdk.py and test_zone2_costs.py; not a test module itself. The
``sdk_image`` fixture both use is in tests/integration/conftest.py.
"""

from __future__ import annotations

import json
import secrets
import urllib.request
from typing import Any

import docker

from tests.integration.zone2_fixtures import Bench

CHUNK_DELAY_MS = 60  # per streamed token: buffering anywhere on the way would squash the arrival times together


class SdkBench(Bench):
    """The zone 2 bench plus an ``anthropic`` credential on the same simulator, both allowed to ``worker``."""

    def __init__(self, engine: docker.DockerClient, config: str | None = None) -> None:
        super().__init__(engine, config)
        self.anthropic_secret = f"sk-ant-test-{secrets.token_hex(12)}"
        try:
            self.set_cred("anthropic", self.anthropic_secret, "llm")
            self.daemon.cli("role", "set", "worker", "--creds", "openai,anthropic")
            request = urllib.request.Request(
                f"{self.sim_url('llm')}/sim/config",
                method="POST",
                data=json.dumps({"chunk_delay_ms": CHUNK_DELAY_MS}).encode(),
                headers={"Content-Type": "application/json"},
            )
            urllib.request.urlopen(request, timeout=5).close()
        except BaseException:
            self.close()
            raise


def run_sdk_agent(bench: Bench, image: str, script: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """Run ``script`` in an agent from ``image``; return its logs and its JSON lines by kind."""
    agent_id = bench.daemon.spawn("--role", "worker", image, "python3", "-c", script)
    record = bench.daemon.wait_state(agent_id, "exited", timeout=90)
    logs = bench.daemon.logs(agent_id)
    results: dict[str, dict[str, Any]] = {}
    for line in logs.splitlines():
        if line.startswith("{"):
            item = json.loads(line)
            results[item.pop("kind")] = item
    assert "done" in results, f"agent {agent_id} stopped early ({record.get('exit_code')}):\n{logs}"
    assert record["exit_code"] == 0, logs
    return logs, results
