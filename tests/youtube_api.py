"""A local YouTube Data API v3 that behaves as documented, for the YouTube Live chat tests.

- ``GET /youtube/v3/liveChat/messages``: one chat's messages, oldest first. Without a
  ``pageToken`` the answer starts with recent history (the last ``history`` messages); with one,
  it continues after the page that gave it. Every answer says ``nextPageToken`` and
  ``pollingIntervalMillis``; a poll that comes sooner than that interval after the page whose
  token it carries is refused ``rateLimitExceeded`` (403) and counted in ``too_soon``.
- Errors as the API writes them (``{"error": {"code", "message", "errors": [{"domain",
  "reason", "message"}]}}``): ``quotaExceeded`` (403) while :attr:`quota_exhausted`;
  ``liveChatEnded`` (403) once :meth:`end` was called (after one last page with ``offlineAt``
  and a ``chatEndedEvent``); ``liveChatNotFound`` (404) for another chat id; 401 for a bearer
  token that is not (or no longer) valid.
- ``GET /youtube/v3/liveChat/messages/stream`` (``streamList`` over HTTP/JSON): the same list
  responses, as the elements of one JSON array written as messages come, held open
  ``stream_seconds``, then closed with ``]`` (the client resumes with the last
  ``nextPageToken``); :attr:`drop_after_pages` cuts one off mid-array instead.
- ``GET /youtube/v3/videos?part=liveStreamingDetails&id=<video>``: the broadcast's
  ``activeLiveChatId`` while the chat is live (none before it starts, ``actualEndTime`` after).
- :attr:`failures`: canned error answers for the next polls (a 503, a rate limit, a page that
  is not JSON).
- ``POST /oauth/token``: Google's refresh-token grant, with tokens that expire after
  ``lifetime`` seconds (``tests.platforms.OAuthServer``; Google always answers ``expires_in``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from tests.platforms import OAuthServer
from tests.servers import free_port


def published() -> str:
    """RFC 3339 with microseconds, as the API writes ``publishedAt``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def error_body(code: int, reason: str, domain: str = "youtube.liveChat") -> dict[str, Any]:
    message = f"{reason} (test server)"
    return {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": domain, "reason": reason}],
        }
    }


@dataclasses.dataclass(frozen=True)
class Paid:
    currency: str
    micros: int


class YouTubeApi:
    """One broadcast (``video_id``) and its live chat (``chat_id``)."""

    def __init__(
        self,
        *,
        polling_ms: int = 150,
        history: int = 20,
        token: str = "test-youtube-access-token-0123456789",
        lifetime: int = 3,
    ) -> None:
        self.video_id = "dQw4w9WgXcQ"
        self.chat_id = "Cg0KC2RRdzR3OVdnWGNRKicKGFVD"
        self.polling_ms = polling_ms
        self.history = history
        self.token = token
        self.oauth = OAuthServer(
            "test-youtube-client.apps.googleusercontent.com", lifetime=lifetime
        )
        self.port = free_port()
        self.messages: list[dict[str, Any]] = []
        self.counted: list[str] = []
        """Ids of the messages the ingester must count (text, Super Chat, Super Sticker)."""
        self.paid: dict[str, Paid] = {}
        self.quota_exhausted = False
        self.live = True
        """Whether the broadcast has started (before: no activeLiveChatId)."""
        self.failures: list[tuple[int, bytes]] = []
        """Answers (status, body) the next polls get instead of a page, first first."""
        self.ended = False
        self._end_sent = False
        self.polls = 0
        self.first_polls = 0
        """Polls without a page token (a client starting, given recent history)."""
        self.too_soon = 0
        self.unauthorized = 0
        self.quota_refusals = 0
        self.lookups = 0
        self._given: dict[str, float] = {}
        """Page token -> loop time it was given."""
        self._ids = itertools.count(1)
        self.streams = 0
        """Stream connections opened (``liveChatMessages.streamList``)."""
        self.stream_seconds = 1.0
        """How long the server holds a stream open before it ends the array and closes."""
        self.drop_after_pages = 0
        """When positive: the next stream is cut off (no closing bracket, connection closed)
        after this many pages, as a lost connection would be."""
        self.dropped = 0
        self._posted: asyncio.Event | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/youtube/v3"

    @property
    def oauth_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/oauth"

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[YouTubeApi]:
        app = web.Application()
        app.router.add_get("/youtube/v3/liveChat/messages", self._list)
        app.router.add_get("/youtube/v3/liveChat/messages/stream", self._stream)
        self._posted = asyncio.Event()
        app.router.add_get("/youtube/v3/videos", self._videos)
        app.router.add_post("/oauth/token", self.oauth.token)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        try:
            yield self
        finally:
            await runner.cleanup()

    # --- what the chat does -----------------------------------------------------------------

    def _item(self, kind: str, author: str, extra: dict[str, Any]) -> dict[str, Any]:
        n = next(self._ids)
        item = {
            "kind": "youtube#liveChatMessage",
            "etag": f"etag-{n}",
            "id": f"LCC.msg-{n:06d}",
            "snippet": {
                "type": kind,
                "liveChatId": self.chat_id,
                "authorChannelId": author,
                "publishedAt": published(),
                "hasDisplayContent": True,
                **extra,
            },
        }
        self.messages.append(item)
        if self._posted is not None:
            self._posted.set()
        return item

    def text(self, text: str, author: str = "UC-viewer-1") -> str:
        details = {"displayMessage": text, "textMessageDetails": {"messageText": text}}
        item = self._item("textMessageEvent", author, details)
        self.counted.append(item["id"])
        return str(item["id"])

    def super_chat(self, micros: int, currency: str, author: str = "UC-fan-1") -> str:
        amount = {"amountMicros": str(micros), "currency": currency, "tier": 2}
        details = {
            "displayMessage": "thank you",
            "superChatDetails": {**amount, "amountDisplayString": "x", "userComment": "hi"},
        }
        item = self._item("superChatEvent", author, details)
        self.counted.append(item["id"])
        self.paid[item["id"]] = Paid(currency, micros)
        return str(item["id"])

    def super_sticker(self, micros: int, currency: str, author: str = "UC-fan-2") -> str:
        details = {
            "displayMessage": "sticker",
            "superStickerDetails": {
                "amountMicros": str(micros),
                "currency": currency,
                "amountDisplayString": "x",
                "tier": 1,
                "superStickerMetadata": {"stickerId": "s1", "altText": "a", "language": "en"},
            },
        }
        item = self._item("superStickerEvent", author, details)
        self.counted.append(item["id"])
        self.paid[item["id"]] = Paid(currency, micros)
        return str(item["id"])

    def other(self, kind: str = "newSponsorEvent") -> None:
        """A message we do not count (a new member, a poll, a deletion, ...)."""
        self._item(kind, "UC-member-1", {"displayMessage": "welcome"})

    def end(self) -> None:
        """The broadcast ends: one last page says so, then the chat answers liveChatEnded."""
        self._item("chatEndedEvent", "UC-owner", {"displayMessage": "chat ended"})
        self.ended = True

    # --- the API ----------------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme == "Bearer" and (token == self.token or self.oauth.valid(token))

    def _refusal(self, request: web.Request) -> web.Response | None:
        """The error answer a request gets, if any, before its page token is looked at."""
        if not self._authorised(request):
            self.unauthorized += 1
            return web.json_response(error_body(401, "authError", "global"), status=401)
        if request.query.get("liveChatId") != self.chat_id:
            return web.json_response(error_body(404, "liveChatNotFound"), status=404)
        if set(request.query.get("part", "").split(",")) - {"id", "snippet", "authorDetails"}:
            return web.json_response(error_body(400, "invalidValue"), status=400)
        if self.failures:
            status, failure = self.failures.pop(0)
            return web.Response(status=status, body=failure, content_type="application/json")
        if self.quota_exhausted:
            self.quota_refusals += 1
            return web.json_response(error_body(403, "quotaExceeded", "youtube.quota"), status=403)
        if self.ended and self._end_sent:
            return web.json_response(error_body(403, "liveChatEnded"), status=403)
        return None

    def _page(self, start: int, limit: int) -> tuple[dict[str, Any], int]:
        page = self.messages[start : start + limit]
        after = start + len(page)
        body: dict[str, Any] = {
            "kind": "youtube#liveChatMessageListResponse",
            "etag": "page",
            "pollingIntervalMillis": self.polling_ms,
            "pageInfo": {"totalResults": len(page), "resultsPerPage": len(page)},
            "nextPageToken": f"p{after}",
            "items": page,
        }
        if self.ended and after == len(self.messages):
            body["offlineAt"] = published()
            self._end_sent = True
        return body, after

    def _start(self, token: str | None) -> int | None:
        """Where a request's page starts: after its token's page, or recent history."""
        if token is None:
            self.first_polls += 1
            return max(0, len(self.messages) - self.history)
        if token not in self._given or not token.startswith("p"):
            return None
        return int(token[1:])

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        """``liveChatMessages.streamList`` over HTTP/JSON: a JSON array of list responses,
        one as soon as there is something new, held open ``stream_seconds``."""
        self.polls += 1
        self.streams += 1
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        position = self._start(request.query.get("pageToken"))
        if position is None:
            return web.json_response(error_body(400, "pageTokenInvalid"), status=400)
        limit = int(request.query.get("maxResults", "500"))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b"[")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stream_seconds
        sent = 0
        assert self._posted is not None
        while True:
            self._posted.clear()
            if sent == 0 or position < len(self.messages):
                body, position = self._page(position, limit)
                self._given.setdefault(body["nextPageToken"], loop.time())
                await response.write((b",\n" if sent else b"") + orjson.dumps(body))
                sent += 1
                if self._end_sent:
                    break
                if self.drop_after_pages and sent >= self.drop_after_pages:
                    self.drop_after_pages = 0
                    self.dropped += 1
                    assert request.transport is not None
                    request.transport.close()  # cut off: no closing bracket
                    return response
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._posted.wait(), min(left, 0.2))
        await response.write(b"]")
        await response.write_eof()
        return response

    async def _list(self, request: web.Request) -> web.Response:
        self.polls += 1
        now = asyncio.get_running_loop().time()
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        token = request.query.get("pageToken")
        start = self._start(token)
        if start is None:
            return web.json_response(error_body(400, "pageTokenInvalid"), status=400)
        # A little slack for the clocks of two processes; the client waits the whole time.
        if token is not None and now - self._given[token] < 0.8 * self.polling_ms / 1000:
            self.too_soon += 1
            return web.json_response(error_body(403, "rateLimitExceeded"), status=403)
        body, _ = self._page(start, int(request.query.get("maxResults", "500")))
        self._given.setdefault(body["nextPageToken"], now)  # replicas share tokens: the earliest
        return web.json_response(body)

    async def _videos(self, request: web.Request) -> web.Response:
        self.lookups += 1
        if not self._authorised(request):
            self.unauthorized += 1
            return web.json_response(error_body(401, "authError", "global"), status=401)
        if request.query.get("id") != self.video_id:
            return web.json_response({"kind": "youtube#videoListResponse", "items": []})
        if not self.live:
            details: dict[str, Any] = {"scheduledStartTime": published()}
        elif self.ended:
            details = {"actualStartTime": published()}
            details["actualEndTime"] = published()
        else:
            details = {"actualStartTime": published(), "activeLiveChatId": self.chat_id}
        item = {"kind": "youtube#video", "id": self.video_id, "liveStreamingDetails": details}
        return web.json_response({"kind": "youtube#videoListResponse", "items": [item]})
