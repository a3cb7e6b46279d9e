"""Zone 2's provider adapters called by API name ("openai_chat", ...), as the ledger and the tests name them.

Small wrappers of fleetd.zone2.providers and fleetd.zone2.meters shared by tests/unit/test_providers.py,
test_zone2_targets.py and test_zone2_unsized_input.py; not a test module itself.
"""

from __future__ import annotations

from typing import Any

from fleetd.zone2 import meters, providers
from fleetd.zone2.llm import LLMRequest, Usage
from fleetd.zone2.targets import path_segments


def classify(method: str, path: str) -> str | None:
    found = providers.classify(method, path)
    return found.api if found else None


def parse_request(api: str, body: bytes, path: str = "") -> LLMRequest:
    return providers.provider(api).parse(body, path_segments(path))


def StreamMeter(api: str, hide_usage_chunk: bool = False) -> meters.StreamMeter:
    return meters.StreamMeter(providers.provider(api), hide_usage_chunk)


def usage_from_body(api: str, body: bytes) -> Usage | None:
    return meters.usage_from_body(providers.provider(api), body)


def usage_from_tail(api: str, tail: bytes) -> Usage | None:
    return providers.provider(api).tail_usage(tail)


def usage_in(api: str, obj: dict[str, Any]) -> Usage | None:
    return providers.provider(api).usage(obj)
