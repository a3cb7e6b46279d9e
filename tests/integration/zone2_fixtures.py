"""Zone 2 test bench: a daemon, an LLM simulator container as the upstream, and a second one as the attacker's."""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import time
from collections.abc import Callable
from typing import Any

import docker

from tests.integration.harness import AGENT_IMAGE, FLEETD, Daemon, wait_for

ZONE2_IMAGE = "fleetd/zone2:latest"


class Bench:
    """A daemon with an upstream simulator and an 'evil' simulator on its egress network."""

    def __init__(self, engine: docker.DockerClient, config: str | None = None,
                 wrapper: Callable[[list[str]], list[str]] | None = None) -> None:
        self.engine = engine
        self.daemon = Daemon(config=config, wrapper=wrapper).start()
        self.secret = f"sk-test-{secrets.token_hex(12)}"
        egress = f"fleetd-{self.daemon.instance}-egress"
        self.sims: dict[str, Any] = {}
        for role in ("llm", "evil"):
            name = f"{role}-{self.daemon.instance}"
            self.sims[role] = engine.containers.run(
                ZONE2_IMAGE, ["llm-sim", "--port", "8000"], name=name, detach=True, network=egress,
                labels={"fleetd.instance": self.daemon.instance, "fleetd-test": "sim"},
            )
        for role in self.sims:
            wait_for(lambda r=role: self._sim_ready(r), 20, what=f"{role} simulator")  # type: ignore[misc]
        self.set_cred("openai", self.secret, "llm")
        self.daemon.cli("role", "set", "worker", "--creds", "openai")

    def upstream(self, role: str) -> str:
        return f"http://{role}-{self.daemon.instance}:8000"

    def sim_url(self, role: str) -> str:
        container = self.sims[role]
        container.reload()
        ip = next(iter(container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        return f"http://{ip}:8000"

    def _sim_ready(self, role: str) -> bool:
        try:
            import urllib.request

            with urllib.request.urlopen(f"{self.sim_url(role)}/v1/models", timeout=1):
                return True
        except OSError:
            return False

    def sim_requests(self, role: str) -> list[dict[str, Any]]:
        import urllib.request

        with urllib.request.urlopen(f"{self.sim_url(role)}/sim/requests", timeout=5) as response:
            result: list[dict[str, Any]] = json.loads(response.read())
            return result

    def sim(self, role: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """GET (or, with a body, POST) one of the simulator's /sim/ endpoints."""
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.sim_url(role)}{path}", data=data,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def set_cred(self, name: str, secret: str, role: str, provider: str = "openai") -> None:
        """Bind ``name`` to a simulator; an LLM provider's kind by default (its calls are default-deny)."""
        subprocess.run([FLEETD, "--socket", str(self.daemon.socket), "cred", "set", name, "--upstream",
                        self.upstream(role), "--provider", provider], input=secret, text=True, check=True,
                       capture_output=True)

    def run_agent(self, script: str, *args: str, role: str = "worker", timeout: float = 60) -> tuple[str, str]:
        """Run a Python script in an agent; return (agent id, its output)."""
        agent_id = self.daemon.spawn("--role", role, *args, AGENT_IMAGE, "python3", "-c", script)
        self.daemon.wait_state(agent_id, "exited", timeout=timeout)
        return agent_id, self.daemon.logs(agent_id)

    def close(self) -> None:
        try:
            for container in self.sims.values():
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
            self.daemon.cli("teardown", check=False)
        finally:
            self.daemon.cleanup()


# A tiny HTTP client for agents: stdlib only, prints "STATUS BODY" lines.
AGENT_HTTP = '''
import http.client, json, os, socket, sys
GW = os.environ["FLEETD_GATEWAY_URL"].removeprefix("http://")
def call(method, target, headers=None, body=None, host=GW):
    h, _, p = host.partition(":")
    conn = http.client.HTTPConnection(h, int(p or 80), timeout=10)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    except OSError as exc:
        return 0, type(exc).__name__
    finally:
        conn.close()
def raw(data, host=GW):
    h, _, p = host.partition(":")
    try:
        with socket.create_connection((h, int(p)), timeout=5) as s:
            s.sendall(data)
            return s.recv(65536).decode(errors="replace").split("\\r\\n")[0]
    except OSError as exc:
        return type(exc).__name__
AUTH = {"Authorization": "Bearer $CRED{openai}", "Content-Type": "application/json"}
'''


def wait_until(predicate: Any, timeout: float) -> float:
    """Seconds until ``predicate()`` held (fails after ``timeout``)."""
    start = time.monotonic()
    wait_for(predicate, timeout, interval=0.05)
    return time.monotonic() - start
