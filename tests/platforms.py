"""Local servers that speak the platforms' protocols as documented, for the format tests.

- :class:`EventSubServer`: Twitch EventSub over WebSocket plus Helix's subscription endpoint —
  welcome, subscription within a deadline (else close 4003), keepalives on the session's
  timeout, notifications, ``session_reconnect`` to a URL that carries the subscriptions over,
  revocation, and close 4001 when a client sends anything — and the OAuth server's token
  (``grant_type=refresh_token``) and validate endpoints, with short token lifetimes, rotated
  refresh tokens (a public client) and 401 from Helix for an expired token.
- :class:`RelayServer`: a Social Stream Ninja relay — listeners join a session on channel 4
  (by path or join message) and receive the flat JSON the extension publishes, with its
  per-instance ``id`` counter, which a restart resets.
- :class:`Shop`: delivers Shopify webhooks — signed, with the documented headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ingest.shopify import signature
from tests.servers import free_port

CHAT = "channel.chat.message"


def timestamp() -> str:
    """RFC 3339 with nanoseconds, as Twitch writes them."""
    now = dt.datetime.now(dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}123Z"


@dataclasses.dataclass(eq=False)
class Session:
    id: str
    ws: ServerConnection
    keepalive: int
    welcomed: bool = False
    silent: bool = False
    last_sent: float = 0.0
    close_code: int | None = None


@dataclasses.dataclass
class Subscription:
    id: str
    type: str
    version: str
    condition: dict[str, str]
    session_id: str
    status: str = "enabled"

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "type": self.type,
            "version": self.version,
            "condition": self.condition,
            "transport": {"method": "websocket", "session_id": self.session_id},
            "created_at": timestamp(),
            "cost": 0,
        }


class EventSubServer:
    """One broadcaster's chat, over EventSub WebSocket, with its Helix endpoint."""

    def __init__(
        self,
        *,
        keepalive: int = 10,
        client_id: str = "test-client-id",
        token: str = "test-token-0123456789",
        broadcaster: str = "1001",
        subscribe_within: float = 10.0,
    ) -> None:
        self.keepalive = keepalive
        self.client_id = client_id
        self.token = token
        self.broadcaster = broadcaster
        self.subscribe_within = subscribe_within
        self.port = free_port()
        self.helix_port = free_port()
        self.sessions: dict[str, Session] = {}
        self.subscriptions: list[Subscription] = []
        self.active: Session | None = None
        """The session that notifications go to: the latest with an enabled subscription."""
        self.sent: set[str] = set()
        """Chat message ids delivered to some session."""
        self.subscribe_requests = 0
        self.refused_tokens = 0
        self.subscribed_with: list[str] = []
        """The token of every subscription created, in order."""
        """Subscription requests answered 401 (no, a wrong or an expired token)."""
        self.inbound_closes = 0
        self.authorized = True
        """False after an ``authorization_revoked``: Helix refuses the token (403)."""
        self._ids = itertools.count(1)
        self.oauth = OAuthServer(client_id)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws?keepalive_timeout_seconds={self.keepalive}"

    @property
    def helix_url(self) -> str:
        return f"http://127.0.0.1:{self.helix_port}/helix"

    @property
    def oauth_url(self) -> str:
        return f"http://127.0.0.1:{self.helix_port}/oauth2"

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[EventSubServer]:
        app = web.Application()
        app.router.add_post("/helix/eventsub/subscriptions", self._subscribe)
        app.router.add_post("/oauth2/token", self.oauth.token)
        app.router.add_get("/oauth2/validate", self.oauth.validate)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.helix_port).start()
        try:
            async with serve(self._handle, "127.0.0.1", self.port, ping_interval=1.0):
                yield self
        finally:
            await runner.cleanup()

    # --- the websocket side ------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        path = ws.request.path
        session = Session(f"AgoQ{next(self._ids):06d}", ws, self.keepalive)
        self.sessions[session.id] = session
        carried = path.startswith("/reconnect/")
        if carried:
            for sub in self.subscriptions:
                if sub.session_id == path.removeprefix("/reconnect/") and sub.status == "enabled":
                    sub.session_id = session.id
        await self._send(session, "session_welcome", {"session": self._session_wire(session)})
        session.welcomed = True
        if carried:
            self.active = session
        tasks = [asyncio.create_task(self._keepalives(session))]
        if not carried:
            tasks.append(asyncio.create_task(self._subscription_deadline(session)))
        try:
            async for _ in ws:  # a client must not send anything
                self.inbound_closes += 1
                await ws.close(4001, "client sent inbound traffic")
        except ConnectionClosed:
            pass
        finally:
            for task in tasks:
                task.cancel()
            session.close_code = ws.close_code
            if self.active is session:
                self.active = None

    def _session_wire(self, session: Session, reconnect_url: str | None = None) -> dict[str, Any]:
        return {
            "id": session.id,
            "status": "reconnecting" if reconnect_url else "connected",
            "keepalive_timeout_seconds": None if reconnect_url else session.keepalive,
            "reconnect_url": reconnect_url,
            "connected_at": timestamp(),
        }

    async def _send(
        self,
        session: Session,
        message_type: str,
        payload: dict[str, Any],
        *,
        message_id: str | None = None,
        subscription: Subscription | None = None,
    ) -> bool:
        metadata: dict[str, Any] = {
            "message_id": message_id or str(uuid.uuid4()),
            "message_type": message_type,
            "message_timestamp": timestamp(),
        }
        if subscription is not None:
            metadata["subscription_type"] = subscription.type
            metadata["subscription_version"] = subscription.version
        try:
            await session.ws.send(orjson.dumps({"metadata": metadata, "payload": payload}).decode())
        except ConnectionClosed:
            return False
        session.last_sent = asyncio.get_running_loop().time()
        return True

    async def _keepalives(self, session: Session) -> None:
        """A keepalive whenever nothing was sent for the session's keepalive timeout."""
        loop = asyncio.get_running_loop()
        session.last_sent = loop.time()
        while True:
            wait = session.last_sent + session.keepalive - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            if session.silent or not await self._send(session, "session_keepalive", {}):
                return

    async def _subscription_deadline(self, session: Session) -> None:
        await asyncio.sleep(self.subscribe_within)
        if not any(sub.session_id == session.id for sub in self.subscriptions):
            await session.ws.close(4003, "connection unused")

    # --- the Helix side ----------------------------------------------------------------------

    async def _subscribe(self, request: web.Request) -> web.Response:
        self.subscribe_requests += 1
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if (
            request.headers.get("Client-Id") != self.client_id
            or scheme != "Bearer"
            or (token != self.token and not self.oauth.valid(token))
        ):
            self.refused_tokens += 1
            return web.json_response(
                {"error": "Unauthorized", "status": 401, "message": "Invalid OAuth token"},
                status=401,
            )
        if not self.authorized:
            return web.json_response({"error": "Forbidden", "status": 403}, status=403)
        body = await request.json()
        transport = body.get("transport", {})
        session = self.sessions.get(transport.get("session_id", ""))
        if transport.get("method") != "websocket" or session is None or session.close_code:
            return web.json_response({"error": "Bad Request", "status": 400}, status=400)
        if body.get("type") != CHAT or body.get("version") != "1":
            return web.json_response({"error": "Bad Request", "status": 400}, status=400)
        condition = body.get("condition", {})
        if condition.get("broadcaster_user_id") != self.broadcaster or not condition.get("user_id"):
            return web.json_response({"error": "Bad Request", "status": 400}, status=400)
        for sub in self.subscriptions:
            if sub.session_id == session.id and sub.type == body["type"]:
                return web.json_response({"error": "Conflict", "status": 409}, status=409)
        sub = Subscription(str(uuid.uuid4()), CHAT, "1", condition, session.id)
        self.subscriptions.append(sub)
        self.subscribed_with.append(token)
        self.active = session
        return web.json_response(
            {"data": [sub.wire()], "total": 1, "total_cost": 0, "max_total_cost": 10}, status=202
        )

    # --- what a test drives ------------------------------------------------------------------

    def _chat_subscription(self, session: Session) -> Subscription | None:
        for sub in self.subscriptions:
            if sub.session_id == session.id and sub.status == "enabled":
                return sub
        return None

    def chat_event(self, message_id: str, chatter: str, text: str) -> dict[str, Any]:
        return {
            "broadcaster_user_id": self.broadcaster,
            "broadcaster_user_login": "vaithieu_lucngan",
            "broadcaster_user_name": "VaiThieu_LucNgan",
            "chatter_user_id": chatter,
            "chatter_user_login": f"user{chatter}",
            "chatter_user_name": f"User{chatter}",
            "message_id": message_id,
            "message": {
                "text": text,
                "fragments": [
                    {
                        "type": "text",
                        "text": text,
                        "cheermote": None,
                        "emote": None,
                        "mention": None,
                    }
                ],
            },
            "message_type": "text",
            "badges": [],
            "cheer": None,
            "color": "#1E90FF",
            "reply": None,
            "channel_points_custom_reward_id": None,
        }

    async def chat(
        self,
        message_id: str,
        chatter: str,
        text: str = "VT01 2kg",
        *,
        delivery_id: str | None = None,
        session: Session | None = None,
    ) -> bool:
        """Notify a chat line on ``session`` (default: the active one). False if there is none,
        it is silent, or its subscription is gone: the line is then lost, as on Twitch."""
        target = session or self.active
        if target is None or target.silent:
            return False
        sub = self._chat_subscription(target)
        if sub is None:
            return False
        payload = {"subscription": sub.wire(), "event": self.chat_event(message_id, chatter, text)}
        sent = await self._send(
            target, "notification", payload, message_id=delivery_id, subscription=sub
        )
        if sent:
            self.sent.add(message_id)
        return sent

    async def notify_other(self, session: Session, kind: str) -> None:
        """A notification of a subscription type that the ingester does not count."""
        sub = dataclasses.replace(self.subscriptions[-1], type=kind)
        await self._send(session, "notification", {"subscription": sub.wire(), "event": {}})

    async def reconnect(self) -> Session:
        """Ask the active session's client to move to a new URL; returns the old session."""
        old = self.active
        assert old is not None
        url = f"ws://127.0.0.1:{self.port}/reconnect/{old.id}"
        await self._send(old, "session_reconnect", {"session": self._session_wire(old, url)})
        return old

    async def revoke(self, status: str = "authorization_revoked") -> None:
        session = self.active
        assert session is not None
        sub = self._chat_subscription(session)
        assert sub is not None
        sub.status = status
        if status == "authorization_revoked":
            self.authorized = False
        await self._send(session, "revocation", {"subscription": sub.wire()}, subscription=sub)

    def silence(self) -> Session:
        """The active session stops sending anything, keepalives included (a dead network)."""
        session = self.active
        assert session is not None
        session.silent = True
        return session


class OAuthServer:
    """Twitch's ``/oauth2/token`` (refresh-token grant) and ``/oauth2/validate``.

    Access tokens live ``lifetime`` seconds. A public client (``client_secret`` None) sends no
    secret, and each refresh token works once: the answer carries the next one. Refused
    refresh tokens get 400 "Invalid refresh token", as Twitch documents."""

    def __init__(
        self,
        client_id: str,
        *,
        client_secret: str | None = "test-client-secret-0123456789",
        refresh_token: str = "test-refresh-token-0000000000",
        lifetime: int = 3,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.lifetime = lifetime
        self.initial_refresh_token = refresh_token
        self.refresh_tokens = {refresh_token}
        """Refresh tokens that work now."""
        self.expires: dict[str, float] = {}
        """Access token -> when it expires (loop time)."""
        self.omit_expires_in = False
        """Answer a refresh without ``expires_in`` (as Twitch's documented example does)."""
        self.refreshes = 0
        self.refused = 0
        self.validations = 0
        self._ids = itertools.count(1)

    @property
    def rotating(self) -> bool:
        return self.client_secret is None

    def valid(self, token: str) -> bool:
        expires = self.expires.get(token)
        return expires is not None and asyncio.get_running_loop().time() < expires

    def revoke_refresh_tokens(self) -> None:
        """The user disconnected the app (or changed their password): no refresh token works."""
        self.refresh_tokens.clear()

    def expire_access_tokens(self) -> None:
        """Every access token issued stops working now, before its time."""
        for token in self.expires:
            self.expires[token] = 0.0

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        reason = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden"}[status]
        return web.json_response(
            {"error": reason, "status": status, "message": message}, status=status
        )

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "refresh_token":
            return self._error(400, "unsupported grant type")
        if form.get("client_id") != self.client_id:
            return self._error(400, "invalid client")
        if self.client_secret is not None and form.get("client_secret") != self.client_secret:
            return self._error(403, "invalid client secret")
        used = form.get("refresh_token")
        if not isinstance(used, str) or used not in self.refresh_tokens:
            self.refused += 1
            return self._error(400, "Invalid refresh token")
        self.refreshes += 1
        n = next(self._ids)
        access = f"access-{n:06d}-{uuid.uuid4().hex}"
        self.expires[access] = asyncio.get_running_loop().time() + self.lifetime
        refresh = used
        if self.rotating:
            self.refresh_tokens.discard(used)
            refresh = f"refresh-{n:06d}-{uuid.uuid4().hex}"
            self.refresh_tokens.add(refresh)
        body: dict[str, Any] = {
            "access_token": access,
            "refresh_token": refresh,
            "scope": ["user:read:chat"],
            "token_type": "bearer",
        }
        if not self.omit_expires_in:
            body["expires_in"] = self.lifetime
        return web.json_response(body)

    async def validate(self, request: web.Request) -> web.Response:
        self.validations += 1
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "OAuth" or not self.valid(token):
            return web.json_response({"status": 401, "message": "invalid access token"}, status=401)
        left = self.expires[token] - asyncio.get_running_loop().time()
        return web.json_response(
            {
                "client_id": self.client_id,
                "login": "reader",
                "scopes": ["user:read:chat"],
                "user_id": "2000",
                "expires_in": max(0, int(left)),
            }
        )


class RelayServer:
    """A Social Stream Ninja relay: ``/join/<session>/<in>`` or a join message, channel 4."""

    def __init__(self, first_id: int = 50_000) -> None:
        self.port = free_port()
        self.listeners: dict[str, set[ServerConnection]] = {}
        self.next_id = first_id
        self.joins = 0

    def url(self, session: str) -> str:
        return f"ws://127.0.0.1:{self.port}/join/{session}/4"

    @property
    def bare_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[RelayServer]:
        async with serve(self._handle, "127.0.0.1", self.port):
            yield self

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        parts = ws.request.path.strip("/").split("/")
        joined: str | None = None
        if len(parts) >= 3 and parts[0] == "join" and parts[2] == "4":
            joined = parts[1]
            self._join(joined, ws)
        try:
            async for message in ws:
                request = orjson.loads(message)
                if joined is None and isinstance(request, dict) and request.get("in") == 4:
                    joined = str(request.get("join"))
                    self._join(joined, ws)
        except ConnectionClosed:
            pass
        finally:
            if joined is not None:
                self.listeners[joined].discard(ws)

    def _join(self, session: str, ws: ServerConnection) -> None:
        self.listeners.setdefault(session, set()).add(ws)
        self.joins += 1

    def listening(self, session: str) -> int:
        return len(self.listeners.get(session, ()))

    async def publish(self, session: str, message: dict[str, Any]) -> dict[str, Any]:
        """What the extension sends: the message with the next ``id`` of this relay run."""
        if "id" not in message:
            message = {**message, "id": self.next_id}
            self.next_id += 1
        frame = orjson.dumps(message).decode()
        for ws in list(self.listeners.get(session, ())):
            with contextlib.suppress(ConnectionClosed):
                await ws.send(frame)
        return message

    def restart_extension(self, first_id: int = 1) -> None:
        """The extension restarted: its counter starts again (lower than before)."""
        self.next_id = first_id

    async def drop_listeners(self) -> None:
        """The hosted relay restarts: every listener's connection is closed."""
        for listeners in self.listeners.values():
            for ws in list(listeners):
                await ws.close(1012, "service restart")


class Shop:
    """Delivers Shopify webhooks to one endpoint, signed with the app's secret."""

    def __init__(
        self,
        url: str,
        secret: str,
        domain: str = "lucngan-farm.myshopify.com",
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: what an ``https://`` ``url`` is verified with."""
        self.url = url
        self.secret = secret.encode()
        self.domain = domain
        self.tls = tls

    async def deliver(
        self,
        http: aiohttp.ClientSession,
        topic: str,
        body: bytes,
        *,
        event_id: str | None,
        webhook_id: str | None = None,
        hmac_header: str | None = None,
        triggered_at: str | None = None,
    ) -> int:
        """POST one delivery; its status. ``triggered_at``: the X-Shopify-Triggered-At value
        (now, as Shopify writes it, by default)."""
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": hmac_header or signature(self.secret, body),
            "X-Shopify-Shop-Domain": self.domain,
            "X-Shopify-API-Version": "2025-07",
            "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
            "X-Shopify-Triggered-At": now if triggered_at is None else triggered_at,
        }
        if event_id is not None:
            headers["X-Shopify-Event-Id"] = event_id
        tls = self.tls if self.tls is not None else True
        async with http.post(self.url, data=body, headers=headers, ssl=tls) as response:
            await response.read()
            return response.status
