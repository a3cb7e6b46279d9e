"""Zone 2's forward proxy as zone 2 runs it (issue 18): admitted within each address's share, agents known by the
registry, records to the log, the counters and throttled events, state dropped with the agent."""

from __future__ import annotations

import asyncio
import resource
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from fleetd.open_files import raise_open_files
from fleetd.zone2 import egress_door
from fleetd.zone2.contract import Registration, Registrations, Zone2Policy
from fleetd.zone2.costs import CostTracker
from fleetd.zone2.counters import Counts
from fleetd.zone2.egress_door import EgressDoor, lookup_in
from fleetd.zone2.egress_log import EgressLog, read_log
from fleetd.zone2.egress_records import DENIED_EVENT_EVERY, EgressRecords
from fleetd.zone2.forward_proxy import EgressRecord
from fleetd.zone2.guard import FD_HEADROOM, Guard, connection_limit
from fleetd.zone2.ledger import Ledger
from fleetd.zone2.registry import Registry
from fleetd.zone2.service import init_control
from fleetd.zone2.shares import Limits

AGENT = Registration("a1", "127.0.0.1", egress=("allowed.example.test",), egress_max_bytes=1 << 20)


def record(decision: str = "denied", agent_id: str | None = "a1", host: str = "other.example.test") -> EgressRecord:
    return EgressRecord(agent_id, host, 443, "CONNECT", decision, "not allowed: other.example.test" if
                        decision == "denied" else None, None, 10, 20, 0.0, 0.1)


def test_the_registry_says_who_is_at_an_address_and_what_it_may_reach() -> None:
    registry = Registry()
    registry.register(AGENT)
    lookup = lookup_in(registry)
    found = lookup("127.0.0.1")
    assert found is not None and found.agent_id == "a1" and found.max_bytes_per_day == 1 << 20
    assert found.policy.allows("allowed.example.test", 443) and not found.policy.allows("other.example.test", 443)
    assert lookup("127.0.0.9") is None
    registry.register(Registration("a2", "127.0.0.2"))  # a role without egress
    found = lookup("127.0.0.2")
    assert found is not None and not found.policy.enabled


def test_records_go_to_the_log_and_the_counters_and_denials_are_told_once_a_minute(tmp_path: Path) -> None:
    events: list[tuple[str, str | None, str, dict[str, Any]]] = []
    now = [100.0]
    counts = Counts()
    log = EgressLog(tmp_path / "egress.db")
    records = EgressRecords(log, counts, lambda *event: events.append(event), monotonic=lambda: now[0])
    records.record(record("allowed", host="allowed.example.test"))
    for _ in range(50):  # an agent probing in a loop
        records.record(record())
    assert len(read_log(tmp_path / "egress.db", limit=1000)) == 51  # the log has every one
    assert counts.snapshot().egress_connections == {"allowed": 1, "denied": 50}
    assert counts.snapshot().egress_bytes == {"out": 510, "in": 1020}
    [(kind, agent_id, message, data)] = events  # one event, not fifty
    assert kind == "egress_denied" and agent_id == "a1" and "other.example.test:443" in message
    assert data["reason"].startswith("not allowed")
    now[0] += DENIED_EVENT_EVERY
    records.record(record())
    assert "49 more denied" in events[-1][2] and events[-1][3]["untold"] == 49
    records.record(record(agent_id="a2"))  # another agent's first denial is told at once
    assert events[-1][1] == "a2"
    records.forget("a1")
    records.forget("a2")
    assert not records._denied  # bounded by the agents denied, dropped with them
    log.close()


def test_an_address_over_its_share_is_closed_before_a_byte_is_read(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(egress_door, "PER_AGENT", 3)

    async def main() -> None:
        registry = Registry()
        registry.register(AGENT)
        door = EgressDoor(registry, EgressRecords(None, Counts(), lambda *e: None))
        await door.start("127.0.0.1", 0)
        assert door.server is not None
        port = door.server.sockets[0].getsockname()[1]
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]  # within the share: held
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # over it: closed unread
        writer.close()
        assert door.shares.connections["127.0.0.1"] == 3
        for _, w in held:
            w.close()
        for _ in range(100):
            if not door.shares.connections:
                break
            await asyncio.sleep(0.02)
        assert door.shares.connections == {}  # given back when they close
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET http://other.example.test/ HTTP/1.1\r\nHost: other.example.test\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 403") and b"egress_denied" in answer
        writer.close()
        await door.close()

    asyncio.run(main())


def test_the_control_api_makes_the_proxy_forget_unregistered_agents(tmp_path: Path) -> None:
    forgotten: list[str] = []

    async def main() -> None:
        registry = Registry()
        costs = CostTracker(Ledger(tmp_path / "ledger.db"), lambda *e: None)
        app = init_control(registry, costs, Guard(), 0.0, on_forget=forgotten.append)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.UnixSite(runner, str(tmp_path / "control.sock"))
        await site.start()
        connector = aiohttp.UnixConnector(path=str(tmp_path / "control.sock"))
        async with aiohttp.ClientSession(connector=connector) as session:
            two = Registrations((AGENT, Registration("a2", "127.0.0.2")))
            async with session.put("http://z/control/agents", json=two.to_json()) as response:
                assert response.status == 200
            async with session.delete("http://z/control/agents/a1") as response:
                assert response.status == 200
            async with session.put("http://z/control/agents", json=[]) as response:  # a2 went too
                assert response.status == 200
        await runner.cleanup()
        costs.ledger.close()

    asyncio.run(main())
    assert forgotten == ["a1", "a2"]


def test_every_address_is_refused_until_the_daemon_has_said_which_are_the_hosts(tmp_path: Path) -> None:
    """Zone 2 restarted: an agent's first LLM call registers it (whois) before the daemon's policy comes; its allowed
    names must not reach the host's addresses or the agents' network meanwhile (the lists are still empty)."""

    async def main() -> None:
        registry = Registry()
        registry.register(AGENT)  # as whois does, before any policy
        door = EgressDoor(registry, EgressRecords(None, Counts(), lambda *e: None))
        refuse = door.proxy._refuse
        for ip in ("192.0.2.1", "172.30.0.5", "192.0.2.77"):  # to be: the host's, the agents', elsewhere
            assert "not yet been told" in (refuse(ip) or "")
        costs = CostTracker(Ledger(tmp_path / "ledger.db"), lambda *e: None)
        runner = web.AppRunner(init_control(registry, costs, Guard(), 0.0))
        await runner.setup()
        await web.UnixSite(runner, str(tmp_path / "control.sock")).start()
        policy = Zone2Policy(host_addresses=("192.0.2.1",), agent_networks=("172.30.0.0/24",))
        connector = aiohttp.UnixConnector(path=str(tmp_path / "control.sock"))
        async with (aiohttp.ClientSession(connector=connector) as session,
                    session.put("http://z/control/policy", json=policy.to_json()) as response):
            assert response.status == 200
        assert "the host itself" in (refuse("192.0.2.1") or "")
        assert "agents' network" in (refuse("172.30.0.5") or "")
        assert refuse("192.0.2.77") is None
        assert refuse("127.0.0.1") is not None
        await runner.cleanup()
        costs.ledger.close()

    asyncio.run(main())


def test_the_proxy_and_the_gateway_together_fit_in_zone_2s_descriptors(monkeypatch: Any) -> None:
    """Docker 25+ starts zone 2 with 1024 open files (hard 524288): the gateway sizes its connections to fill what
    FD_HEADROOM leaves, so the proxy's (two descriptors each) must come out of the same budget, not on top of it."""
    for soft, proxy_total in ((1024, egress_door.PER_AGENT), (4096, 512), (65536, 512)):
        monkeypatch.setattr(resource, "getrlimit", lambda which, soft=soft: (soft, 524288))
        gateway = connection_limit(Limits()).connections
        door = EgressDoor(Registry(), EgressRecords(None, Counts(), lambda *e: None))
        assert door.shares.limits.connections == proxy_total
        # all of it within the limit, but for one agent's share of the headroom at worst
        assert 2 * (gateway + proxy_total) + FD_HEADROOM <= soft + 2 * egress_door.PER_AGENT
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "setrlimit", lambda which, limits: calls.append(limits))
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 524288))
    assert raise_open_files() == 65536 and calls == [(65536, 524288)]
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 2048))
    assert raise_open_files() == 2048 and calls[-1] == (2048, 2048)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (70000, 524288))
    assert raise_open_files() == 70000 and len(calls) == 2  # never lowered


def test_an_agent_not_registered_yet_is_known_through_the_daemons_whois(tmp_path: Path) -> None:
    """The daemon starts an agent, then registers it: a first connection in between is the agent's, not refused as
    an unknown address (the gateway's identify asks the daemon the same way)."""
    asked: list[str] = []
    records: list[Any] = []

    async def whois(ip: str) -> Registration | None:
        asked.append(ip)
        return AGENT if ip == AGENT.ip else None

    async def main() -> None:
        registry = Registry()  # no registration yet
        door = EgressDoor(registry, EgressRecords(None, Counts(), lambda *e: None), whois=whois)
        door.proxy._on_record = records.append
        await door.start("127.0.0.1", 0)
        assert door.server is not None
        port = door.server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET http://other.example.test/ HTTP/1.1\r\nHost: other.example.test\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        for _ in range(100):
            if records:
                break
            await asyncio.sleep(0.02)
        await door.close()
        assert answer.startswith(b"HTTP/1.1 403") and b"not in agent a1's egress policy" in answer, answer
        assert b"not an agent zone 2 knows" not in answer

    asyncio.run(main())
    assert asked == ["127.0.0.1"]
    [found] = records
    assert found.agent_id == "a1" and found.reason.startswith("not allowed"), found
