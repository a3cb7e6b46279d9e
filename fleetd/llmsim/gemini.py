"""Google Gemini's generateContent as the simulator serves it (Gemini API and Vertex AI paths).

``:generateContent`` answers one response; ``:streamGenerateContent?alt=sse`` a stream of events, each a whole
response with the counts so far; ``:streamGenerateContent`` without ``alt=sse`` the same chunks as one JSON array
written piece by piece. ``usageMetadata`` reports ``promptTokenCount`` (cached content included),
``cachedContentTokenCount``, ``candidatesTokenCount`` (all candidates) and ``thoughtsTokenCount`` (apart from the
candidates), as Google does.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from aiohttp import web

from fleetd.llmsim.core import SIM, SimConfig, count_words, cut, gate, image_tokens, openai_error, take_break, words


def _field(obj: Any, camel: str, snake: str) -> Any:
    return obj.get(camel, obj.get(snake)) if isinstance(obj, dict) else None


def prompt_tokens(data: dict[str, Any], config: SimConfig) -> int:
    texts = [part.get("text") for content in data.get("contents") or [] if isinstance(content, dict)
             for part in content.get("parts") or [] if isinstance(part, dict)]
    system = _field(data, "systemInstruction", "system_instruction")
    for part in (system.get("parts") or []) if isinstance(system, dict) else []:
        texts.append(part.get("text") if isinstance(part, dict) else None)
    return max(1, sum(count_words(t) for t in texts) + image_tokens(data, config))


def usage_metadata(prompt: int, candidates: int, thoughts: int, config: SimConfig) -> dict[str, Any]:
    cached = min(config.cached_tokens, prompt)
    metadata = {"promptTokenCount": prompt, "candidatesTokenCount": candidates,
                "totalTokenCount": prompt + candidates + thoughts}
    if thoughts:
        metadata["thoughtsTokenCount"] = thoughts
    if cached:
        metadata["cachedContentTokenCount"] = cached
    return metadata


async def generate(request: web.Request) -> web.StreamResponse:
    model, _, method = request.match_info["call"].rpartition(":")
    if method not in ("generateContent", "streamGenerateContent") or not model:
        return openai_error(404, "not_found", f"unknown method {method!r}")
    data, refusal = await gate(request)
    if refusal:
        return refusal
    config = request.app[SIM].config
    generation = _field(data, "generationConfig", "generation_config") or {}
    limit = _field(generation, "maxOutputTokens", "max_output_tokens")
    per_candidate = max(1, min(config.output_tokens, int(limit)) if limit else config.output_tokens)
    candidates = int(_field(generation, "candidateCount", "candidate_count") or 1)
    thinking = _field(generation, "thinkingConfig", "thinking_config") or {}
    budget = _field(thinking, "thinkingBudget", "thinking_budget")
    thoughts = config.reasoning_tokens if budget is None or int(budget) < 0 else min(config.reasoning_tokens,
                                                                                      int(budget))
    prompt = prompt_tokens(data, config)
    base = {"modelVersion": config.served_model or model, "responseId": uuid.uuid4().hex[:16]}

    def chunk(texts: list[str], done: int, finished: bool) -> dict[str, Any]:
        return {**base, "candidates": [
            {"content": {"role": "model", "parts": [{"text": text}]}, "index": i,
             **({"finishReason": "STOP"} if finished else {})} for i, text in enumerate(texts)],
            "usageMetadata": usage_metadata(prompt, done * candidates, thoughts if finished else 0, config)}

    if method == "generateContent":
        return web.json_response(chunk([" ".join(words(per_candidate))] * candidates, per_candidate, True))
    sse = request.query.get("alt") == "sse"
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream" if sse else "application/json"})
    await response.prepare(request)
    broken = take_break(config)
    for i, word in enumerate(words(per_candidate)):
        if broken and i == per_candidate // 2:
            return await cut(request, response)
        last = i == per_candidate - 1
        payload = json.dumps(chunk([(" " if i else "") + word] * candidates, i + 1, last))
        if sse:
            await response.write(f"data: {payload}\r\n\r\n".encode())
        else:
            await response.write((("[" if i == 0 else ",\r\n") + payload + ("]" if last else "")).encode())
        await asyncio.sleep(config.chunk_delay_ms / 1000)
    await response.write_eof()
    return response
