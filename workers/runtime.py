"""The ingester process: sources, the committer and the HTTP endpoint, owned by one task group.

Shutdown is staged: stop reading (cancel the sources), flush what was read within a deadline,
then cancel the committer and close Redis. Cancellation is re-raised after cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
import gc
import math
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from ingest.adapter import FormatOptions
from ingest.catalog import Catalog
from ingest.facebook import ERROR_REASONS, FacebookLiveFormat
from ingest.native import STREAM_PATTERN, NativeFormat
from ingest.shopify import ShopifyFormat
from ingest.socialstream import SocialStreamFormat
from ingest.sources.admission import CLIENT, LISTENER, SCOPES
from ingest.sources.eventsub import EventSubSettings, EventSubSource, Helix, chat_subscriptions
from ingest.sources.facebook import (
    FacebookLiveSource,
    FacebookSettings,
    PageToken,
    read_page_token,
)
from ingest.sources.http import Credentials, Guard, GuardedSite, ServerLog
from ingest.sources.mqtt import MqttSettings, MqttSource
from ingest.sources.tls import Loaded, ServerTls
from ingest.sources.tokens import TokensError, read_tokens, world_readable
from ingest.sources.topics import TopicPattern
from ingest.sources.twitch_auth import (
    FAILURE_REASONS,
    RefreshingToken,
    RefreshSettings,
    StaticToken,
    Tokens,
)
from ingest.sources.webhook import (
    SECRETS,
    ShopifyWebhookSettings,
    ShopifyWebhookSource,
    read_secrets,
)
from ingest.sources.websocket import (
    WebsocketClientSettings,
    WebsocketClientSource,
    WebsocketServerSettings,
    WebsocketServerSource,
)
from ingest.sources.websocket_picows import PicowsClientSource
from ingest.sources.youtube import YouTubeSettings, YouTubeSource
from ingest.twitch import CHAT_MESSAGE, REVOCATION_STATUSES, EventSubFormat, Revocation
from ingest.youtube import ERROR_KINDS, LiveChatFormat
from workers.catalogs import Catalogs
from workers.committer import BatchSettings, Committer
from workers.config import (
    BatchConfig,
    Config,
    ConfigError,
    HttpClientConfig,
    HttpConfig,
    HttpPollConfig,
    HttpServerConfig,
    MqttConfig,
    SourceConfig,
    TlsConfig,
    TwitchConfig,
    WebsocketClientConfig,
    WebsocketServerConfig,
    YouTubeConfig,
    split_listen,
)
from workers.feeds import FeedRecorder
from workers.logs import Throttle
from workers.metrics import HealthMetrics, business_exposition, catalog_exposition
from workers.redis_policy import PolicyWatch, UnsafeEvictionPolicy
from workers.report import FORMATS, ReportError, build
from workers.report_html import REPORT_TYPES, render
from workers.scrape import SharedRead
from workers.store import RawTotals, Store, StoreSettings, parse_totals

log = structlog.get_logger("runtime")

HTTP_LISTENER = "http"
CAP_REASONS = {LISTENER: "max_connections", CLIENT: "max_connections_per_client"}
"""The ``listener`` label of the metrics endpoint (``[http] listen``)."""
PROBES = frozenset({"/healthz", "/readyz"})
"""Open unless ``[http] protect_probes``: orchestrators' probes usually send no credentials."""
REPORTS = "/streams/"
"""Reports are served under it: ``/streams/{stream}/report``, with the credentials of /metrics."""
REPORTS_AT_ONCE = 1
"""Reports read and rendered at once; another request meanwhile is answered 429. One: reports
read through the scrape connections (at least two), so one stays free for /metrics."""
REPORT_TIMEOUT = 10.0
"""Seconds a report may take to read and render."""
STREAM_NAME = re.compile(STREAM_PATTERN)
SCRAPE_TIMEOUT = 5.0
"""Seconds a scrape waits for Redis; then it answers with health metrics only."""

SCRAPE_CLIENT_NAME = "livestream-ingester-scrape"
"""The Redis client name (CLIENT LIST) of the connections that serve /metrics and /readyz."""

WRITE_SLICE = 64 * 1024
"""Bytes of a response handed to the transport at once: a slow scraper holds a copy of at
most about this much, not of the whole (shared) exposition."""

READ_ERRORS = (RedisError, RedisClusterException, OSError)


@dataclasses.dataclass(frozen=True, slots=True)
class CatalogView:
    """What the catalog series of a scrape come from (taken on the loop, rendered off it)."""

    catalogs: Mapping[str, Catalog]
    targets: Mapping[str, int]
    shares: Mapping[str, float]


def _render_business(raw: RawTotals, view: CatalogView | None = None) -> bytes:
    """Parse and render in one go, with the cyclic garbage collector paused: the hundreds of
    thousands of short-lived objects of 10,000 streams would otherwise trigger collections
    that stop the event loop's thread too (measured: loop stalls halved, rendering 1.6x
    faster). One rendering runs at a time (SharedRead); reference counting frees them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        totals = parse_totals(raw)
        text = business_exposition(totals)
        if view is not None:
            text += catalog_exposition(view.catalogs, view.targets, view.shares, totals)
        return text
    finally:
        if enabled:
            gc.enable()


class Source(Protocol):
    name: str

    async def run(self) -> None: ...


@runtime_checkable
class Listener(Protocol):
    """A source that listens (a server): ``bind`` before the ingester reports started."""

    async def bind(self) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class Reloadable(Protocol):
    """A source whose secrets can be read again while it runs."""

    def reload(self) -> None: ...


class ListenError(Exception):
    """A listen address cannot be used; ``str()`` is the operator's one line."""

    def __init__(self, key: str, address: str, exc: OSError) -> None:
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror
        reason = reason or str(exc) or type(exc).__name__
        super().__init__(f"{key}: cannot listen on {address}: {reason[:1].lower()}{reason[1:]}")
        self.key = key
        self.address = address


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
        self.feeds: FeedRecorder | None = None
        """Where the sources' states go for feed gaps (workers/feeds.py), if anywhere."""

    def _event(self, source: str) -> asyncio.Event:
        return self._up.setdefault(source, asyncio.Event())

    def connected(self, source: str, up: bool) -> None:
        event = self._event(source)
        if self.feeds is not None:
            self.feeds.connected(source, up)
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
        if self.feeds is not None:
            self.feeds.reconnecting(source)
        log.info("source reconnecting", source=source, reason=reason, delay=round(delay, 3))

    def ignored(self, source: str, what: str) -> None:
        """An input taken but not an event we count (a bounded ``what``): counted only."""
        self.metrics.ignored.labels(source, what).inc()

    def unauthorized(self, source: str, reason: str = "signature") -> None:
        """A request refused by a listening source for its credentials (a bounded ``reason``):
        counted, logged without flooding."""
        self.metrics.unauthorized.labels(source).inc()
        self._refused(source, "unauthorized", reason)

    def bad_request(self, listener: str, reason: str) -> None:
        """A client's mistake (a bounded ``reason``): counted, logged without flooding."""
        self.metrics.bad_requests.labels(listener, reason).inc()
        self._refused(listener, "bad request", reason)

    def connection_refused(self, listener: str, scope: str) -> None:
        """A connection closed at once: the listener had its ``max_connections`` open (scope
        ``listener``), or the client its ``max_connections_per_client`` (``client``)."""
        self.metrics.connections_refused.labels(listener, scope).inc()
        self._refused(listener, "connection refused", CAP_REASONS[scope])

    def rate_limited(self, listener: str, scope: str) -> None:
        """A request answered 429: over the listener's rate, or its client's (``scope``)."""
        self.metrics.rate_limited.labels(listener, scope).inc()
        self._refused(listener, "rate limited", scope)

    def listening(self, listener: str) -> None:
        """Make a listener's refusal series exist (at zero), so alerts see the first one."""
        for scope in SCOPES:
            self.metrics.connections_refused.labels(listener, scope)
            self.metrics.rate_limited.labels(listener, scope)

    def _refused(self, listener: str, what: str, reason: str) -> None:
        decision = self._refusals.decide((listener, what))
        if decision.allowed:
            log.warning(
                f"request refused: {what}",
                source=listener,
                reason=reason,
                suppressed_since_last=decision.suppressed,
            )

    def forbidden(self, source: str) -> None:
        """A signed webhook delivery of a shop not served here (403): counted, logged without
        flooding."""
        self.metrics.webhook_forbidden.labels(source).inc()
        self._refused(source, "forbidden", "shop_domain")

    def tls_loaded(self, listener: str, loaded: Loaded) -> None:
        """A listener serves a certificate loaded now (at start, or renewed)."""
        metrics = self.metrics
        metrics.tls_expiry.labels(listener).set(loaded.not_after)
        metrics.tls_loads.labels(listener).inc()
        metrics.tls_reload_failures.labels(listener)  # at 0, so the first failure is an increase
        expires = datetime.datetime.fromtimestamp(loaded.not_after, datetime.UTC)
        log.info(
            "tls certificate loaded",
            listener=listener,
            serial=f"{loaded.serial:x}",
            not_after=expires.isoformat(),
        )

    def tls_failed(self, listener: str, problems: list[str]) -> None:
        """A reload failed: counted, one line; the listener still serves the previous one."""
        self.metrics.tls_reload_failures.labels(listener).inc()
        log.error(
            "tls certificate reload failed: still serving the previous certificate",
            listener=listener,
            problems="; ".join(problems),
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
        if self.feeds is not None:
            self.feeds.received(source)


def redis_client(
    url: str,
    socket_timeout: float,
    cluster: bool = False,
    *,
    max_connections: int | None = None,
    name: str | None = None,
) -> Redis | RedisCluster:
    """A client with the library's retries off: the committer owns the one retry policy. (A
    cluster client still follows MOVED and ASK redirections itself: that is routing.)

    With ``max_connections``, a single Redis client waits (up to ``socket_timeout``) for one of
    its connections; a cluster client refuses a call beyond that many per node."""
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "retry": Retry(NoBackoff(), 0),
        "client_name": name,
    }
    if cluster:
        if max_connections is not None:
            options["max_connections"] = max_connections
        return RedisCluster.from_url(url, **options)
    if max_connections is not None:
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=socket_timeout, **options
        )
        return Redis.from_pool(pool)
    return Redis.from_url(url, **options)


def server_tls(listener: str, config: TlsConfig | None, health: SourceHealth) -> ServerTls | None:
    """A listener's TLS, reporting its loads to ``health`` (TlsError if the files do not load
    now: they did when the config was validated)."""
    if config is None:
        return None
    return ServerTls(
        config.tls(),
        on_loaded=functools.partial(health.tls_loaded, listener),
        on_failed=functools.partial(health.tls_failed, listener),
    )


def metrics_credentials(http: HttpConfig, environ: Mapping[str, str]) -> Credentials | None:
    """What ``/metrics`` requires, if ``[http]`` names credentials."""
    if http.metrics_token_env is not None:
        return Credentials(token=environ[http.metrics_token_env])
    if http.metrics_username is not None and http.metrics_password_env is not None:
        password = environ[http.metrics_password_env]
        return Credentials(username=http.metrics_username, password=password)
    return None


def mqtt_source(
    config: MqttConfig,
    options: FormatOptions,
    committer: Committer,
    health: SourceHealth,
    environ: Mapping[str, str],
) -> MqttSource:
    fmt = NativeFormat(options)

    @functools.lru_cache(maxsize=1024)
    def formats(stream: str | None) -> NativeFormat:
        return fmt if stream is None else NativeFormat(options.for_stream(stream))

    settings = config.settings(
        MqttSettings,
        topics=tuple(TopicPattern(topic.pattern) for topic in config.topics),
        password=environ[config.password_env] if config.password_env else None,
    )
    return MqttSource(config.name, formats, committer, health, settings)


def oauth_tokens(
    config: WebsocketClientConfig | HttpPollConfig,
    creds: TwitchConfig | YouTubeConfig,
    health: SourceHealth,
    environ: Mapping[str, str],
    **platform: Any,
) -> Tokens:
    """The static token ``token_env`` names, or one refreshed with ``refresh_token_env`` from
    the platform's OAuth server (Twitch's or Google's); ``platform``: more RefreshSettings."""
    if creds.refresh_token_env is None:
        assert creds.token_env is not None  # validated: one of the two
        return StaticToken(environ[creds.token_env])
    assert creds.client_id is not None  # validated with refresh_token_env
    metrics = health.metrics
    refreshes = metrics.token_refreshes.labels(config.name)
    for reason in FAILURE_REASONS:  # at 0, so alerts see the first
        metrics.token_refresh_failures.labels(config.name, reason)
    secret = environ[creds.client_secret_env] if creds.client_secret_env else None
    file = creds.refresh_token_file
    settings = config.settings(
        RefreshSettings,
        client_id=creds.client_id,
        refresh_token=environ[creds.refresh_token_env],
        client_secret=secret,
        refresh_token_file=Path(file) if file is not None else None,
        oauth_url=creds.oauth_url,
        refresh_margin=creds.refresh_margin_seconds,
        **platform,
    )
    return RefreshingToken(
        settings,
        on_refreshed=refreshes.inc,
        on_failure=lambda reason: metrics.token_refresh_failures.labels(config.name, reason).inc(),
    )


def eventsub_source(
    config: WebsocketClientConfig,
    options: FormatOptions,
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
        EventSubFormat(options, twitch.broadcaster_user_id),
        committer,
        health,
        config.settings(EventSubSettings, keepalive_margin=twitch.keepalive_margin_seconds),
        helix=Helix(
            twitch.helix_url, twitch.client_id, oauth_tokens(config, twitch, health, environ)
        ),
        subscriptions=chat_subscriptions(twitch.broadcaster_user_id, twitch.user_id),
        on_revoked=revoked,
        on_ignored=functools.partial(health.ignored, config.name),
    )


def facebook_source(
    config: HttpClientConfig,
    options: FormatOptions,
    committer: Committer,
    health: SourceHealth,
    environ: Mapping[str, str],
) -> FacebookLiveSource:
    """The source, with its token from the environment or its token file read now (the config
    was checked, so the file was good a moment ago; ConfigError if it no longer is)."""
    metrics, name, facebook = health.metrics, config.name, config.facebook
    token_file = Path(config.token_file) if config.token_file is not None else None
    if token_file is None:
        assert config.token_env is not None  # one of the two, validated
        token = environ[config.token_env]
    else:
        try:
            token = read_page_token(token_file)
        except TokensError as exc:
            raise ConfigError(str(token_file), exc.errors) from exc
        _secrets_file_read(metrics, name, token_file)
    for reason in ERROR_REASONS:  # at 0, so alerts see the first
        metrics.facebook_errors.labels(name, reason)
    settings = config.settings(
        FacebookSettings,
        live_video_id=facebook.live_video_id,
        mode=facebook.mode,
        graph_url=facebook.graph_url,
        streaming_url=facebook.streaming_url,
        api_version=facebook.api_version,
        comment_rate=facebook.comment_rate,
        live_filter=facebook.live_filter,
        poll_interval=facebook.poll_interval_seconds,
        page_limit=facebook.page_limit,
        read_timeout=facebook.read_timeout_seconds,
        request_timeout=facebook.request_timeout_seconds,
        status_interval=facebook.status_interval_seconds,
        max_event_bytes=config.max_frame_bytes,
    )
    return FacebookLiveSource(
        name,
        FacebookLiveFormat(options),
        committer,
        health,
        settings,
        token=PageToken(token),
        token_file=token_file,
        token_poll=config.token_poll_seconds,
        on_reload=functools.partial(_secrets_reloaded, metrics, name),
        on_error=lambda reason: metrics.facebook_errors.labels(name, reason).inc(),
        on_ignored=functools.partial(health.ignored, name),
        on_ended=lambda: metrics.source_ended.labels(name, "video_ended").set(1),
    )


def youtube_source(
    config: HttpPollConfig,
    options: FormatOptions,
    committer: Committer,
    health: SourceHealth,
    environ: Mapping[str, str],
) -> YouTubeSource:
    youtube = config.youtube
    metrics = health.metrics
    name = config.name
    for kind in ERROR_KINDS:  # at 0, so alerts see the first
        metrics.api_errors.labels(name, kind)
    quota = metrics.quota_exhausted.labels(name)
    quota.set(0)
    ignored = metrics.ignored.labels(name, "other_message")
    settings = config.settings(
        YouTubeSettings,
        api_url=youtube.api_url,
        live_chat_id=youtube.live_chat_id,
        video_id=youtube.video_id,
        max_results=youtube.max_results,
        min_poll_interval=youtube.min_poll_interval_seconds,
        quota_probe_interval=youtube.quota_probe_interval_seconds,
        max_page_bytes=youtube.max_page_bytes,
        transport=youtube.transport,
        stream_idle_timeout=youtube.stream_idle_timeout_seconds,
    )
    # A page holds up to max_results messages: the page limit replaces max_frame_bytes.
    options = dataclasses.replace(options, max_frame_bytes=youtube.max_page_bytes)
    return YouTubeSource(
        name,
        LiveChatFormat(options),
        committer,
        health,
        settings,
        tokens=oauth_tokens(
            config,
            youtube,
            health,
            environ,
            validate_interval=math.inf,  # Google's token answer always says expires_in
            platform="youtube",
        ),
        on_api_error=lambda kind: metrics.api_errors.labels(name, kind).inc(),
        on_quota=lambda exhausted: quota.set(1 if exhausted else 0),
        on_ended=lambda reason: metrics.source_ended.labels(name, reason).set(1),
        on_ignored=ignored.inc,
    )


def websocket_client(
    config: WebsocketClientConfig,
    options: FormatOptions,
    committer: Committer,
    health: SourceHealth,
    environ: Mapping[str, str],
) -> WebsocketClientSource:
    headers = dict(config.headers)
    if config.token_env:
        headers["Authorization"] = f"Bearer {environ[config.token_env]}"
    settings = config.settings(WebsocketClientSettings, headers=headers)
    kind = PicowsClientSource if config.transport == "picows" else WebsocketClientSource
    if config.format == "socialstream":
        relay = SocialStreamFormat(options, functools.partial(health.ignored, config.name))
        return kind(
            config.name, relay, committer, health, settings, on_connect=relay.new_connection
        )
    return kind(config.name, NativeFormat(options), committer, health, settings)


def websocket_server(
    config: WebsocketServerConfig,
    options: FormatOptions,
    committer: Committer,
    health: SourceHealth,
    environ: Mapping[str, str],
    *,
    tls: ServerTls | None = None,
) -> WebsocketServerSource:
    """The source, with its one token from the environment or its tokens file read now (the
    config was checked, so the file was good a moment ago; ConfigError if it no longer is)."""
    metrics, name = health.metrics, config.name
    if config.tokens_file is None:
        assert config.token_env is not None  # one of the two, validated
        credentials: dict[str, Any] = {"token": environ[config.token_env]}
    else:
        path = Path(config.tokens_file)
        try:  # checked with the config a moment ago; changed since?
            tokens = read_tokens(path)
        except TokensError as exc:
            raise ConfigError(str(path), exc.errors) from exc
        _secrets_file_read(metrics, name, path)
        credentials = {"tokens": tokens}
    settings = config.settings(WebsocketServerSettings, rates=config.rate_limits(), **credentials)

    metrics.revoked_connections.labels(name)
    health.listening(name)
    return WebsocketServerSource(
        name,
        NativeFormat(options),
        committer,
        health,
        settings,
        on_unauthorized=functools.partial(health.unauthorized, name),
        on_connected=lambda producer: metrics.push_connections.labels(name, producer).inc(),
        on_revoked=lambda closed: metrics.revoked_connections.labels(name).inc(closed),
        on_reload=functools.partial(_secrets_reloaded, metrics, name),
        on_refused=functools.partial(health.connection_refused, name),
        on_rate_limited=functools.partial(health.rate_limited, name),
        on_bad_request=functools.partial(health.bad_request, name),
        tls=tls,
    )


def webhook_source(
    config: HttpServerConfig,
    options: FormatOptions,
    committer: Committer,
    health: SourceHealth,
    environ: Mapping[str, str],
    *,
    max_age: float | None = None,
    tls: ServerTls | None = None,
) -> ShopifyWebhookSource:
    secret, previous = _shopify_secrets(config, environ)
    if config.secrets_file is not None:
        _secrets_file_read(health.metrics, config.name, Path(config.secrets_file))
    settings = config.settings(
        ShopifyWebhookSettings,
        secret=secret,
        previous_secret=previous,
        commit_timeout=config.commit_timeout_seconds,
        limits=config.limits(),
        max_delivery_age=max_age,
    )
    metrics = health.metrics
    rotating = config.secrets_file is not None or config.previous_secret_env is not None
    for label in SECRETS[: 2 if rotating else 1]:  # at 0: "previous no longer used" shows
        metrics.webhook_signatures.labels(config.name, label)
    metrics.webhook_forbidden.labels(config.name)
    health.listening(config.name)
    return ShopifyWebhookSource(
        config.name,
        ShopifyFormat(dataclasses.replace(options, max_frame_bytes=config.max_body_bytes)),
        committer,
        health,
        settings,
        on_ignored=functools.partial(health.ignored, config.name),
        on_unauthorized=functools.partial(health.unauthorized, config.name),
        on_bad_request=functools.partial(health.bad_request, config.name),
        on_refused=functools.partial(health.connection_refused, config.name),
        on_rate_limited=functools.partial(health.rate_limited, config.name),
        on_unavailable=functools.partial(health.unavailable, config.name),
        on_signed=lambda secret: metrics.webhook_signatures.labels(config.name, secret).inc(),
        on_forbidden=functools.partial(health.forbidden, config.name),
        on_reload=functools.partial(_secrets_reloaded, health.metrics, config.name),
        tls=tls,
    )


def _shopify_secrets(
    config: HttpServerConfig, environ: Mapping[str, str]
) -> tuple[str, str | None]:
    """The current and previous Shopify secrets, from the environment or the secrets file."""
    if config.secrets_file is None:
        assert config.secret_env is not None  # one of the two, validated
        previous = config.previous_secret_env
        return environ[config.secret_env], environ[previous] if previous else None
    try:  # checked with the config a moment ago; changed since?
        secrets = read_secrets(Path(config.secrets_file))
    except TokensError as exc:
        raise ConfigError(config.secrets_file, exc.errors) from exc
    return secrets[0], secrets[1] if len(secrets) > 1 else None


def _secrets_file_read(metrics: HealthMetrics, source: str, path: Path) -> None:
    """A source's secrets file is in use: its series start, and a warning if anyone may read
    it."""
    if world_readable(path):
        log.warning("secrets file is readable by every user", source=source, path=str(path))
    metrics.secrets_file_valid.labels(source).set(1)
    for outcome in ("ok", "error"):  # at 0, so the first failure is an increase
        metrics.secrets_reloads.labels(source, outcome)


def _secrets_reloaded(metrics: HealthMetrics, source: str, ok: bool) -> None:
    metrics.secrets_reloads.labels(source, "ok" if ok else "error").inc()
    metrics.secrets_file_valid.labels(source).set(1 if ok else 0)


def build_source(
    config: SourceConfig,
    options: FormatOptions,
    committer: Committer,
    health: SourceHealth,
    environ: Mapping[str, str],
    *,
    max_age: float | None = None,
    tls: ServerTls | None = None,
) -> Source:
    """The transport ``config`` names, its settings resolved (secrets read from ``environ``;
    ``max_age``: the age past which a webhook delivery is stale); a server source listens
    with ``tls`` if given."""
    match config:
        case WebsocketClientConfig(format="twitch-eventsub"):
            return eventsub_source(config, options, committer, health, environ)
        case WebsocketClientConfig():
            return websocket_client(config, options, committer, health, environ)
        case HttpClientConfig():
            return facebook_source(config, options, committer, health, environ)
        case WebsocketServerConfig():
            return websocket_server(config, options, committer, health, environ, tls=tls)
        case HttpServerConfig():
            return webhook_source(
                config, options, committer, health, environ, max_age=max_age, tls=tls
            )
        case MqttConfig():
            return mqtt_source(config, options, committer, health, environ)
        case HttpPollConfig():
            return youtube_source(config, options, committer, health, environ)


async def _read(source: Source) -> None:
    """``source.run()`` with ``source=<name>`` bound to every line logged in its task (and in
    the tasks it starts), through structlog or a stdlib logger."""
    with structlog.contextvars.bound_contextvars(source=source.name):
        await source.run()


def store_settings(config: Config, now_override: int | None = None) -> StoreSettings:
    return StoreSettings(
        retention_seconds=config.dedup.retention_hours * 3600,
        sku_limit=config.labels.sku_limit,
        max_streams=config.labels.max_streams,
        dead_letter_max=config.dead_letters.max_per_stream,
        now_override=now_override,
        timeline_retention_seconds=config.story.timeline_retention_days * 86_400,
        session_idle_seconds=config.story.session_idle_minutes * 60,
    )


def batch_settings(batch: BatchConfig) -> BatchSettings:
    return BatchSettings(
        max_events=batch.max_events,
        max_delay=batch.max_delay_ms / 1000,
        max_in_flight=batch.max_in_flight,
        capacity=batch.buffer_events,
        buffer_bytes=batch.buffer_bytes,
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
        self.catalogs = Catalogs(
            config.catalog_files(),
            on_loaded=self.metrics.catalog_loaded_now,
            on_failed=self.metrics.catalog_failed,
            interval=config.catalogs.reload_interval_seconds,
        )
        self.catalogs.load()
        settings = store_settings(config, now_override)
        self.store = Store(
            self.redis,
            settings,
            legacy=config.dedup.legacy(),
            weigh=self.catalogs.weigh,
            read_comment=self.catalogs.read_comment,
            reads_comments=bool(self.catalogs.files),
        )
        self._scrape_path(settings)
        self.committer = Committer(
            self.store,
            self.metrics,
            batch_settings(config.batch),
            log_interval=config.log.rejection_interval_seconds,
            namespaces={source.name: source.identity_namespace for source in config.sources},
        )
        self.health = SourceHealth(self.metrics, log_interval=config.log.rejection_interval_seconds)
        self.feeds = FeedRecorder(
            self.redis,
            config.story.silent_seconds,
            config.story.timeline_retention_days * 86_400,
        )
        self.health.feeds = self.feeds
        self._reports = asyncio.Semaphore(REPORTS_AT_ONCE)
        self.tls: dict[str, ServerTls] = {}
        """Each TLS listener's certificate, by listener (``http``, a source's name)."""
        http_tls = server_tls(HTTP_LISTENER, config.http.tls, self.health)
        if http_tls is not None:
            self.tls[HTTP_LISTENER] = http_tls
        self.sources = self._build_sources()
        self.on_reload: list[Callable[[], object]] = [self.catalogs.reload]
        """Run in order by :meth:`reload` (on SIGHUP): the catalogs, the TLS certificates, then
        the sources' secrets files (each keeps what it had if its file is refused, and counts
        that)."""
        self.on_reload += [tls.reload for tls in self.tls.values()]
        self.on_reload += [s.reload for s in self.sources if isinstance(s, Reloadable)]
        self.http_port: int | None = None
        self.unflushed = 0
        """Events read but not committed when the shutdown deadline passed (exit status 1)."""
        self.started = asyncio.Event()

    def _scrape_path(self, settings: StoreSettings) -> None:
        """Scrapes and /readyz read through connections of their own, never the commits'."""
        config = self.config
        http = config.http
        self.scrape_redis = redis_client(
            config.redis.url,
            config.redis.socket_timeout,
            config.redis.cluster,
            max_connections=http.scrape_max_connections,
            name=SCRAPE_CLIENT_NAME,
        )
        scrape_settings = dataclasses.replace(
            settings,
            read_concurrency=http.scrape_max_connections - 1,  # one left for /readyz
        )
        self.scrape_store = Store(self.scrape_redis, scrape_settings)
        self.business = SharedRead(
            self._read_business, http.scrape_freshness_seconds, name="http.metrics.read"
        )
        self.health_text = SharedRead(self._render_health, 0.0, name="http.metrics.health")
        self.readiness = SharedRead(self._ping, 0.0, name="http.readyz.ping")
        self._scrape_failures = Throttle(config.log.rejection_interval_seconds)

    def _build_sources(self) -> list[Source]:
        config = self.config
        regions = config.region_table()
        sources: list[Source] = []
        for source in config.sources:
            options = config.native_options(source, regions)
            max_age = (
                config.delivery_max_age(source) if isinstance(source, HttpServerConfig) else None
            )
            tls = None
            if isinstance(source, WebsocketServerConfig | HttpServerConfig):
                tls = server_tls(source.name, source.tls, self.health)
                if tls is not None:
                    self.tls[source.name] = tls
            built = build_source(
                source, options, self.committer, self.health, self.environ, max_age=max_age, tls=tls
            )
            sources.append(built)
            self.metrics.add_source(source.name)
            if isinstance(source, HttpServerConfig):  # at 0, so the first 503 is an increase
                self.metrics.webhook_unavailable.labels(source.name)
        return sources

    async def run(self, stop: asyncio.Event) -> None:
        try:
            try:
                await self.policy.check()
            except UnsafeEvictionPolicy as exc:
                self.refused = exc
                log.error("refusing to start", reason=str(exc))
                return
            async with self._http(), self._listening(), asyncio.TaskGroup() as group:
                watching = [group.create_task(self._watch_policy(stop), name="redis.policy")]
                watching += [
                    group.create_task(tls.watch(), name=f"tls[{listener}].watch")
                    for listener, tls in self.tls.items()
                ]
                catalogs = self._watch_catalogs(group)
                committing = group.create_task(self.committer.run(), name="committer")
                watching.append(group.create_task(self.feeds.run(stop), name="feeds.record"))
                reading = [
                    group.create_task(_read(source), name=f"source[{source.name}].receive")
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
                for task in watching:
                    task.cancel()
                if catalogs is not None:
                    catalogs.cancel()
        finally:
            await self.business.aclose()
            await self.health_text.aclose()
            await self.readiness.aclose()
            await self.scrape_redis.aclose()
            await self.redis.aclose()

    def reload(self) -> None:
        """What SIGHUP does: every hook of :attr:`on_reload`. No await: safe in a signal
        handler."""
        log.info("reloading on SIGHUP", hooks=len(self.on_reload))
        for hook in self.on_reload:
            hook()

    def _watch_catalogs(self, group: asyncio.TaskGroup) -> asyncio.Task[None] | None:
        if not self.catalogs.files or self.config.catalogs.reload_interval_seconds == 0:
            return None
        return group.create_task(self.catalogs.watch(), name="catalogs.watch")

    def _catalog_view(self) -> CatalogView | None:
        streams = self.config.streams
        if not streams:
            return None
        loaded = self.catalogs.loaded()
        return CatalogView(
            {stream: entry.catalog for stream, entry in loaded.items()},
            {s: t.target_grams for s, t in streams.items() if t.target_grams is not None},
            {s: t.low_stock_share for s, t in streams.items() if s in loaded},
        )

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
        bounds = self.config.http.limits()
        self.health.listening(HTTP_LISTENER)
        guard = Guard(
            bounds,
            on_refused=functools.partial(self.health.connection_refused, HTTP_LISTENER),
            on_timeout=functools.partial(self.health.bad_request, HTTP_LISTENER),
            on_rate_limited=functools.partial(self.health.rate_limited, HTTP_LISTENER),
            on_tls=functools.partial(self.health.bad_request, HTTP_LISTENER),
        )
        middlewares: list[Middleware] = [guard.middleware]
        credentials = metrics_credentials(self.config.http, self.environ)
        if credentials is not None:
            paths = {"/metrics"} | (PROBES if self.config.http.protect_probes else set())
            unauthorized = functools.partial(self.health.unauthorized, HTTP_LISTENER)
            middlewares.append(
                credentials.middleware(frozenset(paths), unauthorized, prefixes=(REPORTS,))
            )
        app = web.Application(middlewares=middlewares)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get(REPORTS + "{stream}/report", self._report)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            logger=ServerLog(functools.partial(self.health.bad_request, HTTP_LISTENER)),
            **bounds.runner_options(),
        )
        await runner.setup()
        host, port = split_listen(self.config.http.listen)
        tls = self.tls.get(HTTP_LISTENER)
        site = GuardedSite(runner, host, port, guard, tls.context if tls is not None else None)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ListenError("http.listen", self.config.http.listen, exc) from exc
        self.http_port = int(runner.addresses[0][1])
        try:
            yield
        finally:
            await runner.cleanup()

    @contextlib.asynccontextmanager
    async def _listening(self) -> AsyncIterator[None]:
        """Bind every server source, in order, before anything reports started."""
        bound: list[Listener] = []
        try:
            for index, (config, source) in enumerate(
                zip(self.config.sources, self.sources, strict=True)
            ):
                if not isinstance(config, WebsocketServerConfig | HttpServerConfig):
                    continue
                assert isinstance(source, Listener)
                try:  # its server's callbacks keep this context: source= on their lines
                    with structlog.contextvars.bound_contextvars(source=config.name):
                        await source.bind()
                except OSError as exc:
                    raise ListenError(f"sources[{index}].listen", config.listen, exc) from exc
                bound.append(source)
            yield
        finally:
            for listener in bound:
                await listener.close()

    async def _read_business(self) -> bytes:
        """Every stream's totals, rendered: one read serves every scrape of its window."""
        try:
            raw = await self.scrape_store.raw_totals()
        except READ_ERRORS:
            self.metrics.redis_up.set(0)
            raise
        self.metrics.redis_up.set(1)
        return await asyncio.to_thread(_render_business, raw, self._catalog_view())

    async def _render_health(self) -> bytes:
        """The health metrics, current: scrapes share a rendering only while it runs."""
        return await asyncio.to_thread(generate_latest, self.metrics.registry)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        business = b""
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                business = await self.business.get()
        except (*READ_ERRORS, TimeoutError) as exc:
            self.metrics.scrape_errors.inc()
            self.metrics.redis_up.set(0)
            decision = self._scrape_failures.decide(type(exc).__name__)
            if decision.allowed:
                log.warning(
                    "cannot read totals for a scrape",
                    error=type(exc).__name__,
                    suppressed_since_last=decision.suppressed,
                )
        health = await self.health_text.get()
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
        response.content_length = len(business) + len(health)
        await response.prepare(request)
        view = memoryview(business)  # the shared bytes, written in slices, never copied whole
        for start in range(0, len(view), WRITE_SLICE):
            await response.write(view[start : start + WRITE_SLICE])
        await response.write(health)
        await response.write_eof()
        return response

    async def _report(self, request: web.Request) -> web.Response:
        """``/streams/{stream}/report[?session=N&format=html|json|md]``: the report, read
        through the scrape connections, at most ``REPORTS_AT_ONCE`` at a time, within
        ``REPORT_TIMEOUT``."""
        stream = request.match_info["stream"]
        fmt = request.query.get("format", "html")
        session = request.query.get("session")
        if not STREAM_NAME.fullmatch(stream) or fmt not in FORMATS:
            return web.Response(status=400, text="bad stream or format\n")
        if session is not None and not (session.isdigit() and len(session) < 10):
            return web.Response(status=400, text="bad session\n")
        if self._reports.locked():
            return web.Response(status=429, text="reports busy, retry\n")
        async with self._reports:
            try:
                async with asyncio.timeout(REPORT_TIMEOUT):
                    report = await build(
                        self.scrape_redis,
                        stream,
                        int(session) if session is not None else None,
                        idle_seconds=self.config.story.session_idle_minutes * 60,
                        utc_offset=self.config.story.report_utc_offset_minutes,
                    )
                    body = await asyncio.to_thread(render, report, fmt)
            except ReportError as exc:
                return web.Response(status=404, text=f"{exc}\n")
            except (*READ_ERRORS, TimeoutError):
                return web.Response(status=503, text="redis unreachable\n")
        return web.Response(body=body, content_type=REPORT_TYPES[fmt], charset="utf-8")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _ping(self) -> None:
        await self.scrape_redis.ping()

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(1.0):
                await self.readiness.get()
        except (*READ_ERRORS, TimeoutError):
            return web.Response(status=503, text="redis unreachable\n")
        return web.Response(text="ready\n")
