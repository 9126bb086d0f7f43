"""YouTube Live chat poller: the polling rules around the pure ``ingest.youtube`` parser.

- The chat is the configured ``live_chat_id``, or the ``activeLiveChatId`` that
  ``videos.list?part=liveStreamingDetails&id=<video_id>`` gives for a broadcast's video (looked up
  once per source; a video not live yet is looked up again with backoff).
- ``GET <api_url>/liveChat/messages?liveChatId=..&part=id,snippet&maxResults=..&pageToken=..``
  with ``Authorization: Bearer <token>``; the next request follows ``nextPageToken`` after
  ``pollingIntervalMillis`` (never sooner than ``min_poll_interval``). The page token outlives a
  failed request, so a retry resumes where the last page ended; only a restart starts again from
  the chat's recent history, whose message ids are then duplicates.
- Errors (``ingest.youtube.api_error``): quota exceeded waits until the quota resets at midnight
  Pacific time (or ``quota_probe_interval`` sooner: an operator may raise the quota), with the
  quota gauge at 1; chat ended, disabled or not found ends the source cleanly (logged, counted,
  never retried); 401 gets a new token and retries once; forbidden, rate limited, server errors
  and network errors end the session, and the source retries with backoff from the same page.
- ``transport = "stream"``: ``GET <api_url>/liveChat/messages/stream`` instead, whose body is a
  JSON array of the same list responses written as messages come (``streamList`` over HTTP/JSON):
  each element is handed on once complete; when the array ends, the connection drops or stays
  silent ``stream_idle_timeout``, a new stream resumes from the last page token.
- The token comes from ``ingest.sources.twitch_auth``: a static one, or one refreshed with the
  refresh-token flow (Google's OAuth server) by a task beside the poller, before it expires.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import random
import time
import zoneinfo
from collections.abc import Callable
from typing import Final

import aiohttp

from ingest.sources.base import Health, Sink
from ingest.sources.reconnect import Reconnecting, ReconnectSettings
from ingest.sources.twitch_auth import RefreshError, StaticToken, Tokens
from ingest.youtube import (
    ApiError,
    ArraySplitter,
    Invalid,
    LiveChatFormat,
    Page,
    StreamError,
    api_error,
    chat_lookup,
)

log = logging.getLogger(__name__)

QUOTA_ZONE: Final = zoneinfo.ZoneInfo("America/Los_Angeles")
"""Daily quotas reset at midnight Pacific time (developers.google.com/youtube/v3/getting-started
#quota)."""

END_REASONS: Final = ("chat_ended", "chat_disabled", "chat_not_found", "video_not_found")
"""Why a source stopped for good (a metric label)."""

_NETWORK_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


class SessionError(Exception):
    """The poll cannot go on now; ``reason`` is short and bounded. The source retries."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class ChatOver(Exception):
    """The chat is over (``reason`` one of :data:`END_REASONS`): the source ends."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class YouTubeSettings(ReconnectSettings):
    api_url: str = "https://www.googleapis.com/youtube/v3"
    live_chat_id: str | None = None
    video_id: str | None = None
    max_results: int = 2000
    """``maxResults`` (the API takes 200 to 2000)."""
    min_poll_interval: float = 1.0
    """Seconds between polls at least, whatever ``pollingIntervalMillis`` says."""
    request_timeout: float = 10.0
    max_page_bytes: int = 8 * 1024 * 1024
    quota_probe_interval: float = 3600.0
    """While the quota is exhausted, try again after this many seconds or at the reset,
    whichever comes first."""
    backoff_max: float = 300.0
    transport: str = "poll"
    """``poll`` (``liveChatMessages.list``) or ``stream`` (``liveChatMessages.streamList`` over
    HTTP/JSON: ``GET <api_url>/liveChat/messages/stream``, a JSON array of list responses that
    grows while the connection is open)."""
    stream_idle_timeout: float = 120.0
    """Seconds a stream may send nothing before it is taken for dead and opened again."""


def quota_reset(now: float) -> float:
    """When the daily quota resets after ``now`` (epoch seconds): the next midnight Pacific."""
    local = dt.datetime.fromtimestamp(now, QUOTA_ZONE)
    midnight = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(), QUOTA_ZONE)
    return midnight.timestamp()


class YouTubeSource(Reconnecting):
    def __init__(
        self,
        name: str,
        fmt: LiveChatFormat,
        sink: Sink,
        health: Health,
        settings: YouTubeSettings,
        *,
        tokens: str | Tokens,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        on_api_error: Callable[[str], None] = lambda kind: None,
        on_quota: Callable[[bool], None] = lambda exhausted: None,
        on_ended: Callable[[str], None] = lambda reason: None,
        on_ignored: Callable[[int], None] = lambda count: None,
    ) -> None:
        self.name = name
        self.fmt = fmt
        self.sink = sink
        self.health = health
        self.settings = settings
        self.tokens: Tokens = StaticToken(tokens) if isinstance(tokens, str) else tokens
        self._reconnect_with(settings, clock, rng)
        self.wall = wall
        self.on_api_error = on_api_error
        self.on_quota = on_quota
        self.on_ended = on_ended
        self.on_ignored = on_ignored
        self.chat_id = settings.live_chat_id
        self.page_token: str | None = None
        self.polls = 0
        self.ended: str | None = None
        self._up = False
        self._renewed = False
        """A stream was refused 401 and the token renewed: another 401 is an error."""

    async def run(self) -> None:
        """Poll until the chat is over (returns) or the task is cancelled; the token is kept
        fresh beside."""
        async with asyncio.TaskGroup() as group:
            refreshing = group.create_task(self.tokens.run(), name=f"source[{self.name}].token")
            try:
                await super().run()
            except ChatOver as over:
                self.ended = over.reason
                log.warning("youtube live chat is over; the source stops: %s", over.reason)
                self.on_ended(over.reason)
            refreshing.cancel()

    def _ended(self) -> None:
        self._up = False

    def _retry_reason(self, exc: Exception) -> str | None:
        if isinstance(exc, ChatOver):
            return None
        if isinstance(exc, RefreshError):
            return f"token {exc.reason}"
        if isinstance(exc, SessionError):
            log.warning("youtube poll failed: %s", exc)
            return exc.reason
        if isinstance(exc, _NETWORK_ERRORS):
            return "network"
        log.error("youtube poll failed unexpectedly: %s", type(exc).__name__, exc_info=exc)
        return type(exc).__name__  # whatever it was: the source retries, never dies

    async def _session(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.request_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            if self.chat_id is None:
                self.chat_id = await self._find_chat(http)
            while True:
                delay = self.settings.min_poll_interval
                if self.settings.transport == "stream":
                    await self._stream(http, self.chat_id)
                else:
                    answer = await self._poll(http, self.chat_id)
                    self._mark_up()
                    polling_ms = await self._take(answer)
                    if polling_ms is not None:
                        delay = max(delay, polling_ms / 1000)
                await asyncio.sleep(delay)

    def _mark_up(self) -> None:
        """An answer came: the source is up (again, after a quota wait)."""
        if not self._up:
            self._up = True
            self._connected_at = self.clock()
            self.health.connected(self.name, True)

    async def _take(self, answer: Page | Invalid) -> int | None:
        """Hand a page's events on and remember where it ends; its polling interval."""
        if isinstance(answer, Invalid):
            await self.sink.put(self.name, answer.items)
            raise SessionError("malformed page")
        if answer.items:
            await self.sink.put(self.name, answer.items)
        if answer.ignored:
            self.on_ignored(answer.ignored)
        if answer.next_page_token:
            self.page_token = answer.next_page_token
        if answer.ended:
            raise ChatOver("chat_ended")
        return answer.polling_ms

    def _params(self, chat_id: str) -> dict[str, str]:
        params = {
            "liveChatId": chat_id,
            "part": "id,snippet",
            "maxResults": str(self.settings.max_results),
        }
        if self.page_token:
            params["pageToken"] = self.page_token
        return params

    async def _stream(self, http: aiohttp.ClientSession, chat_id: str) -> None:
        """One streaming connection, from the page token on, until the server ends it (then
        the caller opens the next one). Errors as for a poll."""
        token = await self.tokens.current()
        url = self.settings.api_url.rstrip("/") + "/liveChat/messages/stream"
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.settings.request_timeout,
            sock_read=self.settings.stream_idle_timeout,
        )
        params = self._params(chat_id)
        async with http.get(url, params=params, headers=headers, timeout=timeout) as response:
            self.polls += 1
            if response.status != 200:
                body = await self._bounded(response)
                if response.status == 401 and not self._renewed:
                    self._renewed = await self.tokens.rejected(token) is not None
                    if self._renewed:
                        return  # a new token: the next connection uses it, once
                error = api_error(response.status, body)
                self.on_api_error(error.kind)
                await self._failed(error)
                return
            self._renewed = False
            self.health.received(self.name)
            self.on_quota(False)
            self._mark_up()
            splitter = ArraySplitter(self.settings.max_page_bytes)
            async for chunk in response.content.iter_any():
                self.health.received(self.name)
                try:
                    elements = splitter.feed(chunk)
                except StreamError as exc:
                    raise SessionError("malformed stream", str(exc)) from exc
                for element in elements:
                    await self._take(self.fmt.parse(element))

    async def _poll(self, http: aiohttp.ClientSession, chat_id: str) -> Page | Invalid:
        """One page; errors handled as the module docstring says (a quota wait returns the page
        polled after it)."""
        while True:
            status, body = await self._get(http, "/liveChat/messages", self._params(chat_id))
            self.polls += 1
            if status == 200:
                self.health.received(self.name)
                self.on_quota(False)
                return self.fmt.parse(body)
            error = api_error(status, body)
            self.on_api_error(error.kind)
            await self._failed(error)

    async def _failed(self, error: ApiError) -> None:
        """Wait out a quota, or raise what ends the session (or the source)."""
        if error.kind == "quota":
            await self._quota_wait()
            return
        if error.kind in ("chat_ended", "chat_disabled", "chat_not_found"):
            raise ChatOver(error.kind)
        raise SessionError(error.kind, f"http {error.status} {error.reason}")

    async def _quota_wait(self) -> None:
        now = self.wall()
        reset = quota_reset(now)
        delay = min(reset - now, self.settings.quota_probe_interval)
        log.warning(
            "youtube quota exceeded; polling again in %.0f s (quota resets at %s)",
            delay,
            dt.datetime.fromtimestamp(reset, dt.UTC).isoformat(),
        )
        self.on_quota(True)
        if self._up:
            self._up = False
            self.health.connected(self.name, False)
        await asyncio.sleep(delay)

    async def _find_chat(self, http: aiohttp.ClientSession) -> str:
        video = self.settings.video_id
        assert video is not None  # validated: a chat id or a video id
        params = {"id": video, "part": "liveStreamingDetails"}
        while True:
            status, body = await self._get(http, "/videos", params)
            if status == 200:
                break
            error = api_error(status, body)
            self.on_api_error(error.kind)
            await self._failed(error)
        found = chat_lookup(body, video)
        if found.chat_id is not None:
            log.info("youtube live chat found for video %s", video)
            return found.chat_id
        if found.why == "ended":
            raise ChatOver("chat_ended")
        if found.why == "not_found":
            raise ChatOver("video_not_found")
        raise SessionError(f"video {found.why}")

    async def _get(
        self, http: aiohttp.ClientSession, path: str, params: dict[str, str]
    ) -> tuple[int, bytes]:
        """One authorised GET: (status, body), retried once with a new token after a 401."""
        token = await self.tokens.current()
        status, body = await self._request(http, path, params, token)
        if status == 401:
            fresh = await self.tokens.rejected(token)
            if fresh is not None:
                status, body = await self._request(http, path, params, fresh)
        return status, body

    async def _request(
        self, http: aiohttp.ClientSession, path: str, params: dict[str, str], token: str
    ) -> tuple[int, bytes]:
        url = self.settings.api_url.rstrip("/") + path
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        async with http.get(url, params=params, headers=headers) as response:
            return response.status, await self._bounded(response)

    async def _bounded(self, response: aiohttp.ClientResponse) -> bytes:
        """A response's body, at most ``max_page_bytes`` (SessionError past it)."""
        limit = self.settings.max_page_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise SessionError("page too large", f"over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
