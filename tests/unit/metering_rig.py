"""The metering rig: zone 2's gateway with a cost tracker and a real ledger file, in front of the LLM simulator,
both on loopback in this process.

Shared by tests/unit/test_zone2_metering.py and test_zone2_unsized_input.py; not a test module itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from fleetd.llmsim import SIM, init_sim
from fleetd.zone2.budget import Caps
from fleetd.zone2.contract import Registration, Upstream, Zone2Policy
from fleetd.zone2.costs import CostTracker
from fleetd.zone2.ledger import Ledger
from fleetd.zone2.pricing import PriceTable
from fleetd.zone2.proxy import init_gateway
from fleetd.zone2.registry import Registry
from fleetd.zone2.tasks import HeldTasks
from tests.unit.loopback import serve

SECRET = "sk-sim-METERED-0123456789"
USD = 1_000_000_000
# A price whose output dominates, so a call's real cost is close to its reserved bound.
TEST_PRICE = {"model": "test-model", "input": 0.001, "output": 100.0, "max_output_tokens": 64}
# Long-context prices above 10 input tokens (real ones start at 200K or 272K).
LONG_PRICE = {"model": "long-model", "input": 1.0, "output": 2.0, "long_context_threshold": 10,
              "long_context_input": 2.0, "long_context_output": 3.0, "max_output_tokens": 64}
CHAT = "/v1/chat/completions"
AUTH = {"Authorization": "Bearer $CRED{sim}"}


class Clock:
    """``time.monotonic`` that a test can move ahead: breaker windows and back-offs without sleeping through them."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class Rig:
    gw: str
    client: aiohttp.ClientSession
    costs: CostTracker
    sim: Any
    registry: Registry
    events: list[tuple[str, str | None, str, dict[str, Any]]] = field(default_factory=list)
    clock: Clock = field(default_factory=Clock)  # the cost tracker's monotonic clock
    held: HeldTasks = field(default_factory=HeldTasks)  # the task each agent holds (zone2.tasks), as the gateway's
    whois: dict[str, Registration] = field(default_factory=dict)  # what the daemon answers for an unknown address

    def register(self, caps: Caps | None = None, allow_unpriced: bool = False) -> None:
        self.registry.register(Registration("agent1", "127.0.0.1", "worker", frozenset({"sim"}), caps or Caps(),
                                            allow_unpriced))

    def ledger(self) -> list[dict[str, Any]]:
        return list(reversed(self.costs.ledger.calls("agent1", limit=1000)))

    def upstream_calls(self) -> int:
        return len(self.sim.requests)

    async def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
                   ) -> tuple[int, dict[str, str], bytes]:
        async with self.client.post(self.gw + path, json=body, headers={**AUTH, **(headers or {})}) as r:
            return r.status, dict(r.headers), await r.read()


Check = Callable[[Rig], Awaitable[None]]


@asynccontextmanager
async def rig(tmp_path: Path, policy: dict[str, Any] | None = None) -> AsyncIterator[Rig]:
    sim_app = init_sim()
    async with serve(sim_app) as sim_url:
        registry = Registry()
        registry.set_creds([Upstream("sim", sim_url, SECRET)])
        events: list[tuple[str, str | None, str, dict[str, Any]]] = []
        clock = Clock()
        costs = CostTracker(Ledger(tmp_path / "ledger.db"), lambda *e: events.append(e), monotonic=clock)
        prices = [*PriceTable.builtin().to_list(), TEST_PRICE, LONG_PRICE]
        costs.configure(Zone2Policy.from_json({"prices": prices, "retry": {"max_retries": 0}, **(policy or {})}))

        held = HeldTasks(on_release=costs.release_task)
        answers: dict[str, Registration] = {}

        async def whois(ip: str) -> Registration | None:
            return answers.get(ip)

        async with serve(init_gateway(registry, whois, costs, held=held)) as gw, aiohttp.ClientSession() as client:
            r = Rig(gw, client, costs, sim_app[SIM], registry, events, clock, held, answers)
            r.register()
            yield r
        costs.ledger.close()


def run(tmp_path: Path, check: Check, policy: dict[str, Any] | None = None) -> None:
    async def main() -> None:
        async with rig(tmp_path, policy) as r:
            await check(r)

    asyncio.run(main())


async def settled(r: Rig) -> None:
    for _ in range(200):
        if r.costs.status("agent1").inflight_calls == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("calls did not settle")


def sse_events(raw: bytes) -> list[str]:
    return [line.removeprefix(b"data: ").decode() for line in raw.split(b"\n") if line.startswith(b"data: ")]
