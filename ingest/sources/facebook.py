"""Facebook Live comments: the Graph API session around the pure ``ingest.facebook`` parser.

Two modes, one per source (run one of each, with one ``namespace``, to have both):

- ``sse``: ``GET <streaming_url>/<live-video-id>/live_comments`` (``access_token``,
  ``comment_rate``, ``fields``) as a Server-Sent Events stream (``ingest.sse``). After a drop
  the source reconnects with backoff, never sooner than the stream's ``retry:`` asked (up to
  ``backoff_max``), sending
  ``Last-Event-ID`` when the stream gave ids. The docs promise no replay (comments sent while
  no connection was open are missed) and say nothing of ``Last-Event-ID``: comments delivered
  twice are duplicates by their id, which the commit drops.
- ``poll``: ``GET <graph_url>/<version>/<live-video-id>/comments`` with
  ``order=chronological``, ``filter=stream`` (replies too), ``live_filter=no_filter`` and
  ``limit``, following ``paging.next`` until the last page, then again every
  ``poll_interval`` from the last page's ``after`` cursor. Every comment is read (none is
  dropped for a rate): the exact one.

Errors (``ingest.facebook.classify_error``): an expired or invalid token, or a missing
permission, is counted (``on_error``), logged once per run of the same reason, and the source
waits for a new token (its ``token_file`` replaced: no restart) or ``backoff_max`` before trying
again. A rate limit, a server error or a network error is retried with backoff. When a stream
ends or a poll finds nothing new, the live video's ``status`` is read: once it is no longer
live, a last poll reads what is left (poll mode) and the source ends, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, Literal

import aiohttp
import msgspec

from ingest.facebook import COMMENT_FIELDS, TOKEN_REASONS, FacebookLiveFormat, GraphError
from ingest.facebook import classify_error as classify
from ingest.sources.backoff import Backoff
from ingest.sources.base import Health, Sink
from ingest.sources.reconnect import Reconnecting, ReconnectSettings
from ingest.sources.tokens import (
    MAX_TOKEN_BYTES,
    MIN_TOKEN_BYTES,
    SecretsFile,
    TokensError,
    read_text,
)
from ingest.sse import SseError, SseParser

log = logging.getLogger(__name__)

ENDED_STATUSES: Final = frozenset(
    {"LIVE_STOPPED", "PROCESSING", "VOD", "SCHEDULED_CANCELED", "SCHEDULED_EXPIRED"}
)
"""LiveVideo ``status`` values of a broadcast that is over (or will never be live)."""
ERROR_BODY_BYTES: Final = 64 * 1024
"""Read of an error answer's body, at most."""

Mode = Literal["sse", "poll"]


class GraphApiError(Exception):
    """The Graph API answered an error."""

    def __init__(self, error: GraphError, status: int) -> None:
        super().__init__(f"http {status}: {error}")
        self.error = error
        self.status = status


class StreamError(Exception):
    """The stream cannot go on; ``reason`` is short and bounded."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class VideoEnded(Exception):
    """The live video is over: the source ends."""

    def __init__(self, status: str) -> None:
        super().__init__(f"live video status {status}")
        self.status = status


def read_page_token(path: Path) -> str:
    """A token file: one access token (surrounding blank space ignored); TokensError if it is
    not one."""
    token = read_text(path).strip()
    if not token:
        raise TokensError(["no token"])
    if not token.isascii() or not token.isprintable() or " " in token:
        raise TokensError(["the token must be visible ASCII characters, one word"])
    if not MIN_TOKEN_BYTES <= len(token) <= MAX_TOKEN_BYTES:
        raise TokensError([f"the token must be {MIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES} bytes"])
    return token


class PageToken:
    """The access token in use: given once, or the content of a token file (replaced by a
    watch that calls :meth:`replace`). A replacement wakes a source that waits for one."""

    def __init__(self, token: str) -> None:
        self._token = token
        self._changed = asyncio.Event()
        self.version = 0
        """How many times the token was replaced."""

    def __repr__(self) -> str:
        return "PageToken(<hidden>)"

    @property
    def value(self) -> str:
        return self._token

    async def replace(self, token: str) -> None:
        if token != self._token:
            self._token = token
            self.version += 1
            self._changed.set()

    async def changed(self, within: float, seen: int) -> bool:
        """Wait up to ``within`` seconds for a token newer than version ``seen``; whether one
        came (at once if it already has)."""
        if self.version != seen:
            return True
        self._changed.clear()
        try:
            async with asyncio.timeout(within):
                await self._changed.wait()
        except TimeoutError:
            return False
        return True


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FacebookSettings(ReconnectSettings):
    live_video_id: str
    mode: Mode = "sse"
    graph_url: str = "https://graph.facebook.com"
    streaming_url: str = "https://streaming-graph.facebook.com"
    api_version: str = "v26.0"
    comment_rate: str = "ten_per_second"
    live_filter: str = "no_filter"
    poll_interval: float = 2.0
    page_limit: int = 100
    open_timeout: float = 10.0
    """Connect and read the answer's headers within this."""
    read_timeout: float = 120.0
    """A stream silent for this long (no comment, no keep-alive comment) is dropped."""
    request_timeout: float = 10.0
    """A whole polling or status request."""
    status_interval: float = 30.0
    """Seconds between reads of the live video's status while polling finds nothing new."""
    max_event_bytes: int = 256 * 1024


class _RetryFloor(Backoff):
    """Backoff never below the stream's ``retry:`` (once it sent one; at most ``backoff_max``)."""

    floor: float = 0.0

    def next(self) -> float:
        return max(self.floor, super().next())


class FacebookLiveSource(Reconnecting):
    def __init__(
        self,
        name: str,
        fmt: FacebookLiveFormat,
        sink: Sink,
        health: Health,
        settings: FacebookSettings,
        *,
        token: PageToken,
        token_file: Path | None = None,
        token_poll: float = 2.0,
        on_reload: Callable[[bool], None] = lambda ok: None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        on_error: Callable[[str], None] = lambda reason: None,
        on_ignored: Callable[[str], None] = lambda what: None,
        on_ended: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self.fmt = fmt
        self.sink = sink
        self.health = health
        self.settings = settings
        self.token = token
        self.watch: SecretsFile[str] | None = None
        if token_file is not None:
            self.watch = SecretsFile(
                token_file,
                read_page_token,
                kind="token",
                interval=token_poll,
                on_change=token.replace,
                on_reload=on_reload,
            )
        self._reconnect_with(settings, clock, rng)
        self.backoff = self.retry_floor = _RetryFloor(
            settings.backoff_initial, settings.backoff_max, rng=rng
        )
        self.on_error = on_error
        self.on_ignored = on_ignored
        self.on_ended = on_ended
        self.last_event_id = ""
        self.after: str | None = None
        """The polling cursor: the last page's ``after``."""
        self.ended: str | None = None
        """The live video's status once it is over."""
        self._failing: str | None = None
        self._token_version = 0
        self._status_read_at: float | None = None

    async def run(self) -> None:
        """Sessions one after another (with the token file watched beside them) until the live
        video ends."""
        async with asyncio.TaskGroup() as group:
            watching: asyncio.Task[None] | None = None
            if self.watch is not None:
                watching = group.create_task(self.watch.run(), name=f"source[{self.name}].token")
            try:
                await super().run()
            except VideoEnded as exc:
                self.ended = exc.status
                self.on_ended()
                log.warning(
                    "facebook live video ended: the source stops (status %s, video %s)",
                    exc.status,
                    self.settings.live_video_id,
                )
            finally:
                if watching is not None:
                    watching.cancel()

    def reload(self) -> None:
        """Read the token file again now (SIGHUP); nothing without one."""
        if self.watch is not None:
            self.watch.request_reload()

    def _retry_reason(self, exc: Exception) -> str | None:
        if isinstance(exc, VideoEnded):
            return None
        if isinstance(exc, GraphApiError):
            return f"graph {exc.error.reason}"
        if isinstance(exc, StreamError | SseError):
            return exc.reason
        if isinstance(exc, TimeoutError):
            return "timeout"
        if isinstance(exc, aiohttp.ClientError | OSError):
            return "network"
        return type(exc).__name__  # anything else is retried too: a source never dies of it

    async def _session(self) -> None:
        self._token_version = self.token.version  # a newer one may come while we ask
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.open_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            try:
                if self.settings.mode == "sse":
                    await self._stream(http)
                else:
                    await self._poll(http)
            except GraphApiError as exc:
                await self._failed(exc)
                raise

    # --- errors -----------------------------------------------------------------------------

    async def _failed(self, exc: GraphApiError) -> None:
        """Count the error; log it once per run of one reason; when a new token is what it
        needs, wait for one (or ``backoff_max``)."""
        reason = exc.error.reason
        self.on_error(reason)
        if reason != self._failing:
            self._failing = reason
            level = logging.ERROR if reason in TOKEN_REASONS else logging.WARNING
            log.log(level, "facebook graph api refused the source: %s", exc)
        waited = self.settings.backoff_max
        if reason in TOKEN_REASONS and await self.token.changed(waited, self._token_version):
            log.info("facebook token replaced: trying again")
            self.backoff.reset()

    def _working(self) -> None:
        if self._failing is not None:
            log.info("facebook graph api answers again (was %s)", self._failing)
            self._failing = None
        if self._connected_at is None:
            self._connected_at = self.clock()
            self.health.connected(self.name, True)

    async def _get(self, http: aiohttp.ClientSession, url: str, params: Mapping[str, str]) -> bytes:
        """A request's JSON body (bounded); GraphApiError for an error answer."""
        async with asyncio.timeout(self.settings.request_timeout):
            async with http.get(url, params=params) as response:
                if response.status != 200:
                    body = await _body(response, ERROR_BODY_BYTES)
                    raise GraphApiError(classify(response.status, body), response.status)
                body = await _body(response, self.fmt.options.max_frame_bytes)
                if len(body) > self.fmt.options.max_frame_bytes:
                    raise StreamError("answer too large")
        return body

    # --- sse --------------------------------------------------------------------------------

    async def _stream(self, http: aiohttp.ClientSession) -> None:
        settings = self.settings
        url = f"{settings.streaming_url.rstrip('/')}/{settings.live_video_id}/live_comments"
        params = {
            "access_token": self.token.value,
            "comment_rate": settings.comment_rate,
            "fields": COMMENT_FIELDS,
        }
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        async with asyncio.timeout(settings.open_timeout):
            response = await http.get(url, params=params, headers=headers)
        try:
            if response.status != 200:
                async with asyncio.timeout(settings.open_timeout):
                    body = await _body(response, ERROR_BODY_BYTES)
                raise GraphApiError(classify(response.status, body), response.status)
            if response.content_type != "text/event-stream":
                raise StreamError("not an event stream")
            self._working()
            await self._read(response)
        finally:
            response.close()
        await self._check_live(http)
        raise StreamError("stream ended")

    async def _read(self, response: aiohttp.ClientResponse) -> None:
        """Deliver the stream's comments until it ends (returns) or goes silent (raises)."""
        parser = SseParser(self.settings.max_event_bytes, self.last_event_id)
        while True:
            try:
                async with asyncio.timeout(self.settings.read_timeout):
                    chunk = await response.content.readany()
            except TimeoutError:
                raise StreamError("read timeout") from None
            if not chunk:
                return
            self.health.received(self.name)
            events = parser.feed(chunk)
            self.last_event_id = parser.last_event_id
            if parser.retry is not None:
                self.retry_floor.floor = min(parser.retry / 1000, self.settings.backoff_max)
            for event in events:
                if event.type != "message":
                    self.on_ignored("sse_event_type")
                    continue
                data = event.data.encode("utf-8", "surrogatepass")
                if data.lstrip().startswith(b'{"error"'):
                    raise GraphApiError(classify(200, data), 200)
                items = self.fmt.decode(data)
                if items:
                    await self.sink.put(self.name, items)

    # --- polling ----------------------------------------------------------------------------

    async def _poll(self, http: aiohttp.ClientSession) -> None:
        while True:
            ended = None
            if self._status_due():
                ended = await self._status(http)
            new = await self._poll_pages(http)
            self._working()
            if ended is not None:
                raise VideoEnded(ended)
            if new:
                self._status_read_at = self.clock()  # comments flow: it is live
            await asyncio.sleep(self.settings.poll_interval)

    def _status_due(self) -> bool:
        last = self._status_read_at
        return last is None or self.clock() - last >= self.settings.status_interval

    async def _poll_pages(self, http: aiohttp.ClientSession) -> int:
        """Read from the cursor to the last page; how many comments came."""
        settings = self.settings
        url = (
            f"{settings.graph_url.rstrip('/')}/{settings.api_version}/"
            f"{settings.live_video_id}/comments"
        )
        found = 0
        while True:
            params = {
                "access_token": self.token.value,
                "fields": COMMENT_FIELDS,
                "order": "chronological",
                "filter": "stream",
                "live_filter": settings.live_filter,
                "limit": str(settings.page_limit),
            }
            if self.after is not None:
                params["after"] = self.after
            try:
                body = await self._get(http, url, params)
            except GraphApiError as exc:
                if self.after is not None and exc.error.reason in ("other", "not_found"):
                    # A cursor names a comment and dies with it (graph-api/results): read
                    # from the first page again; what was counted is a duplicate.
                    log.warning("facebook polling cursor refused (%s): starting over", exc)
                    self.after = None
                raise
            self.health.received(self.name)
            page = self.fmt.page(body)
            if page.items:
                found += len(page.items)
                await self.sink.put(self.name, page.items)
            if page.after is not None:
                self.after = page.after
            if not page.more or page.after is None:
                return found

    # --- the live video's status ------------------------------------------------------------

    async def _check_live(self, http: aiohttp.ClientSession) -> None:
        """VideoEnded if the live video is over (a stream that ended is the sign to look)."""
        status = await self._status(http)
        if status is not None:
            raise VideoEnded(status)

    async def _status(self, http: aiohttp.ClientSession) -> str | None:
        """The live video's status when it is over, else None."""
        settings = self.settings
        url = f"{settings.graph_url.rstrip('/')}/{settings.api_version}/{settings.live_video_id}"
        body = await self._get(http, url, {"access_token": self.token.value, "fields": "status"})
        self._status_read_at = self.clock()
        with contextlib.suppress(msgspec.DecodeError):
            status = msgspec.json.decode(body, type=_Status).status
            if status in ENDED_STATUSES:
                return status
        return None


async def _body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The answer's body, read up to one byte past ``limit`` (more is not read)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await response.content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class _Status(msgspec.Struct, frozen=True):
    status: str | None = None
