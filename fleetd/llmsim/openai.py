"""OpenAI's APIs as the simulator serves them: chat completions, Responses, embeddings, models."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import time
import uuid
from typing import Any

from aiohttp import web

from fleetd.llmsim.core import (
    MAX_STORED_RESPONSES,
    SIM,
    SimConfig,
    answer_model,
    count_words,
    cut,
    gate,
    openai_error,
    take_break,
    usage_numbers,
    words,
)


def served_tier(data: dict[str, Any], config: SimConfig) -> str:
    """The ``service_tier`` an OpenAI answer names, as the real API does: the tier asked for, "auto" -> "default"."""
    asked = data.get("service_tier")
    return config.service_tier or (asked if isinstance(asked, str) and asked != "auto" else "default")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    data, refusal = await gate(request)
    if refusal:
        return refusal
    config = request.app[SIM].config
    prompt, completion = usage_numbers(data, config)
    model = answer_model(data, config)
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
        "status": "completed", "model": answer_model(data, config), "output": [message],
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
        "object": "list", "model": answer_model(data, request.app[SIM].config, "sim-embedding"),
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    })


async def models(request: web.Request) -> web.Response:
    _, refusal = await gate(request)
    if refusal:
        return refusal
    return web.json_response({"object": "list", "data": [{"id": "sim-model", "object": "model", "owned_by": "sim"}]})
