"""Anthropic messages (``POST /v1/messages``).

``usage`` holds ``input_tokens`` (cache NOT included), ``cache_creation_input_tokens``, ``cache_read_input_tokens``
and ``output_tokens``; ``cache_creation`` splits the writes into 5-minute and 1-hour entries; ``speed``,
``inference_geo`` and ``service_tier`` say how it was served. A stream starts with ``message_start``
(``message.usage``: input and cache counts), has ``message_delta`` events whose ``usage`` is cumulative
(``output_tokens``, sometimes input and cache counts too) and ends with ``message_stop``. Server-side compaction
is a sampling step of its own that the top-level counts leave out: ``usage.iterations`` lists it.
"""

from __future__ import annotations

import re
from typing import Any

from fleetd.zone2.llm import (
    LLMRequest,
    Usage,
    count,
    detail,
    input_token_bound,
    keep_larger,
    label,
    loads,
    max_tokens_field,
    model_field,
    parse_object,
    served_by,
    stream_field,
    string_field,
)
from fleetd.zone2.providers import parts
from fleetd.zone2.providers.base import Provider, StreamUsage
from fleetd.zone2.providers.openai_chat import USAGE_ANYWHERE, USAGE_OBJECT

_LABELS = ("service_tier", "speed", "inference_geo")
_COUNTS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
_CREATION = ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")


def anthropic_usage(usage: object) -> Usage | None:
    """Usage from an Anthropic ``usage`` object (None when it is not an object).

    ``cache_creation_input_tokens`` counts every cache write; ``cache_creation.ephemeral_1h_input_tokens`` says how
    many of them went to 1-hour entries, which cost more than the 5-minute ones. Each ``compaction`` entry of
    ``usage.iterations`` is added (the other entries are what the top level sums).
    """
    if not isinstance(usage, dict):
        return None
    uncached, cached, written, output, one_hour = (
        sum(column) for column in zip(*map(_counts, [usage, *_compaction_iterations(usage)]), strict=True))
    return Usage(
        input_tokens=uncached,
        cached_input_tokens=cached,
        cache_write_tokens=written,
        output_tokens=output,
        cache_write_1h_tokens=one_hour,
        service_tier=label(usage.get("service_tier")),
        speed=label(usage.get("speed")),
        inference_geo=label(usage.get("inference_geo")),
    )


def _counts(usage: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """(input, cache reads, cache writes, output, 1-hour cache writes) of one usage object or iteration."""
    one_hour = detail(usage, "cache_creation", "ephemeral_1h_input_tokens")
    five_minutes = detail(usage, "cache_creation", "ephemeral_5m_input_tokens")
    return (count(usage.get("input_tokens")), count(usage.get("cache_read_input_tokens")),
            max(count(usage.get("cache_creation_input_tokens")), one_hour + five_minutes),
            count(usage.get("output_tokens")), one_hour)


def _compaction_iterations(usage: dict[str, Any]) -> list[dict[str, Any]]:
    iterations = usage.get("iterations")
    if not isinstance(iterations, list):
        return []
    return [i for i in iterations if isinstance(i, dict) and i.get("type") == "compaction"]


def threshold_compaction(data: dict[str, Any]) -> bool:
    """A request whose ``context_management.edits`` has a compaction edit (``compact_20260112``)."""
    management = data.get("context_management")
    edits = management.get("edits") if isinstance(management, dict) else None
    return isinstance(edits, list) and any(
        isinstance(e, dict) and isinstance(e.get("type"), str) and e["type"].startswith("compact_") for e in edits)


class AnthropicMessages(Provider):
    api = "anthropic_messages"
    markers = re.compile(USAGE_ANYWHERE + rb"|message_stop")

    def matches(self, segments: list[str]) -> bool:
        return segments == ["messages"] or segments[-2:] == ["v1", "messages"]

    def parse(self, body: bytes, segments: list[str]) -> LLMRequest:
        data = parse_object(body)
        model, stream = model_field(data), stream_field(data)
        tier, speed, geo = (string_field(data, key) for key in ("service_tier", "speed", "inference_geo"))
        scan = parts.scan(data)
        return LLMRequest(
            api=self.api, model=model, stream=stream, max_output_tokens=max_tokens_field(data, "max_tokens"),
            choices=1, input_token_bound=input_token_bound(body), body=body, media=scan.media, service_tier=tier,
            fast=speed == "fast",
            # US-only inference may be the workspace's default (default_inference_geo), unasked: reserved unless the
            # request asks for global routing
            us_only=geo != "global",
            cache_1h=scan.one_hour_cache, server_tools=parts.server_tools(data), speed=speed, inference_geo=geo,
            sampling_passes=2 if threshold_compaction(data) else 1,
            model_fallbacks=data.get("fallbacks") not in (None, [], ""),
        )

    def usage(self, answer: Any) -> Usage | None:
        if not isinstance(answer, dict):
            return None
        return served_by(anthropic_usage(answer.get("usage")), answer.get("model"))

    def stream(self) -> StreamUsage:
        return MessagesStream()


class MessagesStream(StreamUsage):
    """message_start's counts (and its cache_creation split), raised by later message_delta counts."""

    def __init__(self) -> None:
        super().__init__()
        self._counts: dict[str, int] = {}
        self._creation: dict[str, int] = {}
        self._labels: dict[str, str] = {}  # service_tier, speed, inference_geo: the latest given
        self._iterations: list[Any] = []  # usage.iterations, the latest given (compaction steps)
        self._model: object = None  # message_start's message.model

    def event(self, name: bytes, data: bytes) -> bool:
        if b"message_stop" not in data and name != b"message_stop" and USAGE_OBJECT.search(data) is None:
            return False
        event = loads(data)
        if not isinstance(event, dict):
            return False
        kind = event.get("type", name.decode(errors="replace"))
        if kind == "message_stop":
            self.complete = True
            return False
        if kind == "message_start":
            message = event.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if not isinstance(usage, dict):
                return False
            self._counts, self._creation, self._labels, self._iterations = {}, {}, {}, []
            self._model = message.get("model") if isinstance(message, dict) else None
        elif kind == "message_delta":
            usage = event.get("usage")
            if not isinstance(usage, dict):
                return False
        else:
            return False
        # message_delta counts are cumulative: the larger count is the later one, whichever event carried it
        keep_larger(self._counts, usage, _COUNTS)
        creation = usage.get("cache_creation")
        if isinstance(creation, dict):
            keep_larger(self._creation, creation, _CREATION)
        for key in _LABELS:
            value = label(usage.get(key))
            if value is not None:
                self._labels[key] = value
        iterations = usage.get("iterations")
        if isinstance(iterations, list) and len(iterations) >= len(self._iterations):
            self._iterations = iterations
        self.usage = served_by(anthropic_usage({**self._counts, "cache_creation": self._creation, **self._labels,
                                                "iterations": self._iterations}), self._model)
        return False
