"""OpenAI chat completions (``POST .../chat/completions``), also Azure's and every vendor that copies it.

``usage`` holds ``prompt_tokens`` (cached tokens included), ``completion_tokens`` (reasoning included),
``prompt_tokens_details.cached_tokens`` and ``completion_tokens_details.reasoning_tokens``. A stream only carries
usage when the request sets ``stream_options: {"include_usage": true}``: then every chunk has ``"usage": null`` and
one extra chunk with ``"choices": []`` and the usage comes just before ``data: [DONE]``. Zone 2 asks for it when the
client did not, and hides that chunk from the client.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fleetd.zone2.llm import (
    BadLLMRequest,
    LLMRequest,
    Usage,
    dumps,
    input_token_bound,
    is_int,
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

USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')  # a non-null usage: "usage":null does not match
USAGE_ANYWHERE = rb'"usage"[^"{]*\{'  # looser: "usage" and its object may sit on different data lines
_USAGE_OPTION = b',"stream_options":{"include_usage":true}'


def with_usage(data: bytes) -> dict[str, Any] | None:
    """An event's JSON object when it holds a non-null ``usage`` (a cheap search first, then the parse)."""
    if USAGE_OBJECT.search(data) is None:
        return None
    event = loads(data)
    return event if isinstance(event, dict) else None


def chat_usage(usage: object, service_tier: object = None) -> Usage | None:
    """Usage from a chat ``usage`` object (None when it is not an object) and the completion's ``service_tier``."""
    return openai_usage(usage, "prompt", "completion", service_tier)


class OpenAIChat(OpenAIShaped):
    api = "openai_chat"
    markers = re.compile(USAGE_ANYWHERE + rb"|\[DONE\]")

    def matches(self, segments: list[str]) -> bool:
        return segments[-2:] == ["chat", "completions"]

    def parse(self, body: bytes, segments: list[str]) -> LLMRequest:
        data = parse_object(body)
        model, stream = model_field(data), stream_field(data)
        limits = [max_tokens_field(data, "max_completion_tokens"), max_tokens_field(data, "max_tokens")]
        given = [n for n in limits if n is not None]
        # Both may be sent; take the larger so that the reservation stays an upper bound either way.
        max_output = max(given) if given else None
        prediction = data.get("prediction")
        n = data.get("n")
        if n is not None and (not is_int(n) or n < 1):
            raise BadLLMRequest('"n" must be a positive integer')
        tier = string_field(data, "service_tier")
        sent, injected = body, False
        if stream:
            options = data.get("stream_options")
            if options is not None and not isinstance(options, dict):
                raise BadLLMRequest('"stream_options" must be an object')
            if not (options and options.get("include_usage") is True):
                spliced = _with_usage_option(body) if "stream_options" not in data else None
                data["stream_options"] = {**(options or {}), "include_usage": True}
                sent = spliced or dumps(data)
                injected = True
        scan = parts.scan(data)
        return LLMRequest(
            api=self.api, model=model, stream=stream, max_output_tokens=max_output, choices=n or 1,
            input_token_bound=input_token_bound(max(sent, body, key=len)),  # whichever one is sent
            body=sent, usage_injected=injected, media=scan.media, service_tier=tier, priority=tier == "priority",
            server_tools=parts.server_tools(data),
            prediction_bound=len(dumps(prediction)) if prediction is not None else 0,
        )

    def usage(self, answer: Any) -> Usage | None:
        if not isinstance(answer, dict):
            return None
        return served_by(chat_usage(answer.get("usage"), answer.get("service_tier")), answer.get("model"))

    def stream(self) -> StreamUsage:
        return ChatStream()


class ChatStream(StreamUsage):
    def event(self, name: bytes, data: bytes) -> bool:
        if len(data) < 32 and data.strip() == b"[DONE]":
            self.complete = True
            return False
        event = with_usage(data)
        if event is None:
            return False
        usage = served_by(chat_usage(event.get("usage"), event.get("service_tier")), event.get("model"))
        if usage is None:
            return False
        self.usage = usage
        choices = event.get("choices")
        return choices is None or choices == []  # the usage chunk: hidden when zone 2 asked for it


def _with_usage_option(body: bytes) -> bytes | None:
    """``body`` (a JSON object without a top-level ``stream_options``) with ``stream_options.include_usage`` added
    as its last member, the client's bytes otherwise unchanged: a long conversation is not serialized again (that
    costs more than parsing it). None when the body is not plain UTF-8 JSON text ending in the object's ``}``."""
    end = len(body.rstrip(b" \t\r\n"))
    if end == 0 or body[end - 1] != 0x7D or json.detect_encoding(body) not in ("utf-8", "utf-8-sig"):
        return None
    return body[: end - 1] + _USAGE_OPTION + body[end - 1 :]
