"""Google Gemini (``POST .../models/MODEL:generateContent`` and ``:streamGenerateContent``), the Gemini API's paths
and Vertex AI's (``/v1/projects/P/locations/L/publishers/google/models/MODEL:generateContent``).

The model is in the path, not the body. ``usageMetadata`` holds ``promptTokenCount`` (cached content included),
``cachedContentTokenCount``, ``toolUsePromptTokenCount`` (tool results read as input), ``candidatesTokenCount``
(the visible output of all candidates) and ``thoughtsTokenCount`` (thinking, billed as output, not part of the
candidates' count); Vertex adds ``trafficType``. A stream (``?alt=sse``: events, each a whole response; else a JSON
array written piece by piece) carries the counts cumulatively, in full on its last chunk.

Proto3's JSON mapping accepts every field in lowerCamelCase and in its proto name (``maxOutputTokens`` and
``max_output_tokens``), and 64-bit and 32-bit integers as strings: both spellings are read, and a field given in
both is refused, as a key given twice is.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from fleetd.zone2.llm import (
    BadLLMRequest,
    LLMRequest,
    Media,
    Usage,
    count,
    input_token_bound,
    keep_larger,
    label,
    loads,
    parse_object,
    served_by,
    walk,
)
from fleetd.zone2.providers.base import Provider, StreamUsage

METHODS = {"generatecontent": False, "streamgeneratecontent": True}  # method -> streamed
PRIORITY_TRAFFIC = "ON_DEMAND_PRIORITY"  # Vertex AI Priority PayGo, billed above the standard prices
# Tools Google runs during the call, billed per query or prompt on top of the tokens (grounding with Google Search:
# $14 per 1K queries on Gemini 3, $35 per 1K prompts on 2.5; Maps) or feeding what they fetch back as input over
# internal turns (URL context, code execution, file search): nothing in the request bounds their cost.
SERVER_TOOLS = frozenset({"googlesearch", "googlesearchretrieval", "codeexecution", "urlcontext", "filesearch",
                          "googlemaps", "enterprisewebsearch", "retrieval"})
_MEDIA_KEYS = frozenset({"inlineData", "inline_data", "fileData", "file_data", "mediaResolution",
                         "media_resolution"})
_COUNTS = ("promptTokenCount", "cachedContentTokenCount", "toolUsePromptTokenCount", "candidatesTokenCount",
           "thoughtsTokenCount")


@functools.cache
def _snake(name: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), name)


def get(obj: dict[str, Any], name: str) -> Any:
    """Field ``name`` (lowerCamelCase) of a request object, in either JSON spelling; given in both, refused."""
    snake = _snake(name)
    if name in obj and snake in obj and snake != name:
        raise BadLLMRequest(f'"{name}" and "{snake}" are the same field given twice: zone 2 cannot tell which one '
                            "the upstream reads")
    return obj.get(name, obj.get(snake))


def whole(obj: dict[str, Any], name: str, low: int) -> int | None:
    """An integer field (proto3 JSON also takes one as a decimal string): None when absent, else at least ``low``."""
    value = get(obj, name)
    if value is None:
        return None
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,18}", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BadLLMRequest(f'"{name}" must be a whole number of at least {low}')
    return value


def gemini_usage(metadata: object, traffic: object = None) -> Usage | None:
    """Usage from ``usageMetadata`` (None when it is not an object)."""
    if not isinstance(metadata, dict):
        return None
    prompt, cached = count(metadata.get("promptTokenCount")), count(metadata.get("cachedContentTokenCount"))
    thoughts = count(metadata.get("thoughtsTokenCount"))
    return Usage(
        input_tokens=max(prompt - cached, 0) + count(metadata.get("toolUsePromptTokenCount")),
        cached_input_tokens=cached,
        output_tokens=count(metadata.get("candidatesTokenCount")) + thoughts,
        reasoning_tokens=thoughts,
        service_tier=label(metadata.get("trafficType", traffic)),
    )


def scan_media(data: dict[str, Any]) -> Media:
    """Images (each up to the model's image_tokens, or the tokens its part asks for), and whether any other media
    is given: video, audio and PDFs are billed by their length or pages (258-1120 tokens a page, 263 a second of
    video at one frame a second, more at a higher fps), whether inline or by URI."""
    images = tokens = 0
    unsized = False
    for obj in walk(data):
        if not obj.keys() & _MEDIA_KEYS:
            continue
        for key in ("inlineData", "fileData"):
            media = get(obj, key)
            if not isinstance(media, dict):
                continue
            mime = get(media, "mimeType")
            if isinstance(mime, str) and mime.lower().startswith("image/"):
                images += 1
            else:
                unsized = True
        resolution = get(obj, "mediaResolution")
        if isinstance(resolution, dict):
            tokens += whole(resolution, "numTokens", 0) or 0
    return Media(images=images, tokens=tokens, unsized=unsized)


def server_tools(data: dict[str, Any]) -> tuple[str, ...]:
    found: list[str] = []
    tools = data.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        for key in tool if isinstance(tool, dict) else ():
            if key.replace("_", "").lower() in SERVER_TOOLS:
                found.append(key[:64])
    return tuple(dict.fromkeys(found))


class GeminiGenerate(Provider):
    api = "gemini_generate"
    usage_key = b"usageMetadata"
    markers = re.compile(rb'"usageMetadata"|"finishReason"')

    def matches(self, segments: list[str]) -> bool:
        return bool(segments) and segments[-1].rpartition(":")[2] in METHODS and ":" in segments[-1]

    def parse(self, body: bytes, segments: list[str]) -> LLMRequest:
        model, _, method = segments[-1].rpartition(":")
        if not model:
            raise BadLLMRequest("the path names no model (models/MODEL:generateContent)")
        data = parse_object(body)
        config = get(data, "generationConfig")
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise BadLLMRequest('"generationConfig" must be an object')
        thinking = get(config, "thinkingConfig")
        budget = whole(thinking, "thinkingBudget", -1) if isinstance(thinking, dict) else None
        return LLMRequest(
            api=self.api, model=model, stream=METHODS[method], max_output_tokens=whole(config, "maxOutputTokens", 0),
            choices=whole(config, "candidateCount", 1) or 1, input_token_bound=input_token_bound(body), body=body,
            # thinking is billed as output; the docs count it apart from maxOutputTokens: a budget of 0 or more
            # bounds it, a dynamic one (-1) or none is up to the model's max output
            thinking_tokens=budget if budget is not None and budget >= 0 else None,
            media=scan_media(data), unsized_input=get(data, "cachedContent") is not None,
            server_tools=server_tools(data),
        )

    def usage(self, answer: Any) -> Usage | None:
        if isinstance(answer, list):  # a stream without alt=sse: the array of its chunks, counts cumulative
            counted: dict[str, int] = {}
            traffic = model = None
            for chunk in answer:
                metadata = chunk.get("usageMetadata") if isinstance(chunk, dict) else None
                if isinstance(metadata, dict):
                    keep_larger(counted, metadata, _COUNTS)
                    traffic = metadata.get("trafficType", traffic)
                    model = chunk.get("modelVersion", model)
            return served_by(gemini_usage({**counted, "trafficType": traffic}), model) if counted else None
        if not isinstance(answer, dict):
            return None
        return served_by(gemini_usage(answer.get("usageMetadata"), answer.get("service_tier")),
                         answer.get("modelVersion"))

    def stream(self) -> StreamUsage:
        return GeminiStream()

    def served_at_priority(self, llm: LLMRequest, usage: Usage | None) -> bool:
        return usage is not None and usage.service_tier == PRIORITY_TRAFFIC


class GeminiStream(StreamUsage):
    def __init__(self) -> None:
        super().__init__()
        self._counts: dict[str, int] = {}
        self._traffic: object = None
        self._model: object = None

    def event(self, name: bytes, data: bytes) -> bool:
        event = loads(data)
        if not isinstance(event, dict):
            return False
        metadata = event.get("usageMetadata")
        if isinstance(metadata, dict):
            keep_larger(self._counts, metadata, _COUNTS)
            self._traffic = metadata.get("trafficType", self._traffic)
            self._model = event.get("modelVersion", self._model)
            self.usage = served_by(gemini_usage({**self._counts, "trafficType": self._traffic}), self._model)
        candidates = event.get("candidates")
        if isinstance(candidates, list) and any(isinstance(c, dict) and c.get("finishReason") for c in candidates):
            self.complete = True
        return False
