"""The official OpenAI and Anthropic Python SDKs, unmodified, inside an agent, through zone 2.

The agent passes only a credential handle as its API key and no base URL: the
environment fleetd gives every agent (``OPENAI_BASE_URL``, ``ANTHROPIC_BASE_URL``)
points the SDKs at zone 2, which swaps in the real key toward the simulator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from tests.integration.sdk_fixtures import CHUNK_DELAY_MS, SdkBench, run_sdk_agent
from tests.integration.zone2_fixtures import Bench

STREAM_TOKENS = 12
MIN_SPREAD = STREAM_TOKENS * CHUNK_DELAY_MS / 1000 / 2

EMIT = """
import json, sys, time
def emit(kind, **fields):
    print(json.dumps({"kind": kind, **fields}), flush=True)
"""

OPENAI_SCRIPT = (
    EMIT
    + f"""
from openai import OpenAI
client = OpenAI(api_key="$CRED{{openai}}", max_retries=0, timeout=30)
emit("base_url", value=str(client.base_url))
MESSAGES = [{{"role": "user", "content": "say hello to the fleet"}}]

r = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=8)
emit("chat", content=r.choices[0].message.content, finish=r.choices[0].finish_reason, usage=r.usage.model_dump())

deltas, times, usage, finish = [], [], None, None
stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens={STREAM_TOKENS},
                                        stream=True, stream_options={{"include_usage": True}})
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        deltas.append(chunk.choices[0].delta.content)
        times.append(time.monotonic())
    if chunk.choices and chunk.choices[0].finish_reason:
        finish = chunk.choices[0].finish_reason
    if chunk.usage is not None:
        usage = chunk.usage.model_dump()
emit("chat_stream", deltas=deltas, finish=finish, usage=usage, spread=times[-1] - times[0])

r = client.responses.create(model="gpt-4o-mini", input="say hello to the fleet", max_output_tokens=8)
emit("responses", text=r.output_text, status=r.status, usage=r.usage.model_dump())
emit("done")
"""
)

ANTHROPIC_SCRIPT = (
    EMIT
    + f"""
from anthropic import Anthropic
client = Anthropic(api_key="$CRED{{anthropic}}", max_retries=0, timeout=30)
emit("base_url", value=str(client.base_url))
MESSAGES = [{{"role": "user", "content": "say hello to the fleet"}}]

m = client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MESSAGES)
emit("messages", text=m.content[0].text, stop=m.stop_reason, usage=m.usage.model_dump())

parts, times = [], []
with client.messages.stream(model="claude-sonnet-4-5", max_tokens={STREAM_TOKENS}, messages=MESSAGES) as stream:
    for text in stream.text_stream:
        parts.append(text)
        times.append(time.monotonic())
    final = stream.get_final_message()
emit("messages_stream", parts=parts, text=final.content[0].text, stop=final.stop_reason,
     usage=final.usage.model_dump(), spread=times[-1] - times[0])

# The key in X-Api-Key, as Anthropic's API documents it (the SDK itself sends a bearer token).
keyed = Anthropic(api_key=None, default_headers={{"X-Api-Key": "$CRED{{anthropic}}"}}, max_retries=0, timeout=30)
m = keyed.messages.create(model="claude-sonnet-4-5", max_tokens=4, messages=MESSAGES)
emit("messages_x_api_key", text=m.content[0].text)
emit("done")
"""
)


@pytest.fixture(scope="module")
def bench(engine: docker.DockerClient) -> Iterator[SdkBench]:
    b = SdkBench(engine)
    try:
        yield b
    finally:
        b.close()


def header(request: dict[str, Any], name: str) -> str | None:
    return next((v for k, v in request["headers"].items() if k.lower() == name.lower()), None)


def seen(bench: Bench, path: str) -> list[dict[str, Any]]:
    return [r for r in bench.sim_requests("llm") if r["path"] == path]


def test_openai_sdk_through_zone2(bench: SdkBench, sdk_image: str) -> None:
    logs, out = run_sdk_agent(bench, sdk_image, OPENAI_SCRIPT)
    assert out["base_url"]["value"].rstrip("/") == "http://zone2:8080/v1"

    chat = out["chat"]
    assert chat["content"] == " ".join(f"tok{i}" for i in range(8))
    assert chat["finish"] == "stop"
    assert chat["usage"]["completion_tokens"] == 8
    assert chat["usage"]["prompt_tokens"] == 5  # the words of the message
    assert chat["usage"]["total_tokens"] == 13

    stream = out["chat_stream"]
    assert "".join(stream["deltas"]) == " ".join(f"tok{i}" for i in range(STREAM_TOKENS))
    assert len(stream["deltas"]) == STREAM_TOKENS  # one delta per token: zone 2 did not merge events
    assert stream["finish"] == "stop"
    assert stream["usage"] == {**chat["usage"], "completion_tokens": STREAM_TOKENS, "total_tokens": 5 + STREAM_TOKENS}
    assert stream["spread"] >= MIN_SPREAD, f"tokens arrived together: zone 2 buffered the stream ({stream})"

    responses = out["responses"]
    assert responses["status"] == "completed"
    assert responses["text"] == " ".join(f"tok{i}" for i in range(8))
    assert (responses["usage"]["input_tokens"], responses["usage"]["output_tokens"]) == (5, 8)

    # The simulator got the real key, as a bearer token, on every call; the agent never saw it.
    calls = seen(bench, "/v1/chat/completions") + seen(bench, "/v1/responses")
    assert len(calls) == 3
    for call in calls:
        assert header(call, "Authorization") == f"Bearer {bench.secret}"
        assert "$CRED" not in json.dumps(call)
    assert [c["body"].get("stream") for c in seen(bench, "/v1/chat/completions")] == [None, True]
    assert bench.secret not in logs


def test_anthropic_sdk_through_zone2(bench: SdkBench, sdk_image: str) -> None:
    logs, out = run_sdk_agent(bench, sdk_image, ANTHROPIC_SCRIPT)
    assert out["base_url"]["value"].rstrip("/") == "http://zone2:8080"

    message = out["messages"]
    assert message["text"] == " ".join(f"tok{i}" for i in range(8))
    assert message["stop"] == "end_turn"
    assert (message["usage"]["input_tokens"], message["usage"]["output_tokens"]) == (5, 8)

    stream = out["messages_stream"]
    expected = " ".join(f"tok{i}" for i in range(STREAM_TOKENS))
    assert "".join(stream["parts"]) == expected and stream["text"] == expected
    assert len(stream["parts"]) == STREAM_TOKENS
    assert stream["stop"] == "end_turn"
    assert (stream["usage"]["input_tokens"], stream["usage"]["output_tokens"]) == (5, STREAM_TOKENS)
    assert stream["spread"] >= MIN_SPREAD, f"tokens arrived together: zone 2 buffered the stream ({stream})"

    assert out["messages_x_api_key"]["text"] == "tok0 tok1 tok2 tok3"

    # The simulator got the real key in the header it was sent in; the agent never saw it.
    secret = bench.anthropic_secret
    calls = seen(bench, "/v1/messages")
    assert [c["body"].get("stream") for c in calls] == [None, True, None]
    for call in calls[:2]:  # api_key=: this SDK sends it as a bearer token
        assert header(call, "Authorization") == f"Bearer {secret}"
        assert header(call, "x-api-key") is None
    assert header(calls[2], "x-api-key") == secret
    assert header(calls[2], "Authorization") is None
    for call in calls:
        assert header(call, "anthropic-version")  # the SDK's own headers pass through
        assert "$CRED" not in json.dumps(call)
    assert secret not in logs and bench.secret not in logs
