"""YouTube Live chat (Data API v3 ``liveChatMessages.list``): each response body parsed into what
the poller must do next.

Pure: a body in, a :data:`Answer` out; never raises. The polling rules (wait
``pollingIntervalMillis``, follow ``nextPageToken``, the error policy) live in
``ingest.sources.youtube``.

- A page is ``{"items": [...], "nextPageToken": ..., "pollingIntervalMillis": ...,
  "offlineAt": ...}``; items are ``liveChatMessage`` resources, oldest first. Each item is
  decoded on its own: a bad one is rejected, the others count.
- ``textMessageEvent`` is a comment; ``superChatEvent`` and ``superStickerEvent`` are paid
  comments (their ``superChatDetails`` / ``superStickerDetails``: ``amountMicros``, ``currency``),
  kept as integer micros: exact whatever the currency. Every other type (memberships, polls,
  deletions, bans, ...) is taken but not counted. A ``chatEndedEvent`` or ``offlineAt`` says the
  chat is over.
- Dedup identity: the message's ``id`` (``youtube:<id>``); the first page of a new poll (after a
  restart) repeats recent history, which these ids make duplicates.
- An error body ``{"error": {"code", "errors": [{"domain", "reason"}]}}`` becomes an
  :class:`ApiError` with a bounded ``kind``.
- Privacy: the poller asks only for ``part=id,snippet``, so no display name arrives; a dead
  letter still keeps an item without any ``authorDetails`` (the display name), with phone numbers
  and emails masked, and keeps nothing of a body that is not JSON.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Annotated, Any, Final

import msgspec

from ingest.adapter import FormatOptions, PlatformAdapter, as_bytes
from ingest.model import Comment, Decoded, PaidComment, Reason, Rejection
from ingest.money import MoneyError, exponent
from ingest.redact import masked

TEXT: Final = "textMessageEvent"
SUPER_CHAT: Final = "superChatEvent"
SUPER_STICKER: Final = "superStickerEvent"
CHAT_ENDED: Final = "chatEndedEvent"

MAX_MICROS: Final = 10**18
"""Largest paid amount taken, in micros (a million million major units): far above any real one,
and below the commit script's total limit."""

ERROR_KINDS: Final = (
    "quota",
    "rate_limited",
    "unauthorized",
    "forbidden",
    "chat_ended",
    "chat_disabled",
    "chat_not_found",
    "bad_request",
    "server",
    "other",
)
"""The bounded ``kind`` of an :class:`ApiError` (a metric label)."""

_REASONS: Final = {
    "quotaExceeded": "quota",
    "dailyLimitExceeded": "quota",
    "rateLimitExceeded": "rate_limited",
    "userRateLimitExceeded": "rate_limited",
    "liveChatEnded": "chat_ended",
    "liveChatDisabled": "chat_disabled",
    "liveChatNotFound": "chat_not_found",
    "videoNotFound": "chat_not_found",
    "authError": "unauthorized",
    "unauthorized": "unauthorized",
    "forbidden": "forbidden",
    "insufficientPermissions": "forbidden",
}

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class _Amount(msgspec.Struct, frozen=True, rename="camel"):
    amount_micros: str | int
    currency: str


class _Snippet(msgspec.Struct, frozen=True, rename="camel"):
    type: str
    published_at: dt.datetime
    author_channel_id: Id | None = None
    super_chat_details: _Amount | None = None
    super_sticker_details: _Amount | None = None


class _Item(msgspec.Struct, frozen=True, rename="camel"):
    id: Id
    snippet: _Snippet


class _Page(msgspec.Struct, frozen=True, rename="camel"):
    items: list[msgspec.Raw] = []
    next_page_token: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    polling_interval_millis: Annotated[int, msgspec.Meta(ge=0)] | None = None
    offline_at: str | None = None


class _ErrorDetail(msgspec.Struct, frozen=True, rename="camel"):
    reason: str = ""
    domain: str = ""


class _Error(msgspec.Struct, frozen=True, rename="camel"):
    code: int = 0
    errors: list[_ErrorDetail] = []


class _ErrorBody(msgspec.Struct, frozen=True, rename="camel"):
    error: _Error


class _LiveDetails(msgspec.Struct, frozen=True, rename="camel"):
    active_live_chat_id: str | None = None
    actual_end_time: str | None = None


class _Video(msgspec.Struct, frozen=True, rename="camel"):
    id: str
    live_streaming_details: _LiveDetails | None = None


class _Videos(msgspec.Struct, frozen=True, rename="camel"):
    items: list[_Video] = []


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    items: list[Decoded]
    """Comments, paid comments and rejections, in the page's order."""
    next_page_token: str | None
    polling_ms: int | None
    ended: bool
    """The chat is over (``offlineAt`` or a ``chatEndedEvent``): poll no more."""
    ignored: int
    """Messages of a type we do not count."""


@dataclasses.dataclass(frozen=True, slots=True)
class Invalid:
    """A body that is not a page: its rejection."""

    items: list[Decoded]


@dataclasses.dataclass(frozen=True, slots=True)
class ApiError:
    status: int
    kind: str
    """One of :data:`ERROR_KINDS`."""
    reason: str
    """The API's own reason, cut to 64 characters (for the log line, not a label)."""


Answer = Page | Invalid


def api_error(status: int, body: bytes) -> ApiError:
    """What an HTTP error answer means: its documented reason mapped to a bounded kind, else the
    status's (401 unauthorized, 403 forbidden, 429 rate limited, 5xx server)."""
    reason = ""
    try:
        detail = msgspec.json.decode(body, type=_ErrorBody).error.errors
        reason = detail[0].reason if detail else ""
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        pass
    kind = _REASONS.get(reason)
    if kind is None:
        if status == 401:
            kind = "unauthorized"
        elif status == 403:
            kind = "forbidden"
        elif status == 429:
            kind = "rate_limited"
        elif status >= 500:
            kind = "server"
        elif status in (400, 404):
            kind = "bad_request" if status == 400 else "chat_not_found"
        else:
            kind = "other"
    return ApiError(status, kind, reason[:64])


@dataclasses.dataclass(frozen=True, slots=True)
class ChatLookup:
    """What ``videos.list?part=liveStreamingDetails`` says of a video."""

    chat_id: str | None
    """Its ``activeLiveChatId``; None when it has none (not live, ended, or no such video)."""
    why: str
    """Why there is none: ``not_found``, ``not_live``, ``ended``, ``malformed`` ("" if found)."""


def chat_lookup(body: bytes, video_id: str) -> ChatLookup:
    try:
        videos = msgspec.json.decode(body, type=_Videos)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return ChatLookup(None, "malformed")
    video = next((v for v in videos.items if v.id == video_id), None)
    if video is None:
        return ChatLookup(None, "not_found")
    details = video.live_streaming_details
    if details is None:
        return ChatLookup(None, "not_live")
    if details.active_live_chat_id:
        return ChatLookup(details.active_live_chat_id, "")
    return ChatLookup(None, "ended" if details.actual_end_time else "not_live")


class LiveChatFormat(PlatformAdapter):
    """Parses ``liveChatMessages.list`` pages of one source's chat."""

    def __init__(self, options: FormatOptions) -> None:
        super().__init__(options, "youtube")
        self._page = msgspec.json.Decoder(_Page)
        self._item = msgspec.json.Decoder(_Item)

    def decode(self, frame: bytes | str) -> list[Decoded]:
        """The events of a page (the Format protocol)."""
        return self.parse(frame).items

    def parse(self, frame: bytes | str) -> Answer:
        raw = as_bytes(frame)
        found: list[Answer] = []

        def run() -> list[Decoded]:
            found.append(self._parse(raw))
            return []

        rejected = self.guarded(raw, run)
        return found[0] if found else Invalid(rejected)

    def _parse(self, raw: bytes) -> Answer:
        try:
            page = self._page.decode(raw)
        except msgspec.DecodeError as exc:
            return Invalid([self.invalid(exc, raw)])
        items: list[Decoded] = []
        ignored = 0
        ended = page.offline_at is not None
        for element in page.items:
            item = self._one(bytes(element))
            if item is None:
                ignored += 1
            elif item is CHAT_ENDED:
                ignored += 1
                ended = True
            else:
                assert not isinstance(item, str)
                items.append(item)
        return Page(items, page.next_page_token, page.polling_interval_millis, ended, ignored)

    def _one(self, raw: bytes) -> Decoded | str | None:
        """One message: an event, its rejection, :data:`CHAT_ENDED`, or None (not counted)."""
        try:
            item = self._item.decode(raw)
        except msgspec.DecodeError as exc:
            return self.invalid(exc, raw, "comment")
        snippet = item.snippet
        kind = snippet.type
        if kind == CHAT_ENDED:
            return CHAT_ENDED
        if kind not in (TEXT, SUPER_CHAT, SUPER_STICKER):
            return None
        ts_ms = self.timestamp(snippet.published_at, raw, "comment")
        if isinstance(ts_ms, Rejection):
            return ts_ms
        ident = f"youtube:{item.id}"
        if kind == TEXT:
            return Comment(self.stream, self.platform, ident, ts_ms, snippet.author_channel_id)
        details = (
            snippet.super_chat_details if kind == SUPER_CHAT else snippet.super_sticker_details
        )
        if details is None:
            name = "superChatDetails" if kind == SUPER_CHAT else "superStickerDetails"
            return self.reject(Reason.MISSING_FIELD, f"no snippet.{name}", raw, "comment")
        micros = _micros(details.amount_micros)
        if micros is None:
            return self.reject(Reason.INVALID_AMOUNT, "amountMicros", raw, "comment")
        if micros > MAX_MICROS:
            return self.reject(Reason.OUT_OF_RANGE, "amountMicros too large", raw, "comment")
        try:
            exponent(details.currency)
        except MoneyError as exc:
            return self.reject(Reason.INVALID_CURRENCY, str(exc), raw, "comment")
        return PaidComment(
            self.stream,
            self.platform,
            ident,
            ts_ms,
            snippet.author_channel_id,
            currency=details.currency,
            amount_micros=micros,
        )

    def redact(self, raw: bytes) -> bytes:
        """A dead letter keeps the JSON without any ``authorDetails`` (display names), masked;
        of a body that is not JSON, nothing."""
        try:
            value = msgspec.json.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return b""
        return masked(msgspec.json.encode(_without_authors(value)))


def _without_authors(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_authors(v) for k, v in value.items() if k != "authorDetails"}
    if isinstance(value, list):
        return [_without_authors(v) for v in value]
    return value


def _micros(value: str | int) -> int | None:
    """``amountMicros`` as an integer: JSON gives a uint64 as a decimal string (an integer is
    taken too); None unless it is a positive whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if not value.isascii() or not value.isdigit() or len(value) > 19:
        return None
    number = int(value)
    return number if number > 0 else None


class StreamError(ValueError):
    """A streamed body that is not a JSON array of objects, or an element over the limit."""


class ArraySplitter:
    """Cuts a JSON array that arrives in pieces (``[{...},{...}`` ... ``]``) into its elements as
    each one is complete: how a server-streamed method answers over HTTP/JSON. Pure: bytes in,
    complete elements out; only brackets, braces and strings are tracked, the elements
    themselves are parsed by :class:`LiveChatFormat`."""

    def __init__(self, max_element_bytes: int) -> None:
        self.max_element_bytes = max_element_bytes
        self.opened = False
        self.closed = False
        self._element = bytearray()
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def feed(self, data: bytes) -> list[bytes]:
        """The elements completed by ``data``; StreamError if it is not such an array."""
        done: list[bytes] = []
        pos, size = 0, len(data)
        while pos < size:
            if self._depth == 0:
                self._between(data[pos])
                pos += 1
                continue
            end = self._scan(data, pos)
            self._element += data[pos:end]
            if len(self._element) > self.max_element_bytes:
                raise StreamError(f"an element over {self.max_element_bytes} bytes")
            pos = end
            if self._depth == 0:
                done.append(bytes(self._element))
                self._element.clear()
        return done

    def _between(self, byte: int) -> None:
        """A byte outside every element: the array's brackets, commas, or an element's start."""
        if byte in _WHITESPACE:
            return
        if self.closed:
            raise StreamError("data after the end of the array")
        if not self.opened:
            if byte != ord("["):
                raise StreamError("the body is not a JSON array")
            self.opened = True
        elif byte == ord("]"):
            self.closed = True
        elif byte == ord("{"):
            self._depth = 1
            self._element.append(byte)
        elif byte != ord(","):
            raise StreamError("an element that is not an object")

    def _scan(self, data: bytes, pos: int) -> int:
        """Follow an element from ``pos``, jumping from one structural byte to the next; where
        it ends (just past its closing brace), or the end of ``data``."""
        size = len(data)
        while pos < size:
            if self._escaped:  # the byte after a backslash in a string (maybe a new chunk's)
                self._escaped = False
                pos += 1
                continue
            found = (_IN_STRING if self._in_string else _STRUCTURE).search(data, pos)
            if found is None:
                return size
            pos = found.end()
            byte = data[found.start()]
            if self._in_string:
                if byte == ord('"'):
                    self._in_string = False
                else:
                    self._escaped = True
            elif byte == ord('"'):
                self._in_string = True
            elif byte in b"{[":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    return pos
        return pos


_IN_STRING: Final = re.compile(rb'["\\]')
_STRUCTURE: Final = re.compile(rb'["{}\[\]]')
_WHITESPACE: Final = frozenset(b" \t\r\n")
