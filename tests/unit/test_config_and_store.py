from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from fleetd.config import load_config
from fleetd.errors import InvalidRequest, NotFound
from fleetd.models import State, iso, utcnow
from fleetd.store import Store
from fleetd.timers import Timers


def test_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('instance = "prod"\nmax_ttl = 100\n[defaults]\nmemory = "1g"\nheartbeat_interval = 2.5\n'
                    'disk = "2g"\n[roles.r]\ncpus = 0.5\nheartbeat_interval = 0\ndisk = "256m"\n')
    config = load_config(path, state_dir=tmp_path, socket=None)
    assert config.defaults.heartbeat_interval == 2.5 and config.limits_for("r").heartbeat_interval == 0
    assert config.instance == "prod" and config.max_ttl == 100 and config.state_dir == tmp_path
    assert config.defaults.memory == 1 << 30 and config.defaults.pids_limit == 256
    assert config.limits_for("r").cpus == 0.5 and config.limits_for("r").memory == 1 << 30
    assert config.defaults.disk == 2 << 30 and config.limits_for("r").disk == 256 << 20
    assert load_config(path, instance="other").instance == "other"  # flags beat the file


def test_config_prices_take_long_context_prices(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[prices."my-model"]\ninput = 3.0\noutput = 15.0\nlong_context_threshold = 200000\n'
                    'long_context_input = 6.0\nlong_context_output = 22.5\npriority_multiplier = 2.5\n'
                    'max_input_tokens = 1000000\n')
    (entry,) = load_config(path).policy.prices
    assert (entry["long_context_threshold"], entry["long_context_input"], entry["long_context_output"],
            entry["priority_multiplier"], entry["max_input_tokens"]) == (200000, 6.0, 22.5, 2.5, 1000000)


@pytest.mark.parametrize(
    ("text", "message"),
    [("bogus = 1", "unknown keys"),
     ('[prices."m"]\ninput = 3.0\noutput = 15.0\nlong_context_threshold = 200000', "go together"),
     ('[prices."m"]\ninput = 3.0\noutput = 15.0\nlong_context_threshold = 0', "whole number"),
     ('[prices."m"]\ninput = 3.0\noutput = 15.0\npriority_multiplier = 0.5', "priority_multiplier"),
     ('[prices."m"]\ninput = 3.0\noutput = 15.0\nmax_input_tokens = 1.5', "max_input_tokens"),
     ("[defaults]\nmemory = 'x'", "invalid size"), ("instance = 'a b'", "instance"),
     ("[roles.r]\nttl = -1", "roles.r.ttl: must be at least 1"), ("= broken", "config"),
     ("[defaults]\nheartbeat_interval = 0.2", "heartbeat_interval"),
     ("[defaults]\nheartbeat_interval = 'soon'", "heartbeat_interval: invalid duration"),
     ("[roles.r]\ndisk = '8m'", "roles.r.disk"),
     ("[retention]\nrecords = 59", "retention.records"), ("[retention]\nforever = 1", "retention"),
     ("[retention]\nevents = '1 fortnight'", "retention.events: invalid duration"),
     ("retention = 5", "retention")],
)
def test_bad_config(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(InvalidRequest, match=message):
        load_config(path)


def test_retention_config(tmp_path: Path) -> None:
    assert (load_config(None).retention_records, load_config(None).retention_events) == (7 * 86400, 30 * 86400)
    path = tmp_path / "c.toml"
    path.write_text("[retention]\nrecords = 86400\nevents = 172800\n")
    config = load_config(path)
    assert (config.retention_records, config.retention_events) == (86400, 172800)


def new_agent(store: Store, agent_id: str, name: str, state: str = "running") -> None:
    store.insert_agent(agent_id, name=name, image="img", role="default", state=state, created_at=iso(utcnow()),
                       deadline=iso(utcnow()), spec="{}")


def test_store_transitions_and_events(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    seen: list[dict[str, object]] = []
    store.on_event = seen.append
    new_agent(store, "abc123456789", "one")
    store.transition("abc123456789", State.EXITED, "exited", exit_code=3)
    row = store.get("abc123456789")
    assert row is not None and (row["state"], row["reason"], row["exit_code"]) == ("exited", "exited", 3)
    assert [(t["from_state"], t["to_state"]) for t in store.transitions("abc123456789")] == [
        (None, "running"), ("running", "exited")]
    assert [e["type"] for e in seen] == ["created", "state"]
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    # Durable: a new connection sees it all.
    again = Store(tmp_path / "state.db")
    assert again.get("abc123456789")["exit_code"] == 3  # type: ignore[index]
    assert [e["id"] for e in again.events(since=0, limit=1)] == [1]  # paging forward from since
    assert [e["id"] for e in again.events(limit=1)] == [2]  # else the newest


def test_store_resolve(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    new_agent(store, "aaa111222333", "web", state="exited")
    new_agent(store, "aaa111999999", "web")
    assert store.resolve("web")["id"] == "aaa111999999"  # the live one first
    assert store.resolve("aaa1119")["id"] == "aaa111999999"
    with pytest.raises(InvalidRequest, match="more than one"):
        store.resolve("aaa111")
    with pytest.raises(NotFound):
        store.resolve("zzz")
    assert store.name_owner("web") == ("aaa111999999", "running")


def test_a_name_is_held_until_its_record_is_removed(tmp_path: Path) -> None:
    """Docker's rule: an exited container keeps its name until it is removed."""
    store = Store(tmp_path / "state.db")
    new_agent(store, "bbb111222333", "job", state="exited")
    assert store.name_owner("job") == ("bbb111222333", "exited")
    new_agent(store, "ccc111222333", "failing", state="failed")
    assert store.name_owner("failing") == ("ccc111222333", "failed")
    store.transition("bbb111222333", State.REMOVED, "exited")
    assert store.name_owner("job") is None
    assert store.name_owner("nobody") is None


def test_store_belongs_to_one_instance(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.claim_instance("a")
    store.claim_instance("a")
    with pytest.raises(InvalidRequest, match="belongs to instance 'a'"):
        store.claim_instance("b")


def test_timer_in_the_past_fires_at_once() -> None:
    async def main() -> list[str]:
        fired: list[str] = []
        timers = Timers()
        timers.start()

        async def job(name: str) -> None:
            fired.append(name)

        timers.at("late", utcnow() - timedelta(hours=1), job, "late")
        timers.at("soon", utcnow() + timedelta(milliseconds=50), job, "soon")
        timers.at("never", utcnow() + timedelta(milliseconds=50), job, "never")
        timers.cancel("never")
        await asyncio.sleep(0.3)
        timers.shutdown()
        return fired

    assert asyncio.run(main()) == ["late", "soon"]
