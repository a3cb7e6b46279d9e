"""Calls with input that their body does not size: Responses calls that read state kept upstream
(``previous_response_id``, ``conversation``, a stored ``prompt``), and PDFs, billed by their pages. Their reservation
covers that input (what zone 2 recorded of it, else the model's input limit), so that neither a long conversation nor
a long PDF can spend past a cap.

On loopback, as tests/unit/test_zone2_metering.py: the gateway and the simulator in this process, real HTTP between
them, a real ledger file. The simulator keeps each stored response's tokens (input + output) and adds them to the
input of a call that continues it, as OpenAI does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleetd.zone2.budget import Caps
from fleetd.zone2.costs import CostTracker
from fleetd.zone2.ledger import Ledger
from fleetd.zone2.pricing import Price, PriceTable, bound_nusd
from tests.unit.metering_rig import USD, Rig, run, settled
from tests.unit.provider_calls import parse_request

RESPONSES = "/v1/responses"
# Input dominates (a long conversation's cost is its input, read again on every turn); the context window is small,
# so that a bound at the window is easy to tell from one at a recorded context.
STATE_PRICE = {"model": "state-model", "input": 100.0, "output": 0.001, "max_output_tokens": 64,
               "max_input_tokens": 50_000}
DOC_PRICE = {"model": "doc-model", "input": 1.0, "output": 1.0, "max_output_tokens": 64, "max_input_tokens": 100_000}
POLICY = {"prices": [*PriceTable.builtin().to_list(), STATE_PRICE, DOC_PRICE]}
PRICE = Price.from_dict(STATE_PRICE)
PDF = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}}
LONG_INPUT = " ".join(["w"] * 20_000)  # 20000 tokens at the simulator, $2 at this price
OUTPUT = 16  # the simulator's output tokens


def call(**fields: Any) -> dict[str, Any]:
    return {"model": "state-model", "input": "hi", "max_output_tokens": OUTPUT, **fields}


async def respond(r: Rig, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A Responses call (streamed when the body says so): its status and the response object."""
    status, _, raw = await r.post(RESPONSES, body)
    if not body.get("stream"):
        return status, json.loads(raw)
    for line in raw.split(b"\n"):
        if line.startswith(b"data: ") and b'"response.completed"' in line:
            return status, json.loads(line[6:])["response"]
    return status, json.loads(raw) if status != 200 else {}


def overspent(r: Rig) -> list[Any]:
    return [e for e in r.events if e[0] == "reservation_exceeded"]


def test_a_continued_response_reserves_the_conversation_it_reads_again(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        status, first = await respond(r, call(input=LONG_INPUT))
        assert status == 200 and first["usage"]["input_tokens"] == 20_000
        status, second = await respond(r, call(previous_response_id=first["id"], stream=True))
        assert status == 200 and second["usage"]["input_tokens"] == 20_000 + OUTPUT + 1
        status, third = await respond(r, call(previous_response_id=second["id"], input="ok"))
        assert status == 200 and third["usage"]["input_tokens"] == 20_000 + 2 * (OUTPUT + 1)
        await settled(r)
        rows = r.ledger()
        assert [row["response_id"] for row in rows] == [first["id"], second["id"], third["id"]]
        assert [row["context_tokens"] for row in rows] == [20_000 + OUTPUT, 20_000 + 2 * OUTPUT + 1,
                                                           20_000 + 3 * OUTPUT + 2]
        # Each continuation costs ~$2 (its input is the conversation); its body alone bounds ~$0.11.
        assert all(row["cost_nusd"] <= row["reserved_nusd"] for row in rows), rows
        assert rows[1]["cost_nusd"] > 2 * USD and not overspent(r)
        # The recorded contexts outlive zone 2: a tracker over the same ledger file (a restarted zone 2) knows them.
        with_body = parse_request("openai_responses", json.dumps(call(previous_response_id=third["id"])).encode())
        restarted = CostTracker(Ledger(tmp_path / "ledger.db"), lambda *e: None)
        try:
            assert restarted.input_bound(with_body, PRICE) >= 20_000 + 3 * OUTPUT + 2 + with_body.input_token_bound
            assert restarted.input_bound(with_body, PRICE) < PRICE.max_input_tokens  # type: ignore[operator]
        finally:
            restarted.ledger.close()

    run(tmp_path, check, POLICY)


def test_a_continuation_that_does_not_fit_the_cap_is_refused_before_it_reaches_upstream(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        status, first = await respond(r, call(input=LONG_INPUT))
        assert status == 200
        spent = r.costs.status("agent1").spent_today_nusd
        r.register(Caps(daily_nusd=spent + USD))  # $1 left: a short call fits, reading the conversation does not
        upstream = r.upstream_calls()
        refused = [
            call(previous_response_id=first["id"]),
            call(previous_response_id=first["id"], stream=True),
            call(previous_response_id="resp_not_made_through_zone2"),  # unknown: up to the context window
            call(conversation="conv_123"),
            call(conversation={"id": "conv_123"}),
            call(prompt={"id": "pmpt_123", "version": "2"}),
            # items read from upstream storage by id: references (their type is optional), reasoning items without
            # their encrypted content, compaction items (an encrypted summary that expands upstream)
            call(input=[{"type": "item_reference", "id": "msg_123"}]),
            call(input=[{"id": "msg_123"}, {"role": "user", "content": "and then?"}]),
            call(input=[{"type": "reasoning", "id": "rs_123", "summary": []}]),
            call(input=[{"type": "compaction", "encrypted_content": "gAAAA"}]),
        ]
        for body in refused:
            status, error = await respond(r, body)
            assert status == 429 and error["error"]["type"] == "budget_exceeded", body
        assert r.upstream_calls() == upstream
        status, _ = await respond(r, call())  # the same call without upstream state fits
        assert status == 200 and r.upstream_calls() == upstream + 1

    run(tmp_path, check, POLICY)


def test_a_truncated_or_unseen_conversation_reserves_the_max_input_tokens(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        status, first = await respond(r, call(input="a b c", truncation="auto"))
        assert status == 200
        status, _ = await respond(r, call(previous_response_id=first["id"]))
        assert status == 200
        await settled(r)
        truncated, continued = r.ledger()
        # "truncation": "auto" may have dropped items that the conversation upstream still holds
        assert truncated["response_id"] == first["id"] and truncated["context_tokens"] is None
        assert continued["reserved_nusd"] == bound_nusd(PRICE, 50_000, OUTPUT)
        assert continued["cost_nusd"] <= continued["reserved_nusd"]
        # a model the table gives no context window: the largest window of the models it lists
        no_window = Price("other", input=1.0, output=1.0)
        unseen = parse_request("openai_responses", json.dumps(call(conversation="conv_1")).encode())
        assert r.costs.input_bound(unseen, no_window) == 1_050_000

    run(tmp_path, check, POLICY)


def test_a_bad_previous_response_id_is_refused_as_a_bad_request(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        status, error = await respond(r, call(previous_response_id=12))
        assert status == 400 and "previous_response_id" in error["error"]["message"]
        assert r.upstream_calls() == 0

    run(tmp_path, check, POLICY)


def test_a_pdf_reserves_the_models_input_limit_and_plain_text_documents_their_size(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        def message(*parts: dict[str, Any]) -> dict[str, Any]:
            return {"model": "doc-model", "max_tokens": 5,
                    "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "summarize"}]}]}

        text = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "a short memo"}}
        assert (await r.post("/v1/messages", message(PDF)))[0] == 200
        assert (await r.post("/v1/messages", message(text)))[0] == 200
        pdf_row, text_row = r.ledger()
        price = Price.from_dict(DOC_PRICE)
        assert pdf_row["reserved_nusd"] == bound_nusd(price, 100_000, 5)  # a page costs ~1.5-3K tokens, any size
        assert text_row["reserved_nusd"] < bound_nusd(price, 10_000, 5)  # its text is in the body
        spent = r.costs.status("agent1").spent_today_nusd
        r.register(Caps(daily_nusd=spent + USD // 20))  # $0.05 left: the PDF's bound is $0.10
        upstream = r.upstream_calls()
        status, _, raw = await r.post("/v1/messages", message(PDF))
        assert status == 429 and json.loads(raw)["error"]["type"] == "budget_exceeded"
        assert r.upstream_calls() == upstream
        assert (await r.post("/v1/messages", message(text)))[0] == 200

    run(tmp_path, check, POLICY)


def test_items_given_whole_are_sized_by_the_body() -> None:
    for items in ([{"role": "user", "content": "hi", "id": "msg_1"}],
                  [{"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA" * 100}],
                  [{"type": "function_call_output", "call_id": "c1", "output": "42"}]):
        assert not parse_request("openai_responses", json.dumps(call(input=items)).encode()).unsized_input, items


def test_a_compaction_pass_reserves_a_second_sampling_pass() -> None:
    trigger = parse_request("openai_responses", json.dumps(call(input=[{"type": "compaction_trigger"}])).encode())
    managed = parse_request("openai_responses", json.dumps(call(
        context_management=[{"type": "compaction", "compact_threshold": 1000}])).encode())
    compact = parse_request("openai_responses", json.dumps(call()).encode(), "/v1/responses/compact")
    assert (trigger.sampling_passes, managed.sampling_passes, compact.sampling_passes) == (2, 2, 1)
