"""What every aiohttp listener (the webhook source, the metrics endpoint) shares: bounds on slow
and numerous clients, and a client's malformed request counted, never logged with a traceback.

aiohttp has no timeout for reading a request head, and keeps an idle connection for an hour by
default: a few hundred clients sending half a header would hold every file descriptor of the
process. :class:`GuardedSite` listens in aiohttp's place and a :class:`Guard` enforces
:class:`Limits`: at most ``max_connections`` open at once, and ``max_connections_per_client`` of
one client address (one more is closed at once and reported to ``on_refused`` with the scope
that refused it, ``listener`` or ``client``); requests within ``rates`` (``ingest.sources.
admission``), else 429 with ``Retry-After`` before the handler runs (reported to
``on_rate_limited``); a
request head must arrive within ``header_timeout`` of the connection opening (or of the previous
answer plus ``keepalive_timeout``), else the connection is closed and reported as
``header_timeout``. Handlers that read a body bound it with ``body_timeout`` (408).

aiohttp answers a request it cannot parse (a bad header line, a broken chunk) with 400 by itself
and logs the parser's traceback at ERROR through its server logger: one per request, before any
authentication, so anyone could fill the logs. :class:`ServerLog` is the logger handed to
aiohttp instead: those go to ``on_bad_request`` (a counter and a throttled line); anything else
(a bug of ours: a 500) is still logged in full by ``aiohttp.server``.

With an ``ssl.SSLContext`` the site speaks TLS only. It listens in plain TCP and starts TLS on
each connection once it is counted against the caps (``ingest.sources.tls.Handshakes``), so
connections that never finish their handshake are bounded like any other; the handshake must
end within ``header_timeout``, and one that fails (a client speaking plain HTTP) or times out is
closed and reported to ``on_tls`` (``tls_handshake``, ``tls_handshake_timeout``).

:class:`Credentials` is the optional check of an ``Authorization`` header (bearer or basic)
that the metrics endpoint uses.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hmac
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from ingest.sources.admission import ConnectionCaps, RateLimiter, RateLimits, client_key
from ingest.sources.tls import Handshakes

MALFORMED_REQUEST = "malformed_request"
INCOMPLETE_BODY = "incomplete_body"
HEADER_TIMEOUT = "header_timeout"
BODY_TIMEOUT = "body_timeout"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds of one listener; the defaults suit a public endpoint."""

    max_connections: int = 128
    max_connections_per_client: int = 32
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    keepalive_timeout: float = 15.0
    rates: RateLimits = dataclasses.field(default_factory=RateLimits)

    def runner_options(self) -> dict[str, Any]:
        """aiohttp's own knobs (``web.AppRunner(app, **options)``): idle keep-alive, and how
        long an unread body is drained after the answer."""
        return {
            "keepalive_timeout": self.keepalive_timeout,
            "lingering_time": min(10.0, self.body_timeout),
        }


class ServerLog(logging.Logger):
    """aiohttp's server logger for one listener (``AppRunner(..., logger=ServerLog(...))``)."""

    def __init__(self, on_bad_request: Callable[[str], None]) -> None:
        super().__init__("aiohttp.server")
        self.parent = logging.getLogger("aiohttp.server")
        self.on_bad_request = on_bad_request

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):  # aiohttp answers it with a 4xx
            self.on_bad_request(MALFORMED_REQUEST)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Guard:
    """One listener's :class:`Limits` over its connections. Its :meth:`middleware` goes into
    the application (it sees each request head arrive); :class:`GuardedSite` listens."""

    def __init__(
        self,
        limits: Limits,
        *,
        on_refused: Callable[[str], None],
        on_timeout: Callable[[str], None],
        on_rate_limited: Callable[[str], None],
        on_tls: Callable[[str], None] = lambda reason: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.on_tls = on_tls
        """A TLS handshake that failed or timed out (``tls_handshake``, ``..._timeout``)."""
        self.on_refused = on_refused
        self.on_timeout = on_timeout
        self.on_rate_limited = on_rate_limited
        self.open: dict[asyncio.BaseTransport, _Connection] = {}
        self.caps = ConnectionCaps(limits.max_connections, limits.max_connections_per_client)
        self.rates = RateLimiter(limits.rates, clock)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The head of a request arrived: no deadline while it is handled; after the answer,
        the next head is due within the keep-alive time plus the head timeout."""
        transport = request.transport
        connection = self.open.get(transport) if transport is not None else None
        if connection is not None:
            connection.disarm()
        try:
            refusal = self.rates.admit(connection.client if connection is not None else "unknown")
            if refusal is not None:
                self.on_rate_limited(refusal.scope)
                return web.Response(
                    status=429,
                    text="too many requests\n",
                    headers={"Retry-After": str(refusal.retry_after)},
                )
            return await handler(request)
        finally:
            if connection is not None and connection.transport is not None:
                connection.arm(self.limits.keepalive_timeout + self.limits.header_timeout)


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's protocol inside, a deadline for each request head."""

    def __init__(
        self,
        guard: Guard,
        protocol: Callable[[], asyncio.Protocol],
        tls: Handshakes | None = None,
    ) -> None:
        self.guard = guard
        self.protocol = protocol
        self.tls = tls
        self.held = False
        """Counted against the caps (from the accept until the connection is lost)."""
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.client = "unknown"

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's transports do not subclass asyncio's
        if self.held:  # the TLS transport of a connection counted when it was accepted
            self._serve(transport)
            return
        guard = self.guard
        self.client = client_key(transport.get_extra_info("peername"))
        refused = guard.caps.admit(self.client)
        if refused is not None:
            transport.abort()
            guard.on_refused(refused)
            return
        self.held = True
        if self.tls is not None:
            self.tls.start(transport, self, self.release, lambda: self.inner is not None)
            return
        self._serve(transport)

    def _serve(self, transport: asyncio.Transport) -> None:
        guard = self.guard
        self.transport = transport
        guard.open[transport] = self
        self.arm(guard.limits.header_timeout)
        self.inner = self.protocol()
        self.inner.connection_made(transport)

    def release(self) -> None:
        """Give the connection's place back, once."""
        if self.held:
            self.held = False
            self.guard.caps.release(self.client)

    def arm(self, delay: float) -> None:
        self.disarm()
        self.deadline = asyncio.get_running_loop().call_later(delay, self.expire)

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def expire(self) -> None:
        self.deadline = None
        if self.transport is not None:
            self.guard.on_timeout(HEADER_TIMEOUT)
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self.transport is not None:
            self.guard.open.pop(self.transport, None)
            self.transport = None
        self.release()
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class GuardedSite(web.BaseSite):
    """A TCP site like aiohttp's ``TCPSite`` whose connections go through ``guard``. With
    ``reuse_port`` it listens with ``SO_REUSEPORT``: processes listening so on one address
    share it (the kernel spreads connections over them), each with its own ``guard``."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        guard: Guard,
        ssl_context: ssl.SSLContext | None = None,
        *,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner)
        self.host, self.port = host, port
        self.guard = guard
        self.ssl_context = ssl_context
        self.reuse_port = reuse_port
        self.handshakes: Handshakes | None = None

    @property
    def name(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def _protocol(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None
        handler: asyncio.Protocol = server()
        return handler

    async def start(self) -> None:
        await super().start()
        guard = self.guard
        handshakes = None
        if self.ssl_context is not None:  # TLS started on each counted connection
            handshakes = Handshakes(self.ssl_context, guard.limits.header_timeout, guard.on_tls)
        self.handshakes = handshakes
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(guard, self._protocol, handshakes),
            self.host,
            self.port,
            backlog=self._backlog,
            reuse_address=True,
            reuse_port=self.reuse_port,
        )

    async def stop(self) -> None:
        if self.handshakes is not None:
            self.handshakes.close()
        await super().stop()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """What a request must carry in its one ``Authorization`` header: ``Bearer <token>``, or
    (HTTP basic) ``username`` and ``password``. Compared in constant time."""

    token: str | None = dataclasses.field(default=None, repr=False)
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    realm: str = "livestream-ingester"

    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value of a 401."""
        if self.token is not None:
            return f'Bearer realm="{self.realm}"'
        return f'Basic realm="{self.realm}", charset="UTF-8"'

    def refusal(self, values: list[str]) -> str | None:
        """Why these ``Authorization`` values do not authenticate (a bounded reason: missing,
        duplicate, scheme, malformed, credentials), or None if they do."""
        if not values:
            return "missing"
        if len(values) > 1:
            return "duplicate"
        scheme, _, offered = values[0].strip().partition(" ")
        expected = "bearer" if self.token is not None else "basic"
        if scheme.lower() != expected:
            return "scheme"
        if self.token is not None:
            good = hmac.compare_digest(offered.strip().encode(), self.token.encode())
            return None if good else "credentials"
        try:
            user, colon, password = base64.b64decode(offered, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return "malformed"
        if not colon:
            return "malformed"
        good_user = hmac.compare_digest(user, (self.username or "").encode())
        good_password = hmac.compare_digest(password, (self.password or "").encode())
        return None if good_user & good_password else "credentials"

    def middleware(
        self,
        paths: frozenset[str],
        on_unauthorized: Callable[[str], None],
        prefixes: tuple[str, ...] = (),
    ) -> Middleware:
        """An aiohttp middleware requiring these credentials on ``paths`` and on every path
        under ``prefixes`` (401 otherwise, with the reason handed to ``on_unauthorized``); other
        paths pass."""

        @web.middleware
        async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path in paths or request.path.startswith(prefixes):
                reason = self.refusal(request.headers.getall("Authorization", []))
                if reason is not None:
                    on_unauthorized(reason)
                    return web.Response(
                        status=401,
                        text="Unauthorized\n",
                        headers={"WWW-Authenticate": self.challenge()},
                    )
            return await handler(request)

        return authenticate
