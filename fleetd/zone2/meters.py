"""Usage read from an answer while it passes through zone 2 to the agent. Pure: no I/O.

A stream (``text/event-stream``) is read event by event (:class:`StreamMeter`); any other answer of unknown or
large length is read as its bytes pass (:class:`BodyMeter`); a small one is read whole (:func:`usage_from_body`).
What an answer means is its provider adapter's business; these only feed it.
"""

from __future__ import annotations

from collections.abc import Callable

from fleetd.zone2.llm import Usage, loads
from fleetd.zone2.providers import Provider
from fleetd.zone2.sse import EventStream

MAX_BUFFERED = 8 << 20  # larger answers (or of unknown length) are streamed through
TAIL_BYTES = 64 << 10  # of an answer larger than that, what is kept to find its usage in


class StreamMeter:
    """Usage from a server-sent-event stream. ``feed`` every chunk from upstream and send on what it returns;
    ``flush`` at the end of the stream. With ``hide_usage_chunk`` (zone 2 asked for the usage, the client did not:
    ``LLMRequest.usage_injected``) the event carrying only the usage is hidden, and only whole events are
    forwarded."""

    def __init__(self, provider: Provider, hide_usage_chunk: bool = False) -> None:
        self.reader = provider.stream()
        self.events = EventStream(self.reader.event, provider.markers.search, hide=hide_usage_chunk)

    @property
    def usage(self) -> Usage | None:
        return self.reader.usage

    @property
    def complete(self) -> bool:
        """The stream's end marker was seen (chat ``[DONE]``, a Responses end event, ``message_stop``, ...)."""
        return self.reader.complete

    def feed(self, chunk: bytes) -> bytes:
        return self.events.feed(chunk)

    def flush(self) -> bytes:
        return self.events.flush()


def usage_from_body(provider: Provider, body: bytes) -> Usage | None:
    """Usage of a non-streamed JSON answer; None when it has none (error bodies, garbage).

    A body that turns out to be an event stream after all is read as one.
    """
    data = loads(body)
    if data is not None:
        return provider.usage(data)
    if b"data:" in body:
        reader = provider.stream()
        events = EventStream(reader.event)
        events.feed(body)
        events.flush()
        return reader.usage
    return None


class BodyMeter:
    """Usage from a non-streamed body of unknown or large length, read as it passes through: parsed whole up to
    MAX_BUFFERED (as long as ``hold`` grants the bytes); beyond that only its last TAIL_BYTES are kept, where the
    answers put their usage (a batch of embeddings runs to tens of MB)."""

    def __init__(self, provider: Provider, hold: Callable[[int], bool] = lambda n: True) -> None:
        self.provider = provider
        self.hold = hold  # asks to hold n more bytes (the agent's share of zone 2's memory); False: keep the tail
        self.whole = True  # every byte so far is kept (in parts), to be parsed whole
        self.parts: list[bytes] = []
        self.tail = bytearray()
        self.size = 0
        self.usage: Usage | None = None
        self.complete = False

    def feed(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        if self.whole and self.size <= MAX_BUFFERED and self.hold(len(chunk)):
            self.parts.append(chunk)
            return chunk
        self.whole = False
        if self.parts:
            self.tail += b"".join(self.parts)[-TAIL_BYTES:]
            self.parts = []
        self.tail += chunk
        if len(self.tail) > 2 * TAIL_BYTES:
            del self.tail[:-TAIL_BYTES]
        return chunk

    def flush(self) -> bytes:
        self.complete = True
        if self.whole:
            self.usage = usage_from_body(self.provider, b"".join(self.parts))
        else:
            self.usage = self.provider.tail_usage(bytes(self.tail[-TAIL_BYTES:]))
        return b""
