"""Agent-controlled text is bounded where it is stored: events in state.db, rows of zone 2's ledger.

A hostile agent chooses model names (allow-unpriced roles relay any), heartbeat progress and, through
zone 2's refusals, parts of event messages. Without a bound each of them could add megabytes per row
to a database that is kept for the instance's life.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from fleetd.store import Store
from fleetd.zone2.ledger import Call, Ledger
from fleetd.zone2.llm import Usage

MEGABYTE = "x" * (1 << 20)
# The bounds, as README states them.
MAX_TEXT_CHARS = 256  # a model name, a service tier: one ledger field
MAX_MESSAGE_CHARS = 4096  # an event's message
MAX_DATA_BYTES = 8192  # an event's data, as JSON


def test_clip_keeps_short_text_and_marks_a_cut() -> None:
    from fleetd.bounds import clip

    assert clip("gpt-4o", 8) == "gpt-4o"
    assert clip("abcdefghij", 8) == "abcdefg…"
    assert len(clip(MEGABYTE, MAX_TEXT_CHARS)) == MAX_TEXT_CHARS


def test_an_event_keeps_at_most_a_few_kib_of_agent_text(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    published: list[dict[str, object]] = []
    store.on_event = published.append
    store.add_event("t" * 1000, f"model {MEGABYTE} has no price", None,
                    {"model": MEGABYTE, "nested": [{"k": MEGABYTE}], MEGABYTE: 1})
    many_keys = {f"key{i}": i for i in range(100_000)}
    store.add_event("many", "keys", None, many_keys)
    store.add_event("small", "ok", None, {"model": "gpt-4o", "n": 3})
    rows = store.conn.execute("SELECT type, message, data FROM events ORDER BY id").fetchall()
    for type_, message, data in rows:
        assert len(type_) <= 64 and len(message) <= MAX_MESSAGE_CHARS
        assert len(data.encode()) <= MAX_DATA_BYTES
        json.loads(data)
    assert rows[0][1].startswith("model xxx") and rows[0][1].endswith("…")
    assert json.loads(rows[0][2])["model"].startswith("xxx")  # what fits is kept, not dropped
    assert json.loads(rows[1][2]) == {"truncated": True, "bytes": len(json.dumps(many_keys))}
    assert json.loads(rows[2][2]) == {"model": "gpt-4o", "n": 3}  # small data untouched
    assert published[0]["message"] == rows[0][1]  # followers see what is stored
    assert [e["message"] for e in store.events()] == [r[1] for r in rows]


def call(model: str, response_id: str | None = None) -> Call:
    return Call(request_id="r1", at=datetime.now(UTC), agent_id="a1", role="default", credential="openai",
                api="openai_chat", model=model, status=200,
                usage=Usage(input_tokens=1, output_tokens=1, service_tier=MEGABYTE, response_id=response_id),
                cost_nusd=1, reserved_nusd=1, estimated=False, attempts=1)


def test_a_ledger_row_keeps_at_most_256_characters_of_each_agent_or_upstream_string(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    assert ledger.record(call(MEGABYTE, response_id="resp_" + MEGABYTE))
    assert ledger.record(call("gpt-4o", response_id="resp_1"))
    first, second = ledger.calls(limit=10)[::-1]
    assert len(first["model"]) == MAX_TEXT_CHARS and len(first["service_tier"]) == MAX_TEXT_CHARS
    assert first["response_id"] is None  # an id cut short could match another call's: not kept at all
    assert second["model"] == "gpt-4o" and second["response_id"] == "resp_1"
    assert ledger.context_of("resp_" + MEGABYTE) is None
    ledger.close()
    assert (tmp_path / "ledger.db").stat().st_size < 1 << 20
