"""One adapter per provider API: what zone 2 meters, and how. Pure: no I/O.

An adapter (``base.Provider``) answers, for its API: is this request a call to me (``matches``), what does it ask
for (``parse``: the :class:`~fleetd.zone2.llm.LLMRequest` the cost tracker reserves for), what did it use (``usage``
of a whole answer, ``stream`` for an event stream, ``tail_usage`` for the end of an answer too large to parse), and
was it served at a priced-up tier (``served_at_priority``). The proxy and the cost tracker only call this interface:
a new provider or billing feature is one module here and its tests.
"""

from __future__ import annotations

from fleetd.zone2.providers.anthropic import AnthropicMessages
from fleetd.zone2.providers.base import Provider, StreamUsage
from fleetd.zone2.providers.embeddings import Embeddings
from fleetd.zone2.providers.gemini import GeminiGenerate
from fleetd.zone2.providers.openai_chat import OpenAIChat
from fleetd.zone2.providers.openai_responses import OpenAIResponses
from fleetd.zone2.targets import path_readings

# In the order requests are matched against them.
PROVIDERS: tuple[Provider, ...] = (OpenAIChat(), OpenAIResponses(), AnthropicMessages(), Embeddings(),
                                   GeminiGenerate())
_BY_API = {p.api: p for p in PROVIDERS}

__all__ = ["PROVIDERS", "Provider", "StreamUsage", "classify", "match", "provider"]


def classify(method: str, path: str) -> Provider | None:
    """The metered API a request goes to, or None when it is not a metered call (``match`` without the reading)."""
    found = match(method, path)
    return found[0] if found else None


def match(method: str, path: str) -> tuple[Provider, list[str]] | None:
    """The metered API a request goes to and the reading of its path that goes there, or None.

    POST only, by every reading an upstream may give the path (``targets.path_readings``: decoded, also twice and
    ``%2F`` as a separator, ``;params`` dropped, a decoded ``?`` ending it, empty segments ignored,
    case-insensitive), so that no spelling an upstream would route to a metered endpoint slips past the meter.
    """
    if method.upper() != "POST":
        return None
    for segments in path_readings(path):
        for candidate in PROVIDERS:
            if candidate.matches(segments):
                return candidate, segments
    return None


def provider(api: str) -> Provider:
    """The adapter named ``api`` (an LLMRequest's, a ledger row's)."""
    return _BY_API[api]
