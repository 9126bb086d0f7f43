"""Facebook Live comments (Graph API Live Video API): bodies parsed into events, pages and errors.

Pure: bytes in, never raises. The session rules (the SSE stream, polling, tokens, the end of a
live video) live in ``ingest.sources.facebook``.

- An SSE event's data (``streaming-graph.facebook.com/{live-video-id}/live_comments``) is one
  comment object, or (as the docs' sample response shows) an array of them.
- A polling page (``graph.facebook.com/{version}/{live-video-id}/comments``) is
  ``{"data": [comments], "paging": {"cursors": {"before", "after"}, "next"}}``.
- An error answer is ``{"error": {"code", "error_subcode", "type", "message", ...}}``, sorted
  into a bounded :data:`ERROR_REASONS` (developers.facebook.com/docs/graph-api/guides/
  error-handling).

A comment is ``{"id", "created_time", "from": {"id", "name"}, "message"}``; we ask for
``id,created_time,from{id}`` only, count it under its Graph API id (``facebook:<id>``) and keep
its author id as given. A comment's name and message are never read: a dead letter keeps only
the allow-listed ``id``, ``created_time`` and ``from.id`` (``ingest.redact.allowed_json``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Annotated, Final

import msgspec
import orjson

from ingest.adapter import FormatOptions, PlatformAdapter, as_bytes
from ingest.model import Comment, Decoded, Reason, Rejection
from ingest.redact import Spec, allowed_json, masked, masked_text

COMMENT_FIELDS: Final = "id,created_time,from{id}"
"""What we ask the Graph API for: no name, no message."""

ERROR_REASONS: Final = (
    "token_expired",
    "token_invalid",
    "permission",
    "rate_limited",
    "not_found",
    "server",
    "other",
)
"""The bounded reason of a Graph API error (a metric label)."""

TOKEN_REASONS: Final = frozenset({"token_expired", "token_invalid", "permission"})
"""Errors that no retry with the same token mends: a new token must be put in place."""

RATE_LIMIT_CODES: Final = frozenset({4, 17, 32, 613})
"""Application, user, page and custom rate limits (the error-handling guide, and the rate
limiting page developers.facebook.com/docs/graph-api/overview/rate-limiting)."""
PERMISSION_CODES: Final = frozenset({3, 10})
"""3: API method (capability); 10: permission denied. 200-299 are permissions too."""
EXPIRED_SUBCODE: Final = 463
"""Code 190 with subcode 463: the access token has expired."""

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]

_REDACT: Final[Spec] = {"id": None, "created_time": None, "from": {"id": None}}
_PAGE_REDACT: Final[Spec] = {
    "data": _REDACT,
    "paging": {"cursors": {"before": None, "after": None}},
}


class _From(msgspec.Struct, frozen=True):
    id: Id | None = None


class _Comment(msgspec.Struct, frozen=True):
    id: Id
    created_time: str | None = None
    from_: _From | None = msgspec.field(default=None, name="from")


class _Cursors(msgspec.Struct, frozen=True):
    before: str | None = None
    after: str | None = None


class _Paging(msgspec.Struct, frozen=True):
    cursors: _Cursors | None = None
    next: str | None = None


class _Page(msgspec.Struct, frozen=True):
    data: list[msgspec.Raw]
    paging: _Paging | None = None


class _ErrorBody(msgspec.Struct, frozen=True):
    code: int | None = None
    error_subcode: int | None = None
    type: str | None = None


class _Error(msgspec.Struct, frozen=True):
    error: _ErrorBody


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """A polling page: its events, the cursor after its last comment (None when it has none)
    and whether a next page exists."""

    items: list[Decoded]
    after: str | None
    more: bool


@dataclasses.dataclass(frozen=True, slots=True)
class GraphError:
    """An error answer: its bounded ``reason`` and the codes the Graph API gave."""

    reason: str
    code: int | None = None
    subcode: int | None = None

    def __str__(self) -> str:
        codes = f"code {self.code}" if self.code is not None else "no code"
        if self.subcode is not None:
            codes += f"/{self.subcode}"
        return f"{self.reason} ({codes})"


def classify_error(status: int, body: bytes) -> GraphError:
    """The reason of an error answer with HTTP ``status`` and ``body`` (never raises)."""
    try:
        error = msgspec.json.decode(body, type=_Error).error
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        if status == 429:
            return GraphError("rate_limited")
        return GraphError("server" if status >= 500 else "other")
    code, subcode = error.code, error.error_subcode
    if code == 190 or (code == 102 and subcode is None):
        # 190: the token expired, was revoked or is invalid; the subcode says which (463:
        # expired; 460: password changed; 458: app removed; 467: the user logged out; ...).
        # 102 without a subcode: the session is no longer valid.
        reason = "token_expired" if subcode == EXPIRED_SUBCODE else "token_invalid"
        return GraphError(reason, code, subcode)
    if code in PERMISSION_CODES or (code is not None and 200 <= code <= 299):
        return GraphError("permission", code, subcode)
    if code in RATE_LIMIT_CODES or status == 429:
        return GraphError("rate_limited", code, subcode)
    if code == 100 and (status == 404 or subcode == 33):
        # 100/33: the object does not exist, or cannot be read with this token.
        return GraphError("not_found", code, subcode)
    if code in (1, 2) or status >= 500:
        return GraphError("server", code, subcode)
    return GraphError("other", code, subcode)


def created_ms(value: str) -> int | None:
    """``created_time`` (``2018-08-30T18:47:02+0000``, ISO 8601 with an offset) in epoch
    milliseconds, or None when it is not one."""
    try:
        when = dt.datetime.fromisoformat(value)  # ISO 8601 with +0000 since Python 3.11
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return int(when.timestamp() * 1000)


_GRAPH_ID: Final = re.compile(r"[0-9]{1,32}(?:_[0-9]{1,32})?")


def _scrub(comment: object) -> None:
    """A kept comment's ids stay when they are Graph API ids (digits, ``<post>_<comment>``);
    anything else in them, and its ``created_time``, is masked as free text is."""
    if not isinstance(comment, dict):
        return
    for holder, name in ((comment, "id"), (comment.get("from"), "id"), (comment, "created_time")):
        if not isinstance(holder, dict) or name not in holder:
            continue
        value = holder[name]
        if name == "id" and isinstance(value, str) and _GRAPH_ID.fullmatch(value):
            continue
        holder[name] = masked_text(str(value))


class FacebookLiveFormat(PlatformAdapter):
    """Parses the comments of one live video (one source)."""

    def __init__(self, options: FormatOptions) -> None:
        super().__init__(options, "facebook")
        self._comment = msgspec.json.Decoder(_Comment)
        self._page = msgspec.json.Decoder(_Page)

    def redact(self, raw: bytes) -> bytes:
        """Only the ids and times: a comment names its author and may quote a phone number.
        A Graph API id is kept as it is (it is the author's id our events carry too)."""
        try:
            page = isinstance(orjson.loads(raw), dict) and b'"data"' in raw
        except orjson.JSONDecodeError:
            page = False
        kept = allowed_json(raw, _PAGE_REDACT if page else _REDACT)
        try:
            letter = orjson.loads(kept)
        except orjson.JSONDecodeError:
            return masked(kept)
        for comment in letter.get("data", []) if page else [letter]:
            _scrub(comment)
        return orjson.dumps(letter)

    def decode(self, frame: bytes | str) -> list[Decoded]:
        """The comments of one SSE event's data (the Format protocol)."""
        raw = as_bytes(frame)
        return self.guarded(raw, lambda: self._event(raw))

    def page(self, body: bytes) -> Page:
        """A polling page's comments and cursor; a page that is not one is a rejection."""
        found: list[Page] = []

        def run() -> list[Decoded]:
            found.append(self._parse_page(body))
            return []

        rejected = self.guarded(body, run)
        return found[0] if found else Page(rejected, None, False)

    def _event(self, raw: bytes) -> list[Decoded]:
        stripped = raw.lstrip()
        if stripped.startswith(b"["):
            try:
                items = msgspec.json.decode(raw, type=list[msgspec.Raw])
            except msgspec.DecodeError as exc:
                return [self.invalid(exc, raw, "comment")]
            if len(items) > self.options.max_events_per_frame:
                return [self.reject(Reason.TOO_MANY_EVENTS, f"{len(items)} comments", raw)]
            return [self._one(bytes(item)) for item in items]
        return [self._one(raw)]

    def _parse_page(self, body: bytes) -> Page:
        try:
            page = self._page.decode(body)
        except msgspec.DecodeError as exc:
            return Page([self.invalid(exc, body)], None, False)
        if len(page.data) > self.options.max_events_per_frame:
            detail = f"{len(page.data)} comments"
            return Page([self.reject(Reason.TOO_MANY_EVENTS, detail, body)], None, False)
        items = [self._one(bytes(item)) for item in page.data]
        paging = page.paging
        after = paging.cursors.after if paging is not None and paging.cursors else None
        more = paging is not None and bool(paging.next)
        return Page(items, after or None, more)

    def _one(self, raw: bytes) -> Decoded:
        try:
            comment = self._comment.decode(raw)
        except msgspec.DecodeError as exc:
            return self.invalid(exc, raw, "comment")
        if comment.created_time is None:
            ts_ms: int | Rejection = self.now_ms()
        else:
            parsed = created_ms(comment.created_time)
            if parsed is None:
                detail = "created_time is not ISO 8601 with an offset"
                return self.reject(Reason.INVALID_TIMESTAMP, detail, raw, "comment")
            ts_ms = self._checked(parsed, raw)
        if isinstance(ts_ms, Rejection):
            return ts_ms
        user = comment.from_.id if comment.from_ is not None else None
        return Comment(self.stream, self.platform, f"facebook:{comment.id}", ts_ms, user)

    def _checked(self, ts_ms: int, raw: bytes) -> int | Rejection:
        if ts_ms > (self.options.clock() + self.options.max_future_seconds) * 1000:
            return self.reject(Reason.OUT_OF_RANGE, "timestamp in the future", raw, "comment")
        return ts_ms
