"""A local OpenAI/Anthropic-compatible LLM simulator, for demos and offline tests.

``fleetd llm-sim --port 8000`` serves:

- ``POST /v1/chat/completions`` (OpenAI; ``stream`` with ``stream_options.include_usage``)
- ``POST /v1/responses`` (OpenAI Responses API; ``stream`` ends with ``response.completed``; a
  ``previous_response_id`` adds that response's input and output tokens to the input, as upstream state)
- ``POST /v1/messages`` (Anthropic; ``stream`` with message_start/message_delta usage)
- ``POST /v1/embeddings`` (OpenAI; floats or ``encoding_format: "base64"``; input tokens = words, or the
  length of a token list), also at Azure OpenAI's ``/openai/deployments/NAME/embeddings``
- ``GET /v1/models``

Token counts are deterministic: input = words in the request's messages,
output = ``max_tokens`` (or ``--output-tokens``) capped. Knobs for testing
agents' behaviour: ``--latency-ms``, ``--chunk-delay-ms``, ``--rate-limit N``
(answer the next N calls with 429 + Retry-After), ``--fail N`` (500s). The same
knobs can be changed at run time with ``POST /sim/config``, and
``GET /sim/requests`` shows the requests seen (headers included: the point is
to show that a real key arrived here and nowhere else).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class SimConfig:
    latency_ms: int = 0
    chunk_delay_ms: int = 10
    output_tokens: int = 16
    rate_limit: int = 0  # answer this many next calls with 429
    retry_after: int = 1
    fail: int = 0  # answer this many next calls with fail_status
    fail_status: int = 500
    cached_tokens: int = 0  # of the input, reported as cache reads (at most the input)
    cache_write_tokens: int = 0  # Anthropic: reported as cache_creation_input_tokens
    cache_write_1h_tokens: int = 0  # Anthropic: of those, reported as written to 1-hour entries (the rest 5-minute)
    service_tier: str | None = None  # OpenAI: the tier answers name (default: the one asked for; "auto" -> "default")
    reasoning_tokens: int = 0  # of the output, reported as reasoning (at most the output)
    break_streams: int = 0  # cut this many next streams off halfway, before any usage is sent
    require_key: str | None = None  # when set, any other bearer / x-api-key gets 401 naming it
    inference_geo: str = "global"  # Anthropic: where calls that do not ask run (a workspace's default_inference_geo)
    summary_tokens: int = 20  # Anthropic threshold compaction: the summary's length (at most max_tokens)


MAX_STORED_RESPONSES = 10_000  # the oldest is forgotten first


@dataclass
class Sim:
    config: SimConfig = field(default_factory=SimConfig)
    requests: list[dict[str, Any]] = field(default_factory=list)  # the last 200
    answered: dict[int, int] = field(default_factory=dict)  # status -> count, since start
    # Responses: the tokens each stored response leaves in its conversation (input + output), which a call naming
    # it as previous_response_id reads again, as the real API does
    contexts: dict[str, int] = field(default_factory=dict)


SIM = web.AppKey("sim", Sim)


def count_words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(count_words(v) for v in value)
    if isinstance(value, dict):
        return sum(count_words(v) for k, v in value.items() if k in ("content", "text", "input", "messages", "system"))
    return 0


def openai_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"type": code, "code": code, "message": message}}
    return web.json_response(body, status=status, headers=headers)


async def gate(request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
    """Record the request and apply the failure knobs."""
    sim = request.app[SIM]
    raw = await request.read()
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}, openai_error(400, "invalid_request_error", "malformed JSON")
    sim.requests.append({"method": request.method, "path": request.path_qs, "headers": dict(request.headers),
                         "body": data, "time": time.time()})
    del sim.requests[:-200]
    config = sim.config
    if config.latency_ms:
        await asyncio.sleep(config.latency_ms / 1000)
    key = request.headers.get("x-api-key") or request.headers.get("Authorization", "").removeprefix("Bearer ")
    if config.require_key is not None and key != config.require_key:
        return data, openai_error(401, "invalid_api_key", f"Incorrect API key provided: {key}")
    if config.rate_limit > 0:
        config.rate_limit -= 1
        return data, openai_error(429, "rate_limit_exceeded", "Rate limit reached",
                                  {"Retry-After": str(config.retry_after)})
    if config.fail > 0:
        config.fail -= 1
        return data, openai_error(config.fail_status, "server_error" if config.fail_status >= 500
                                  else "invalid_request_error", f"simulated {config.fail_status}")
    return data, None


def usage_numbers(data: dict[str, Any], config: SimConfig) -> tuple[int, int]:
    prompt = max(1, count_words(data.get("messages") or data.get("input") or []) + count_words(data.get("system")))
    limit = data.get("max_tokens") or data.get("max_completion_tokens") or data.get("max_output_tokens")
    completion = min(config.output_tokens, int(limit)) if limit else config.output_tokens
    return prompt, max(1, completion)


def served_tier(data: dict[str, Any], config: SimConfig) -> str:
    """The ``service_tier`` an OpenAI answer names, as the real API does: the tier asked for, "auto" -> "default"."""
    asked = data.get("service_tier")
    return config.service_tier or (asked if isinstance(asked, str) and asked != "auto" else "default")


def anthropic_usage(prompt: int, output: int, config: SimConfig, data: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's usage object; ``speed`` and ``inference_geo`` as asked ("fast" served as asked; the geo asked
    for, else the workspace default ``config.inference_geo``), as the real API reports them."""
    one_hour = min(config.cache_write_1h_tokens, config.cache_write_tokens)
    geo = data.get("inference_geo")
    return {"input_tokens": prompt, "output_tokens": output, "cache_creation_input_tokens": config.cache_write_tokens,
            "cache_read_input_tokens": config.cached_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": config.cache_write_tokens - one_hour,
                               "ephemeral_1h_input_tokens": one_hour},
            "service_tier": "standard", "speed": "fast" if data.get("speed") == "fast" else "standard",
            "inference_geo": geo if isinstance(geo, str) else config.inference_geo}


def compaction(data: dict[str, Any], prompt: int, completion: int,
               config: SimConfig) -> tuple[int, list[dict[str, Any]] | None]:
    """Anthropic threshold compaction (a ``context_management.edits`` entry of type compact_*): when the input
    reaches its trigger, a summary step reads the whole input and writes ``config.summary_tokens`` (at most
    max_tokens), and the reply reads the summary. Returns the reply's input and ``usage.iterations`` (None without
    the edit). As the real API reports it, the top-level counts are the reply's alone."""
    management = data.get("context_management")
    edits = management.get("edits") if isinstance(management, dict) else None
    edit = next((e for e in edits or () if isinstance(e, dict) and str(e.get("type", "")).startswith("compact_")),
                None)
    if edit is None:
        return prompt, None
    trigger = edit.get("trigger")
    threshold = trigger.get("value", 150_000) if isinstance(trigger, dict) else 150_000
    if prompt < threshold:
        return prompt, [{"type": "message", "input_tokens": prompt, "output_tokens": completion}]
    summary = min(config.summary_tokens, int(data.get("max_tokens") or config.summary_tokens))
    return summary, [{"type": "compaction", "input_tokens": prompt, "output_tokens": summary},
                     {"type": "message", "input_tokens": summary, "output_tokens": completion}]


def take_break(config: SimConfig) -> bool:
    """Whether this stream is one to cut off halfway."""
    if config.break_streams > 0:
        config.break_streams -= 1
        return True
    return False


async def cut(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """End a stream abruptly: close the connection with no terminating chunk."""
    if request.transport is not None:
        request.transport.close()
    return response


def words(n: int) -> list[str]:
    return [f"tok{i}" for i in range(n)]


async def chat_completions(request: web.Request) -> web.StreamResponse:
    data, refusal = await gate(request)
    if refusal:
        return refusal
    config = request.app[SIM].config
    prompt, completion = usage_numbers(data, config)
    model = data.get("model", "sim-model")
    ident = f"chatcmpl-{uuid.uuid4().hex[:12]}"
    cached, reasoning = min(config.cached_tokens, prompt), min(config.reasoning_tokens, completion)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
             "prompt_tokens_details": {"cached_tokens": cached},
             "completion_tokens_details": {"reasoning_tokens": reasoning}}
    if not data.get("stream"):
        return web.json_response({
            "id": ident, "object": "chat.completion", "created": int(time.time()), "model": model,
            "service_tier": served_tier(data, config),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words(completion))},
                         "finish_reason": "stop"}],
            "usage": usage,
        })
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)

    async def send(chunk: dict[str, Any]) -> None:
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

    base = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "service_tier": served_tier(data, config)}
    include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
    broken = take_break(config)
    for i, word in enumerate(words(completion)):
        if broken and i == completion // 2:
            return await cut(request, response)
        delta = {"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
        await send({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                    **({"usage": None} if include_usage else {})})
        await asyncio.sleep(config.chunk_delay_ms / 1000)
    await send({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                **({"usage": None} if include_usage else {})})
    if include_usage:
        await send({**base, "choices": [], "usage": usage})
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def responses(request: web.Request) -> web.StreamResponse:
    data, refusal = await gate(request)
    if refusal:
        return refusal
    sim = request.app[SIM]
    config = sim.config
    prompt, completion = usage_numbers(data, config)
    previous = data.get("previous_response_id")
    if previous is not None:
        if previous not in sim.contexts:
            return openai_error(400, "invalid_request_error", f"Previous response with id '{previous}' not found.")
        prompt += sim.contexts[previous]
    text = " ".join(words(completion))
    ident = f"resp_{uuid.uuid4().hex[:12]}"
    if data.get("store", True) is not False:
        sim.contexts[ident] = prompt + completion
        if len(sim.contexts) > MAX_STORED_RESPONSES:
            del sim.contexts[next(iter(sim.contexts))]
    message = {"type": "message", "id": f"msg_{uuid.uuid4().hex[:8]}", "status": "completed",
               "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}
    body = {
        "id": ident, "object": "response", "created_at": int(time.time()),
        "status": "completed", "model": data.get("model", "sim-model"), "output": [message],
        "service_tier": served_tier(data, config),
        "usage": {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion,
                  "input_tokens_details": {"cached_tokens": min(config.cached_tokens, prompt)},
                  "output_tokens_details": {"reasoning_tokens": min(config.reasoning_tokens, completion)}},
    }
    if not data.get("stream"):
        return web.json_response(body)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    sequence = 0

    async def send(event: str, payload: dict[str, Any]) -> None:
        nonlocal sequence
        data = json.dumps({"type": event, "sequence_number": sequence, **payload})
        await response.write(f"event: {event}\ndata: {data}\n\n".encode())
        sequence += 1

    pending = {**body, "status": "in_progress", "output": [], "usage": None}
    await send("response.created", {"response": pending})
    await send("response.in_progress", {"response": pending})
    await send("response.output_item.added", {"output_index": 0, "item": {**message, "status": "in_progress",
                                                                          "content": []}})
    await send("response.content_part.added", {"item_id": message["id"], "output_index": 0, "content_index": 0,
                                               "part": {"type": "output_text", "text": "", "annotations": []}})
    broken = take_break(config)
    for i, word in enumerate(words(completion)):
        if broken and i == completion // 2:
            return await cut(request, response)
        await send("response.output_text.delta", {"item_id": message["id"], "output_index": 0, "content_index": 0,
                                                  "delta": (" " if i else "") + word, "logprobs": []})
        await asyncio.sleep(config.chunk_delay_ms / 1000)
    await send("response.output_text.done", {"item_id": message["id"], "output_index": 0, "content_index": 0,
                                             "text": text, "logprobs": []})
    await send("response.content_part.done", {"item_id": message["id"], "output_index": 0, "content_index": 0,
                                              "part": message["content"][0]})
    await send("response.output_item.done", {"output_index": 0, "item": message})
    await send("response.completed", {"response": body})
    await response.write_eof()
    return response


async def messages(request: web.Request) -> web.StreamResponse:
    data, refusal = await gate(request)
    if refusal:
        return refusal
    config = request.app[SIM].config
    prompt, completion = usage_numbers(data, config)
    prompt, iterations = compaction(data, prompt, completion, config)
    model = data.get("model", "sim-model")
    ident = f"msg_{uuid.uuid4().hex[:12]}"
    if not data.get("stream"):
        usage = anthropic_usage(prompt, completion, config, data)
        return web.json_response({
            "id": ident, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": " ".join(words(completion))}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": usage if iterations is None else {**usage, "iterations": iterations},
        })
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)

    async def send(event: str, payload: dict[str, Any]) -> None:
        await response.write(f"event: {event}\ndata: {json.dumps(payload)}\n\n".encode())

    await send("message_start", {"type": "message_start", "message": {
        "id": ident, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": anthropic_usage(prompt, 1, config, data)}})
    await send("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}})
    broken = take_break(config)
    for i, word in enumerate(words(completion)):
        if broken and i == completion // 2:
            return await cut(request, response)
        await send("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": (" " if i else "") + word}})
        await asyncio.sleep(config.chunk_delay_ms / 1000)
    await send("content_block_stop", {"type": "content_block_stop", "index": 0})
    final = {"output_tokens": completion} if iterations is None else {"output_tokens": completion,
                                                                       "iterations": iterations}
    await send("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                 "usage": final})
    await send("message_stop", {"type": "message_stop"})
    await response.write_eof()
    return response


EMBEDDING_DIMENSIONS = 8


async def embeddings(request: web.Request) -> web.Response:
    """OpenAI's embeddings: one vector per input (a string, or a list of strings or of token lists), as floats or,
    with ``encoding_format: "base64"`` (what the official SDK asks for), as little-endian float32 in base64."""
    data, refusal = await gate(request)
    if refusal:
        return refusal
    given = data.get("input")
    inputs = given if isinstance(given, list) and given and not all(isinstance(v, int) for v in given) else [given]
    dimensions = data.get("dimensions")
    size = dimensions if isinstance(dimensions, int) and 0 < dimensions <= 4096 else EMBEDDING_DIMENSIONS
    prompt = 0
    vectors: list[Any] = []
    for index, item in enumerate(inputs):
        prompt += len(item) if isinstance(item, list) else max(1, count_words(item))
        vector = [round(math.sin(index + k), 6) for k in range(size)]
        if data.get("encoding_format") == "base64":
            vectors.append(base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode())
        else:
            vectors.append(vector)
    return web.json_response({
        "object": "list", "model": data.get("model", "sim-embedding"),
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    })


async def models(request: web.Request) -> web.Response:
    _, refusal = await gate(request)
    if refusal:
        return refusal
    return web.json_response({"object": "list", "data": [{"id": "sim-model", "object": "model", "owned_by": "sim"}]})


async def sim_redirect(request: web.Request) -> web.Response:
    """Answer with a redirect to ``?to=`` (to show a proxy does not follow it with a key)."""
    raise web.HTTPFound(request.query.get("to", "/"))


async def sim_requests(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM].requests)


async def sim_stats(request: web.Request) -> web.Response:
    """How many API calls were answered, by status, since the simulator started."""
    answered = request.app[SIM].answered
    return web.json_response({"requests": sum(answered.values()), "by_status": answered})


@web.middleware
async def count(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    if request.path.startswith("/v1/"):
        answered = request.app[SIM].answered
        answered[response.status] = answered.get(response.status, 0) + 1
    return response


async def sim_config(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    if request.method == "POST":
        sim.config = SimConfig(**{**asdict(sim.config), **(await request.json())})
    return web.json_response(asdict(sim.config))


def init_sim(config: SimConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=16 << 20, middlewares=[count])
    app[SIM] = Sim(config or SimConfig())
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/openai/deployments/{deployment}/embeddings", embeddings)  # Azure OpenAI's path
    app.router.add_get("/v1/models", models)
    app.router.add_get("/sim/requests", sim_requests)
    app.router.add_get("/sim/stats", sim_stats)
    app.router.add_route("*", "/sim/redirect", sim_redirect)
    app.router.add_get("/sim/config", sim_config)
    app.router.add_post("/sim/config", sim_config)
    return app


def run(host: str, port: int, config: SimConfig) -> None:
    web.run_app(init_sim(config), host=host, port=port, access_log=None, print=None)
