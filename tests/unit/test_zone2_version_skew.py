"""A daemon and a zone 2 built from different fleetd code: found and said, never silently wrong.

The zone 2 image keeps its version tag (fleetd/zone2:0.1.0) across code changes, so a daemon upgraded in place
without ``fleetd images build`` drives an older zone 2. Zone 2 reports a fingerprint of its code; the daemon warns
when it differs from its own. A policy that the older zone 2 cannot read (a price field it does not know) is an error
at the daemon, since zone 2 would otherwise meter with no prices or old ones.

On loopback: zone 2's control app served on a Unix socket in a temp dir, the daemon's Zone2 talking to it.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import fleetd
import fleetd.gateway
from fleetd.errors import InvalidRequest, RuntimeFailure
from fleetd.fingerprint import code_fingerprint
from fleetd.gateway import Zone2
from fleetd.host_addresses import host_addresses
from fleetd.policy import Policy, zone2_policy
from fleetd.store import Store
from fleetd.vault import Vault
from fleetd.zone2.costs import CostTracker
from fleetd.zone2.guard import Guard
from fleetd.zone2.ledger import Ledger
from fleetd.zone2.pricing import Price
from fleetd.zone2.registry import Registry
from fleetd.zone2.service import CONTROL_SOCKET, init_control


def test_the_fingerprint_is_of_the_code_and_its_data_only(tmp_path: Path) -> None:
    package = Path(fleetd.__file__).resolve().parent
    copy = tmp_path / "fleetd"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert code_fingerprint.__wrapped__(copy) == code_fingerprint()  # type: ignore[attr-defined]
    (copy / "zone2" / "__pycache__").mkdir(exist_ok=True)
    (copy / "zone2" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (copy / "notes.txt").write_text("not code")
    assert code_fingerprint.__wrapped__(copy) == code_fingerprint()  # type: ignore[attr-defined]
    prices = copy / "data" / "prices.toml"
    prices.write_text(prices.read_text() + "\n# a new price\n")
    changed = code_fingerprint.__wrapped__(copy)  # type: ignore[attr-defined]
    assert changed != code_fingerprint() and len(changed) == 16


async def control_and_daemon(tmp_path: Path) -> tuple[web.AppRunner, Zone2, CostTracker]:
    costs = CostTracker(Ledger(tmp_path / "ledger.db"), lambda *e: None)
    registry = Registry()
    runner = web.AppRunner(init_control(registry, costs, Guard(), 0.0), access_log=None)
    await runner.setup()
    control = tmp_path / "control"
    control.mkdir()
    await web.UnixSite(runner, str(control / CONTROL_SOCKET)).start()
    store = Store(tmp_path / "state.db")
    async def call(fn: Any, *args: Any) -> Any:
        return fn(*args)

    runtime = SimpleNamespace(instance="t-skew", agent_networks=lambda: ("172.30.9.0/24",))
    zone2 = Zone2(tmp_path, store, Vault(store, secrets.token_bytes(32)), runtime, call, None)  # type: ignore[arg-type]
    zone2.control.open(control / CONTROL_SOCKET)
    zone2.registry = registry  # type: ignore[attr-defined]  # what zone 2 was told, for the checks
    return runner, zone2, costs


def run(tmp_path: Path, check: Any) -> None:
    async def main() -> None:
        runner, zone2, costs = await control_and_daemon(tmp_path)
        try:
            await check(zone2, costs)
        finally:
            await zone2.control.close()
            await runner.cleanup()
            zone2.store.close()
            costs.ledger.close()

    asyncio.run(main())


def test_a_policy_zone2_cannot_read_is_an_error_at_the_daemon_and_changes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def check(zone2: Zone2, costs: CostTracker) -> None:
        await zone2.push_policy()
        priced = len(costs.prices.all())
        assert priced > 20 and costs.prices.lookup("gpt-4o") is not None
        told: Registry = zone2.registry  # type: ignore[attr-defined]
        assert told.agent_networks == ("172.30.9.0/24",) and told.host_addresses == host_addresses()
        # what an older zone 2 sees from a newer daemon: a price field it does not know
        newer = Price.to_dict
        monkeypatch.setattr(Price, "to_dict", lambda price: {**newer(price), "speed_multiplier": 3.0})
        with pytest.raises(RuntimeFailure, match=r"refused .*speed_multiplier.*fleetd images build"):
            await zone2.push_policy()
        monkeypatch.setattr(Price, "to_dict", newer)
        monkeypatch.setattr(fleetd.gateway, "host_addresses", lambda: ("10.0.0.1", "localhost"))
        with pytest.raises(RuntimeFailure, match=r"host_addresses: 'localhost' is not an IP address"):
            await zone2.push_policy()  # never a proxy that cannot compare an address
        monkeypatch.setattr(Price, "to_dict", lambda price: {**newer(price), "speed_multiplier": 3.0})
        assert len(costs.prices.all()) == priced  # the policy in force stays as it was
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(zone2.control.path))) as raw, \
                raw.put("http://zone2/control/policy", data=b"[1, 2]") as response:
            assert response.status == 400 and "error" in await response.json()

    run(tmp_path, check)


def test_a_stored_price_this_daemon_cannot_read_is_an_error_naming_it() -> None:
    """A price set with a newer fleetd, then downgraded: said at the daemon, before zone 2 is asked anything."""
    stored = {"model": "m", "input": 1.0, "output": 1.0, "speed_multiplier": 3.0, "origin": "price set"}
    with pytest.raises(InvalidRequest, match=r"price table: .*'m'.*speed_multiplier"):
        zone2_policy(Policy(), [stored])


def test_zone2_reports_its_code_and_the_daemon_says_when_it_differs(tmp_path: Path) -> None:
    async def check(zone2: Zone2, costs: CostTracker) -> None:
        keeper = zone2.keeper
        health = await keeper.health()
        assert health is not None and health.code == code_fingerprint()
        keeper.container_id = "c1"
        keeper._check_code()
        assert keeper.code_matches is True and zone2.status()["code_matches"] is True
        assert not [e for e in zone2.store.events() if e["type"] == "zone2_code_mismatch"]
        zone2.control.last_health = replace(health, code="0123456789abcdef")  # an image built from other code
        keeper._check_code()
        keeper._check_code()  # said once per container
        assert zone2.status()["code_matches"] is False
        (event,) = [e for e in zone2.store.events() if e["type"] == "zone2_code_mismatch"]
        assert "fleetd images build" in event["message"] and event["data"]["zone2"] == "0123456789abcdef"

    run(tmp_path, check)
