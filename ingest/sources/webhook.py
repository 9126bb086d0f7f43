"""Shopify webhook endpoint: an HTTP server source (aiohttp) that answers only after the commit.

Connections are bounded by ``limits`` (``ingest.sources.http``): how many at once (in all and
per client address), how many requests per second (429 with ``Retry-After`` past that), how long
a request head and a body may take (408), how long an idle connection stays.
With ``tls`` it speaks HTTPS only (``ingest.sources.tls``: the certificate can be renewed
while it runs). With ``reuse_port``, endpoints of several processes listen on one address
(``SO_REUSEPORT``), each connection taken by one of them, each with its own ``limits``.

Per delivery: 400 for a body cut off mid-way or malformed in transfer (counted and reported to
``on_bad_request``, never a traceback: a client's mistake); 413 past the body limit (aiohttp's
``client_max_size``); 401 unless the ``X-Shopify-Hmac-Sha256`` header signs the raw body with
the secret or, during a rotation, the previous one (nothing of an unsigned body is kept: it
could be anyone's); 403 for a shop not in ``shop_domains``; 200 for a topic we do not count
(counted as ignored); with a maximum delivery age, 200 and a dead letter (``stale_delivery``,
``invalid_trigger_time``) for a delivery triggered longer ago or not dated; otherwise the
delivery is decoded and submitted, and the answer waits for its commit: 200 once it is counted,
found a duplicate or dead-lettered (a body that can never be counted must not be retried for
hours), 503 if the commit does not finish within ``commit_timeout`` (Shopify waits 5 s), so
Shopify delivers again and dedup makes that harmless.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ingest.model import Decoded, Reason
from ingest.shopify import TOPICS, ShopifyFormat, signed_by, trigger_age
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
from ingest.sources.tokens import SecretsFile, TokensError, checked_pairs, read_text

log = logging.getLogger(__name__)

UNKNOWN_TOPIC = "unknown_topic"
SECRETS = ("current", "previous")
"""The ``secret`` label of a verified delivery: which secret signed it; the names in a secrets
file."""


def parse_secrets(text: str) -> tuple[str, ...]:
    """A Shopify secrets file's text (``current <secret>``, optionally ``previous <secret>``,
    the format of a tokens file): the secrets, current first; TokensError with every problem."""
    pairs, names, errors = checked_pairs(text, "name", "secret")
    errors += [
        f"line {line}: {name!r} is neither current nor previous"
        for name, line in names.items()
        if name not in SECRETS
    ]
    if "current" not in names:
        errors.append("no current secret: every delivery would be refused")
    if errors:
        raise TokensError(errors)
    return tuple(pairs[name] for name in SECRETS if name in pairs)


def read_secrets(path: Path) -> tuple[str, ...]:
    """A Shopify secrets file, read and checked; TokensError with every problem."""
    return parse_secrets(read_text(path))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ShopifyWebhookSettings:
    secret: str = dataclasses.field(repr=False)
    """The app's client secret, which signs every delivery."""
    previous_secret: str | None = dataclasses.field(default=None, repr=False)
    """The secret being rotated out, accepted as well until it is removed."""
    secrets_file: str | None = None
    """Where ``secret`` (and ``previous_secret``) were read: read again when it changes, and
    on :meth:`ShopifyWebhookSource.reload`."""
    secrets_poll_seconds: float = 5.0
    """How often the secrets file is checked for a change (mtime, size, inode)."""
    shop_domains: tuple[str, ...] = ()
    """``X-Shopify-Shop-Domain`` values accepted (another shop: 403); empty: any."""
    max_delivery_age: float | None = None
    """Seconds: a delivery triggered longer ago (``X-Shopify-Triggered-At``) is refused."""
    listen: str = "127.0.0.1:8080"
    path: str = "/webhooks/shopify"
    max_body_bytes: int = 1024 * 1024
    """Larger deliveries are refused (413)."""
    commit_timeout: float = 4.0
    """Answer 503 if a delivery is not committed by then; Shopify gives up after 5 s."""
    limits: Limits = dataclasses.field(default_factory=Limits)
    """Each process's own, with ``reuse_port``."""
    reuse_port: bool = False
    """Listen with ``SO_REUSEPORT``: several processes listening on ``listen`` so share it,
    and the kernel (Linux) spreads new connections over them."""


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
        on_refused: Callable[[str], None] = lambda scope: None,
        on_rate_limited: Callable[[str], None] = lambda scope: None,
        on_unavailable: Callable[[], None] = lambda: None,
        on_signed: Callable[[str], None] = lambda secret: None,
        on_forbidden: Callable[[], None] = lambda: None,
        on_reload: Callable[[bool], None] = lambda ok: None,
        clock: Callable[[], float] = time.time,
        tls: ServerTls | None = None,
    ) -> None:
        self.name = name
        self.fmt = fmt
        self.sink = sink
        self.health = health
        self.host, self.port = split_address(settings.listen)
        self.path = settings.path
        self._use((settings.secret, settings.previous_secret))
        self.watch: SecretsFile[tuple[str, ...]] | None = None
        if settings.secrets_file is not None:
            self.watch = SecretsFile(
                Path(settings.secrets_file),
                read_secrets,
                kind="secrets",
                interval=settings.secrets_poll_seconds,
                on_change=self._changed,
                on_reload=on_reload,
            )
        self.shop_domains = frozenset(domain.lower() for domain in settings.shop_domains)
        self.max_delivery_age = settings.max_delivery_age
        self.on_signed = on_signed
        self.on_forbidden = on_forbidden
        self.clock = clock
        self.max_body_bytes = settings.max_body_bytes
        self.commit_timeout = settings.commit_timeout
        self.on_ignored = on_ignored
        self.on_unauthorized = on_unauthorized
        self.on_bad_request = on_bad_request
        self.limits = settings.limits
        self.reuse_port = settings.reuse_port
        self.on_refused = on_refused
        self.on_rate_limited = on_rate_limited
        self._runner: web.AppRunner | None = None
        self.guard: Guard | None = None
        """The listener's connection caps and timeouts, once bound."""
        self.on_unavailable = on_unavailable
        self.tls = tls

    def _use(self, secrets: Sequence[str | None]) -> None:
        self._secrets = tuple(secret.encode() for secret in secrets if secret)

    async def _changed(self, secrets: tuple[str, ...]) -> None:
        self._use(secrets)

    def reload(self) -> None:
        """Read the secrets file again now (SIGHUP); nothing without one."""
        if self.watch is not None:
            self.watch.request_reload()

    async def _deliver(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        refused = self._authenticate(request, body)
        if refused is not None:
            return refused
        self.health.received(self.name)
        headers = request.headers
        topic = headers.get("X-Shopify-Topic", "")
        if topic not in TOPICS:
            self.on_ignored(UNKNOWN_TOPIC)
            return web.Response(text="ignored\n")
        event_id = headers.get("X-Shopify-Event-Id") or headers.get("X-Shopify-Webhook-Id") or ""
        items = self._stale(headers.get("X-Shopify-Triggered-At"), topic, event_id, body)
        if items is None:
            items = self.fmt.decode_delivery(topic, event_id, body)
        try:  # waits for room in the buffer too: a delivery not taken in time is not taken
            async with asyncio.timeout(self.commit_timeout):
                await asyncio.shield(await self.sink.submit(self.name, items))
        except TimeoutError:
            self.on_unavailable()
            return web.Response(status=503, text="not committed in time, deliver again\n")
        return web.Response(text="ok\n")

    async def _body(self, request: web.Request) -> bytes | web.Response:
        """The whole body, or the answer to a client that did not send one in time or whole."""
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                return await request.read()  # past client_max_size: 413, raised by aiohttp
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

    def _authenticate(self, request: web.Request, body: bytes) -> web.Response | None:
        """401 unless one of our secrets signed the body (nothing of it is kept: it could be
        anyone's); 403 for a shop not in ``shop_domains`` (signed for our app, but another
        shop's: nothing of it is kept either)."""
        signer = signed_by(self._secrets, body, request.headers.get("X-Shopify-Hmac-Sha256"))
        if signer is None:
            self.on_unauthorized()
            return web.Response(status=401, text="invalid signature\n")
        self.on_signed(SECRETS[signer])
        domain = request.headers.get("X-Shopify-Shop-Domain", "").strip().lower()
        if self.shop_domains and domain not in self.shop_domains:
            self.on_forbidden()
            return web.Response(status=403, text="shop not served here\n")
        return None

    def _stale(
        self, triggered_at: str | None, topic: str, event_id: str, body: bytes
    ) -> list[Decoded] | None:
        """The rejection of a delivery too old to count (or without a readable trigger time)
        when ages are checked, else None. The header is not signed: this refuses Shopify's own
        late deliveries (and a replay that keeps its header), not a forger's fresh header."""
        if self.max_delivery_age is None:
            return None
        age = trigger_age(triggered_at, self.clock())
        if age is None:
            detail = "no readable X-Shopify-Triggered-At"
            return [self.fmt.refuse(Reason.INVALID_TRIGGER_TIME, detail, topic, event_id, body)]
        if age > self.max_delivery_age:
            detail = f"triggered {int(age)} s ago, more than {int(self.max_delivery_age)} s"
            return [self.fmt.refuse(Reason.STALE_DELIVERY, detail, topic, event_id, body)]
        return None

    async def bind(self) -> None:
        """Listen now (OSError if the address cannot be used); ``run`` then serves."""
        if self._runner is not None:
            return
        guard = self.guard = Guard(
            self.limits,
            on_refused=self.on_refused,
            on_timeout=self.on_bad_request,
            on_tls=self.on_bad_request,
            on_rate_limited=self.on_rate_limited,
        )
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
            site = GuardedSite(
                runner, self.host, self.port, guard, context, reuse_port=self.reuse_port
            )
            await site.start()
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
            async with asyncio.TaskGroup() as group:
                if self.watch is not None:
                    group.create_task(self.watch.run(), name=f"source[{self.name}].secrets")
                await asyncio.Event().wait()
        finally:
            self.health.connected(self.name, False)
            await self.close()
