"""Bounds on text that agents (or upstreams) choose and fleetd keeps: events and ledger rows.

A model name under allow-unpriced, a heartbeat message, a refusal that quotes a request: each is
stored for the instance's life, so each is cut to a size here, where it is stored, not where it
came from (Invariant 10: every piece of state has a bound).
"""

from __future__ import annotations

import json
from typing import Any

MAX_TEXT_CHARS = 256  # one named thing: a model, a service tier, an event type (64, see MAX_TYPE_CHARS)
MAX_TYPE_CHARS = 64
MAX_MESSAGE_CHARS = 4096  # an event's message
MAX_DATA_BYTES = 8192  # an event's data, as JSON
MAX_DATA_STRING_CHARS = 1024  # one string inside an event's data


def clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, the last one an ellipsis when it was longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bounded_data(data: dict[str, Any]) -> dict[str, Any]:
    """An event's data within MAX_DATA_BYTES of JSON: long strings clipped, else a note of what was dropped."""
    text = json.dumps(data)
    if len(text.encode()) <= MAX_DATA_BYTES:
        return data
    clipped = _clip_strings(data)
    if isinstance(clipped, dict) and len(json.dumps(clipped).encode()) <= MAX_DATA_BYTES:
        return clipped
    return {"truncated": True, "bytes": len(text.encode())}


def _clip_strings(value: Any) -> Any:
    if isinstance(value, str):
        return clip(value, MAX_DATA_STRING_CHARS)
    if isinstance(value, dict):
        return {clip(str(k), MAX_DATA_STRING_CHARS): _clip_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clip_strings(v) for v in value]
    return value
