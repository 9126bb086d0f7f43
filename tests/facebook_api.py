"""Our Facebook Graph API for one live video: its comments as Server-Sent Events and as pages.

What the docs say, implemented (and what they leave open, decided as README's assumptions say):

- ``GET /streaming/{live-video-id}/live_comments?access_token&comment_rate&fields``: a
  ``text/event-stream`` (the ``/streaming`` prefix stands for streaming-graph.facebook.com).
  Each comment is an event whose data is the comment object with the requested ``fields``;
  events carry an ``id:`` and, when asked, the stream starts with a BOM and a ``retry:``. Data
  is written over several ``data:`` lines now and then, and each stream ends its lines with
  LF, CRLF or CR in turn. No replay: a comment made while no stream is open is not sent on a
  later one (the docs: "you may miss events"), but ``overlap`` re-sends the last few comments
  to a new stream (a redelivery, which the ingester must not count twice).
- ``GET /{version}/{live-video-id}/comments?order=chronological&filter=stream&after&limit``:
  pages of ``{"data": [...], "paging": {"cursors": {"before", "after"}, "next"}}``; a page
  after the last comment is ``{"data": []}``.
- ``GET /{version}/{live-video-id}?fields=status``: ``LIVE`` until :meth:`end`, then ``VOD``.
- Errors are the Graph API's ``{"error": {"message", "type", "code", "error_subcode",
  "fbtrace_id"}}``: an expired token 190/463, a revoked one 190/460, an unknown one 190, a
  rate limit 4 (``rate_limit``), a video that is not there 100/33.

Tokens never appear in what it records (only whether a request had a good one).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import itertools
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from tests.servers import free_port

STREAM_PATH = "/streaming"
LINE_ENDS = (b"\n", b"\r\n", b"\r")
ENDED = "VOD"


def graph_error(code: int, subcode: int | None, message: str) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["fbtrace_id"] = "AbCdEfGhIjK"
    return {"error": error}


def _split_fields(text: str) -> dict[str, Any]:
    """``id,created_time,from{id,name}`` as ``{"id": None, ..., "from": {"id": None, ...}}``."""
    fields: dict[str, Any] = {}
    depth, start = 0, 0
    for index, char in enumerate(text + ","):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "," and depth == 0:
            part = text[start:index].strip()
            start = index + 1
            if "{" in part:
                name, _, rest = part.partition("{")
                fields[name] = _split_fields(rest.rstrip("}"))
            elif part:
                fields[part] = None
    return fields


def _project(obj: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for name, sub in fields.items():
        if name in obj:
            kept[name] = obj[name] if sub is None else _project(obj[name], sub)
    return kept


@dataclasses.dataclass
class Stream:
    number: int
    fields: dict[str, Any]
    last_event_id: str | None
    line_end: bytes
    request: web.Request
    queue: asyncio.Queue[dict[str, Any] | None] = dataclasses.field(default_factory=asyncio.Queue)
    open: bool = True


class FacebookApi:
    """One live video's comments (see the module docstring)."""

    def __init__(
        self,
        *,
        video_id: str = "1357924680135792",
        token: str = "EAAGpagetoken0123456789abcdef",
        version: str = "v26.0",
        retry_ms: int | None = None,
        overlap: int = 0,
    ) -> None:
        self.video_id = video_id
        self.version = version
        self.retry_ms = retry_ms
        self.overlap = overlap
        self.port = free_port()
        self.valid_tokens = {token}
        self.expired_tokens: set[str] = set()
        self.revoked_tokens: set[str] = set()
        self.status = "LIVE"
        self.comments: list[dict[str, Any]] = []
        self.streams: list[Stream] = []
        self.delivered: set[str] = set()
        """Ids of the comments written to some stream."""
        self.stream_requests = 0
        self.poll_requests = 0
        self.status_requests = 0
        self.refused: list[tuple[str, int, int | None]] = []
        """Every error answer: (path kind, code, subcode)."""
        self.rate_limit = 0
        """The next this many polling requests are answered with a rate limit (code 4)."""
        self.last_event_ids: list[str | None] = []
        """The ``Last-Event-ID`` of every stream request."""
        self.poll_params: list[dict[str, str]] = []
        self.content_type = "text/event-stream; charset=utf-8"
        """What a stream answers as (another type: a proxy's error page, say)."""
        self._ids = itertools.count(1)
        self._event_ids = itertools.count(1)

    @property
    def graph_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def streaming_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{STREAM_PATH}"

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[FacebookApi]:
        app = web.Application()
        app.router.add_get(f"{STREAM_PATH}/{{video}}/live_comments", self._live_comments)
        app.router.add_get("/{version}/{video}/comments", self._comments)
        app.router.add_get("/{version}/{video}", self._video)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        try:
            yield self
        finally:
            for stream in self.streams:
                stream.queue.put_nowait(None)
            await runner.cleanup()

    # --- what a test drives ---------------------------------------------------------------

    def open_streams(self) -> list[Stream]:
        return [stream for stream in self.streams if stream.open]

    async def comment(self, author: str = "100004", text: str = "chốt 1 hộp") -> dict[str, Any]:
        """A new comment: kept for polling, and sent to every open stream."""
        n = next(self._ids)
        created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")
        comment = {
            "created_time": created,
            "from": {"name": f"Người xem {author}", "id": author},
            "message": f"{text} 0912 345 {n:03d}",
            "id": f"{self.video_id}_{n}",
        }
        self.comments.append(comment)
        for stream in self.open_streams():
            await stream.queue.put(comment)
        return comment

    async def send_raw(self, data: bytes) -> None:
        """An event of ``data`` (not a comment) to every open stream."""
        for stream in self.open_streams():
            await stream.queue.put({"raw": data})

    def drop(self) -> int:
        """Cut every open stream off (the connection aborted, no end); how many."""
        dropped = 0
        for stream in self.open_streams():
            stream.open = False
            transport = stream.request.transport
            if transport is not None:
                transport.abort()
            stream.queue.put_nowait(None)
            dropped += 1
        return dropped

    def end(self) -> None:
        """The live video ends: its status is VOD and every stream closes."""
        self.status = ENDED
        for stream in self.open_streams():
            stream.open = False
            stream.queue.put_nowait(None)

    def expire(self, token: str) -> None:
        self.valid_tokens.discard(token)
        self.expired_tokens.add(token)

    def revoke(self, token: str) -> None:
        self.valid_tokens.discard(token)
        self.revoked_tokens.add(token)

    def delete(self, comment: dict[str, Any]) -> None:
        """The comment is deleted: gone from the pages, and every cursor naming it invalid."""
        self.comments.remove(comment)

    def _position(self, comment_id: str) -> int | None:
        for index, comment in enumerate(self.comments):
            if comment["id"] == comment_id:
                return index
        return None

    # --- the handlers ---------------------------------------------------------------------

    def _error(
        self, kind: str, status: int, code: int, subcode: int | None, message: str
    ) -> web.Response:
        self.refused.append((kind, code, subcode))
        return web.json_response(graph_error(code, subcode, message), status=status)

    def _refusal(self, request: web.Request, kind: str) -> web.Response | None:
        """The error answer a request gets for its token or video, or None."""
        token = request.query.get("access_token", "")
        if token in self.expired_tokens:
            return self._error(kind, 400, 190, 463, "Error validating access token: expired")
        if token in self.revoked_tokens:
            return self._error(kind, 400, 190, 460, "The session has been invalidated")
        if token not in self.valid_tokens:
            return self._error(kind, 400, 190, None, "Invalid OAuth access token")
        if request.match_info["video"] != self.video_id:
            return self._error(kind, 400, 100, 33, "Object does not exist")
        return None

    async def _live_comments(self, request: web.Request) -> web.StreamResponse:
        self.stream_requests += 1
        self.last_event_ids.append(request.headers.get("Last-Event-ID"))
        refused = self._refusal(request, "stream")
        if refused is not None:
            return refused
        rate = request.query.get("comment_rate", "one_per_two_seconds")
        if rate not in ("one_per_two_seconds", "ten_per_second"):
            return self._error("stream", 400, 100, None, "Invalid parameter comment_rate")
        number = len(self.streams)
        stream = Stream(
            number,
            _split_fields(request.query.get("fields", "from{name,id},message")),
            request.headers.get("Last-Event-ID"),
            LINE_ENDS[number % len(LINE_ENDS)],
            request,
        )
        response = web.StreamResponse(
            headers={
                "Content-Type": self.content_type,
                "Cache-Control": "no-cache",
            }
        )
        await response.prepare(request)
        end = stream.line_end
        head = (b"\xef\xbb\xbf" if number % 2 == 0 else b"") + b": connected" + end + end
        if self.retry_ms is not None:
            head += f"retry: {self.retry_ms}".encode() + end + end
        await response.write(head)
        if self.status != "LIVE":  # over: the stream ends at once
            return response
        for comment in self.comments[-self.overlap :] if self.overlap else []:
            await stream.queue.put(comment)
        self.streams.append(stream)
        while True:
            try:
                async with asyncio.timeout(0.05):
                    item = await stream.queue.get()
            except TimeoutError:  # aiohttp does not cancel us when the client goes away
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                continue
            if item is None or not stream.open:
                break
            try:
                await response.write(self._event(stream, item))
            except (ConnectionError, RuntimeError):
                stream.open = False
                break
            if "id" in item:
                self.delivered.add(item["id"])
        stream.open = False
        if self.status != "LIVE":
            with contextlib.suppress(ConnectionError, RuntimeError):
                await response.write_eof()
        return response

    def _event(self, stream: Stream, item: dict[str, Any]) -> bytes:
        end = stream.line_end
        if "raw" in item:
            return b"data: " + bytes(item["raw"]) + end + end
        body = _project(item, stream.fields)
        pretty = next(self._event_ids)
        lines = [f"id: {pretty}".encode()]
        if pretty % 3 == 0:  # over several data lines
            lines += [
                b"data: " + line
                for line in orjson.dumps(body, option=orjson.OPT_INDENT_2).split(b"\n")
            ]
        else:
            lines.append(b"data: " + orjson.dumps(body))
        return end.join(lines) + end + end

    async def _comments(self, request: web.Request) -> web.Response:
        self.poll_requests += 1
        self.poll_params.append({k: v for k, v in request.query.items() if k != "access_token"})
        if request.match_info["version"] != self.version:
            return self._error("poll", 400, 2635, None, "Unknown API version")
        refused = self._refusal(request, "poll")
        if refused is not None:
            return refused
        if self.rate_limit > 0:
            self.rate_limit -= 1
            return self._error("poll", 403, 4, None, "Application request limit reached")
        fields = _split_fields(request.query.get("fields", "created_time,from{name,id},message,id"))
        limit = min(int(request.query.get("limit", "25")), 100)
        after = request.query.get("after")
        start = 0
        if after:
            found = self._position(_comment_id(after))
            if found is None:  # the comment it named is gone: the cursor with it
                return self._error("poll", 400, 100, None, "Invalid cursor")
            start = found + 1
        page = self.comments[start : start + limit]
        body: dict[str, Any] = {"data": [_project(comment, fields) for comment in page]}
        if page:
            last = start + len(page) - 1
            cursors = {"before": _cursor(page[0]["id"]), "after": _cursor(page[-1]["id"])}
            paging: dict[str, Any] = {"cursors": cursors}
            if last + 1 < len(self.comments):
                paging["next"] = (
                    f"{self.graph_url}{request.path}?after={cursors['after']}&limit={limit}"
                )
            body["paging"] = paging
        return web.json_response(body)

    async def _video(self, request: web.Request) -> web.Response:
        self.status_requests += 1
        refused = self._refusal(request, "status")
        if refused is not None:
            return refused
        return web.json_response({"status": self.status, "id": self.video_id})


def _cursor(comment_id: str) -> str:
    return base64.urlsafe_b64encode(f"comment:{comment_id}".encode()).decode()


def _comment_id(cursor: str) -> str:
    return base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")[2]
