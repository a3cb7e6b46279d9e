"""Metering of each provider API zone 2 knows (fleetd.zone2.providers): classify, parse, usage, streams."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fleetd.llmsim import SimConfig, init_sim
from fleetd.zone2 import providers
from fleetd.zone2.llm import BadLLMRequest, Media, Usage
from fleetd.zone2.providers.anthropic import anthropic_usage
from fleetd.zone2.sse import MAX_HELD_BYTES
from tests.unit.provider_calls import (
    StreamMeter,
    classify,
    parse_request,
    usage_from_body,
    usage_from_tail,
    usage_in,
)

API = str


# ---------------------------------------------------------------------------------------------------------------
# classify


@pytest.mark.parametrize(
    ("method", "path", "api"),
    [
        ("POST", "/v1/chat/completions", "openai_chat"),
        ("POST", "/chat/completions", "openai_chat"),
        ("POST", "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21", "openai_chat"),
        ("post", "/api/v1/chat/completions/", "openai_chat"),
        ("POST", "/v1/responses", "openai_responses"),
        ("POST", "/responses", "openai_responses"),
        ("POST", "/openai/v1/responses?x=1", "openai_responses"),
        ("POST", "/openai/responses?api-version=2025-04-01-preview", "openai_responses"),  # Azure's
        ("POST", "/v1/messages", "anthropic_messages"),
        ("POST", "/messages", "anthropic_messages"),
        ("POST", "/anthropic/v1/messages?beta=true", "anthropic_messages"),
        ("POST", "//v1//messages", "anthropic_messages"),
        ("POST", "/V1/Messages", "anthropic_messages"),
        ("GET", "/v1/chat/completions", None),
        ("GET", "/v1/responses", None),
        ("PUT", "/v1/messages", None),
        ("POST", "/v1/messages/count_tokens", None),
        ("POST", "/v1/threads/thread_1/messages", None),
        ("POST", "/v1/responses/resp_1/cancel", None),
        ("POST", "/v1/responses/input_tokens", None),
        ("POST", "/v1/responses/compact", "openai_responses"),  # a compaction pass, billed as a Responses call
        ("POST", "/openai/v1/responses/compact", "openai_responses"),
        ("POST", "/v1/responses/resp_1/compact", None),
        ("POST", "/v1/chat/completions/chatcmpl-1", None),
        ("POST", "/v1/completions", None),
        ("POST", "/v1/embeddings", "openai_embeddings"),
        ("POST", "/openai/deployments/emb/embeddings", "openai_embeddings"),
        ("GET", "/v1/embeddings", None),
        ("POST", "/v1/embeddings/x", None),
        ("POST", "/v1/models", None),
        ("POST", "/", None),
        ("POST", "", None),
        ("POST", "/v1/other?path=/v1/messages", None),
    ],
)
def test_classify(method: str, path: str, api: API | None) -> None:
    assert classify(method, path) == api


# ---------------------------------------------------------------------------------------------------------------
# parse_request


def dumps(value: Any) -> bytes:
    return json.dumps(value, indent=1).encode()


def test_parse_chat_plain() -> None:
    body = dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100, "n": 2})
    request = parse_request("openai_chat", body)
    assert request.api == "openai_chat"
    assert request.model == "gpt-4o"
    assert request.stream is False
    assert request.max_output_tokens == 100
    assert request.choices == 2
    assert request.body is body
    assert request.usage_injected is False
    assert request.input_token_bound == len(body) + 1024


def test_parse_chat_max_completion_tokens() -> None:
    body = dumps({"model": "o3", "messages": [], "max_completion_tokens": 5000})
    assert parse_request("openai_chat", body).max_output_tokens == 5000
    both = dumps({"model": "o3", "messages": [], "max_completion_tokens": 50, "max_tokens": 70})
    assert parse_request("openai_chat", both).max_output_tokens == 70
    none = dumps({"model": "o3", "messages": [], "max_tokens": None})
    assert parse_request("openai_chat", none).max_output_tokens is None
    zero = dumps({"model": "o3", "messages": [], "max_tokens": 0, "n": None})
    request = parse_request("openai_chat", zero)
    assert request.max_output_tokens == 0
    assert request.choices == 1


def test_parse_chat_stream_injects_usage_and_keeps_fields() -> None:
    original = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "héllo ☃"}],
        "stream": True,
        "stream_options": {"include_obfuscation": False},
        "temperature": 0.2,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    }
    body = dumps(original)
    request = parse_request("openai_chat", body)
    assert request.stream is True
    assert request.usage_injected is True
    assert request.body != body
    assert b"\n" not in request.body and b", " not in request.body  # compact
    assert "héllo ☃".encode() in request.body  # ensure_ascii=False
    sent = json.loads(request.body)
    assert sent == {**original, "stream_options": {"include_obfuscation": False, "include_usage": True}}
    assert list(sent) == list(original)  # key order kept


@pytest.mark.parametrize("options", [None, {}, {"include_usage": False}])
def test_parse_chat_stream_injects_when_not_asked(options: Any) -> None:
    payload: dict[str, Any] = {"model": "m", "messages": [], "stream": True}
    if options is not None:
        payload["stream_options"] = options
    request = parse_request("openai_chat", dumps(payload))
    assert request.usage_injected is True
    assert json.loads(request.body)["stream_options"] == {"include_usage": True}


def test_parse_chat_stream_adds_the_option_to_the_clients_bytes_without_serializing_again() -> None:
    body = b' {"model": "m",\n "messages": [{"role": "user", "content": "h\\u00e9llo \xe2\x98\x83"}], "stream": true}\n'
    request = parse_request("openai_chat", body)
    assert request.usage_injected is True
    assert request.body == body[:-2] + b',"stream_options":{"include_usage":true}}\n'  # all else byte for byte
    assert json.loads(request.body) == {**json.loads(body), "stream_options": {"include_usage": True}}
    # Not plain UTF-8 JSON text: serialized again instead
    utf16 = '{"model": "m", "messages": [], "stream": true}'.encode("utf-16")
    assert parse_request("openai_chat", utf16).body == b'{"model":"m","messages":[],"stream":true,' \
                                                       b'"stream_options":{"include_usage":true}}'


def test_parse_chat_stream_null_stream_options() -> None:
    request = parse_request("openai_chat", b'{"model":"m","messages":[],"stream":true,"stream_options":null}')
    assert request.usage_injected is True
    assert json.loads(request.body)["stream_options"] == {"include_usage": True}


def test_parse_chat_stream_no_rewrite_when_client_asked() -> None:
    body = dumps({"model": "m", "messages": [], "stream": True, "stream_options": {"include_usage": True}})
    request = parse_request("openai_chat", body)
    assert request.usage_injected is False
    assert request.body is body
    assert request.stream is True


def test_parse_lone_surrogate_is_kept_escaped() -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"a\\ud800b"}],"stream":true}'
    request = parse_request("openai_chat", body)
    assert request.usage_injected is True
    assert json.loads(request.body)["messages"][0]["content"] == "a\ud800b"


def test_parse_other_apis_never_rewrite() -> None:
    responses = dumps({"model": "gpt-5", "input": "hi", "stream": True, "max_output_tokens": 300, "n": 4})
    request = parse_request("openai_responses", responses)
    assert (request.stream, request.max_output_tokens, request.choices) == (True, 300, 1)
    assert request.body is responses and request.usage_injected is False
    messages = dumps({"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": True, "messages": []})
    request = parse_request("anthropic_messages", messages)
    assert (request.stream, request.max_output_tokens, request.choices) == (True, 1024, 1)
    assert request.body is messages and request.usage_injected is False
    # the other APIs' max-tokens fields do not count
    assert parse_request("anthropic_messages", dumps({"model": "c", "max_output_tokens": 9})).max_output_tokens is None


def test_media_parts_are_counted_by_kind_and_detail() -> None:
    chat = {
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ]},
        ],
    }
    body = dumps(chat)
    llm = parse_request("openai_chat", body)
    assert llm.input_token_bound == len(body) + 1024  # the text; media are priced by the model's image_tokens
    assert llm.media == Media(images=2, images_low=1)
    responses = {"model": "gpt-5", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "x"},
        {"type": "input_image", "image_url": "https://example.com/b.png", "detail": "low"},
        {"type": "input_image", "file_id": "file-3", "detail": "original"},
    ]}]}
    assert parse_request("openai_responses", dumps(responses)).media == Media(images=1, images_low=1)
    anthropic = {"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/c.png"}},
        {"type": "tool_result", "tool_use_id": "t", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}]},
        {"type": "text", "text": "describe"},
    ]}]}
    assert parse_request("anthropic_messages", dumps(anthropic)).media == Media(images=2)
    # audio and files: billed by length and pages, no bound follows from the body
    for part in ({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                 {"type": "file", "file": {"file_id": "file-1"}}):
        body = dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": [part]}]})
        assert parse_request("openai_chat", body).media.unsized


def test_input_token_bound_after_injection_is_at_least_the_sent_body() -> None:
    body = b'{"model":"m","messages":[],"stream":true}'
    request = parse_request("openai_chat", body)
    assert request.input_token_bound >= len(request.body) + 1024


@pytest.mark.parametrize(
    ("api", "body", "message"),
    [
        ("openai_chat", b"", "JSON"),
        ("openai_chat", b"{not json", "JSON"),
        ("openai_chat", b"\xff\xfe\x00", "JSON"),
        ("openai_chat", b"[" * 100_000, "JSON"),
        ("openai_chat", b"[]", "object"),
        ("openai_chat", b'"model"', "object"),
        ("openai_chat", b"{}", "model"),
        ("openai_chat", b'{"model": 4}', "model"),
        ("openai_chat", b'{"model": null}', "model"),
        ("openai_chat", b'{"model": ""}', "model"),
        ("openai_chat", b'{"model": "m", "max_tokens": -1}', "max_tokens"),
        ("openai_chat", b'{"model": "m", "max_tokens": 1.5}', "max_tokens"),
        ("openai_chat", b'{"model": "m", "max_tokens": 10.0}', "max_tokens"),
        ("openai_chat", b'{"model": "m", "max_tokens": "10"}', "max_tokens"),
        ("openai_chat", b'{"model": "m", "max_tokens": true}', "max_tokens"),
        ("openai_chat", b'{"model": "m", "max_completion_tokens": -5}', "max_completion_tokens"),
        ("openai_chat", b'{"model": "m", "n": 0}', '"n"'),
        ("openai_chat", b'{"model": "m", "n": -1}', '"n"'),
        ("openai_chat", b'{"model": "m", "n": 2.0}', '"n"'),
        ("openai_chat", b'{"model": "m", "n": true}', '"n"'),
        ("openai_chat", b'{"model": "m", "stream": "yes"}', "stream"),
        ("openai_chat", b'{"model": "m", "stream": true, "stream_options": "x"}', "stream_options"),
        ("openai_responses", b'{"model": "m", "max_output_tokens": -1}', "max_output_tokens"),
        ("openai_responses", b'{"model": "m", "max_output_tokens": [1]}', "max_output_tokens"),
        ("anthropic_messages", b'{"model": "m", "max_tokens": -1}', "max_tokens"),
        ("anthropic_messages", b'{"max_tokens": 10}', "model"),
        # a key twice in one object: an upstream that keeps the first would run another model or max_tokens
        ("openai_chat", b'{"model": "gpt-4o-mini", "model": "o1-pro"}', "'model' twice"),
        ("openai_chat", b'{"model": "m", "max_tokens": 1, "max_tokens": 100000}', "'max_tokens' twice"),
        ("openai_chat", b'{"model": "m", "m\\u006fdel": "o1-pro"}', "'model' twice"),  # the same key, escaped
        ("anthropic_messages", b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", '
                               b'"type": "image"}]}]}', "'type' twice"),
        ("openai_chat", b'{"model": "m", "stream": true, "stream_options": {"include_usage": true, '
                        b'"include_usage": false}}', "'include_usage' twice"),
        # the same key in another case, for an upstream that matches keys whatever their case (Go's encoding/json)
        ("openai_chat", b'{"model": "gpt-4.1-nano", "max_tokens": 16, "Model": "gpt-5.4-pro"}', "'Model' twice"),
        ("openai_chat", b'{"model": "m", "max_tokens": 16, "max_token\\u017f": 128000}', "twice"),
        ("openai_chat", b'{"model": "m", "max_tokens": 16, "MAX_TO\\u212aENS": 128000}', "twice"),  # Kelvin sign
    ],
)
def test_parse_request_errors(api: API, body: bytes, message: str) -> None:
    with pytest.raises(BadLLMRequest, match=message):
        parse_request(api, body)


def test_parse_responses_names_the_state_it_reads_from_upstream() -> None:
    plain = parse_request("openai_responses", b'{"model": "m", "input": "hi"}')
    assert (plain.previous_response_id, plain.unsized_input, plain.truncates) == (None, False, False)
    continued = parse_request("openai_responses", b'{"model": "m", "previous_response_id": "resp_1", '
                                                  b'"truncation": "auto"}')
    assert (continued.previous_response_id, continued.unsized_input, continued.truncates) == ("resp_1", False, True)
    for stored in (b'"conversation": "conv_1"', b'"conversation": {"id": "conv_1"}', b'"prompt": {"id": "pmpt_1"}'):
        assert parse_request("openai_responses", b'{"model": "m", ' + stored + b"}").unsized_input, stored
    assert not parse_request("openai_responses", b'{"model": "m", "conversation": null}').unsized_input
    # only the Responses API keeps state upstream
    chat = parse_request("openai_chat", b'{"model": "m", "previous_response_id": "resp_1", "prompt": {"id": "p"}}')
    assert (chat.previous_response_id, chat.unsized_input) == (None, False)
    with pytest.raises(BadLLMRequest, match="previous_response_id"):
        parse_request("openai_responses", b'{"model": "m", "previous_response_id": ["resp_1"]}')


@pytest.mark.parametrize(("api", "part", "unsized"), [
    ("anthropic_messages", {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                                           "data": "JVBERi0xLjQK"}}, True),
    ("anthropic_messages", {"type": "document", "source": {"type": "url", "url": "https://x.test/a.pdf"}}, True),
    ("anthropic_messages", {"type": "document", "source": {"type": "file", "file_id": "file_1"}}, True),
    ("anthropic_messages", {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                           "data": "plain text is in the body"}}, False),
    ("anthropic_messages", {"type": "document", "source": {"type": "content",
                                                           "content": [{"type": "text", "text": "so is it"}]}}, False),
    ("anthropic_messages", {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}, False),
    ("openai_responses", {"type": "input_file", "file_id": "file_1"}, True),
    ("openai_responses", {"type": "input_file", "file_url": "https://x.test/a.pdf"}, True),
    ("openai_chat", {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0xLjQK"}}, True),
    ("openai_chat", {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}, False),
])
def test_pdfs_and_files_are_input_the_body_cannot_size(api: API, part: dict[str, Any], unsized: bool) -> None:
    key = "input" if api == "openai_responses" else "messages"
    body = {"model": "m", "max_tokens": 5, key: [{"role": "user", "content": [part, {"type": "text", "text": "?"}]}]}
    llm = parse_request(api, json.dumps(body).encode())
    assert llm.media.unsized is unsized
    assert llm.media.images == int(part["type"] in ("image", "image_url"))  # text documents: sized by the body


def test_anthropic_compaction_iterations_are_added_to_the_top_level_counts() -> None:
    threshold = {"input_tokens": 23000, "output_tokens": 1000, "cache_read_input_tokens": 5,
                 "iterations": [{"type": "compaction", "input_tokens": 180000, "output_tokens": 3500,
                                 "cache_creation_input_tokens": 7},
                                {"type": "message", "input_tokens": 23000, "output_tokens": 1000}]}
    assert anthropic_usage(threshold) == Usage(input_tokens=203000, cached_input_tokens=5, cache_write_tokens=7,
                                               output_tokens=4500)
    on_demand = {"input_tokens": 0, "output_tokens": 0,
                 "iterations": [{"type": "compaction", "input_tokens": 9000, "output_tokens": 700}]}
    assert anthropic_usage(on_demand) == Usage(input_tokens=9000, output_tokens=700)
    plain = {"input_tokens": 10, "output_tokens": 2, "iterations": [{"type": "message", "input_tokens": 10}, 7]}
    assert anthropic_usage(plain) == Usage(input_tokens=10, output_tokens=2)
    edits = {"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}, {"type": "compact_20260112"}]}}
    body = {"model": "m", "max_tokens": 5, "messages": [], **edits}
    assert parse_request("anthropic_messages", json.dumps(body).encode()).sampling_passes == 2
    assert parse_request("anthropic_messages", b'{"model": "m", "max_tokens": 5}').sampling_passes == 1


def test_a_chat_prediction_bounds_its_rejected_tokens_by_its_length() -> None:
    prediction = {"type": "content", "content": "def f():\n    return 1\n"}
    llm = parse_request("openai_chat", json.dumps({"model": "m", "prediction": prediction}).encode())
    assert llm.prediction_bound == len(json.dumps(prediction, separators=(",", ":")))
    assert parse_request("openai_chat", b'{"model": "m"}').prediction_bound == 0
    assert parse_request("openai_responses", b'{"model": "m", "prediction": {"content": "x"}}').prediction_bound == 0


def test_server_side_tools_are_named_and_client_side_ones_are_not() -> None:
    def tools(*types: object, **extra: object) -> tuple[str, ...]:
        body = {"model": "m", "tools": [{"type": t} for t in types], **extra}
        return parse_request("openai_responses", json.dumps(body).encode()).server_tools

    assert tools("web_search", "web_search_preview_2025_03_11", "code_interpreter", "function") == (
        "web_search", "web_search_preview_2025_03_11", "code_interpreter")
    assert tools("web_search_20250305", "web_fetch_20250910", "code_execution_20250825",
                 "tool_search_tool_regex_20251119", "web_search_20250305", "advisor_20260301", "mcp_toolset") == (
        "web_search_20250305", "web_fetch_20250910", "code_execution_20250825", "tool_search_tool_regex_20251119",
        "advisor_20260301", "mcp_toolset")
    assert tools("function", "custom", "computer_use_preview", "bash_20250124", "text_editor_20250728", "memory",
                 "local_shell", 7, None) == ()
    assert tools(mcp_servers=[{"type": "url"}]) == ("mcp_servers",)
    assert tools(web_search_options={}) == ("web_search_options",)
    assert tools(mcp_servers=[], web_search_options=None) == ()
    body = {"model": "m", "tools": "web_search"}
    assert parse_request("openai_responses", json.dumps(body).encode()).server_tools == ()  # not a list: upstream 400s


def test_a_responses_usage_carries_its_response_id_when_it_is_one() -> None:
    usage = {"input_tokens": 1, "output_tokens": 2}
    assert usage_in("openai_responses", {"id": "resp_1", "usage": usage}) == Usage(1, output_tokens=2,
                                                                                  response_id="resp_1")
    for odd in (None, 5, "", "r" * 129):
        assert usage_in("openai_responses", {"id": odd, "usage": usage}).response_id is None  # type: ignore[union-attr]
    assert usage_in("openai_chat", {"id": "chatcmpl-1", "usage": {"prompt_tokens": 1}}).response_id is None  # type: ignore[union-attr]


def test_bad_request_is_a_value_error() -> None:
    assert issubclass(BadLLMRequest, ValueError)


# ---------------------------------------------------------------------------------------------------------------
# usage_from_body

CHAT_BODY = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "o3-mini-2025-01-31",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello", "refusal": None,
                                         "annotations": []}, "logprobs": None, "finish_reason": "stop"}],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 32, "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}
CHAT_USAGE = Usage(input_tokens=93, cached_input_tokens=1024, output_tokens=46, reasoning_tokens=32,
                   service_tier="default")

RESPONSES_BODY = {
    "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41",
    "object": "response",
    "created_at": 1741476777,
    "status": "completed",
    "error": None,
    "incomplete_details": None,
    "model": "o4-mini-2025-04-16",
    "output": [
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "The image depicts...", "annotations": []}]},
    ],
    "usage": {
        "input_tokens": 2328,
        "input_tokens_details": {"cached_tokens": 2048},
        "output_tokens": 1035,
        "output_tokens_details": {"reasoning_tokens": 832},
        "total_tokens": 3363,
    },
    "service_tier": "default",
}
RESPONSES_USAGE = Usage(input_tokens=280, cached_input_tokens=2048, output_tokens=1035, reasoning_tokens=832,
                        service_tier="default", response_id="resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41")

ANTHROPIC_BODY = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "Hi! My name is Claude."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 21,
        "cache_creation_input_tokens": 188086,
        "cache_read_input_tokens": 4000,
        "cache_creation": {"ephemeral_5m_input_tokens": 188086, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 393,
        "service_tier": "standard",
    },
}
ANTHROPIC_USAGE = Usage(input_tokens=21, cached_input_tokens=4000, cache_write_tokens=188086, output_tokens=393,
                        service_tier="standard")


def test_usage_from_body_each_api() -> None:
    assert usage_from_body("openai_chat", json.dumps(CHAT_BODY).encode()) == CHAT_USAGE
    assert usage_from_body("openai_responses", json.dumps(RESPONSES_BODY).encode()) == RESPONSES_USAGE
    assert usage_from_body("anthropic_messages", json.dumps(ANTHROPIC_BODY).encode()) == ANTHROPIC_USAGE


def test_openai_cache_writes_are_part_of_the_input() -> None:
    usage = {"input_tokens": 5000, "output_tokens": 10,
             "input_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 3207}}
    assert usage_from_body("openai_responses", json.dumps({"usage": usage}).encode()) == Usage(
        input_tokens=793, cached_input_tokens=1000, cache_write_tokens=3207, output_tokens=10)
    chat = {"prompt_tokens": 4000, "completion_tokens": 1, "prompt_tokens_details": {"cache_write_tokens": 4000}}
    assert usage_from_body("openai_chat", json.dumps({"usage": chat}).encode()) == Usage(
        cache_write_tokens=4000, output_tokens=1)


def test_embeddings_usage_is_all_input() -> None:
    body = {"object": "list", "data": [], "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    assert usage_from_body("openai_embeddings", json.dumps(body).encode()) == Usage(input_tokens=8)
    voyage = {"object": "list", "data": [], "usage": {"total_tokens": 12}}  # Voyage names only the total
    assert usage_from_body("openai_embeddings", json.dumps(voyage).encode()) == Usage(input_tokens=12)
    assert usage_from_body("openai_embeddings", b'{"error": {"message": "bad"}}') is None
    streamed = b'data: {"object": "list", "usage": {"prompt_tokens": 3, "total_tokens": 3}}\n\n'
    assert usage_from_body("openai_embeddings", streamed + b"data: [DONE]\n\n") == Usage(input_tokens=3)


def test_usage_from_the_tail_of_an_answer_too_large_to_parse() -> None:
    body = json.dumps({"object": "list", "data": [{"embedding": "QUJD" * 5000}] * 40, "model": "m",
                       "usage": {"prompt_tokens": 40, "total_tokens": 40}}).encode()
    assert usage_from_tail("openai_embeddings", body[-(64 << 10):]) == Usage(input_tokens=40)
    chat = dict(CHAT_BODY, service_tier="priority")
    whole = json.dumps(chat).encode()
    tail = whole[whole.rfind(b'"usage"') - 40:]  # the usage and what follows it (service_tier)
    assert usage_from_tail("openai_chat", tail) == usage_from_body("openai_chat", whole)
    assert usage_from_tail("openai_chat", tail).service_tier == "priority"  # type: ignore[union-attr]
    # a "usage" in a string has escaped quotes; a usage object cut at the start of the tail is skipped
    quoted = json.dumps({"choices": [{"text": '"usage": {"prompt_tokens": 99}'}]}).encode()
    assert usage_from_tail("openai_chat", quoted) is None
    assert usage_from_tail("openai_chat", b'{"prompt_tokens": 5}, "usage": "none"}') is None
    assert usage_from_tail("openai_chat", b"") is None


def test_parse_embeddings_reserves_no_output() -> None:
    body = dumps({"model": "text-embedding-3-small", "input": ["a", "b"]})
    llm = parse_request("openai_embeddings", body)
    assert (llm.model, llm.max_output_tokens, llm.stream, llm.body) == ("text-embedding-3-small", 0, False, body)
    assert llm.input_token_bound >= len(body)


def test_usage_from_body_missing_and_null_fields_are_zero() -> None:
    body = b'{"usage": {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": null}}'
    assert usage_from_body("openai_chat", body) == Usage(input_tokens=10, output_tokens=3)
    body = b'{"usage": {"input_tokens": 7, "output_tokens": null}}'
    assert usage_from_body("openai_responses", body) == Usage(input_tokens=7)
    body = b'{"usage": {"input_tokens": 7, "output_tokens": 2, "cache_read_input_tokens": null}}'
    assert usage_from_body("anthropic_messages", body) == Usage(input_tokens=7, output_tokens=2)
    body = (b'{"usage": {"prompt_tokens": "lots", "completion_tokens": -4,'
            b' "prompt_tokens_details": {"cached_tokens": true},'
            b' "completion_tokens_details": {"reasoning_tokens": NaN}}}')
    assert usage_from_body("openai_chat", body) == Usage()


@pytest.mark.parametrize("api", ["openai_chat", "openai_responses", "anthropic_messages"])
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"garbage",
        b"\xff\xfe",
        b"null",
        b"[1, 2]",
        b'{"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}',
        b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
        b'{"usage": null}',
        b'{"usage": [1]}',
        b"[" * 100_000,
        b'{"usage": {"input_tokens": 1' + b"0" * 5000 + b"}}",
    ],
)
def test_usage_from_body_garbage(api: API, body: bytes) -> None:
    assert usage_from_body(api, body) is None


def test_usage_from_body_reads_an_event_stream() -> None:
    assert usage_from_body("openai_chat", b"".join(chat_stream())) == CHAT_USAGE


# ---------------------------------------------------------------------------------------------------------------
# streams


def sse(data: Any, event: str | None = None, eol: str = "\n") -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}{eol}" if event else ""
    return f"{head}data: {text}{eol}{eol}".encode()


CHAT_BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1741570283, "model": "o3-mini",
             "service_tier": "default", "system_fingerprint": "fp_1"}


def chat_usage_event(eol: str = "\n") -> bytes:
    return sse({**CHAT_BASE, "choices": [], "usage": CHAT_BODY["usage"], "obfuscation": "x1"}, eol=eol)


def chat_stream(eol: str = "\n") -> list[bytes]:
    events = [sse({**CHAT_BASE, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None},
                                             "logprobs": None, "finish_reason": None}], "usage": None}, eol=eol)]
    events += [f": keep-alive{eol}{eol}".encode()]
    for word in ["Hello", " there", ', "usage": {', " world"]:
        events.append(sse({**CHAT_BASE, "choices": [{"index": 0, "delta": {"content": word}, "logprobs": None,
                                                     "finish_reason": None}], "usage": None}, eol=eol))
    events.append(sse({**CHAT_BASE, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
                       "usage": None}, eol=eol))
    events.append(chat_usage_event(eol))
    events.append(sse("[DONE]", eol=eol))
    return events


def responses_stream() -> list[bytes]:
    created = {**RESPONSES_BODY, "status": "in_progress", "output": [], "usage": None}
    events = [
        sse({"type": "response.created", "sequence_number": 0, "response": created}, "response.created"),
        sse({"type": "response.in_progress", "sequence_number": 1, "response": created}, "response.in_progress"),
        sse({"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
             "item": {"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant", "content": []}},
            "response.output_item.added"),
    ]
    for i, word in enumerate(["The", " image", " says response.completed", " depicts"]):
        events.append(sse({"type": "response.output_text.delta", "sequence_number": 3 + i, "item_id": "msg_1",
                           "output_index": 0, "content_index": 0, "delta": word}, "response.output_text.delta"))
    events.append(sse({"type": "response.completed", "sequence_number": 9, "response": RESPONSES_BODY},
                      "response.completed"))
    return events


def anthropic_stream(delta_usage: dict[str, Any] | None = None) -> list[bytes]:
    start_usage = {"input_tokens": 21, "cache_creation_input_tokens": 188086, "cache_read_input_tokens": 4000,
                   "cache_creation": {"ephemeral_5m_input_tokens": 188086, "ephemeral_1h_input_tokens": 0},
                   "output_tokens": 1, "service_tier": "standard"}
    message = {k: v for k, v in ANTHROPIC_BODY.items() if k != "usage"}
    message.update(content=[], stop_reason=None, usage=start_usage)
    events = [
        sse({"type": "message_start", "message": message}, "message_start"),
        sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start"),
        sse({"type": "ping"}, "ping"),
    ]
    for word in ["Hi!", ' "usage": {', " message_stop", " I am Claude."]:
        events.append(sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}},
                          "content_block_delta"))
    events.append(sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    events.append(sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                       "usage": delta_usage or {"output_tokens": 393}}, "message_delta"))
    events.append(sse({"type": "message_stop"}, "message_stop"))
    return events


def splits(data: bytes, seed: int) -> Iterator[list[bytes]]:
    """The same stream cut in many ways: whole, byte by byte, and at random places."""
    yield [data]
    yield [part for part in re.split(rb"(?<=\n\n)", data) if part]  # event by event, as upstreams send them
    yield [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(seed)
    for _ in range(40):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, min(60, len(data) - 1))))
        yield [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def run(meter: StreamMeter, chunks: list[bytes]) -> bytes:
    out = [meter.feed(chunk) for chunk in chunks]
    out.append(meter.flush())
    return b"".join(out)


STREAMS: list[tuple[API, list[bytes], Usage]] = [
    ("openai_chat", chat_stream(), CHAT_USAGE),
    ("openai_chat", chat_stream("\r\n"), CHAT_USAGE),
    ("openai_chat", chat_stream("\r"), CHAT_USAGE),
    ("openai_responses", responses_stream(), RESPONSES_USAGE),
    ("anthropic_messages", anthropic_stream(), ANTHROPIC_USAGE),
]


@pytest.mark.parametrize(("api", "events", "usage"), STREAMS)
def test_stream_passthrough_is_byte_exact(api: API, events: list[bytes], usage: Usage) -> None:
    data = b"".join(events)
    for seed, chunks in enumerate(splits(data, seed=len(data))):
        meter = StreamMeter(api)
        for chunk in chunks:
            assert meter.feed(chunk) is chunk  # forwarded at once, unchanged
        assert meter.flush() == b""
        assert meter.usage == usage, seed
        assert meter.complete, seed


def test_whole_events_that_do_not_matter_are_not_split_into_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual chunk (whole events, no usage, not the end) skips the line parser, also when hiding."""
    events = chat_stream()
    usage_event = chat_usage_event("\n")
    meter = StreamMeter("openai_chat", hide_usage_chunk=True)
    scanned: list[bytes] = []
    scan = meter.events._scan
    monkeypatch.setattr(meter.events, "_scan", lambda data, out: (scanned.append(data), scan(data, out))[1])
    out = [meter.feed(event) for event in events]
    assert b"".join(out) == b"".join(e for e in events if e != usage_event)
    assert scanned == [e for e in events if e == usage_event or b"[DONE]" in e]
    assert meter.usage == CHAT_USAGE and meter.complete


def test_chat_stream_hides_the_usage_chunk() -> None:
    for eol in ("\n", "\r\n", "\r"):
        events = chat_stream(eol)
        data = b"".join(events)
        expected = data.replace(chat_usage_event(eol), b"")
        assert len(expected) < len(data)
        for chunks in splits(data, seed=7):
            meter = StreamMeter("openai_chat", hide_usage_chunk=True)
            assert run(meter, chunks) == expected
            assert meter.usage == CHAT_USAGE
            assert meter.complete


def test_hiding_forwards_whole_events_only() -> None:
    events = chat_stream()
    meter = StreamMeter("openai_chat", hide_usage_chunk=True)
    first = events[0]
    assert meter.feed(first[:10]) == b""
    assert meter.feed(first[10:] + events[1][:3]) == first
    assert meter.feed(events[1][3:]) == events[1]
    assert meter.feed(events[-2] + events[-1]) == events[-1]
    assert meter.flush() == b""


def test_hiding_keeps_a_usage_chunk_that_has_choices() -> None:
    # some compatible servers put the usage on the last content chunk: that chunk must reach the client
    last = sse({**CHAT_BASE, "choices": [{"index": 0, "delta": {"content": "!"}, "finish_reason": "stop"}],
                "usage": CHAT_BODY["usage"]})
    data = last + sse("[DONE]")
    meter = StreamMeter("openai_chat", hide_usage_chunk=True)
    assert run(meter, [data]) == data
    assert meter.usage == CHAT_USAGE


def test_hiding_a_dropped_event_ending_in_split_crlf() -> None:
    usage_event = chat_usage_event("\r\n")
    done = sse("[DONE]", eol="\r\n")
    meter = StreamMeter("openai_chat", hide_usage_chunk=True)
    assert meter.feed(usage_event[:-1]) == b""  # ends "\r\n\r": the event is over, the last \n is still to come
    assert meter.feed(usage_event[-1:] + done) == done
    assert meter.flush() == b""
    assert meter.usage == CHAT_USAGE


def test_hiding_releases_an_oversized_event() -> None:
    big = sse({**CHAT_BASE, "choices": [{"index": 0, "delta": {"content": "x" * (MAX_HELD_BYTES + 10)}}]})
    meter = StreamMeter("openai_chat", hide_usage_chunk=True)
    out = b"".join(meter.feed(big[i : i + 4096]) for i in range(0, len(big), 4096))
    assert out == big
    assert meter.flush() == b""


def test_flush_forwards_and_parses_an_unterminated_event() -> None:
    data = b"".join(chat_stream())
    cut = data[: -len(b"\n\n")]  # the stream ends without the blank line after [DONE]
    meter = StreamMeter("openai_chat", hide_usage_chunk=True)
    out = meter.feed(cut)
    assert out + meter.flush() == data.replace(chat_usage_event(), b"")[:-2]
    assert meter.complete
    plain = StreamMeter("openai_chat")
    assert plain.feed(cut) is cut and plain.flush() == b""
    assert plain.complete and plain.usage == CHAT_USAGE


def test_multi_line_data_and_comments() -> None:
    payload = json.dumps({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 12}}, indent=2)
    event = ": a comment\nevent: message_delta\n" + "".join(f"data: {line}\n" for line in payload.split("\n")) + "\n"
    data = anthropic_stream()[0] + event.encode() + b":\n\n" + sse({"type": "message_stop"}, "message_stop")
    for chunks in splits(data, seed=3):
        meter = StreamMeter("anthropic_messages")
        assert b"".join(meter.feed(c) for c in chunks) + meter.flush() == data
        assert meter.usage == Usage(input_tokens=21, cached_input_tokens=4000, cache_write_tokens=188086,
                                    output_tokens=12, service_tier="standard")
        assert meter.complete


def test_data_without_space_and_event_line_types() -> None:
    meter = StreamMeter("openai_chat")
    meter.feed(b'data:{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\ndata:[DONE]\n\n')
    assert meter.usage == Usage(input_tokens=5, output_tokens=2)
    assert meter.complete
    # Responses events are recognised by the data's "type" even without event: lines
    meter = StreamMeter("openai_responses")
    meter.feed(b"".join(sse(json.loads(e.split(b"data: ", 1)[1])) for e in responses_stream()))
    assert meter.usage == RESPONSES_USAGE
    assert meter.complete


def test_anthropic_message_delta_carrying_input_and_cache_counts() -> None:
    events = anthropic_stream({"input_tokens": 25, "cache_creation_input_tokens": 188086,
                               "cache_read_input_tokens": 4100, "output_tokens": 500})
    meter = StreamMeter("anthropic_messages")
    run(meter, events)
    assert meter.usage == Usage(input_tokens=25, cached_input_tokens=4100, cache_write_tokens=188086,
                                output_tokens=500, service_tier="standard")


def test_anthropic_usage_before_the_end() -> None:
    events = anthropic_stream()
    meter = StreamMeter("anthropic_messages")
    meter.feed(events[0])
    assert meter.usage == Usage(input_tokens=21, cached_input_tokens=4000, cache_write_tokens=188086, output_tokens=1,
                                service_tier="standard")
    assert not meter.complete
    for event in events[1:-1]:
        meter.feed(event)
    assert meter.usage == ANTHROPIC_USAGE
    assert not meter.complete
    meter.feed(events[-1])
    assert meter.complete


@pytest.mark.parametrize("kind", ["response.incomplete", "response.failed"])
def test_responses_other_ends(kind: str) -> None:
    response = {**RESPONSES_BODY, "status": kind.split(".")[1]}
    meter = StreamMeter("openai_responses")
    meter.feed(sse({"type": kind, "sequence_number": 4, "response": response}, kind))
    assert meter.complete
    assert meter.usage == RESPONSES_USAGE
    failed = StreamMeter("openai_responses")
    failed.feed(sse({"type": "response.failed", "response": {"status": "failed", "usage": None}}, "response.failed"))
    assert failed.complete and failed.usage is None


def test_incomplete_streams_are_not_complete() -> None:
    meter = StreamMeter("openai_chat")
    run(meter, chat_stream()[:-1])
    assert meter.usage == CHAT_USAGE and not meter.complete
    meter = StreamMeter("openai_responses")
    run(meter, responses_stream()[:-1])
    assert meter.usage is None and not meter.complete
    meter = StreamMeter("anthropic_messages")
    run(meter, anthropic_stream()[:-1])
    assert meter.usage == ANTHROPIC_USAGE and not meter.complete


@pytest.mark.parametrize("api", ["openai_chat", "openai_responses", "anthropic_messages"])
@pytest.mark.parametrize("hide", [False, True])
def test_stream_garbage_never_raises(api: API, hide: bool) -> None:
    garbage = [
        b"data: {not json\n\n",
        b'data: {"usage": {"prompt_tokens": [1]}, "choices": {}}\n\n',
        b'data: {"type": ["response.completed"], "usage": {"x": 1}}\n\n',
        b'data: {"type": "message_start", "message": "usage"}\n\n',
        b'data: {"type": "message_delta", "usage": {"output_tokens": "many"}}\n\n',
        b'data: {"type": "response.completed", "response": {"usage": {"input_tokens": {}}}}\n\n',
        b'event: message_stop\ndata: [1, "message_stop", "usage": {]\n\n',
        b"data: \xff\xfe\x00\n\n",
        b"data: " + b"[" * 100_000 + b' "usage": {\n\n',
        b'data: {"usage": {"prompt_tokens": 1' + b"0" * 5000 + b"}}\n\n",
        b"\n\n\n\r\r\r\n",
        b"event\ndata\n:\n\n",
        b"\x00\x01\x02 random binary \r\n",
    ]
    data = b"".join(garbage)
    for chunks in splits(data, seed=11):
        meter = StreamMeter(api, hide_usage_chunk=hide)
        out = run(meter, chunks)
        if not hide:
            assert out == data
        _ = meter.usage, meter.complete


def test_feed_empty_chunks() -> None:
    meter = StreamMeter("openai_chat", hide_usage_chunk=True)
    assert meter.feed(b"") == b""
    plain = StreamMeter("openai_chat")
    assert plain.feed(b"") == b""
    assert plain.flush() == b"" and plain.usage is None and not plain.complete


# ---------------------------------------------------------------------------------------------------------------
# against the local simulator (fleetd.llmsim), in process


async def sim_calls(calls: list[tuple[str, bytes]]) -> list[bytes]:
    client = TestClient(TestServer(init_sim(SimConfig(chunk_delay_ms=0, output_tokens=7))))
    await client.start_server()
    try:
        bodies = []
        for path, body in calls:
            response = await client.post(path, data=body, headers={"Content-Type": "application/json"})
            assert response.status == 200
            bodies.append(await response.read())
        return bodies
    finally:
        await client.close()


def test_against_llmsim() -> None:
    messages = [{"role": "user", "content": "one two three four five"}]
    chat = parse_request("openai_chat", dumps({"model": "sim", "messages": messages, "stream": True}))
    assert chat.usage_injected
    chat_asked = parse_request("openai_chat", dumps({"model": "sim", "messages": messages, "stream": True,
                                                     "stream_options": {"include_usage": True}}))
    chat_plain = dumps({"model": "sim", "messages": messages})
    responses = dumps({"model": "sim", "input": "one two three", "max_output_tokens": 5})
    anthropic = dumps({"model": "sim", "max_tokens": 6, "messages": messages, "stream": True})
    anthropic_plain = dumps({"model": "sim", "max_tokens": 6, "messages": messages})
    bodies = asyncio.run(sim_calls([
        ("/v1/chat/completions", chat.body),
        ("/v1/chat/completions", chat_asked.body),
        ("/v1/chat/completions", chat_plain),
        ("/v1/responses", responses),
        ("/v1/messages", anthropic),
        ("/v1/messages", anthropic_plain),
    ]))
    stream, stream_asked, plain, resp, anthropic_stream_body, anthropic_body = bodies

    hidden = StreamMeter("openai_chat", hide_usage_chunk=True)
    out = run(hidden, [stream[i : i + 13] for i in range(0, len(stream), 13)])
    assert hidden.usage == Usage(input_tokens=5, output_tokens=7, service_tier="default") and hidden.complete
    assert b'"usage": {' in stream and b'"usage": {' not in out and out.endswith(b"data: [DONE]\n\n")
    assert out.count(b"\n\n") == stream.count(b"\n\n") - 1

    kept = StreamMeter("openai_chat")
    assert run(kept, [stream_asked]) == stream_asked
    assert kept.usage == Usage(input_tokens=5, output_tokens=7, service_tier="default") and kept.complete

    assert usage_from_body("openai_chat", plain) == Usage(input_tokens=5, output_tokens=7, service_tier="default")
    assert usage_from_body("openai_responses", resp) == Usage(input_tokens=3, output_tokens=5, service_tier="default",
                                                              response_id=json.loads(resp)["id"])
    assert usage_from_body("anthropic_messages", anthropic_body) == Usage(
        input_tokens=5, output_tokens=6, service_tier="standard", speed="standard", inference_geo="global")

    meter = StreamMeter("anthropic_messages")
    for chunk in [anthropic_stream_body[i : i + 7] for i in range(0, len(anthropic_stream_body), 7)]:
        meter.feed(chunk)
    meter.flush()
    assert meter.usage == Usage(input_tokens=5, output_tokens=6, service_tier="standard", speed="standard",
                                inference_geo="global") and meter.complete


def test_usage_object_split_over_data_lines_in_one_chunk() -> None:
    """An event may spread its JSON over several data lines, even between a key and its value."""
    event = (b'data: {"id": "c", "choices": [], "usage":\ndata: {"prompt_tokens": 7, "completion_tokens": 3,\n'
             b'data: "total_tokens": 10}}\n\n')
    meter = StreamMeter("openai_chat")
    assert meter.feed(event) is event
    assert meter.usage is not None and (meter.usage.input_tokens, meter.usage.output_tokens) == (7, 3)


# ---------------------------------------------------------------------------------------------------------------
# Gemini (generateContent): the model in the path, proto3's two JSON spellings, usageMetadata

GEMINI = "/v1beta/models/gemini-2.5-flash:generateContent"


@pytest.mark.parametrize(("path", "model", "stream"), [
    (GEMINI, "gemini-2.5-flash", False),
    ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", "gemini-2.5-flash", True),
    ("/v1/projects/p/locations/us-central1/publishers/google/models/gemini-3-pro-preview:generateContent",
     "gemini-3-pro-preview", False),
    ("/v1beta/models/gemini-2.5-flash%3AgenerateContent", "gemini-2.5-flash", False),  # %3A read as ":"
    ("/v1beta/tunedModels/my-tune:generateContent", "my-tune", False),  # unpriced unless given a price
])
def test_gemini_calls_are_classified_with_their_model_from_the_path(path: str, model: str, stream: bool) -> None:
    assert classify("POST", path) == "gemini_generate"
    llm = parse_request("gemini_generate", b'{"contents": []}', path)
    assert (llm.model, llm.stream) == (model, stream)


@pytest.mark.parametrize("path", ["/v1beta/models/gemini-2.5-flash:countTokens", "/v1beta/models/x:embedContent",
                                  "/v1beta/models/generateContent", "/v1beta/models/x:generateContentX"])
def test_other_gemini_methods_are_not_generate_calls(path: str) -> None:
    assert classify("POST", path) is None


def test_gemini_request_bounds() -> None:
    body = dumps({"contents": [{"role": "user", "parts": [
        {"text": "describe"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBO"}},
        {"file_data": {"mime_type": "image/jpeg", "file_uri": "gs://b/x.jpg"},
         "mediaResolution": {"level": "MEDIA_RESOLUTION_ULTRA_HIGH", "numTokens": "5000"}},
    ]}], "generationConfig": {"maxOutputTokens": 100, "candidateCount": 2,
                              "thinkingConfig": {"thinkingBudget": 64}}})
    llm = parse_request("gemini_generate", body, GEMINI)
    assert (llm.max_output_tokens, llm.choices, llm.thinking_tokens) == (100, 2, 64)
    assert llm.media == Media(images=2, tokens=5000)
    assert llm.input_token_bound == len(body) + 1024
    # snake_case works as well; ints may come as strings (proto3 JSON)
    llm = parse_request("gemini_generate", dumps({"generation_config": {"max_output_tokens": "9"}}), GEMINI)
    assert (llm.max_output_tokens, llm.choices, llm.thinking_tokens) == (9, 1, None)  # thinking: up to the max
    # dynamic thinking (-1) is unbounded by the request
    llm = parse_request("gemini_generate", dumps({"generationConfig": {"thinkingConfig": {"thinkingBudget": -1}}}),
                        GEMINI)
    assert llm.thinking_tokens is None
    # media billed by length or pages, and cached content kept upstream, have no bound in the body
    for part in ({"inlineData": {"mimeType": "audio/ogg", "data": "T2dn"}},
                 {"fileData": {"mimeType": "video/mp4", "fileUri": "https://x.test/v.mp4"}},
                 {"fileData": {"mimeType": "application/pdf", "fileUri": "files/abc"}}):
        assert parse_request("gemini_generate", dumps({"contents": [{"parts": [part]}]}), GEMINI).media.unsized
    assert parse_request("gemini_generate", dumps({"cachedContent": "cachedContents/x"}), GEMINI).unsized_input
    tools = dumps({"tools": [{"googleSearch": {}}, {"code_execution": {}}, {"functionDeclarations": []}]})
    assert parse_request("gemini_generate", tools, GEMINI).server_tools == ("googleSearch", "code_execution")


@pytest.mark.parametrize(("body", "message"), [
    (b'{"generationConfig": {"maxOutputTokens": 1, "max_output_tokens": 65536}}', "given twice"),
    (b'{"generationConfig": {"maxOutputTokens": 1}, "generation_config": {}}', "given twice"),
    (b'{"generationConfig": {"maxOutputTokens": 1, "maxOutputTokens": 9}}', "twice"),
    (b'{"generationConfig": {"maxOutputTokens": -1}}', "maxOutputTokens"),
    (b'{"generationConfig": {"maxOutputTokens": 1.5}}', "maxOutputTokens"),
    (b'{"generationConfig": {"candidateCount": 0}}', "candidateCount"),
    (b'{"generationConfig": "x"}', "generationConfig"),
    (b'[]', "object"),
])
def test_gemini_bodies_that_cannot_be_metered(body: bytes, message: str) -> None:
    with pytest.raises(BadLLMRequest, match=message):
        parse_request("gemini_generate", body, GEMINI)


GEMINI_USAGE = {"promptTokenCount": 220, "cachedContentTokenCount": 20, "toolUsePromptTokenCount": 5,
                "candidatesTokenCount": 7, "thoughtsTokenCount": 185, "totalTokenCount": 437}
GEMINI_BILLED = Usage(input_tokens=205, cached_input_tokens=20, output_tokens=192, reasoning_tokens=185)


def test_gemini_usage_of_a_body_an_sse_stream_an_array_stream_and_a_tail() -> None:
    answer = {"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
              "usageMetadata": GEMINI_USAGE}
    assert usage_from_body("gemini_generate", dumps(answer)) == GEMINI_BILLED
    # streamed: cumulative counts, in full on the last chunk
    first = {"candidates": [{"content": {"parts": [{"text": "h"}]}}],
             "usageMetadata": {"promptTokenCount": 220, "candidatesTokenCount": 1}}
    events = sse(first, eol="\r\n") + sse(answer, eol="\r\n")
    meter = StreamMeter("gemini_generate")
    assert run(meter, [events[:30], events[30:]]) == events  # passed on untouched
    assert meter.usage == GEMINI_BILLED and meter.complete
    # without alt=sse: one JSON array
    assert usage_from_body("gemini_generate", dumps([first, answer])) == GEMINI_BILLED
    # the end of a large answer
    tail = b'x" }]}, "usageMetadata": ' + dumps({**GEMINI_USAGE, "trafficType": "ON_DEMAND_PRIORITY"}) + b"}"
    usage = usage_from_tail("gemini_generate", tail)
    assert usage is not None and usage.output_tokens == 192 and usage.service_tier == "ON_DEMAND_PRIORITY"
    gemini = providers.provider("gemini_generate")
    llm = parse_request("gemini_generate", b"{}", GEMINI)
    assert gemini.served_at_priority(llm, usage) and not gemini.served_at_priority(llm, GEMINI_BILLED)


# ---------------------------------------------------------------------------------------------------------------
# the memory a body takes to parse


def test_a_body_that_would_parse_into_more_than_the_budget_is_refused_before_parsing() -> None:
    """``[{},{},...]`` of 9.7 MB peaked near 283 MB in json.loads: zone 2 has 256 MiB."""
    import tracemalloc

    from fleetd.zone2.llm import PARSE_BUDGET, parse_cost

    hostile = b'{"model": "gpt-4o", "messages": [' + b"{}," * 3_300_000 + b"{}]}"
    tracemalloc.start()
    try:
        with pytest.raises(BadLLMRequest, match="too many JSON values"):
            parse_request("openai_chat", hostile)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * len(hostile), peak  # refused by counting (over a copy without strings), not by parsing
    # as large, but its commas and braces are inside a string: it costs its bytes, and is parsed
    csv = dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "{a},[b],c:d\n" * 800_000}]})
    assert len(csv) > 9 << 20 and parse_cost(csv) < PARSE_BUDGET
    assert parse_request("openai_chat", csv).model == "gpt-4o"
    # many small values are as costly as they look
    values = b'{"model": "m", "input": [' + b'"ab",' * 2_000_000 + b'"ab"]}'
    assert parse_cost(values) > PARSE_BUDGET


@pytest.mark.parametrize(("api", "body", "images", "unsized"), [
    # a screenshot passed back to a computer-use model is an image, wherever it sits
    ("openai_responses", {"model": "m", "input": [{"type": "computer_call_output", "call_id": "c", "output": {
        "type": "computer_screenshot", "image_url": "https://x.test/s.png"}}]}, 1, False),
    # kinds of content no bound follows for, and kinds zone 2 does not know: default-deny
    ("openai_chat", {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "https://x.test/v.mp4"}}]}]}, 0, True),
    ("openai_chat", {"model": "m", "messages": [{"role": "user", "content": [{"type": "hologram", "id": "h"}]}]},
     0, True),
    ("openai_responses", {"model": "m", "input": [{"type": "web_search_call", "id": "ws_1"}]}, 0, True),
    ("anthropic_messages", {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "web_fetch_result", "url": "u"}]}]}]},
     0, True),
    # Gemini's OpenAI-compatible chat naming a cache kept upstream
    ("openai_chat", {"model": "m", "messages": [], "extra_body": {"google": {"cached_content": "c/1"}}}, 0, True),
    # what is whole in the body stays sized: text, tool calls and results, schemas with "type" keys
    ("openai_chat", {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                                                {"role": "assistant", "content": "ok", "tool_calls": []}],
                     "tools": [{"type": "function", "function": {"name": "f", "parameters": {
                         "type": "object", "properties": {"type": {"type": "string"}}}}}]}, 0, False),
    ("anthropic_messages", {"model": "m", "max_tokens": 1, "system": [{"type": "text", "text": "s"}],
                            "messages": [{"role": "user", "content": [
                                {"type": "tool_result", "tool_use_id": "t", "content": [
                                    {"type": "text", "text": "r"}, {"type": "image", "source": {"type": "url",
                                                                                          "url": "u"}}]}]}]},
     1, False),
])
def test_content_of_kinds_zone2_cannot_size_is_unsized(api: str, body: dict[str, Any], images: int,
                                                        unsized: bool) -> None:
    """A screenshot in a computer_call_output, a chat video_url part, a cache named in extra_body were reserved as
    a few bytes of text (the kinds were a deny-list): 40 screenshots reserved $0.017 for ~$2.46 of input."""
    media = parse_request(api, dumps(body)).media
    assert (media.images, media.unsized) == (images, unsized)
