"""OpenAI Responses (``POST /v1/responses``, Azure's ``/openai/responses``, and ``/v1/responses/compact``).

``usage`` holds ``input_tokens`` (cached included), ``input_tokens_details.cached_tokens``, ``output_tokens`` and
``output_tokens_details.reasoning_tokens``. A stream ends with a ``response.completed`` (or ``response.incomplete``
/ ``response.failed``) event whose ``response`` carries the usage. A call may read input kept upstream: the whole
context of a ``previous_response_id`` (which zone 2 records for the responses it relays), a ``conversation``, a
stored ``prompt``, items by reference; compaction (``/compact``, a ``compaction_trigger`` item or
``context_management``) is a sampling pass of its own before the reply.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from fleetd.zone2.llm import (
    BadLLMRequest,
    LLMRequest,
    Usage,
    input_token_bound,
    loads,
    max_tokens_field,
    model_field,
    parse_object,
    served_by,
    stream_field,
    string_field,
)
from fleetd.zone2.providers import parts
from fleetd.zone2.providers._openai import OpenAIShaped, openai_usage
from fleetd.zone2.providers.base import StreamUsage

MAX_RESPONSE_ID = 128  # a Responses id longer than this is not recorded (real ones are "resp_" and ~50 hex digits)
END_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_END_BYTES = tuple(kind.encode() for kind in END_EVENTS)


def responses_usage(usage: object, service_tier: object = None, response_id: object = None) -> Usage | None:
    """Usage from a Responses ``usage`` object (None when it is not an object), the response's ``service_tier`` and
    its ``id``."""
    found = openai_usage(usage, "input", "output", service_tier)
    if found is None or not (isinstance(response_id, str) and 0 < len(response_id) <= MAX_RESPONSE_ID):
        return found
    return replace(found, response_id=response_id)


def compacts(data: dict[str, Any]) -> bool:
    """A compaction pass before the reply: a ``compaction_trigger`` input item or ``context_management`` of type
    compaction."""
    items = data.get("input")
    management = data.get("context_management")
    return (isinstance(items, list) and any(isinstance(i, dict) and i.get("type") == "compaction_trigger"
                                            for i in items)) or (
        isinstance(management, list) and any(isinstance(m, dict) and m.get("type") == "compaction"
                                             for m in management))


class OpenAIResponses(OpenAIShaped):
    api = "openai_responses"
    markers = re.compile(b"|".join(re.escape(kind) for kind in _END_BYTES))

    def matches(self, segments: list[str]) -> bool:
        if segments[-1:] == ["compact"]:
            segments = segments[:-1]
        return segments == ["responses"] or segments[-2:] in (["v1", "responses"], ["openai", "responses"])

    def parse(self, body: bytes, segments: list[str]) -> LLMRequest:
        data = parse_object(body)
        model, stream = model_field(data), stream_field(data)
        previous = data.get("previous_response_id")
        if previous is not None and not isinstance(previous, str):
            raise BadLLMRequest('"previous_response_id" must be a string')
        tier = string_field(data, "service_tier")
        scan = parts.scan(data)
        kept_upstream = any(data.get(key) is not None for key in ("conversation", "prompt"))
        return LLMRequest(
            api=self.api, model=model, stream=stream, max_output_tokens=max_tokens_field(data, "max_output_tokens"),
            choices=1, input_token_bound=input_token_bound(body), body=body, media=scan.media, service_tier=tier,
            priority=tier == "priority", previous_response_id=previous,
            unsized_input=kept_upstream or scan.stored_items, truncates=data.get("truncation") == "auto",
            server_tools=parts.server_tools(data),
            sampling_passes=2 if compacts(data) else 1,  # /compact is one pass: the compaction is its answer
        )

    def usage(self, answer: Any) -> Usage | None:
        if not isinstance(answer, dict):
            return None
        return served_by(responses_usage(answer.get("usage"), answer.get("service_tier"), answer.get("id")),
                         answer.get("model"))

    def stream(self) -> StreamUsage:
        return ResponsesStream()


class ResponsesStream(StreamUsage):
    def event(self, name: bytes, data: bytes) -> bool:
        if name not in _END_BYTES and not any(kind in data for kind in _END_BYTES):
            return False
        event = loads(data)
        if not isinstance(event, dict):
            return False
        kind = event.get("type", name.decode(errors="replace"))
        if not isinstance(kind, str) or kind not in END_EVENTS:
            return False
        self.complete = True
        response = event.get("response")
        if isinstance(response, dict):
            usage = served_by(responses_usage(response.get("usage"), response.get("service_tier"),
                                              response.get("id")), response.get("model"))
            if usage is not None:
                self.usage = usage
        return False
