"""Embeddings (``POST .../embeddings``): OpenAI's shape, also Azure's ``/openai/deployments/X/embeddings`` and the
vendors that copy it. All input: ``usage.prompt_tokens`` (OpenAI, Azure, Mistral), or ``total_tokens`` alone
(Voyage). Never streamed; read as one if an upstream does.
"""

from __future__ import annotations

import re
from typing import Any

from fleetd.zone2.llm import (
    LLMRequest,
    Usage,
    count,
    input_token_bound,
    model_field,
    parse_object,
    served_by,
    stream_field,
    string_field,
)
from fleetd.zone2.providers import parts
from fleetd.zone2.providers._openai import OpenAIShaped
from fleetd.zone2.providers.base import StreamUsage
from fleetd.zone2.providers.openai_chat import USAGE_ANYWHERE, with_usage


def embeddings_usage(usage: object) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    tokens = usage.get("prompt_tokens")
    return Usage(input_tokens=count(usage.get("total_tokens") if tokens is None else tokens))


class Embeddings(OpenAIShaped):
    api = "openai_embeddings"
    markers = re.compile(USAGE_ANYWHERE)

    def matches(self, segments: list[str]) -> bool:
        return segments[-1:] == ["embeddings"]

    def parse(self, body: bytes, segments: list[str]) -> LLMRequest:
        data = parse_object(body)
        model, stream = model_field(data), stream_field(data)
        tier = string_field(data, "service_tier")
        return LLMRequest(
            api=self.api, model=model, stream=stream, max_output_tokens=0, output_free=True, choices=1,
            input_token_bound=input_token_bound(body), body=body, media=parts.scan(data).media, service_tier=tier,
            priority=tier == "priority",
        )

    def usage(self, answer: Any) -> Usage | None:
        if not isinstance(answer, dict):
            return None
        return served_by(embeddings_usage(answer.get("usage")), answer.get("model"))

    def stream(self) -> StreamUsage:
        return EmbeddingsStream()


class EmbeddingsStream(StreamUsage):
    def event(self, name: bytes, data: bytes) -> bool:
        event = with_usage(data)
        if event is not None:
            self.usage = served_by(embeddings_usage(event.get("usage")), event.get("model")) or self.usage
        return False
