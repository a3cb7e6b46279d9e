"""A server-sent-events parser for a stream passing through: vendor-neutral, pure, no I/O.

Zone 2 reads LLM streams while relaying them: the usage is in an event near the end. :class:`EventStream` splits
the bytes into events (``event:`` name and ``data:`` lines, ended by a blank line; lines end with ``\\r\\n``,
``\\n`` or ``\\r``, also split across chunks) and hands each to a reader, without holding the stream up: by default
every chunk is forwarded at once and a copy is parsed. In hiding mode only whole events are forwarded, and an event
the reader asks to hide is dropped (zone 2's own usage chunk, which the client did not ask for).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

EOL = re.compile(rb"\r\n|\r|\n")
MAX_EVENT_BYTES = 64 << 20  # an event with more data than this is forwarded but not parsed
MAX_HELD_BYTES = 256 << 10  # hiding mode: an event not complete at this size is forwarded as it comes

Reader = Callable[[bytes, bytes], bool]  # (event name, data) -> hide it


class EventStream:
    """Feed every chunk from upstream and send on what ``feed`` returns; ``flush`` at the end of the stream.

    ``read(name, data)`` is called for each complete event with data; it returns True to hide the event (honoured
    in hiding mode only). It must not raise: an exception is swallowed, since reading must never break the stream.
    ``matters(chunk)`` is a cheap search for what an event must hold to matter to the reader: a chunk of whole events
    in which it finds nothing passes without being split into lines (most chunks of a stream).
    """

    def __init__(self, read: Reader, matters: Callable[[bytes], object] | None = None, hide: bool = False) -> None:
        self.read = read
        self.matters = matters
        self.hide = hide
        # line splitting
        self._partial = bytearray()  # the current line, not terminated yet
        self._partial_dropped = False  # the current line outgrew MAX_EVENT_BYTES: skip it
        self._pending_cr = False  # the last chunk ended with \r: a \n starting the next one belongs to it
        # the event being read
        self._event_name = b""
        self._data: list[bytes] = []
        self._data_size = 0
        self._data_dropped = False
        # hiding mode
        self._held = bytearray()  # raw bytes of the current event, not forwarded yet
        self._released = False  # the current event outgrew MAX_HELD_BYTES and is being forwarded as it comes
        # an event ended with \r at a chunk's end: a \n starting the next chunk ends that event too, so it goes where
        # the event went (dropped, or forwarded at once) rather than into the next event
        self._lf_after_event: Literal["drop", "forward"] | None = None

    def feed(self, chunk: bytes) -> bytes:
        """Take a chunk from upstream; return the bytes to forward to the client now."""
        if (self.matters is not None and self._between_events() and chunk.endswith(b"\n\n")
                and self.matters(chunk) is None):
            return chunk
        if not self.hide:
            if chunk:
                self._scan(bytes(chunk), None)
            return chunk
        out: list[bytes] = []
        if chunk:
            self._scan(bytes(chunk), out)
        return b"".join(out)

    def _between_events(self) -> bool:
        """Nothing of an unfinished line or event is pending: the next byte starts a new event."""
        return not (self._partial or self._partial_dropped or self._pending_cr or self._data or self._data_dropped
                    or self._event_name or self._held or self._released)

    def flush(self) -> bytes:
        """End of the stream: read what is left and return whatever is still held."""
        if self._partial or self._partial_dropped:
            if self._partial_dropped:
                self._data_dropped = True
            else:
                self._field(bytes(self._partial))
            self._partial.clear()
            self._partial_dropped = False
        self._dispatch()
        self._pending_cr = self._released = False
        self._lf_after_event = None
        held = bytes(self._held)
        self._held.clear()
        return held

    def _scan(self, data: bytes, out: list[bytes] | None) -> None:
        """Split ``data`` into lines, handle them, and (hiding mode) append to ``out`` what is to be forwarded."""
        n = len(data)
        pos = 0
        start = 0  # hiding mode: where the bytes of data not forwarded, dropped or held yet begin
        if self._pending_cr:
            self._pending_cr = False
            if data[0] == 0x0A:  # the \n of a \r\n split across chunks
                pos = 1
                if out is not None and self._lf_after_event is not None:
                    if self._lf_after_event == "forward":
                        out.append(b"\n")
                    start = 1
        self._lf_after_event = None
        search = EOL.search
        while pos < n:
            match = search(data, pos)
            if match is None:
                self._keep_partial(data, pos)
                break
            end = match.end()
            if end == n and data[-1] == 0x0D:
                self._pending_cr = True
            if self._partial_dropped:
                self._partial_dropped = False
                self._data_dropped = True
            elif self._partial or match.start() > pos:
                if self._partial:
                    self._partial += data[pos : match.start()]
                    line = bytes(self._partial)
                    self._partial.clear()
                else:
                    line = data[pos : match.start()]
                self._field(line)
            else:  # a blank line: the end of an event
                drop = self._dispatch()
                if out is not None:
                    if drop and not self._released:
                        self._held.clear()
                        if self._pending_cr:
                            self._lf_after_event = "drop"
                    else:
                        if self._held:
                            out.append(bytes(self._held))
                            self._held.clear()
                        out.append(data[start:end])
                        if self._pending_cr:
                            self._lf_after_event = "forward"
                    self._released = False
                    start = end
            pos = end
        if out is not None and start < n:
            if self._released:
                out.append(data[start:])
            else:
                self._held += data[start:]
                if len(self._held) > MAX_HELD_BYTES:
                    out.append(bytes(self._held))
                    self._held.clear()
                    self._released = True

    def _keep_partial(self, data: bytes, pos: int) -> None:
        if self._partial_dropped:
            return
        self._partial += data[pos:]
        if len(self._partial) > MAX_EVENT_BYTES:
            self._partial.clear()
            self._partial_dropped = True

    def _field(self, line: bytes) -> None:
        """One non-blank line of an event."""
        if line[0] == 0x3A:  # ":" starts a comment
            return
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data_size += len(value) + 1
            if self._data_size > MAX_EVENT_BYTES:
                self._data_dropped = True
                self._data.clear()
            elif not self._data_dropped:
                self._data.append(value)
        elif name == b"event":
            self._event_name = value

    def _dispatch(self) -> bool:
        """The current event is complete: read it, then start a new one. True when it is to be hidden."""
        lines, name, dropped = self._data, self._event_name, self._data_dropped
        self._data, self._event_name, self._data_dropped, self._data_size = [], b"", False, 0
        if dropped or not lines:
            return False
        try:
            return self.read(name, lines[0] if len(lines) == 1 else b"\n".join(lines))
        except Exception:  # a safety net: reading must never break the stream
            return False
