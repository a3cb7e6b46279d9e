"""Anthropic's messages API as the simulator serves it, threshold compaction included."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from aiohttp import web

from fleetd.llmsim.core import SIM, SimConfig, answer_model, cut, gate, take_break, usage_numbers, words


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


async def messages(request: web.Request) -> web.StreamResponse:
    data, refusal = await gate(request)
    if refusal:
        return refusal
    config = request.app[SIM].config
    prompt, completion = usage_numbers(data, config)
    prompt, iterations = compaction(data, prompt, completion, config)
    model = answer_model(data, config)
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
