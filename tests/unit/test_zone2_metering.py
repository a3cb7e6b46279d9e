"""Zone 2's cost tracker end to end on loopback: the gateway, the LLM simulator, a real ledger file.

No Docker: the simulator (``fleetd.llmsim``) and the gateway run in this process on
127.0.0.1; HTTP between them is real. The official SDKs are exercised inside agent
containers by tests/integration/test_zone2_costs.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from fleetd.wal import WAL_BACKSTOP_PAGES
from fleetd.zone2.budget import Caps
from fleetd.zone2.costs import CostTracker
from fleetd.zone2.ledger import Call, Ledger
from fleetd.zone2.llm import Usage
from fleetd.zone2.pricing import PriceTable
from fleetd.zone2.proxy import MAX_BUFFERED
from fleetd.zone2.registry import Upstream
from tests.unit.metering_rig import AUTH, CHAT, SECRET, USD, Rig, run, settled, sse_events


def test_plain_calls_of_each_api_are_billed_by_their_usage(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        r.sim.config.cached_tokens = 2
        r.sim.config.reasoning_tokens = 3
        status, _, body = await r.post(CHAT, {"model": "gpt-4o", "max_tokens": 10,
                                              "messages": [{"role": "user", "content": "one two three four five"}]})
        assert status == 200 and json.loads(body)["usage"]["prompt_tokens"] == 5
        status, _, _ = await r.post("/v1/responses", {"model": "gpt-4o", "input": "one two three",
                                                      "max_output_tokens": 7})
        assert status == 200
        r.sim.config.cache_write_tokens = 4
        status, _, _ = await r.post("/v1/messages", {"model": "claude-sonnet-4", "max_tokens": 9,
                                                     "messages": [{"role": "user", "content": "a b"}]})
        assert status == 200
        rows = r.ledger()
        assert [(c["api"], c["model"]) for c in rows] == [
            ("openai_chat", "gpt-4o"), ("openai_responses", "gpt-4o"), ("anthropic_messages", "claude-sonnet-4")]
        chat, responses, messages = rows
        # gpt-4o: $2.50 input, $1.25 cached, $10 output per 1M tokens
        assert (chat["input_tokens"], chat["cached_input_tokens"], chat["output_tokens"],
                chat["reasoning_tokens"]) == (3, 2, 10, 3)
        assert chat["cost_nusd"] == 3 * 2500 + 2 * 1250 + 10 * 10000
        assert responses["cost_nusd"] == 1 * 2500 + 2 * 1250 + 7 * 10000
        # claude-sonnet-4: $3 input, $0.30 cache read, $3.75 cache write, $15 output
        assert (messages["input_tokens"], messages["cached_input_tokens"], messages["cache_write_tokens"],
                messages["output_tokens"]) == (2, 2, 4, 9)
        assert messages["cost_nusd"] == 2 * 3000 + 2 * 300 + 4 * 3750 + 9 * 15000
        assert all(c["status"] == 200 and c["estimated"] == 0 for c in rows)
        assert all(c["cost_nusd"] <= c["reserved_nusd"] for c in rows)
        status_now = r.costs.status("agent1")
        assert status_now.spent_today_nusd == sum(c["cost_nusd"] for c in rows)
        assert status_now.reserved_nusd == 0 and status_now.llm_calls == 3

    run(tmp_path, check)


def test_streams_are_metered_and_the_injected_usage_chunk_is_hidden(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        messages = [{"role": "user", "content": "count to four"}]
        status, _, body = await r.post(CHAT, {"model": "gpt-4o", "messages": messages, "max_tokens": 6,
                                              "stream": True})
        assert status == 200
        events = sse_events(body)
        assert events[-1] == "[DONE]"
        assert not any('"choices": []' in e for e in events)  # the client did not ask for usage: not shown
        assert r.sim.requests[-1]["body"]["stream_options"] == {"include_usage": True}  # but upstream was asked
        status, _, body = await r.post(CHAT, {"model": "gpt-4o", "messages": messages, "max_tokens": 6,
                                              "stream": True, "stream_options": {"include_usage": True}})
        assert any('"choices": []' in e and '"usage": {' in e for e in sse_events(body))  # asked for: shown
        status, _, body = await r.post("/v1/responses", {"model": "gpt-4o", "input": "hi there", "stream": True,
                                                         "max_output_tokens": 5})
        assert status == 200 and b"response.completed" in body
        status, _, body = await r.post("/v1/messages", {"model": "claude-sonnet-4", "max_tokens": 4, "stream": True,
                                                        "messages": messages})
        assert status == 200 and b"message_stop" in body
        await settled(r)
        rows = r.ledger()
        assert [(c["api"], c["input_tokens"], c["output_tokens"], c["estimated"]) for c in rows] == [
            ("openai_chat", 3, 6, 0), ("openai_chat", 3, 6, 0), ("openai_responses", 2, 5, 0),
            ("anthropic_messages", 3, 4, 0)]
        assert rows[-1]["cost_nusd"] == 3 * 3000 + 4 * 15000

    run(tmp_path, check)


def test_priority_calls_are_billed_at_twice_the_standard_prices_as_the_answer_says(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        words = [{"role": "user", "content": "one two three four five"}]
        chat = {"model": "gpt-4o", "max_tokens": 10, "messages": words}
        assert (await r.post(CHAT, {**chat, "service_tier": "priority"}))[0] == 200
        status, _, body = await r.post(CHAT, {**chat, "service_tier": "priority", "stream": True})
        assert status == 200 and sse_events(body)[-1] == "[DONE]"
        assert (await r.post("/v1/responses", {"model": "gpt-4o", "input": "one two three four five",
                                               "max_output_tokens": 10, "service_tier": "priority"}))[0] == 200
        r.sim.config.service_tier = "default"  # priority asked for, not granted: the answer says so
        assert (await r.post(CHAT, {**chat, "service_tier": "priority"}))[0] == 200
        r.sim.config.service_tier = "priority"  # not asked for (a project whose default tier is priority)
        assert (await r.post(CHAT, chat))[0] == 200
        assert (await r.post(CHAT, {**chat, "service_tier": 3}))[0] == 400
        await settled(r)
        rows = r.ledger()
        standard = 5 * 2500 + 10 * 10000  # gpt-4o: $2.50 input, $10 output per 1M tokens
        assert [(c["service_tier"], c["cost_nusd"]) for c in rows] == [
            ("priority", 2 * standard), ("priority", 2 * standard), ("priority", 2 * standard),
            ("default", standard), ("priority", 2 * standard)]
        assert all(c["cost_nusd"] <= c["reserved_nusd"] for c in rows[:4])  # asked for: within the bound

    run(tmp_path, check)


def test_a_call_the_answer_says_ran_on_a_dearer_model_is_billed_at_the_dearer_price(tmp_path: Path) -> None:
    """An Azure deployment, an alias or a router chooses the model itself: a cheap name in the request must not buy
    a dear model's tokens. Billed at the dearer of the two prices; a mismatch is an event."""
    async def check(r: Rig) -> None:
        words = [{"role": "user", "content": "one two three four five"}]
        mini = {"model": "gpt-4o-mini", "max_tokens": 10, "messages": words}
        r.sim.config.served_model = "gpt-4o-2024-08-06"  # a snapshot of gpt-4o: looked up as gpt-4o
        assert (await r.post(CHAT, mini))[0] == 200
        status, _, body = await r.post(CHAT, {**mini, "stream": True})
        assert status == 200 and sse_events(body)[-1] == "[DONE]"
        assert (await r.post("/v1/responses", {"model": "gpt-4o-mini", "input": "one two three four five",
                                               "max_output_tokens": 10}))[0] == 200
        r.sim.config.served_model = "claude-opus-4"
        status, _, _ = await r.post("/v1/messages", {"model": "claude-3-5-haiku", "max_tokens": 10, "stream": True,
                                                     "messages": words})
        assert status == 200
        r.sim.config.served_model = "gpt-4o-mini"  # cheaper than asked: the price asked for stands
        assert (await r.post(CHAT, {**mini, "model": "gpt-4o"}))[0] == 200
        r.sim.config.served_model = "someone-elses-model"  # not priced: nothing to compare with
        assert (await r.post(CHAT, mini))[0] == 200
        await settled(r)
        rows = r.ledger()
        dear = 5 * 2500 + 10 * 10000  # gpt-4o: $2.50 input, $10 output per 1M tokens
        cheap = 5 * 150 + 10 * 600  # gpt-4o-mini: $0.15, $0.60
        opus = 5 * 15000 + 10 * 75000  # claude-opus-4: $15, $75
        assert [c["cost_nusd"] for c in rows] == [dear, dear, dear, opus, dear, cheap]
        # the first was reserved at the price asked for; once an answer named gpt-4o, that name is reserved as gpt-4o
        # (gpt-4o's prices are ~16 times gpt-4o-mini's)
        assert rows[1]["reserved_nusd"] > 10 * rows[0]["reserved_nusd"]
        assert all(c["cost_nusd"] <= c["reserved_nusd"] for c in rows[1:3])
        mismatches = [e for e in r.events if e[0] == "model_mismatch"]
        assert len(mismatches) == 1  # at most one a minute per agent
        assert mismatches[0][3]["asked"] == "gpt-4o-mini" and mismatches[0][3]["served"] == "gpt-4o-2024-08-06"

    run(tmp_path, check)


def test_a_priority_request_reserves_twice_the_bound(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        r.register(Caps(daily_nusd=USD // 100))  # $0.01: one call's bound ($0.0064) fits, doubled it does not
        body = {"model": "test-model", "max_tokens": 64, "messages": [{"role": "user", "content": "x"}]}
        status, _, raw = await r.post(CHAT, {**body, "service_tier": "priority"})
        assert status == 429 and json.loads(raw)["error"]["type"] == "budget_exceeded"
        assert (await r.post(CHAT, {**body, "service_tier": "flex"}))[0] == 200
        assert r.upstream_calls() == 1

    run(tmp_path, check)


def test_one_hour_cache_writes_are_billed_at_twice_the_input_price(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        r.sim.config.cache_write_tokens, r.sim.config.cache_write_1h_tokens = 400, 300
        system = [{"type": "text", "text": "a b c", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
        body = {"model": "claude-sonnet-4", "max_tokens": 9, "system": system,
                "messages": [{"role": "user", "content": "a b"}]}
        assert (await r.post("/v1/messages", body))[0] == 200
        assert (await r.post("/v1/messages", {**body, "stream": True}))[0] == 200
        await settled(r)
        rows = r.ledger()
        # claude-sonnet-4: $3 input, $3.75 5-minute cache write, $6 1-hour cache write, $15 output per 1M tokens
        assert [(c["cache_write_tokens"], c["cache_write_1h_tokens"], c["service_tier"]) for c in rows] == [
            (400, 300, "standard")] * 2
        assert [c["cost_nusd"] for c in rows] == [5 * 3000 + 100 * 3750 + 300 * 6000 + 9 * 15000] * 2
        assert all(c["cost_nusd"] <= c["reserved_nusd"] for c in rows)

    run(tmp_path, check)


def test_anthropic_fast_mode_and_us_only_inference_are_billed_at_their_multiples(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        message = {"model": "claude-opus-5", "max_tokens": 9, "messages": [{"role": "user", "content": "a b c"}]}
        assert (await r.post("/v1/messages", {**message, "speed": "fast"}))[0] == 200
        assert (await r.post("/v1/messages", {**message, "speed": "fast", "stream": True}))[0] == 200
        r.sim.config.inference_geo = "us"  # the workspace's default_inference_geo: US-only unasked
        assert (await r.post("/v1/messages", message))[0] == 200
        assert (await r.post("/v1/messages", {**message, "speed": "fast", "stream": True}))[0] == 200
        assert (await r.post("/v1/messages", {**message, "inference_geo": "global"}))[0] == 200
        await settled(r)
        rows = r.ledger()
        standard = 3 * 5000 + 9 * 25000  # claude-opus-5: $5 input, $25 output per 1M tokens
        assert [(c["speed"], c["inference_geo"], c["cost_nusd"]) for c in rows] == [
            ("fast", "global", 2 * standard), ("fast", "global", 2 * standard), ("standard", "us", standard * 11 // 10),
            ("fast", "us", 2 * standard * 11 // 10), ("standard", "global", standard)]
        assert all(c["cost_nusd"] <= c["reserved_nusd"] for c in rows), rows  # US-only is reserved unless global
        assert not [e for e in r.events if e[0] == "reservation_exceeded"]

    run(tmp_path, check)


def test_anthropic_compaction_steps_are_billed_beside_the_reply(tmp_path: Path) -> None:
    """Threshold compaction: the summary is a sampling step that the top-level usage leaves out and
    usage.iterations reports; both are billed, and the reservation covers both."""
    async def check(r: Rig) -> None:
        r.sim.config.summary_tokens = 30
        edit = {"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": 100}}
        message = {"model": "claude-sonnet-4", "max_tokens": 40, "context_management": {"edits": [edit]},
                   "messages": [{"role": "user", "content": " ".join(["w"] * 500)}]}
        status, _, raw = await r.post("/v1/messages", message)
        assert status == 200
        usage = json.loads(raw)["usage"]
        assert (usage["input_tokens"], usage["iterations"][0]["input_tokens"]) == (30, 500)  # the reply's alone
        assert (await r.post("/v1/messages", {**message, "stream": True}))[0] == 200
        short = {**message, "messages": [{"role": "user", "content": "a b c"}]}  # below the trigger: no summary
        assert (await r.post("/v1/messages", short))[0] == 200
        await settled(r)
        rows = r.ledger()
        # claude-sonnet-4: $3 input, $15 output per 1M tokens; summary step 500 in / 30 out, reply 30 in / 16 out
        assert [(c["input_tokens"], c["output_tokens"]) for c in rows] == [(530, 46), (530, 46), (3, 16)]
        assert rows[0]["cost_nusd"] == 530 * 3000 + 46 * 15000 and rows[1]["cost_nusd"] == rows[0]["cost_nusd"]
        assert all(c["cost_nusd"] <= c["reserved_nusd"] for c in rows)
        assert not [e for e in r.events if e[0] == "reservation_exceeded"]

    run(tmp_path, check)


def test_fast_mode_of_a_model_without_a_fast_price_is_refused_as_unpriced(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        message = {"model": "claude-opus-4-7", "max_tokens": 9, "speed": "fast",
                   "messages": [{"role": "user", "content": "a b c"}]}
        status, _, raw = await r.post("/v1/messages", message)
        error = json.loads(raw)["error"]
        assert status == 400 and error["type"] == "model_not_priced" and "fast mode" in error["message"]
        assert r.upstream_calls() == 0
        assert (await r.post("/v1/messages", {**message, "speed": "standard"}))[0] == 200
        assert (await r.post("/v1/messages", {**message, "speed": 2}))[0] == 400
        r.register(allow_unpriced=True)  # through, reserved and billed at FAST_MULTIPLIER (6x)
        assert (await r.post("/v1/messages", message))[0] == 200
        fast = r.ledger()[-1]
        assert fast["speed"] == "fast" and fast["cost_nusd"] == 6 * (3 * 5000 + 9 * 25000)
        assert fast["cost_nusd"] <= fast["reserved_nusd"]

    run(tmp_path, check)


def test_a_call_above_the_long_context_threshold_is_billed_at_the_long_context_prices(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        for words in (10, 11):
            body = {"model": "long-model", "max_tokens": 4,
                    "messages": [{"role": "user", "content": " ".join(["w"] * words)}]}
            assert (await r.post(CHAT, body))[0] == 200
        short, long = r.ledger()
        assert (short["input_tokens"], short["output_tokens"], short["cost_nusd"]) == (10, 4, 10 * 1000 + 4 * 2000)
        assert (long["input_tokens"], long["output_tokens"], long["cost_nusd"]) == (11, 4, 11 * 2000 + 4 * 3000)
        assert short["cost_nusd"] <= short["reserved_nusd"] and long["cost_nusd"] <= long["reserved_nusd"]

    run(tmp_path, check)


def test_a_chat_prediction_is_reserved_as_output(tmp_path: Path) -> None:
    """Predicted Outputs: the prediction's tokens that the answer does not use are billed as output tokens."""
    async def check(r: Rig) -> None:
        r.register(Caps(daily_nusd=USD))  # test-model: $100 per 1M output tokens
        chat = {"model": "test-model", "max_tokens": 10, "messages": [{"role": "user", "content": "edit this"}]}
        long = {"type": "content", "content": "x " * 10_000}  # ~20K output tokens at most: $2
        status, _, raw = await r.post(CHAT, {**chat, "prediction": long})
        assert status == 429 and json.loads(raw)["error"]["type"] == "budget_exceeded"
        assert r.upstream_calls() == 0
        assert (await r.post(CHAT, {**chat, "prediction": {"type": "content", "content": "x y"}}))[0] == 200

    run(tmp_path, check)


def test_a_request_that_does_not_fit_gets_429_budget_exceeded_without_retry(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        r.register(Caps(daily_nusd=USD // 100))  # $0.01
        r.sim.config.output_tokens = 64
        body = {"model": "test-model", "max_tokens": 64, "messages": [{"role": "user", "content": "x"}]}
        admitted = 0
        for _ in range(4):
            status, headers, raw = await r.post(CHAT, body)
            if status == 200:
                admitted += 1
                continue
            assert status == 429
            error = json.loads(raw)["error"]
            assert error["type"] == "budget_exceeded" and error["code"] == "budget_exceeded"
            assert headers["x-should-retry"] == "false"
            seconds_to_midnight = 86400 - (int(time.time()) % 86400)
            assert abs(int(headers["Retry-After"]) - seconds_to_midnight) <= 5
        assert admitted == 1  # 64 output tokens at $100/M = $0.0064: one fits in $0.01, two do not
        assert r.upstream_calls() == 1
        assert [e[0] for e in r.events] == ["budget_exceeded"]  # one event per agent per minute, not per refusal

    run(tmp_path, check)


def test_fifty_concurrent_streams_against_a_small_cap_end_within_it_and_close_to_it(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        cap = USD // 100
        r.register(Caps(daily_nusd=cap))
        r.sim.config.chunk_delay_ms = 20
        body = {"model": "test-model", "max_tokens": 8, "stream": True,
                "messages": [{"role": "user", "content": "go"}]}
        results = await asyncio.gather(*(r.post(CHAT, body) for _ in range(50)))
        statuses = [s for s, _, _ in results]
        await settled(r)  # a stream is over for the agent before zone 2 has written its ledger row
        spent = r.costs.status("agent1").spent_today_nusd
        bound = max(c["reserved_nusd"] for c in r.ledger())
        assert spent <= cap
        assert spent >= cap - bound  # reservations were released: another call would not have fit
        assert statuses.count(200) == len(r.ledger()) and set(statuses) == {200, 429}
        assert r.costs.status("agent1").reserved_nusd == 0

    run(tmp_path, check)


# Images cost what the model's provider publishes per image, whatever their size in the body.
IMAGE_PRICE = {"model": "vision-model", "input": 1.0, "output": 1.0, "max_output_tokens": 64,
               "image_tokens": 20_000, "image_tokens_low": 500}


def test_parallel_calls_with_images_never_settle_above_a_small_cap(tmp_path: Path) -> None:
    """An image was reserved at a flat 3,000 tokens: a model billing 20,000 an image (GPT-4o mini bills up to 48,169)
    let parallel calls under a small cap settle far above it."""
    async def check(r: Rig) -> None:
        cap = USD // 20  # $0.05: two calls of ~$0.02
        r.register(Caps(daily_nusd=cap))
        r.sim.config.image_tokens, r.sim.config.image_tokens_low = 20_000, 500
        r.sim.config.latency_ms = 100  # all of them in flight at once
        image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
        body = {"model": "vision-model", "max_tokens": 4,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "what"}, image]}]}
        results = await asyncio.gather(*(r.post(CHAT, body) for _ in range(20)))
        await settled(r)
        spent = r.costs.status("agent1").spent_today_nusd
        rows = r.ledger()
        assert [row["input_tokens"] for row in rows] == [20_001] * len(rows)  # the simulator bills the image
        assert spent <= cap, f"settled ${spent / USD:.4f} above the ${cap / USD:.2f} cap"
        assert 1 <= len(rows) == sum(1 for status, _, _ in results if status == 200)
        assert all(row["cost_nusd"] <= row["reserved_nusd"] for row in rows)
        assert not [e for e in r.events if e[0] == "reservation_exceeded"]
        # a low-detail image is reserved at the model's low-detail figure: many more of them fit
        r.register(Caps(daily_nusd=USD))
        low = {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}}
        status, _, _ = await r.post(CHAT, {**body, "messages": [{"role": "user", "content": [low]}]})
        assert status == 200 and r.ledger()[-1]["reserved_nusd"] < rows[0]["reserved_nusd"] // 10

    run(tmp_path, check, {"prices": [*PriceTable.builtin().to_list(), IMAGE_PRICE]})


def test_gemini_calls_are_metered_plain_and_streamed_and_refused_over_cap(tmp_path: Path) -> None:
    """Gemini's generateContent passed unmetered (a model in the path, usage in usageMetadata)."""
    async def check(r: Rig) -> None:
        r.sim.config.reasoning_tokens = 3  # thoughts: billed as output, apart from the candidates' count
        key = {"x-goog-api-key": "$CRED{sim}"}
        body = {"contents": [{"role": "user", "parts": [{"text": "one two three"}]}],
                "generationConfig": {"maxOutputTokens": 5, "thinkingConfig": {"thinkingBudget": 8}}}
        base = "/v1beta/models/gemini-2.5-flash"
        async with r.client.post(r.gw + base + ":generateContent", json=body, headers=key) as resp:
            assert resp.status == 200 and (await resp.json())["usageMetadata"]["thoughtsTokenCount"] == 3
        async with r.client.post(r.gw + base + ":streamGenerateContent?alt=sse&key=$CRED{sim}", json=body) as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            assert (await resp.read()).count(b"data: ") == 5
        async with r.client.post(r.gw + base + ":streamGenerateContent", json=body, headers=key) as resp:
            assert resp.status == 200 and len(json.loads(await resp.read())) == 5  # one JSON array
        rows = r.ledger()
        assert [(row["api"], row["model"], row["input_tokens"], row["output_tokens"], row["reasoning_tokens"])
                for row in rows] == [("gemini_generate", "gemini-2.5-flash", 3, 8, 3)] * 3
        # gemini-2.5-flash: $0.30 input, $2.50 output (thinking included) per 1M tokens
        assert [row["cost_nusd"] for row in rows] == [3 * 300 + 8 * 2500] * 3
        assert all(row["reserved_nusd"] >= row["cost_nusd"] for row in rows)
        assert r.sim.requests[-1]["headers"]["x-goog-api-key"] == SECRET
        # refused before the upstream when over the cap, and for a model with no price
        calls = r.upstream_calls()
        r.register(Caps(daily_nusd=rows[0]["reserved_nusd"] - 1))
        async with r.client.post(r.gw + base + ":generateContent", json=body, headers=key) as resp:
            assert resp.status == 429 and (await resp.json())["error"]["type"] == "budget_exceeded"
        r.register()
        async with r.client.post(r.gw + "/v1beta/models/gemini-9-ultra:generateContent", json=body,
                                 headers=key) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["type"] == "model_not_priced"
        assert r.upstream_calls() == calls

    run(tmp_path, check)


def test_a_call_the_upstream_never_answers_in_time_is_charged_its_bound(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A call the upstream ran longer than the read timeout was charged $0 (a 504 with no status): the provider
    bills a long generation it finishes after zone 2 stopped waiting. Only a call that never went out is free."""
    from fleetd.zone2 import proxy

    monkeypatch.setattr(proxy, "IDLE_TIMEOUT", 0.3)

    async def check(r: Rig) -> None:
        r.sim.config.latency_ms = 800
        body = {"model": "test-model", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
        status, _, raw = await r.post(CHAT, body)
        assert status == 504 and json.loads(raw)["error"]["type"] == "upstream_timeout"
        [row] = r.ledger()
        assert row["status"] is None and row["estimated"] and row["cost_nusd"] == row["reserved_nusd"] > 0
        # an upstream that cannot be reached was never sent the call: free (a port this test held, then let go)
        import socket

        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            port = held.getsockname()[1]
        r.registry.set_creds([Upstream("sim", f"http://127.0.0.1:{port}", SECRET)])
        status, _, _ = await r.post(CHAT, body)
        assert status == 502 and r.ledger()[-1]["cost_nusd"] == 0

    run(tmp_path, check)


def test_max_llm_calls_is_enforced_and_unpriced_models_are_refused(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        body = {"model": "gpt-4o-mini", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}
        r.register(Caps(max_llm_calls=2))
        assert [(await r.post(CHAT, body))[0] for _ in range(3)] == [200, 200, 429]
        status, headers, raw = await r.post(CHAT, body)
        assert json.loads(raw)["error"]["type"] == "max_llm_calls_exceeded" and headers["x-should-retry"] == "false"
        r.register()
        status, _, raw = await r.post(CHAT, {**body, "model": "my-private-model"})
        assert status == 400 and json.loads(raw)["error"]["type"] == "model_not_priced"
        calls_before = r.upstream_calls()
        r.register(allow_unpriced=True)
        status, _, _ = await r.post(CHAT, {**body, "model": "my-private-model"})
        assert status == 200 and r.upstream_calls() == calls_before + 1
        assert r.ledger()[-1]["model"] == "my-private-model" and r.ledger()[-1]["cost_nusd"] == 0

    run(tmp_path, check)


def test_a_percent_encoded_path_is_metered_as_the_endpoint_the_upstream_reads(tmp_path: Path) -> None:
    """The bypass: ``/v1/chat/%63ompletions`` went through unmetered (no cap, no call count) while the upstream
    served it as ``/v1/chat/completions``. Now the path is normalised once, classified, and sent as classified."""
    async def check(r: Rig) -> None:
        body = {"model": "gpt-4o-mini", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}
        r.register(Caps(max_llm_calls=0))
        for raw in ("/v1/chat/%63ompletions", "/v1/chat%2Fcompletions", "/v1/%6Dessages", "/v1/%72esponses",
                    "/v1/%65mbeddings"):
            async with r.client.post(URL(r.gw + raw, encoded=True), json=body, headers=AUTH) as resp:
                assert resp.status == 429, raw
                assert (await resp.json())["error"]["type"] == "max_llm_calls_exceeded"
        async with r.client.post(URL(r.gw + "/v1/images/%67enerations", encoded=True), json=body,
                                 headers=AUTH) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["type"] == "endpoint_not_metered"
        assert r.upstream_calls() == 0
        r.register()
        async with r.client.post(URL(r.gw + "/v1/chat/%63ompletions", encoded=True), json=body,
                                 headers=AUTH) as resp:
            assert resp.status == 200
        assert r.sim.requests[-1]["path"] == "/v1/chat/completions"  # sent as it was classified
        assert [(c["api"], c["model"], c["output_tokens"]) for c in r.ledger()] == [("openai_chat", "gpt-4o-mini", 4)]

    run(tmp_path, check)


def test_an_llm_provider_credential_is_default_deny(tmp_path: Path) -> None:
    """Unknown endpoints of an LLM provider (a new OpenAI path, Azure's, Gemini's, Bedrock's) passed unmetered."""
    async def check(r: Rig) -> None:
        sim_url = r.registry.creds["sim"].upstream
        body = {"model": "gpt-4o-mini", "input": "x"}
        unknown = ("/v1/responses/resp_1/fork", "/v1/fancy/new", "/v1beta/models/gemini-9:predict",
                   "/model/anthropic.claude-v2%3A1/invoke", "/model/x/converse")
        for kind in ("openai", "azure-openai", "gemini", "bedrock", "anthropic"):
            r.registry.set_creds([Upstream("sim", sim_url, SECRET, kind)])
            for path in unknown:
                for method in ("POST", "PUT", "PATCH"):
                    async with r.client.request(method, URL(r.gw + path, encoded=True), json=body,
                                                headers=AUTH) as resp:
                        assert resp.status == 400, (kind, method, path)
                        assert (await resp.json())["error"]["type"] == "endpoint_not_metered"
        assert r.upstream_calls() == 0
        # reads, deletions and free calls go through; so does all of it for a role that allows unpriced calls
        for method, path in (("GET", "/v1/models"), ("DELETE", "/v1/responses/resp_1"),
                             ("POST", "/v1/messages/count_tokens"), ("POST", "/v1/responses/input_tokens")):
            async with r.client.request(method, r.gw + path, json=body, headers=AUTH) as resp:
                assert resp.status != 400 or (await resp.json())["error"]["type"] != "endpoint_not_metered", path
        r.register(allow_unpriced=True)
        async with r.client.post(r.gw + "/v1/fancy/new", json=body, headers=AUTH) as resp:
            assert resp.status == 404  # the simulator's answer: the call reached the upstream
        # a generic credential is a plain relay
        r.register()
        r.registry.set_creds([Upstream("sim", sim_url, SECRET)])
        async with r.client.post(r.gw + "/v1/fancy/new", json=body, headers=AUTH) as resp:
            assert resp.status == 404

    run(tmp_path, check)


def test_bad_llm_bodies_get_400_and_never_reach_the_upstream(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        for bad in ({"messages": []}, {"model": 5}, {"model": "gpt-4o", "max_tokens": -1}):
            status, _, raw = await r.post(CHAT, bad)
            assert status == 400, bad
            assert json.loads(raw)["error"]["message"]
        async with r.client.post(r.gw + CHAT, data=b"{not json", headers=AUTH) as resp:
            assert resp.status == 400
        twice = b'{"model": "gpt-4o-mini", "max_tokens": 1, "max_tokens": 100000, "messages": []}'
        async with r.client.post(r.gw + CHAT, data=twice, headers=AUTH) as resp:
            assert resp.status == 400 and "'max_tokens' twice" in (await resp.json())["error"]["message"]
        assert r.upstream_calls() == 0
        assert r.ledger() == []

    run(tmp_path, check)


def test_a_client_gone_mid_stream_is_still_billed_and_a_broken_stream_at_the_bound(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        r.sim.config.chunk_delay_ms = 30
        body = {"model": "gpt-4o", "max_tokens": 20, "stream": True, "messages": [{"role": "user", "content": "x"}]}
        async with r.client.post(r.gw + CHAT, json=body, headers=AUTH) as resp:
            await resp.content.readany()  # the first token, then hang up
        for _ in range(100):
            if r.ledger():
                break
            await asyncio.sleep(0.05)
        row = r.ledger()[0]
        assert (row["output_tokens"], row["estimated"]) == (16, 0)  # zone 2 read on until usage came
        r.sim.config.break_streams = 1
        with pytest.raises(aiohttp.ClientPayloadError):  # the agent sees the break, not a clean end
            await r.post(CHAT, body)
        for _ in range(100):  # the agent's connection was cut before zone 2 settled the call
            if len(r.ledger()) == 2:
                break
            await asyncio.sleep(0.05)
        broken = r.ledger()[1]
        assert broken["estimated"] == 1 and broken["cost_nusd"] == broken["reserved_nusd"] > 0

    run(tmp_path, check)


def test_spend_survives_a_restart_of_the_tracker(tmp_path: Path) -> None:
    async def first(r: Rig) -> None:
        r.register(Caps(daily_nusd=USD // 100))
        r.sim.config.output_tokens = 64
        body = {"model": "test-model", "max_tokens": 64, "messages": [{"role": "user", "content": "x"}]}
        assert (await r.post(CHAT, body))[0] == 200

    async def second(r: Rig) -> None:  # a new tracker on the same ledger file, as after zone 2 restarts
        r.register(Caps(daily_nusd=USD // 100))
        assert r.costs.status("agent1").llm_calls == 1
        assert r.costs.status("agent1").spent_today_nusd == 64 * 100_000 + 1 * 1  # $100/M out, $0.001/M in
        body = {"model": "test-model", "max_tokens": 64, "messages": [{"role": "user", "content": "x"}]}
        assert (await r.post(CHAT, body))[0] == 429

    run(tmp_path, first)
    run(tmp_path, second)


def test_a_ledger_that_cannot_be_written_refuses_new_calls_until_it_can_and_loses_no_row(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        now = [1000.0]
        r.costs.monotonic = lambda: now[0]
        body = {"model": "test-model", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
        r.costs.ledger.conn.execute("PRAGMA query_only=1")  # SQLite refuses every write, as on a full disk
        status, _, raw = await r.post(CHAT, body)
        assert status == 200 and json.loads(raw)["usage"]  # made and paid for upstream: answered, not a 500
        assert r.costs.status("agent1").llm_calls == 1  # and charged in memory
        assert len(r.costs.ledger.unwritten) == 1 and "readonly" in (r.costs.ledger.error or "")
        assert [e[0] for e in r.events] == ["ledger_write_failed"]

        for _ in range(2):  # no new call while its row could not be kept, and no event per refusal
            status, headers, raw = await r.post(CHAT, body)
            assert status == 503 and json.loads(raw)["error"]["type"] == "ledger_unavailable"
            assert headers["Retry-After"] == "1"
        assert r.upstream_calls() == 1
        assert (await r.post("/v1/models", {}))[0] != 503  # unmetered calls are not held up

        r.costs.ledger.conn.execute("PRAGMA query_only=0")
        assert (await r.post(CHAT, body))[0] == 503  # retried at most once a second
        now[0] += 1.0
        status, _, _ = await r.post(CHAT, body)
        assert status == 200 and r.upstream_calls() == 2
        rows = r.ledger()
        assert [row["status"] for row in rows] == [200, 200] and rows[0]["at"] <= rows[1]["at"]
        assert r.costs.ledger.unwritten == [] and r.costs.ledger.error is None
        assert [e[0] for e in r.events] == ["ledger_write_failed", "ledger_recovered"]

    run(tmp_path, check)


BREAKER = {"breaker": {"threshold": 3, "window": 30, "open_seconds": 1, "max_open_seconds": 8}}


def test_a_429_only_upstream_sees_threshold_plus_one_probe_per_open_window(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        r.sim.config.rate_limit = 10**6
        r.sim.config.retry_after = 0
        body = {"model": "gpt-4o", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}
        statuses = [(await r.post(CHAT, body))[0] for _ in range(10)]
        assert statuses == [429, 429, 429] + [503] * 7
        assert r.upstream_calls() == 3
        _, headers, raw = await r.post(CHAT, body)
        assert json.loads(raw)["error"]["type"] == "circuit_open" and int(headers["Retry-After"]) >= 1
        assert headers["x-should-retry"] == "false"  # the official SDKs fail fast instead of sleeping on it
        r.clock.advance(1.1)  # open for 1 s: one probe, which fails: open for 2 s
        assert [(await r.post(CHAT, body))[0] for _ in range(5)] == [429, 503, 503, 503, 503]
        assert r.upstream_calls() == 4
        r.clock.advance(1.1)
        assert (await r.post(CHAT, body))[0] == 503  # still open: the backoff doubled
        r.clock.advance(1.0)
        r.sim.config.rate_limit = 0  # the upstream recovers: the probe closes the circuit
        assert (await r.post(CHAT, body))[0] == 200
        assert [(await r.post(CHAT, body))[0] for _ in range(3)] == [200, 200, 200]
        kinds = [e[0] for e in r.events]
        assert kinds == ["circuit_open", "circuit_half_open", "circuit_open", "circuit_half_open", "circuit_closed"]
        assert r.events[0][3]["open_seconds"] == 1 and r.events[2][3]["open_seconds"] == 2
        assert all(c["cost_nusd"] == 0 for c in r.ledger() if c["status"] == 429)  # 429s cost nothing

    run(tmp_path, check, BREAKER)


def test_half_open_admits_exactly_one_request_under_concurrency(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        r.sim.config.rate_limit = 3
        body = {"model": "gpt-4o", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}
        for _ in range(3):
            await r.post(CHAT, body)
        r.clock.advance(1.1)  # the open window (1 s) passes
        r.sim.config.latency_ms = 300  # the probe takes a while: everyone else arrives meanwhile
        before = r.upstream_calls()
        statuses = [s for s, _, _ in await asyncio.gather(*(r.post(CHAT, body) for _ in range(20)))]
        assert sorted(statuses) == [200] + [503] * 19
        assert r.upstream_calls() == before + 1

    run(tmp_path, check, BREAKER)


def test_retries_only_429_and_5xx_honour_retry_after_and_count_for_the_breaker(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        body = {"model": "gpt-4o", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}
        r.sim.config.fail, r.sim.config.fail_status = 1, 400
        status, _, _ = await r.post(CHAT, body)
        assert status == 400 and r.upstream_calls() == 1  # a 4xx other than 429 is never retried
        r.sim.config.fail, r.sim.config.fail_status = 2, 503
        status, _, _ = await r.post(CHAT, body)
        assert status == 200 and r.upstream_calls() == 4  # two 503s retried, then success
        assert r.ledger()[-1]["attempts"] == 3
        r.sim.config.rate_limit, r.sim.config.retry_after = 1, 1
        started = time.monotonic()
        status, _, _ = await r.post(CHAT, body)
        assert status == 200 and time.monotonic() - started >= 1.0  # waited the upstream's Retry-After
        r.sim.config.rate_limit, r.sim.config.retry_after = 1, 60
        started = time.monotonic()
        status, headers, _ = await r.post(CHAT, body)
        assert status == 429 and headers["Retry-After"] == "60"  # longer than the cap: handed to the agent
        assert time.monotonic() - started < 5
        r.sim.config.rate_limit, r.sim.config.retry_after = 10, 0
        calls = r.upstream_calls()
        status, _, _ = await r.post(CHAT, body)
        # The 429 handed back above began a streak: two more attempts make three and open the circuit.
        assert status == 503 and r.upstream_calls() == calls + 2

    run(tmp_path, check, {**BREAKER, "retry": {"max_retries": 3, "base": 0.01, "cap": 8}})


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/images/generations", "/v1/audio/transcriptions",
                                  "/v1/batches", "/v1/fine_tuning/jobs", "/v1/threads/thread_1/runs",
                                  "/v1/messages/batches", "/v1/complete", "/openai/deployments/x/completions"])
def test_billable_calls_zone2_cannot_meter_are_refused_unless_the_role_allows_unpriced(tmp_path: Path,
                                                                                      path: str) -> None:
    async def check(r: Rig) -> None:
        body = {"model": "text-embedding-3-small", "input": "x"}
        status, _, raw = await r.post(path, body)
        assert status == 400 and json.loads(raw)["error"]["type"] == "endpoint_not_metered"  # zone 2's own answer
        r.register(allow_unpriced=True)
        status, _, _ = await r.post(path, body)
        assert status == 404  # passed on: the simulator's router has no such route
        assert r.ledger() == []

    run(tmp_path, check)


@pytest.mark.parametrize("path", ["/v1/embeddings", "/openai/deployments/emb/embeddings?api-version=2024-10-21"])
def test_embeddings_are_billed_by_their_prompt_tokens_at_the_input_price(tmp_path: Path, path: str) -> None:
    async def check(r: Rig) -> None:
        texts = ["one two three", "four five"]
        for body in ({"model": "text-embedding-3-small", "input": texts},
                     {"model": "text-embedding-3-large", "input": "a b c d", "encoding_format": "base64"},
                     {"model": "text-embedding-3-small", "input": [[1, 2, 3, 4, 5, 6, 7]]}):
            status, _, raw = await r.post(path, body)
            assert status == 200 and json.loads(raw)["usage"]["prompt_tokens"] > 0
        rows = r.ledger()
        assert [(c["api"], c["model"], c["input_tokens"], c["output_tokens"]) for c in rows] == [
            ("openai_embeddings", "text-embedding-3-small", 5, 0),
            ("openai_embeddings", "text-embedding-3-large", 4, 0),
            ("openai_embeddings", "text-embedding-3-small", 7, 0),
        ]
        # $0.02 and $0.13 per 1M tokens = 20 and 130 nano-dollars per token
        assert [c["cost_nusd"] for c in rows] == [5 * 20, 4 * 130, 7 * 20]
        assert all(0 < c["cost_nusd"] <= c["reserved_nusd"] for c in rows)
        assert not any(c["estimated"] for c in rows)
        status, _, raw = await r.post(path, {"model": "my-embedder", "input": "x"})
        assert status == 400 and json.loads(raw)["error"]["type"] == "model_not_priced"  # as any LLM call
        status, _, raw = await r.post(path, {"input": "x"})
        assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"
        assert len(r.ledger()) == 3

    run(tmp_path, check)


def test_an_answer_too_large_to_parse_whole_is_billed_by_the_usage_at_its_end(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        # 420 vectors of 4096 float32 in base64: ~9.2 MB, beyond what zone 2 parses whole (8 MiB)
        body = {"model": "text-embedding-3-small", "input": ["w"] * 420, "dimensions": 4096,
                "encoding_format": "base64"}
        status, _, raw = await r.post("/v1/embeddings", body)
        assert status == 200 and len(raw) > MAX_BUFFERED and json.loads(raw)["usage"]["prompt_tokens"] == 420
        (row,) = r.ledger()
        assert (row["input_tokens"], row["cost_nusd"], row["estimated"]) == (420, 420 * 20, 0)

    run(tmp_path, check)


def test_embeddings_count_against_the_caps(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        # A cap that one small call fits (its bound: body bytes + 1024 tokens at $0.13/1M, ~150k nano-dollars)
        # but not the reservation of a call with a 200 KB input (~26M nano-dollars).
        r.register(Caps(daily_nusd=400_000))
        body = {"model": "text-embedding-3-large", "input": "word " * 20}
        assert (await r.post("/v1/embeddings", body))[0] == 200
        status, _, raw = await r.post("/v1/embeddings", {"model": "text-embedding-3-large", "input": "x" * (200 << 10)})
        assert status == 429 and json.loads(raw)["error"]["type"] == "budget_exceeded"
        assert len(r.sim.requests) == 1

    run(tmp_path, check)


SERVER_TOOL_CALLS = [
    ("/v1/responses", {"model": "gpt-4o", "input": "news?", "tools": [{"type": "web_search"}]}, "web_search"),
    ("/v1/responses", {"model": "gpt-4o", "input": "q", "tools": [{"type": "file_search", "vector_store_ids": ["v"]}]},
     "file_search"),
    ("/v1/responses", {"model": "gpt-4o", "input": "q", "tools": [
        {"type": "function", "name": "f", "parameters": {"type": "object"}},
        {"type": "mcp", "server_label": "x", "server_url": "https://mcp.test"}]}, "mcp"),
    ("/v1/messages", {"model": "claude-sonnet-4", "max_tokens": 5, "messages": [{"role": "user", "content": "q"}],
                      "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]},
     "web_search_20250305"),
    ("/v1/messages", {"model": "claude-sonnet-4", "max_tokens": 5, "messages": [{"role": "user", "content": "q"}],
                      "mcp_servers": [{"type": "url", "url": "https://mcp.test", "name": "x"}]}, "mcp_servers"),
    (CHAT, {"model": "gpt-4o", "messages": [{"role": "user", "content": "q"}], "web_search_options": {}},
     "web_search_options"),
]


@pytest.mark.parametrize(("path", "body", "tool"), SERVER_TOOL_CALLS)
def test_calls_offering_server_side_tools_are_refused_unless_the_role_allows_unpriced(
        tmp_path: Path, path: str, body: dict[str, Any], tool: str) -> None:
    """Each use of a web search, file search, code execution or MCP tool is billed beyond the tokens, and what it
    returns is read again over internal turns: no reservation bounds such a call."""
    async def check(r: Rig) -> None:
        status, _, raw = await r.post(path, body)
        error = json.loads(raw)["error"]
        assert status == 400 and error["type"] == "tool_not_metered" and tool in error["message"]
        assert r.upstream_calls() == 0 and r.ledger() == []
        r.register(allow_unpriced=True)
        assert (await r.post(path, body))[0] == 200
        await settled(r)
        assert [row["model"] for row in r.ledger()] == [body["model"]]  # its tokens are still metered

    run(tmp_path, check)


@pytest.mark.parametrize("fallbacks", ["default", [{"model": "claude-opus-4-8"}]])
def test_calls_with_server_side_model_fallbacks_are_refused_unless_the_role_allows_unpriced(
        tmp_path: Path, fallbacks: Any) -> None:
    async def check(r: Rig) -> None:
        message = {"model": "claude-fable-5", "max_tokens": 5, "messages": [{"role": "user", "content": "q"}],
                   "fallbacks": fallbacks}
        status, _, raw = await r.post("/v1/messages", message)
        assert status == 400 and json.loads(raw)["error"]["type"] == "fallbacks_not_metered"
        assert r.upstream_calls() == 0
        r.register(allow_unpriced=True)
        assert (await r.post("/v1/messages", message))[0] == 200
        assert (await r.post("/v1/messages", {**message, "fallbacks": None}))[0] == 200

    run(tmp_path, check)


def test_client_side_tools_are_metered_as_usual(tmp_path: Path) -> None:
    async def check(r: Rig) -> None:
        function = {"type": "function", "name": "f", "parameters": {"type": "object"}}
        assert (await r.post("/v1/responses", {"model": "gpt-4o", "input": "q", "tools": [function]}))[0] == 200
        bash = {"type": "bash_20250124", "name": "bash"}
        assert (await r.post("/v1/messages", {"model": "claude-sonnet-4", "max_tokens": 5, "tools": [bash],
                                              "messages": [{"role": "user", "content": "q"}]}))[0] == 200
        assert len(r.ledger()) == 2

    run(tmp_path, check)


@pytest.mark.parametrize("path", ["/v1/messages/count_tokens", "/v1/moderations", "/v1/files", "/v1/tools/search"])
def test_free_or_tool_posts_pass_unmetered(tmp_path: Path, path: str) -> None:
    async def check(r: Rig) -> None:
        assert (await r.post(path, {"model": "claude-sonnet-4", "input": "x"}))[0] == 404  # reached the simulator
        assert r.ledger() == []

    run(tmp_path, check)


@pytest.mark.parametrize("path", ["/v1/models", "/v1/tools/search"])
def test_other_calls_pass_unmetered(tmp_path: Path, path: str) -> None:
    async def check(r: Rig) -> None:
        async with r.client.get(r.gw + path, headers=AUTH) as resp:
            assert resp.status in (200, 404)
        assert r.ledger() == []

    run(tmp_path, check)


def test_ledger_history_is_loaded_for_the_month_only(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    now = datetime.now(UTC)
    assert list(ledger.history(now)) == []
    ledger.close()


def test_ledger_rows_commit_on_the_spot_checkpoints_run_in_a_thread_and_the_wal_stays_bounded(
        tmp_path: Path) -> None:
    """Each row is committed when record returns (another connection sees it); the checkpoint thread copies
    the WAL into the database file while the writer goes on; the writer's own backstop restarts the WAL."""
    path = tmp_path / "ledger.db"
    wal = Path(f"{path}-wal")
    ledger = Ledger(path)
    try:
        assert ledger.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_BACKSTOP_PAGES
        row = Call("req", datetime.now(UTC), "agent1", "worker", "sim", "openai_chat", "sim-model", 200,
                   Usage(input_tokens=10, output_tokens=5), 123, 456, False, 1)
        size_before = path.stat().st_size
        for n in range(1, 201):
            ledger.record(row)
            if n in (1, 200):
                with contextlib.closing(sqlite3.connect(str(path))) as other:
                    assert other.execute("SELECT count(*) FROM calls").fetchone()[0] == n
        deadline = time.monotonic() + 10
        while path.stat().st_size <= size_before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.stat().st_size > size_before, "no checkpoint copied the WAL into the database file"
        # Each commit appends ~3 pages (the row, two index entries): without a restart 15000 commits make ~180 MB.
        # The WAL restarts once a checkpoint finds no reader in it; on a loaded machine the checkpoint thread's own
        # read can hold that off past the backstop for a while (up to ~12,500 pages seen), never for good.
        wal_sizes = []
        for n in range(15000):
            ledger.record(row)
            if n % 1000 == 0:
                wal_sizes.append(wal.stat().st_size)
        assert max(wal_sizes) < 2 * WAL_BACKSTOP_PAGES * 4200, wal_sizes
    finally:
        ledger.close()
    assert ledger.checkpointer is not None and not ledger.checkpointer.thread.is_alive()


def test_zone2_keeps_only_the_agents_it_serves_in_memory(tmp_path: Path) -> None:
    """After a restart, an agent's windows are read from the ledger when it first asks, not for every agent of
    the month; an agent gone for good (DELETE /control/agents/ID) leaves memory, its rows stay in the ledger."""
    async def check(r: Rig) -> None:
        for _ in range(2):
            assert (await r.post(CHAT, {"model": "gpt-4o", "max_tokens": 10,
                                        "messages": [{"role": "user", "content": "one two"}]}))[0] == 200
        await settled(r)
        spent = r.costs.status("agent1").spent_today_nusd
        assert spent > 0
        restarted = CostTracker(Ledger(tmp_path / "ledger.db"), lambda *e: None)
        try:
            assert restarted.budgets.agents() == []  # nobody's windows until asked
            assert restarted.budgets.instance_status()["spent_today_nusd"] == spent
            status = restarted.status("agent1")
            assert status.spent_today_nusd == spent and status.llm_calls == 2
            restarted.forget("agent1")
            assert restarted.budgets.agents() == [] and restarted.breakers == {}
        finally:
            restarted.ledger.close()
        r.costs.forget("agent1")
        assert r.costs.budgets.agents() == [] and len(r.ledger()) == 2

    run(tmp_path, check)


def test_zone2_counts_tokens_refusals_upstream_answers_and_trips(tmp_path: Path) -> None:
    """What the daemon's metrics show of zone 2 (fleetd_llm_tokens, fleetd_zone2_refusals,
    fleetd_upstream_responses, fleetd_breaker_trips): counted instance-wide, so bounded."""
    async def check(r: Rig) -> None:
        words = [{"role": "user", "content": "one two three"}]
        assert (await r.post(CHAT, {"model": "gpt-4o", "max_tokens": 10, "messages": words}))[0] == 200
        assert (await r.post(CHAT, {"model": "no-such-model", "max_tokens": 10, "messages": words}))[0] == 400
        r.sim.config.fail, r.sim.config.fail_status = 1, 503
        assert (await r.post(CHAT, {"model": "gpt-4o", "max_tokens": 10, "messages": words}))[0] == 503
        await settled(r)
        counters = r.costs.counts.snapshot()
        assert counters.tokens["input"] == 3 and counters.tokens["output"] == 10
        assert counters.refusals == {"model_not_priced": 1}
        assert counters.upstream_status == {"200": 1, "503": 1}

    run(tmp_path, check)
