"""Websocket transports: a client that connects out, and a server that producers push to.

Both only read frames, decode them with the source's format and submit the result. The client
reconnects in the shared loop (``ingest.sources.reconnect``): every error is retried except a
bad URI. The library's own reconnect iterator is not used, so no second retry layer stacks on
that one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import random
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import (
    ConnectionClosed,
    InvalidStatus,
    InvalidURI,
)
from websockets.http11 import Request, Response

from ingest.sources.base import Format, Health, Sink, split_address
from ingest.sources.reconnect import Reconnecting, ReconnectSettings
from ingest.sources.tls import ServerTls

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionSettings(ReconnectSettings):
    """What every websocket client connection takes (this client's and EventSub's)."""

    url: str
    open_timeout: float = 10.0
    close_timeout: float = 2.0
    max_size: int = 1024 * 1024
    """Largest message the connection takes (websockets' ``max_size``)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WebsocketClientSettings(ConnectionSettings):
    subscribe: str | None = None
    """Sent once on every new connection."""
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WebsocketServerSettings:
    token: str = dataclasses.field(repr=False)
    """What producers send as ``Authorization: Bearer <token>``."""
    listen: str = "127.0.0.1:8765"
    path: str = "/ingest"
    max_size: int = 1024 * 1024
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0


async def _read(
    ws: ClientConnection | ServerConnection, name: str, fmt: Format, sink: Sink, health: Health
) -> None:
    """Hand every frame to the format until the connection closes (ConnectionClosed).

    Frames are read as bytes, text frames too: websockets would otherwise decode text frames
    and fail the whole connection (1007) on invalid UTF-8; the format rejects just that frame.
    """
    while True:
        frame = await ws.recv(decode=False)
        health.received(name)
        await sink.submit(name, fmt.decode(frame))


def retry_reason(exc: BaseException) -> str | None:
    """Why a failed connection is worth retrying, or None if it is not (a bad URI)."""
    if isinstance(exc, InvalidURI):
        return None
    if isinstance(exc, ConnectionClosed):
        # The peer's close frame, or ours when we failed the connection (1009, keepalive 1011).
        close = exc.rcvd or exc.sent
        code = close.code if close is not None else None
        return f"closed ({code})" if code is not None else "closed"
    if isinstance(exc, InvalidStatus):
        return f"http {exc.response.status_code}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError):
        return "network"
    return type(exc).__name__


class WebsocketClientSource(Reconnecting):
    """Connects to a URL, optionally sends a subscribe message, and reads frames until cancelled.

    ``on_connect`` is called on every new connection (a stateful format resets there)."""

    def __init__(
        self,
        name: str,
        fmt: Format,
        sink: Sink,
        health: Health,
        settings: WebsocketClientSettings,
        *,
        on_connect: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self.fmt = fmt
        self.sink = sink
        self.health = health
        self.settings = settings
        self.on_connect = on_connect
        self._reconnect_with(settings, clock, rng)
        self.connection: ClientConnection | None = None

    def _retry_reason(self, exc: Exception) -> str | None:
        return retry_reason(exc)

    def _ended(self) -> None:
        self.connection = None

    async def _session(self) -> None:
        settings = self.settings
        async with connect(
            settings.url,
            additional_headers=dict(settings.headers),
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            open_timeout=settings.open_timeout,
            close_timeout=settings.close_timeout,
            max_size=settings.max_size,
            proxy=None,
        ) as ws:
            self.connection = ws
            self._connected_at = self.clock()
            self.health.connected(self.name, True)
            if self.on_connect is not None:
                self.on_connect()
            if settings.subscribe is not None:
                await ws.send(settings.subscribe)
            await _read(ws, self.name, self.fmt, self.sink, self.health)


class WebsocketServerSource:
    """Listens on host:port; producers connect to ``path`` with ``Authorization: Bearer <token>``
    and push frames. Each connection is read independently; a bad frame never closes it.

    A handshake without exactly one such header, or with another token, is answered 401 and
    reported to ``on_unauthorized`` with a bounded reason; nothing raises out of the check (an
    exception there would be websockets' 500 and a traceback per request).

    With ``tls``, producers connect with ``wss://``: the TLS handshake shares websockets'
    ``open_timeout`` (10 s), and the certificate served is ``tls``'s current one."""

    def __init__(
        self,
        name: str,
        fmt: Format,
        sink: Sink,
        health: Health,
        settings: WebsocketServerSettings,
        *,
        on_unauthorized: Callable[[str], None] = lambda reason: None,
        tls: ServerTls | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.tls = tls
        self.host, self.port = split_address(settings.listen)
        self.path = settings.path
        self._token = settings.token.encode()
        self.fmt = fmt
        self.sink = sink
        self.health = health
        self.on_unauthorized = on_unauthorized
        self.server: Server | None = None
        self.ready = asyncio.Event()

    def _authorise(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] != self.path:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        reason = self._refusal(request.headers.get_all("Authorization"))
        if reason is not None:
            self.on_unauthorized(reason)
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
            response.headers["WWW-Authenticate"] = 'Bearer realm="livestream-ingester"'
            return response
        return None

    def _refusal(self, values: list[str]) -> str | None:
        """Why these ``Authorization`` values do not authenticate, or None if they do."""
        if not values:
            return "missing"
        if len(values) > 1:
            return "duplicate"
        scheme, _, offered = values[0].partition(" ")
        # The scheme is case-insensitive (RFC 9110); the token is compared in constant time.
        # websockets decodes header values as ISO-8859-1, so any value encodes.
        if scheme.lower() != "bearer":
            return "scheme"
        if not hmac.compare_digest(offered.encode(), self._token):
            return "token"
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            await _read(ws, self.name, self.fmt, self.sink, self.health)

    async def bind(self) -> None:
        """Listen now (OSError if the address cannot be used); ``run`` then serves."""
        if self.server is not None:
            return
        self.server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._authorise,
            max_size=self.settings.max_size,
            ping_interval=self.settings.ping_interval,
            ping_timeout=self.settings.ping_timeout,
            ssl=self.tls.context if self.tls is not None else None,
        )
        self.port = self.server.sockets[0].getsockname()[1] if self.port == 0 else self.port

    async def close(self) -> None:
        """Stop listening and close every connection (also when ``run`` never started)."""
        server, self.server = self.server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def run(self) -> None:
        await self.bind()
        assert self.server is not None
        try:
            self.health.connected(self.name, True)
            self.ready.set()
            await self.server.serve_forever()
        finally:
            self.health.connected(self.name, False)
            await self.close()
