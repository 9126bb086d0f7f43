"""Twitch EventSub WebSocket client: the session rules around the pure ``ingest.twitch`` parser.

- Connect, wait for ``session_welcome``, then create the subscriptions through Helix
  (``POST <helix>/eventsub/subscriptions`` with the session id) — Twitch closes a session that
  has none after 10 s (4003). A 409 (it already exists) is fine; any other failure drops the
  session and the whole thing is retried with backoff.
- Keepalive: if neither a notification nor a keepalive (nor another message) arrives within the
  welcome's ``keepalive_timeout_seconds`` plus a margin, the connection is taken for dead and
  a new session is started. Pings do not count, and we send none: Twitch pings us, websockets
  answers, and any message from a client would close the session (4001).
- ``session_reconnect``: connect to its URL as given while the old connection keeps
  delivering; once the new one's welcome arrives, close the old one and read what it still
  had buffered, then carry on with the new one. Subscriptions carry over. Events the two
  connections both delivered are duplicates, which the commit drops.
- A lost connection (no reconnect message) has no replay: a new session, new subscriptions.
- ``revocation``: logged, counted; that subscription sends nothing more. Once none is left,
  the session ends and a new one subscribes again: while Helix refuses (the authorisation was
  revoked), the source stays disconnected and retries with backoff.
- The token comes from ``ingest.sources.twitch_auth``: a static one (rotated by a restart), or
  one kept fresh with the refresh-token flow by a task beside the sessions. A 401 from Helix
  asks for a new token and retries that subscription once; a refresh that fails ends the
  session (reason ``token <reason>``) and the source retries with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Sequence

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ingest.sources.base import Health, Sink
from ingest.sources.reconnect import Reconnecting
from ingest.sources.twitch_auth import RefreshError, StaticToken, Tokens
from ingest.sources.websocket import ConnectionSettings, retry_reason
from ingest.twitch import (
    CHAT_MESSAGE,
    EventSubFormat,
    Invalid,
    Keepalive,
    Notification,
    Reconnect,
    Revocation,
    Welcome,
)

log = logging.getLogger(__name__)

OTHER_SUBSCRIPTION = "other_subscription"


class SessionError(Exception):
    """The session cannot go on; ``reason`` is a short, bounded description."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class Subscription:
    type: str
    version: str
    condition: dict[str, str]


def chat_subscriptions(broadcaster_user_id: str, user_id: str) -> list[Subscription]:
    """What a chat source subscribes to: ``channel.chat.message`` v1, read as ``user_id``."""
    condition = {"broadcaster_user_id": broadcaster_user_id, "user_id": user_id}
    return [Subscription(CHAT_MESSAGE, "1", condition)]


class Helix:
    """Creates EventSub subscriptions for a websocket session, with a token from ``token``
    (a string is a static token)."""

    def __init__(
        self, base_url: str, client_id: str, token: str | Tokens, timeout: float = 10.0
    ) -> None:
        self.url = base_url.rstrip("/") + "/eventsub/subscriptions"
        self.client_id = client_id
        self.tokens: Tokens = StaticToken(token) if isinstance(token, str) else token
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    def __repr__(self) -> str:
        return f"Helix({self.url!r}, {self.client_id!r}, {self.tokens!r})"

    async def create(self, session_id: str, subscriptions: Sequence[Subscription]) -> None:
        """Subscribe; a 401 gets a new token and one more try (per call), else SessionError."""
        token = await self.tokens.current()
        retried = False
        async with aiohttp.ClientSession(timeout=self.timeout) as http:
            for sub in subscriptions:
                status, text = await self._post(http, token, session_id, sub)
                if status == 401 and not retried:
                    retried = True
                    fresh = await self.tokens.rejected(token)
                    if fresh is not None:
                        token = fresh
                        status, text = await self._post(http, token, session_id, sub)
                if status not in (200, 202, 409):
                    raise SessionError(f"subscribe http {status}", text)

    async def _post(
        self, http: aiohttp.ClientSession, token: str, session_id: str, sub: Subscription
    ) -> tuple[int, str]:
        body = {
            "type": sub.type,
            "version": sub.version,
            "condition": sub.condition,
            "transport": {"method": "websocket", "session_id": session_id},
        }
        headers = {"Client-Id": self.client_id, "Authorization": f"Bearer {token}"}
        async with http.post(self.url, json=body, headers=headers) as response:
            if response.status in (200, 202, 409):
                return response.status, ""
            return response.status, (await response.text())[:300]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EventSubSettings(ConnectionSettings):
    keepalive_margin: float = 5.0
    """Seconds of silence tolerated beyond the welcome's keepalive before the session is dead."""
    default_keepalive: float = 10.0
    """The keepalive when a welcome names none."""


class EventSubSource(Reconnecting):
    def __init__(
        self,
        name: str,
        fmt: EventSubFormat,
        sink: Sink,
        health: Health,
        settings: EventSubSettings,
        *,
        helix: Helix,
        subscriptions: Sequence[Subscription],
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        on_revoked: Callable[[Revocation], None] = lambda revocation: None,
        on_ignored: Callable[[str], None] = lambda what: None,
    ) -> None:
        self.name = name
        self.fmt = fmt
        self.sink = sink
        self.health = health
        self.settings = settings
        self.helix = helix
        self.subscriptions = list(subscriptions)
        self._reconnect_with(settings, clock, rng)
        self.on_revoked = on_revoked
        self.on_ignored = on_ignored
        self.hand_overs = 0
        self._live_subscriptions = 0

    async def run(self) -> None:
        """Sessions one after another, with the token kept fresh beside them."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.helix.tokens.run(), name=f"source[{self.name}].token")
            await super().run()

    def _retry_reason(self, exc: Exception) -> str | None:
        if isinstance(exc, RefreshError):
            return f"token {exc.reason}"
        if isinstance(exc, SessionError):
            log.warning("eventsub session ended: %s", exc)
            return exc.reason
        return retry_reason(exc)

    async def _session(self) -> None:
        ws, welcome = await self._open(self.settings.url)
        try:
            await self.helix.create(welcome.session_id, self.subscriptions)
            self._live_subscriptions = len(self.subscriptions)
            self._connected_at = self.clock()
            self.health.connected(self.name, True)
            while True:
                reconnect = await self._pump(ws, welcome)
                ws, welcome = await self._hand_over(ws, welcome, reconnect.url)
        finally:
            await ws.close()

    async def _open(self, url: str) -> tuple[ClientConnection, Welcome]:
        """A connection and its welcome, within ``open_timeout``."""
        async with asyncio.timeout(self.settings.open_timeout):
            ws = await connect(
                url,
                ping_interval=None,
                close_timeout=self.settings.close_timeout,
                max_size=self.settings.max_size,
                proxy=None,
            )
            try:
                frame = await ws.recv(decode=False)
            except BaseException:
                await ws.close()
                raise
        self.health.received(self.name)
        message = self.fmt.parse(frame)
        if not isinstance(message, Welcome):
            await ws.close()
            raise SessionError("no welcome", type(message).__name__)
        return ws, message

    async def _pump(self, ws: ClientConnection, welcome: Welcome) -> Reconnect:
        """Deliver the connection's messages until a reconnect message (returned), a close or a
        keepalive timeout (raised)."""
        keepalive = welcome.keepalive_seconds or self.settings.default_keepalive
        limit = keepalive + self.settings.keepalive_margin
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    frame = await ws.recv(decode=False)
            except TimeoutError:
                raise SessionError("keepalive timeout") from None
            self.health.received(self.name)
            message = self.fmt.parse(frame)
            match message:
                case Notification() | Invalid():
                    if isinstance(message, Notification) and not message.items:
                        self.on_ignored(OTHER_SUBSCRIPTION)
                    if message.items:
                        await self.sink.put(self.name, message.items)
                case Revocation():
                    log.warning(
                        "eventsub subscription revoked: type=%s status=%s id=%s",
                        message.type,
                        message.status,
                        message.subscription_id,
                    )
                    self.on_revoked(message)
                    self._live_subscriptions -= 1
                case Reconnect():
                    return message
                case Keepalive() | Welcome():
                    pass
            if self._live_subscriptions <= 0:
                # Every subscription was revoked (maybe on a connection being drained): nothing
                # left to receive. A new session subscribes again, retrying with backoff while
                # Helix refuses.
                raise SessionError("revoked")
            if not isinstance(message, Invalid):
                deadline = loop.time() + limit

    async def _hand_over(
        self, old: ClientConnection, welcome: Welcome, url: str
    ) -> tuple[ClientConnection, Welcome]:
        """Move to the reconnect URL without a gap: the old connection delivers until the new
        one's welcome, then is closed and drained. If the new one cannot be opened, the old one
        is still drained before the error ends the session."""
        log.info("eventsub session reconnect requested")
        draining = asyncio.create_task(self._drain(old, welcome))
        try:
            try:
                ws, new_welcome = await self._open(url)
            except Exception:
                await self._retire(old, draining)
                raise
            try:
                await self._retire(old, draining)
            except BaseException:
                await ws.close()
                raise
        finally:
            if not draining.done():  # cancelled: stop reading the old connection now
                draining.cancel()
                await asyncio.gather(draining, return_exceptions=True)
        if new_welcome.keepalive_seconds is None:
            new_welcome = dataclasses.replace(
                new_welcome, keepalive_seconds=welcome.keepalive_seconds
            )
        self.hand_overs += 1
        return ws, new_welcome

    @staticmethod
    async def _retire(old: ClientConnection, draining: asyncio.Task[None]) -> None:
        """Close ``old`` and wait until ``draining`` has delivered all it held.

        The close handshake may take as long as the drain needs (while the buffer is full,
        the drain stops reading, and so does websockets): a close timeout would abort the
        connection with frames still unread. The drain itself ends at the close, or at its
        keepalive deadline if the peer never answers; then the connection is aborted.
        """
        old.close_timeout = None
        closing = asyncio.create_task(old.close())
        try:
            await draining
        finally:
            if not closing.done():
                closing.cancel()
                await asyncio.gather(closing, return_exceptions=True)
                old.transport.abort()

    async def _drain(self, ws: ClientConnection, welcome: Welcome) -> None:
        """Deliver the rest of a connection being replaced, until it closes or goes quiet."""
        with contextlib.suppress(ConnectionClosed, SessionError):
            while True:
                await self._pump(ws, welcome)  # a second reconnect message: keep draining
