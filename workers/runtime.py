"""The ingester process: sources, the committer and the HTTP endpoint, owned by one task group.

Shutdown is staged: stop reading (cancel the sources), flush what was read within a deadline,
then cancel the committer and close Redis. Cancellation is re-raised after cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Protocol
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from ingest.native import NativeFormat, NativeOptions
from ingest.shopify import ShopifyFormat
from ingest.socialstream import SocialStreamFormat
from ingest.sources.backoff import Backoff
from ingest.sources.base import Format
from ingest.sources.eventsub import EventSubSource, Helix, chat_subscriptions
from ingest.sources.mqtt import MqttSource
from ingest.sources.topics import TopicPattern
from ingest.sources.webhook import ShopifyWebhookSource
from ingest.sources.websocket import WebsocketClientSource, WebsocketServerSource
from ingest.twitch import CHAT_MESSAGE, REVOCATION_STATUSES, EventSubFormat, Revocation
from workers.committer import BatchSettings, Committer
from workers.config import (
    Config,
    HttpServerConfig,
    MqttConfig,
    SourceConfig,
    WebsocketClientConfig,
    WebsocketServerConfig,
    split_listen,
)
from workers.logs import Throttle
from workers.metrics import HealthMetrics, exposition
from workers.redis_policy import PolicyWatch, UnsafeEvictionPolicy
from workers.store import Store, StoreSettings

log = structlog.get_logger("runtime")

SCRAPE_TIMEOUT = 2.0
"""Seconds a scrape waits for Redis; then it answers with health metrics only."""


class Source(Protocol):
    name: str

    async def run(self) -> None: ...


class SourceHealth:
    """The sources' health hooks: metrics and one log line per state change."""

    def __init__(
        self,
        metrics: HealthMetrics,
        clock: Callable[[], float] = time.time,
        log_interval: float = 10.0,
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        self._refusals = Throttle(log_interval)
        self._up: dict[str, asyncio.Event] = {}
        self._last_event: dict[str, float] = {}

    def _event(self, source: str) -> asyncio.Event:
        return self._up.setdefault(source, asyncio.Event())

    def connected(self, source: str, up: bool) -> None:
        event = self._event(source)
        if up:
            log.info("source connected", source=source)
            event.set()
        else:
            if event.is_set():  # log transitions only, not every failed attempt
                log.warning("source disconnected", source=source)
            event.clear()
        self.metrics.connected.labels(source).set(1 if up else 0)

    async def wait_connected(self, source: str) -> None:
        await self._event(source).wait()

    def reconnecting(self, source: str, reason: str, delay: float) -> None:
        self.metrics.reconnects.labels(source).inc()
        log.info("source reconnecting", source=source, reason=reason, delay=round(delay, 3))

    def ignored(self, source: str, what: str) -> None:
        """An input taken but not an event we count (a bounded ``what``): counted only."""
        self.metrics.ignored.labels(source, what).inc()

    def unauthorized(self, source: str) -> None:
        """A webhook delivery refused for its signature: counted, logged without flooding."""
        self.metrics.unauthorized.labels(source).inc()
        suppressed = self._refusals.allow(source)
        if suppressed is not None:
            log.warning(
                "webhook delivery refused: bad signature",
                source=source,
                suppressed_since_last=suppressed,
            )

    def unavailable(self, source: str) -> None:
        """A webhook delivery answered 503 (not committed in time): counted."""
        self.metrics.webhook_unavailable.labels(source).inc()

    def received(self, source: str) -> None:
        # A dict store per frame; the gauge reads it at scrape time. Its series appears with
        # the source's first input, as "never received" must stay distinguishable.
        if source not in self._last_event:
            self.metrics.last_event.labels(source).set_function(lambda: self._last_event[source])
        self._last_event[source] = self.clock()


def redis_client(url: str, socket_timeout: float, cluster: bool = False) -> Redis | RedisCluster:
    """A client with the library's retries off: the committer owns the one retry policy. (A
    cluster client still follows MOVED and ASK redirections itself: that is routing.)"""
    if cluster:
        return RedisCluster.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
        )
    return Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
    )


def tls_context(config: MqttConfig) -> ssl.SSLContext | None:
    if not config.url.startswith("mqtts://"):
        return None
    context = ssl.create_default_context(cafile=config.ca_file)
    if config.cert_file is not None:
        context.load_cert_chain(config.cert_file, config.key_file)
    return context


def eventsub_source(
    config: WebsocketClientConfig,
    options: NativeOptions,
    committer: Committer,
    health: SourceHealth,
    environ: Mapping[str, str],
) -> EventSubSource:
    twitch = config.twitch
    assert twitch is not None  # validated with the format
    metrics = health.metrics
    types = {CHAT_MESSAGE}

    for status in (*sorted(REVOCATION_STATUSES), "other"):  # at 0, so alerts see the first
        metrics.revocations.labels(config.name, CHAT_MESSAGE, status)

    def revoked(revocation: Revocation) -> None:
        kind = revocation.type if revocation.type in types else "other"
        metrics.revocations.labels(config.name, kind, revocation.status).inc()

    return EventSubSource(
        config.name,
        config.url,
        EventSubFormat(options, twitch.broadcaster_user_id),
        committer,
        health,
        helix=Helix(twitch.helix_url, twitch.client_id, environ[twitch.token_env]),
        subscriptions=chat_subscriptions(twitch.broadcaster_user_id, twitch.user_id),
        keepalive_margin=twitch.keepalive_margin_seconds,
        open_timeout=config.open_timeout,
        close_timeout=config.close_timeout,
        max_size=config.max_size,
        backoff=Backoff(config.backoff_initial, config.backoff_max),
        backoff_reset_after=config.backoff_reset_after,
        on_revoked=revoked,
        on_ignored=functools.partial(health.ignored, config.name),
    )


def build_source(
    config: SourceConfig,
    options: NativeOptions,
    committer: Committer,
    health: SourceHealth,
    environ: Mapping[str, str],
) -> Source:
    fmt = NativeFormat(options)
    match config:
        case WebsocketClientConfig(format="twitch-eventsub"):
            return eventsub_source(config, options, committer, health, environ)
        case HttpServerConfig():
            host, port = split_listen(config.listen)
            return ShopifyWebhookSource(
                config.name,
                ShopifyFormat(dataclasses.replace(options, max_frame_bytes=config.max_body_bytes)),
                committer,
                health,
                host=host,
                port=port,
                path=config.path,
                secret=environ[config.secret_env],
                max_body_bytes=config.max_body_bytes,
                commit_timeout=config.commit_timeout_seconds,
                on_ignored=functools.partial(health.ignored, config.name),
                on_unauthorized=functools.partial(health.unauthorized, config.name),
                on_unavailable=functools.partial(health.unavailable, config.name),
            )
        case WebsocketClientConfig():
            headers = dict(config.headers)
            if config.token_env:
                headers["Authorization"] = f"Bearer {environ[config.token_env]}"
            on_connect = None
            client_format: Format = fmt
            if config.format == "socialstream":
                relay = SocialStreamFormat(options, functools.partial(health.ignored, config.name))
                client_format, on_connect = relay, relay.new_connection
            return WebsocketClientSource(
                config.name,
                config.url,
                client_format,
                committer,
                health,
                on_connect=on_connect,
                subscribe=config.subscribe,
                headers=headers,
                ping_interval=config.ping_interval,
                ping_timeout=config.ping_timeout,
                open_timeout=config.open_timeout,
                close_timeout=config.close_timeout,
                max_size=config.max_size,
                backoff=Backoff(config.backoff_initial, config.backoff_max),
                backoff_reset_after=config.backoff_reset_after,
            )
        case WebsocketServerConfig():
            host, port = split_listen(config.listen)
            return WebsocketServerSource(
                config.name,
                fmt,
                committer,
                health,
                host=host,
                port=port,
                path=config.path,
                token=environ[config.token_env],
                max_size=config.max_size,
                ping_interval=config.ping_interval,
                ping_timeout=config.ping_timeout,
            )
        case MqttConfig():

            @functools.lru_cache(maxsize=1024)
            def formats(stream: str | None) -> NativeFormat:
                return fmt if stream is None else NativeFormat(options.for_stream(stream))

            address = urlsplit(config.url)
            secure = address.scheme == "mqtts"
            return MqttSource(
                config.name,
                formats,
                committer,
                health,
                host=address.hostname or "127.0.0.1",
                port=address.port or (8883 if secure else 1883),
                identifier=config.client_id,
                patterns=[TopicPattern(topic.pattern) for topic in config.topics],
                qos=config.qos,
                mqtt5=config.protocol == "5",
                shared_group=config.shared_group,
                username=config.username,
                password=environ[config.password_env] if config.password_env else None,
                tls=tls_context(config),
                session_expiry=config.session_expiry,
                receive_maximum=config.receive_maximum,
                keepalive=config.keepalive,
                backoff=Backoff(config.backoff_initial, config.backoff_max),
                backoff_reset_after=config.backoff_reset_after,
            )


class Ingester:
    """One ingester process's worth of components. ``await run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        config: Config,
        *,
        environ: Mapping[str, str] | None = None,
        shutdown_deadline: float = 10.0,
        now_override: int | None = None,
    ) -> None:
        self.config = config
        self.environ = os.environ if environ is None else environ
        self.shutdown_deadline = shutdown_deadline
        self.metrics = HealthMetrics()
        self.redis = redis_client(
            config.redis.url, config.redis.socket_timeout, config.redis.cluster
        )
        self.policy = PolicyWatch(
            self.redis,
            self.metrics,
            refuse=config.redis.eviction_policy_check == "refuse",
            interval=config.redis.policy_check_interval,
        )
        self.refused: UnsafeEvictionPolicy | None = None
        """Set when the Redis eviction policy made a refusing ingester stop (exit status 2)."""
        self.store = Store(
            self.redis,
            StoreSettings(
                retention_seconds=config.dedup.retention_hours * 3600,
                sku_limit=config.labels.sku_limit,
                max_streams=config.labels.max_streams,
                dead_letter_max=config.dead_letters.max_per_stream,
                now_override=now_override,
            ),
        )
        batch = config.batch
        self.committer = Committer(
            self.store,
            self.metrics,
            BatchSettings(
                max_events=batch.max_events,
                max_delay=batch.max_delay_ms / 1000,
                max_in_flight=batch.max_in_flight,
                capacity=batch.buffer_events,
            ),
            log_interval=config.log.rejection_interval_seconds,
        )
        self.health = SourceHealth(self.metrics, log_interval=config.log.rejection_interval_seconds)
        regions = config.region_table()
        self.sources: list[Source] = []
        for source in config.sources:
            options = config.native_options(source, regions)
            self.sources.append(
                build_source(source, options, self.committer, self.health, self.environ)
            )
            self.metrics.add_source(source.name)
            if isinstance(source, HttpServerConfig):  # at 0, so the first 503 is an increase
                self.metrics.webhook_unavailable.labels(source.name)
        self.http_port: int | None = None
        self.unflushed = 0
        """Events read but not committed when the shutdown deadline passed (exit status 1)."""
        self.started = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            try:
                await self.policy.check()
            except UnsafeEvictionPolicy as exc:
                self.refused = exc
                log.error("refusing to start", reason=str(exc))
                return
            async with self._http(), asyncio.TaskGroup() as group:
                watching = group.create_task(self._watch_policy(stop), name="redis.policy")
                committing = group.create_task(self.committer.run(), name="committer")
                reading = [
                    group.create_task(source.run(), name=f"source[{source.name}].receive")
                    for source in self.sources
                ]
                self.started.set()
                log.info("ingester started", sources=len(reading), http_port=self.http_port)
                await stop.wait()
                log.info("stopping: no more reading", buffered=self.committer.buffered)
                for task in reading:
                    task.cancel()
                await asyncio.gather(*reading, return_exceptions=True)
                try:
                    async with asyncio.timeout(self.shutdown_deadline):
                        await asyncio.shield(self.committer.flush())
                    log.info(
                        "stopping: buffer flushed",
                        submitted=self.committer.submitted,
                        committed=self.committer.committed,
                    )
                except TimeoutError:
                    self.unflushed = self.committer.buffered
                    log.error("stopping: flush deadline passed", unflushed=self.unflushed)
                committing.cancel()
                watching.cancel()
        finally:
            await self.redis.aclose()

    async def _watch_policy(self, stop: asyncio.Event) -> None:
        """Re-read the eviction policy periodically; a refusing ingester stops (in stages) when
        Redis turns unsafe under it (a failover, a CONFIG SET)."""
        try:
            await self.policy.run()
        except UnsafeEvictionPolicy as exc:
            self.refused = exc
            log.error("stopping: redis may evict dedup sets", reason=str(exc))
            stop.set()

    @contextlib.asynccontextmanager
    async def _http(self) -> AsyncIterator[None]:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        host, port = split_listen(self.config.http.listen)
        site = web.TCPSite(runner, host, port)
        await site.start()
        self.http_port = int(runner.addresses[0][1])
        try:
            yield
        finally:
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                totals = await self.store.totals()
            self.metrics.redis_up.set(1)
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            log.warning("cannot read totals for a scrape", error=type(exc).__name__)
            self.metrics.scrape_errors.inc()
            self.metrics.redis_up.set(0)
            totals = None
        body = await asyncio.to_thread(exposition, self.metrics, totals)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(1.0):
                await self.redis.ping()
        except (RedisError, RedisClusterException, OSError, TimeoutError):
            return web.Response(status=503, text="redis unreachable\n")
        return web.Response(text="ready\n")
