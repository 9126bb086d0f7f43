"""Server-Sent Events: a ``text/event-stream`` body parsed as the HTML living standard says.

Pure and incremental: feed it the body's bytes as they come (cut anywhere), get the events
whose blank line has arrived. The rules (html.spec.whatwg.org/multipage/server-sent-events.html,
"Interpreting an event stream" and "Dispatch the event"):

- One UTF-8 byte order mark at the very start is skipped. Bytes that are not UTF-8 are decoded
  with replacement characters.
- A line ends at CR LF, LF or CR (a CR at the end of one chunk and an LF at the start of the
  next are one line end).
- A line starting with ``:`` is a comment (keep-alives), ignored.
- ``field:value``, one leading space of the value removed; a line without a colon is a field
  with an empty value. Unknown fields are ignored.
- ``data`` appends the value and an LF to the data buffer; ``event`` sets the type; ``id`` sets
  the last event id unless the value holds a NUL; ``retry`` sets the reconnection time when the
  value is ASCII digits only, else is ignored.
- A blank line dispatches: the last event id is taken; if the data buffer is empty, nothing is
  dispatched; else the event (its last LF removed, type ``message`` by default). Data and type
  are reset, the last event id is not.
- At the end of the stream an event without its blank line is discarded.

No library fits here: aiohttp has no SSE client of its own; the packages that add one to it are
not well kept (aiohttp-sse-client's last release 0.2.1 is of February 2021, its fork
aiohttp-sse-client2's 0.3.0 of February 2023; aiohttp-sse is a server) and bring a reconnect
loop of their own, which would stack on ours (STYLE.md item 8).

Bounded: a line, or an event's data, longer than ``max_event_bytes`` raises :class:`SseError`
(the stream is not usable: the caller drops the connection).
"""

from __future__ import annotations

import dataclasses
from typing import Final

BOM: Final = b"\xef\xbb\xbf"
DEFAULT_TYPE: Final = "message"


class SseError(Exception):
    """The stream broke a bound; ``reason`` is a short, bounded description."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class SseEvent:
    data: str
    type: str = DEFAULT_TYPE
    last_event_id: str = ""


class SseParser:
    """An event stream's parser (one per connection; :attr:`last_event_id` and :attr:`retry`
    outlive it when the caller copies them to the next)."""

    def __init__(self, max_event_bytes: int = 256 * 1024, last_event_id: str = "") -> None:
        self.max_event_bytes = max_event_bytes
        self.last_event_id = last_event_id
        """The last event id string: sent as ``Last-Event-ID`` when reconnecting."""
        self.retry: int | None = None
        """The reconnection time the server asked for, in milliseconds (None: none yet)."""
        self._buffer = b""
        self._started = False
        self._skip_lf = False
        self._data: list[str] = []
        self._data_bytes = 0
        self._type = ""
        self._id_buffer = last_event_id

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events completed by ``chunk``."""
        if not self._started:
            self._buffer += chunk
            if len(self._buffer) < len(BOM) and BOM.startswith(self._buffer):
                return []  # maybe a BOM cut in two: wait for more
            self._started = True
            chunk = self._buffer[len(BOM) :] if self._buffer.startswith(BOM) else self._buffer
            self._buffer = b""
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        events: list[SseEvent] = []
        data = self._buffer + chunk
        start = 0
        size = len(data)
        while start < size:
            cr = data.find(b"\r", start)
            lf = data.find(b"\n", start)
            if cr < 0 and lf < 0:
                break
            if cr < 0 or (0 <= lf < cr):
                end, after = lf, lf + 1
            elif cr + 1 < size:
                end, after = cr, cr + 2 if data[cr + 1 : cr + 2] == b"\n" else cr + 1
            else:  # a CR last in the chunk: its LF may be first in the next one
                end, after = cr, cr + 1
                self._skip_lf = True
            event = self._line(data[start:end])
            if event is not None:
                events.append(event)
            start = after
        self._buffer = data[start:]
        if len(self._buffer) > self.max_event_bytes:
            raise SseError("line too long")
        return events

    def _line(self, raw: bytes) -> SseEvent | None:
        if not raw:
            return self._dispatch()
        line = raw.decode("utf-8", "replace")
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data_bytes += len(raw) + 1
            if self._data_bytes > self.max_event_bytes:
                raise SseError("event too large")
            self._data.append(value)
        elif field == "event":
            self._type = value
        elif field == "id":
            if "\x00" not in value:
                self._id_buffer = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        self.last_event_id = self._id_buffer
        data, kind = self._data, self._type or DEFAULT_TYPE
        self._data, self._data_bytes, self._type = [], 0, ""
        if not data:
            return None
        return SseEvent("\n".join(data), kind, self.last_event_id)
