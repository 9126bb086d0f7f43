"""Shopify webhook endpoint: an HTTP server source (aiohttp) that answers only after the commit.

Connections are bounded by ``limits`` (``ingest.sources.http``): how many at once, how long a
request head and a body may take (408), how long an idle connection stays. With ``tls`` it
speaks HTTPS only (``ingest.sources.tls``: the certificate can be renewed while it runs).

Per delivery: 400 for a body cut off mid-way or malformed in transfer (counted and reported to
``on_bad_request``, never a traceback: a client's mistake); 413 past the body limit (aiohttp's
``client_max_size``); 401 unless the ``X-Shopify-Hmac-Sha256`` header signs the raw body
(nothing of an unsigned body is kept: it could be anyone's); 200 for a topic we do not count
(counted as ignored); otherwise the delivery is decoded and submitted, and the answer waits for
its commit: 200 once it is counted, found a duplicate or dead-lettered (a body that can never be
counted must not be retried for hours), 503 if the commit does not finish within
``commit_timeout`` (Shopify waits 5 s), so Shopify delivers again and dedup makes that harmless.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ingest.shopify import TOPICS, ShopifyFormat, verified
from ingest.sources.base import Health, Sink, split_address
from ingest.sources.http import (
    BODY_TIMEOUT,
    INCOMPLETE_BODY,
    MALFORMED_REQUEST,
    Guard,
    GuardedSite,
    Limits,
    ServerLog,
)
from ingest.sources.tls import ServerTls

log = logging.getLogger(__name__)

UNKNOWN_TOPIC = "unknown_topic"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ShopifyWebhookSettings:
    secret: str = dataclasses.field(repr=False)
    """The app's client secret, which signs every delivery."""
    listen: str = "127.0.0.1:8080"
    path: str = "/webhooks/shopify"
    max_body_bytes: int = 1024 * 1024
    """Larger deliveries are refused (413)."""
    commit_timeout: float = 4.0
    """Answer 503 if a delivery is not committed by then; Shopify gives up after 5 s."""
    limits: Limits = dataclasses.field(default_factory=Limits)


class ShopifyWebhookSource:
    def __init__(
        self,
        name: str,
        fmt: ShopifyFormat,
        sink: Sink,
        health: Health,
        settings: ShopifyWebhookSettings,
        *,
        on_ignored: Callable[[str], None] = lambda what: None,
        on_unauthorized: Callable[[], None] = lambda: None,
        on_bad_request: Callable[[str], None] = lambda reason: None,
        on_refused: Callable[[], None] = lambda: None,
        on_unavailable: Callable[[], None] = lambda: None,
        tls: ServerTls | None = None,
    ) -> None:
        self.name = name
        self.fmt = fmt
        self.sink = sink
        self.health = health
        self.host, self.port = split_address(settings.listen)
        self.path = settings.path
        self._secret = settings.secret.encode()
        self.max_body_bytes = settings.max_body_bytes
        self.commit_timeout = settings.commit_timeout
        self.on_ignored = on_ignored
        self.on_unauthorized = on_unauthorized
        self.on_bad_request = on_bad_request
        self.limits = settings.limits
        self.on_refused = on_refused
        self._runner: web.AppRunner | None = None
        self.on_unavailable = on_unavailable
        self.tls = tls

    async def _deliver(self, request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                body = await request.read()  # past client_max_size: 413, raised by aiohttp
        except TimeoutError:  # a body trickling in, or never coming: not kept waiting for
            self.on_bad_request(BODY_TIMEOUT)
            late = web.Response(status=408, text="body not received in time\n")
            late.force_close()  # closed once answered (and what came of the body drained)
            return late
        except ConnectionError:  # the client hung up mid-body: nobody reads the answer
            self.on_bad_request(INCOMPLETE_BODY)
            return web.Response(status=400, text="incomplete body\n")
        except HttpProcessingError:  # short of Content-Length, or broken chunks
            self.on_bad_request(MALFORMED_REQUEST)
            return web.Response(status=400, text="malformed body\n")
        if not verified(self._secret, body, request.headers.get("X-Shopify-Hmac-Sha256")):
            self.on_unauthorized()
            return web.Response(status=401, text="invalid signature\n")
        self.health.received(self.name)
        topic = request.headers.get("X-Shopify-Topic", "")
        if topic not in TOPICS:
            self.on_ignored(UNKNOWN_TOPIC)
            return web.Response(text="ignored\n")
        headers = request.headers
        event_id = headers.get("X-Shopify-Event-Id") or headers.get("X-Shopify-Webhook-Id") or ""
        items = self.fmt.decode_delivery(topic, event_id, body)
        try:  # waits for room in the buffer too: a delivery not taken in time is not taken
            async with asyncio.timeout(self.commit_timeout):
                await asyncio.shield(await self.sink.submit(self.name, items))
        except TimeoutError:
            self.on_unavailable()
            return web.Response(status=503, text="not committed in time, deliver again\n")
        return web.Response(text="ok\n")

    async def bind(self) -> None:
        """Listen now (OSError if the address cannot be used); ``run`` then serves."""
        if self._runner is not None:
            return
        guard = Guard(self.limits, on_refused=self.on_refused, on_timeout=self.on_bad_request)
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[guard.middleware])
        app.router.add_post(self.path, self._deliver)
        # Deliveries in flight at shutdown get until their commit timeout to be answered.
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.commit_timeout + 1,
            logger=ServerLog(self.on_bad_request),
            **self.limits.runner_options(),
        )
        await runner.setup()
        try:
            context = self.tls.context if self.tls is not None else None
            await GuardedSite(runner, self.host, self.port, guard, context).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def close(self) -> None:
        """Stop listening (also when ``run`` never started)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def run(self) -> None:
        await self.bind()
        try:
            self.health.connected(self.name, True)
            await asyncio.Event().wait()
        finally:
            self.health.connected(self.name, False)
            await self.close()
