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
import logging
import random
import time
import weakref
from collections.abc import Callable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import cast

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import (
    ConnectionClosed,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State

from ingest.sources.admission import (
    ConnectionCaps,
    RateLimiter,
    RateLimits,
    Refusal,
    client_key,
)
from ingest.sources.base import Format, Health, Sink, split_address
from ingest.sources.reconnect import Reconnecting, ReconnectSettings
from ingest.sources.tls import Handshakes, ServerTls
from ingest.sources.tokens import ENV_PRODUCER, Credential, SecretsFile, Tokens, read_tokens

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


HANDSHAKE_RATES = RateLimits(per_second=100.0, burst=500, client_per_second=10.0, client_burst=50)
"""Producers connect once and stay; after a restart of the ingester they all come back at once,
from many addresses (the burst), a few from behind one address."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WebsocketServerSettings:
    token: str | None = dataclasses.field(default=None, repr=False)
    """One token, producer ``env``: what producers send as ``Authorization: Bearer <token>``."""
    tokens: Tokens | None = dataclasses.field(default=None, repr=False)
    """Several producers' tokens (``ingest.sources.tokens``), instead of ``token``."""
    tokens_file: str | None = None
    """Where ``tokens`` were read: read again when it changes, and on :meth:`reload`."""
    tokens_poll_seconds: float = 5.0
    """How often the tokens file is checked for a change (mtime, size, inode)."""
    listen: str = "127.0.0.1:8765"
    path: str = "/ingest"
    max_size: int = 1024 * 1024
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    open_timeout: float = 10.0
    """The opening handshake (from the connection on) must finish within this."""
    max_connections: int = 512
    max_connections_per_client: int = 64
    rates: RateLimits = HANDSHAKE_RATES
    """Opening handshakes taken."""
    close_timeout: float = 2.0
    """How long the closing of a revoked producer's connection waits for its answer."""
    reuse_port: bool = False
    """Listen with ``SO_REUSEPORT``: several processes listening on ``listen`` so share it,
    and the kernel (Linux) spreads new connections over them. The bounds above are each
    process's own."""

    def __post_init__(self) -> None:
        if (self.token is None) == (self.tokens is None):
            raise ValueError("exactly one of token and tokens")

    def credentials(self) -> Tokens:
        if self.tokens is not None:
            return self.tokens
        assert self.token is not None
        return Tokens((Credential.of(ENV_PRODUCER, self.token),))


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
        await sink.put(name, fmt.decode(frame))


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


REVOKED = "token revoked"
"""The close reason (code 1008, policy violation) sent to a producer whose token was removed."""


def capped(
    caps: ConnectionCaps,
    on_refused: Callable[[str], None],
    tls: Handshakes | None = None,
) -> type[ServerConnection]:
    """websockets' server connection, counted against ``caps`` from the moment it is accepted
    (before any byte of the handshake, TLS's included): one over them is dropped at once,
    reported to ``on_refused`` with the scope that refused it. With ``tls``, TLS is started
    on the counted connection and websockets sees it once its TLS handshake is done."""

    class CappedConnection(ServerConnection):
        client = "unknown"
        admitted = False
        made = False
        """websockets saw the connection (not one that failed its TLS handshake)."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            if self.admitted:  # the TLS transport of a connection counted when accepted
                self._made(transport)
                return
            self.client = client_key(transport.get_extra_info("peername"))
            refused = caps.admit(self.client)
            if refused is not None:
                self._made(transport)  # starts the handler: it sees the connection lost
                on_refused(refused)
                self.transport.abort()
                return
            self.admitted = True
            if tls is not None:
                tls.start(cast(asyncio.Transport, transport), self, self.release, lambda: self.made)
                return
            self._made(transport)

        def _made(self, transport: asyncio.BaseTransport) -> None:
            self.made = True
            super().connection_made(transport)

        def release(self) -> None:
            if self.admitted:
                self.admitted = False
                caps.release(self.client)

        def connection_lost(self, exc: Exception | None) -> None:
            self.release()
            if self.made:
                super().connection_lost(exc)

    return CappedConnection


def _handshakes(
    tls: ServerTls | None, settings: WebsocketServerSettings, on_failed: Callable[[str], None]
) -> Handshakes | None:
    """With TLS: started by the source on each counted connection, not by ``create_server``."""
    if tls is None:
        return None
    return Handshakes(tls.context, settings.open_timeout, on_failed, settings.close_timeout)


class WebsocketServerSource:
    """Listens on host:port; producers connect to ``path`` with ``Authorization: Bearer <token>``
    and push frames. Each connection is read independently; a bad frame never closes it.

    Connections are capped in all and per client address (one more is dropped at once and
    reported to ``on_refused``); the opening handshake must finish within ``open_timeout``;
    handshakes past the rate limits are answered 429 with ``Retry-After`` (reported to
    ``on_rate_limited``), before the token is looked at. A handshake without exactly one
    ``Authorization`` header, or with a token not in use, is answered 401 and reported to
    ``on_unauthorized`` with a bounded reason; nothing raises out of the check (an exception
    there would be websockets' 500 and a traceback per request). An accepted connection is
    reported to ``on_connected`` with its producer's name.

    With a tokens file, the tokens in use change while the source runs (the file changed, or
    :meth:`reload`); every open connection whose token is no longer in use is then closed
    with 1008 and reported to ``on_revoked``: a revoked producer keeps nothing.

    With ``tls``, producers connect with ``wss://``: the TLS handshake shares websockets'
    ``open_timeout`` (10 s), and the certificate served is ``tls``'s current one. TLS is
    started on each connection once it is counted against the caps, so connections stalled in
    their TLS handshake are bounded too; a failed or timed-out TLS handshake is reported to
    ``on_bad_request`` (``tls_handshake``, ``tls_handshake_timeout``).

    With ``reuse_port``, sources of several processes listen on one address (``SO_REUSEPORT``):
    the kernel gives each connection to one of them, and each counts its own against its caps."""

    def __init__(
        self,
        name: str,
        fmt: Format,
        sink: Sink,
        health: Health,
        settings: WebsocketServerSettings,
        *,
        on_unauthorized: Callable[[str], None] = lambda reason: None,
        on_connected: Callable[[str], None] = lambda producer: None,
        on_revoked: Callable[[int], None] = lambda closed: None,
        on_reload: Callable[[bool], None] = lambda ok: None,
        on_refused: Callable[[str], None] = lambda scope: None,
        on_rate_limited: Callable[[str], None] = lambda scope: None,
        on_bad_request: Callable[[str], None] = lambda reason: None,
        clock: Callable[[], float] = time.monotonic,
        tls: ServerTls | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.tls = tls
        self.host, self.port = split_address(settings.listen)
        self.path = settings.path
        self.tokens = settings.credentials()
        self.fmt = fmt
        self.sink = sink
        self.health = health
        self.on_unauthorized = on_unauthorized
        self.on_connected = on_connected
        self.on_revoked = on_revoked
        self.on_refused = on_refused
        self.on_rate_limited = on_rate_limited
        self.caps = ConnectionCaps(settings.max_connections, settings.max_connections_per_client)
        self.rates = RateLimiter(settings.rates, clock)
        self.server: Server | None = None
        self.handshakes = _handshakes(tls, settings, on_bad_request)
        self.ready = asyncio.Event()
        self._producers: weakref.WeakKeyDictionary[ServerConnection, Credential] = (
            weakref.WeakKeyDictionary()
        )
        self.watch: SecretsFile[Tokens] | None = None
        if settings.tokens_file is not None:
            self.watch = SecretsFile(
                Path(settings.tokens_file),
                read_tokens,
                kind="tokens",
                interval=settings.tokens_poll_seconds,
                on_change=self.use,
                on_reload=on_reload,
            )

    def reload(self) -> None:
        """Read the tokens file again now (SIGHUP); nothing without one."""
        if self.watch is not None:
            self.watch.request_reload()

    async def use(self, tokens: Tokens) -> int:
        """Accept ``tokens`` from now on, and close every open connection whose token is not
        among them (1008); how many were closed."""
        self.tokens = tokens
        log.info("%d token(s) in use", len(tokens))
        revoked = [
            ws
            for ws, credential in list(self._producers.items())
            if credential.digest not in tokens.digests and ws.state is State.OPEN
        ]
        if revoked:
            log.warning("closing %d connection(s) of revoked tokens", len(revoked))
            await asyncio.gather(*(self._revoke(ws) for ws in revoked))
            self.on_revoked(len(revoked))
        return len(revoked)

    @staticmethod
    async def _revoke(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed, OSError):
            await ws.close(CloseCode.POLICY_VIOLATION, REVOKED)

    def _authorise(self, connection: ServerConnection, request: Request) -> Response | None:
        refusal = self.rates.admit(client_key(connection.remote_address))
        if refusal is not None:
            return self._too_many(connection, refusal)
        if request.path.split("?", 1)[0] != self.path:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        found = self._credential(request.headers.get_all("Authorization"))
        if isinstance(found, str):
            self.on_unauthorized(found)
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
            response.headers["WWW-Authenticate"] = 'Bearer realm="livestream-ingester"'
            return response
        self._producers[connection] = found
        return None

    def _too_many(self, connection: ServerConnection, refusal: Refusal) -> Response:
        self.on_rate_limited(refusal.scope)
        response = connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "Too Many Requests\n")
        response.headers["Retry-After"] = str(refusal.retry_after)
        return response

    def _credential(self, values: list[str]) -> Credential | str:
        """The credential these ``Authorization`` values present, or why they present none."""
        if not values:
            return "missing"
        if len(values) > 1:
            return "duplicate"
        scheme, _, offered = values[0].partition(" ")
        # The scheme is case-insensitive (RFC 9110); the token is compared in constant time
        # with every token in use. websockets decodes header values as ISO-8859-1: encoding
        # them so gives back the bytes sent.
        if scheme.lower() != "bearer":
            return "scheme"
        credential = self.tokens.match(offered.encode("latin-1"))
        return "token" if credential is None else credential

    async def _handle(self, ws: ServerConnection) -> None:
        credential = self._producers.get(ws)
        if credential is None or credential.digest not in self.tokens.digests:
            # Revoked between its handshake and now.
            await self._revoke(ws)
            return
        self.on_connected(credential.producer)
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
            create_connection=capped(self.caps, self.on_refused, self.handshakes),
            open_timeout=self.settings.open_timeout,
            max_size=self.settings.max_size,
            ping_interval=self.settings.ping_interval,
            ping_timeout=self.settings.ping_timeout,
            close_timeout=self.settings.close_timeout,
            reuse_port=self.settings.reuse_port,
        )
        self.port = self.server.sockets[0].getsockname()[1] if self.port == 0 else self.port

    async def close(self) -> None:
        """Stop listening and close every connection (also when ``run`` never started)."""
        server, self.server = self.server, None
        if self.handshakes is not None:
            self.handshakes.close()
        if server is not None:
            server.close()
            await server.wait_closed()

    async def run(self) -> None:
        await self.bind()
        assert self.server is not None
        try:
            self.health.connected(self.name, True)
            self.ready.set()
            async with asyncio.TaskGroup() as group:
                if self.watch is not None:
                    group.create_task(self.watch.run(), name=f"source[{self.name}].tokens")
                await self.server.serve_forever()
        finally:
            self.health.connected(self.name, False)
            await self.close()
