"""The interface every provider adapter implements. Pure: no I/O.

An adapter answers, for its API: is this request a call to me (``matches``), what does it ask for (``parse``: the
:class:`~fleetd.zone2.llm.LLMRequest` the cost tracker reserves for), what did it use (``usage`` of a whole answer,
``stream`` for an event stream, ``tail_usage`` for the end of an answer too large to parse), and was it served at a
priced-up tier (``served_at_priority``). The proxy and the cost tracker only call this interface: a new provider or
billing feature is one module here and its tests.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, ClassVar

from fleetd.zone2.llm import LLMRequest, Usage, label


class StreamUsage:
    """The usage of one call, read from its event stream event by event."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.complete = False  # the stream's end marker was seen: nothing more will change the usage

    def event(self, name: bytes, data: bytes) -> bool:
        """Read one event; True when it only carries the usage (hidden from the client when zone 2 asked for the
        usage and the client did not)."""
        raise NotImplementedError


_DECODER = json.JSONDecoder()
_TIER_FIELD = re.compile(rb'"service_tier"\s*:\s*"([^"\\]{1,32})"')


@functools.cache
def _member_object(key: bytes) -> re.Pattern[bytes]:
    """``"key": {`` (a non-null object: ``"usage": null`` does not match)."""
    return re.compile(re.escape(key) + rb"\s*:\s*\{")


class Provider:
    """A provider API zone 2 meters. Subclasses set ``api`` and ``markers`` and implement the four readers."""

    api: ClassVar[str]
    usage_key: ClassVar[bytes] = b"usage"  # the member an answer's usage is in
    # What a stream event must hold to matter to ``stream``'s reader (usage, or the end of the stream): a chunk of
    # whole events in which it is not found is passed on without being parsed. Looser than the reader, never stricter.
    markers: ClassVar[re.Pattern[bytes]]

    def matches(self, segments: list[str]) -> bool:
        """Is a POST to the path read as ``segments`` (``targets.path_segments``) a call to this API?"""
        raise NotImplementedError

    def parse(self, body: bytes, segments: list[str]) -> LLMRequest:
        """What the request asks for; raises BadLLMRequest for a body that cannot be metered."""
        raise NotImplementedError

    def usage(self, answer: Any) -> Usage | None:
        """The usage of a whole answer (its JSON value); None when it has none."""
        raise NotImplementedError

    def stream(self) -> StreamUsage:
        """A reader of the call's event stream."""
        raise NotImplementedError

    def served_at_priority(self, llm: LLMRequest, usage: Usage | None) -> bool:
        """Billed at the priority multiple: as the answer says, or as asked when the answer does not say."""
        return False

    def tail_usage(self, tail: bytes) -> Usage | None:
        """Usage from the end of a JSON answer too large to parse whole: the last ``"<usage_key>": {...}`` in it (the
        answers put the usage after the content) and the last ``service_tier``. None when the tail holds none. A key
        inside a string has its quotes escaped and does not match."""
        key = b'"' + self.usage_key + b'"'
        pattern = _member_object(key)
        at = len(tail)
        while (at := tail.rfind(key, 0, at)) != -1:
            found = pattern.match(tail, at)
            if found is None:
                continue
            try:
                usage, _ = _DECODER.raw_decode(tail[found.end() - 1:].decode("utf-8", "replace"))
            except ValueError:
                continue
            tiers = _TIER_FIELD.findall(tail)
            return self.usage({self.usage_key.decode(): usage,
                               "service_tier": label(tiers[-1].decode()) if tiers else None})
        return None
