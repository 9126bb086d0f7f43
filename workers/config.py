"""Configuration: TOML plus environment overrides, validated once into frozen objects.

Every problem is reported at once with where it is (``sources[1].url: ...``). Environment:
``REDIS_URL`` sets ``redis.url``; ``LIVESTREAM__<SECTION>__<KEY>`` sets any key, with list
indexes as numbers (``LIVESTREAM__SOURCES__0__URL``); values are read as TOML values when they
parse as one (``5``, ``true``, ``["a"]``), else as strings. Secrets are named by ``*_env`` keys and
read from the environment, never from the file.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ingest.adapter import FormatOptions
from ingest.catalog import CatalogError
from ingest.native import PLATFORM_PATTERN, STREAM_PATTERN
from ingest.regions import DEFAULT_TABLES, RegionTable
from ingest.sources import tls as tls_files
from ingest.sources.admission import RateLimits
from ingest.sources.base import split_address
from ingest.sources.eventsub import EventSubSettings
from ingest.sources.facebook import FacebookSettings, read_page_token
from ingest.sources.http import Limits
from ingest.sources.mqtt import MqttSettings
from ingest.sources.tls import TlsError, TlsSettings
from ingest.sources.tokens import TokensError, read_tokens
from ingest.sources.topics import TopicPattern
from ingest.sources.twitch_auth import RefreshSettings
from ingest.sources.webhook import ShopifyWebhookSettings, read_secrets
from ingest.sources.websocket import (
    HANDSHAKE_RATES,
    WebsocketClientSettings,
    WebsocketServerSettings,
)
from ingest.sources.youtube import YouTubeSettings
from workers.catalogs import CatalogFile
from workers.catalogs import read as read_catalog
from workers.store import Legacy

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    Settings = TypeVar("Settings", bound=DataclassInstance)

ENV_PREFIX = "LIVESTREAM__"
DEFAULT_PLATFORMS = (
    "tiktok",
    "facebook",
    "youtube",
    "shopee",
    "lazada",
    "twitch",
    "zalo",
    "instagram",
    "kick",
    "shopify",
    "website",
)


class ConfigError(Exception):
    """Invalid configuration; ``errors`` lists every problem as "location: message"."""

    def __init__(self, source: str, errors: list[str]) -> None:
        super().__init__(f"{source}: {len(errors)} error(s)\n" + "\n".join(errors))
        self.source = source
        self.errors = errors


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def settings(self, kind: type[Settings], **given: Any) -> Settings:
        """This table as a transport's settings: every field the two share by name, then
        ``given`` (what the table names otherwise, and secrets the runtime resolved)."""
        shared = {field.name for field in dataclasses.fields(kind)} & type(self).model_fields.keys()
        values = {name: getattr(self, name) for name in shared - given.keys()}
        return kind(**values, **given)


def _default(kind: type[DataclassInstance], name: str, **constraints: Any) -> Any:
    """A field whose default is the one the transport's settings ``kind`` declare."""
    field = next(field for field in dataclasses.fields(kind) if field.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return Field(default_factory=field.default_factory, **constraints)
    return Field(field.default, **constraints)


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected host:port, got {value!r}")
    return value


split_listen = split_address


def _reuse_port(value: bool) -> bool:
    if value and not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("this system has no SO_REUSEPORT (Linux has)")
    return value


class RedisConfig(_Model):
    url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False
    """``url`` names one node of a Redis Cluster; the others are discovered."""
    socket_timeout: float = Field(5.0, gt=0)
    eviction_policy_check: Literal["refuse", "warn"] = "refuse"
    """Redis may evict the dedup sets (maxmemory-policy not noeviction): refuse to start (and
    stop if it changes), or run and report it (metric, error log, alert)."""
    policy_check_interval: float = Field(15.0, ge=1, le=3600)
    """Seconds between reads of the eviction policy and memory (INFO memory)."""

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


def _rate_fields(defaults: RateLimits) -> dict[str, Any]:
    """The rate-limit keys of a listener, with ``defaults``."""
    return {
        "requests_per_second": Field(defaults.per_second, gt=0, le=1e6),
        "requests_burst": Field(defaults.burst, ge=1, le=10**6),
        "client_requests_per_second": Field(defaults.client_per_second, gt=0, le=1e6),
        "client_requests_burst": Field(defaults.client_burst, ge=1, le=10**6),
        "max_tracked_clients": Field(defaults.max_clients, ge=1, le=10**6),
    }


class RateLimitConfig(_Model):
    """Requests (websocket handshakes) a listener takes, in all and per client address, and
    its connection caps (``ingest.sources.admission``). Subclasses set their own defaults."""

    requests_per_second: float
    """Requests taken per second on average, from all clients together; then 429."""
    requests_burst: int
    """Requests taken at once, from all clients together."""
    client_requests_per_second: float
    """Requests taken per second on average from one client address (IPv6: its /64)."""
    client_requests_burst: int
    """Requests taken at once from one client address."""
    max_tracked_clients: int
    """Client addresses whose rate is remembered; the one unseen longest is forgotten first."""
    max_connections: int
    max_connections_per_client: int
    """Above ``max_connections`` it is no further bound."""

    def rate_limits(self) -> RateLimits:
        return RateLimits(
            per_second=self.requests_per_second,
            burst=self.requests_burst,
            client_per_second=self.client_requests_per_second,
            client_burst=self.client_requests_burst,
            max_clients=self.max_tracked_clients,
        )


_WEBHOOK_RATES = Limits().rates


class ListenerLimits(RateLimitConfig):
    """Bounds of a listener that any client can reach (``ingest.sources.http.Limits``)."""

    max_connections: int = _default(Limits, "max_connections", ge=1, le=65536)
    """Connections open at once; one more is closed at once and counted."""
    max_connections_per_client: int = _default(Limits, "max_connections_per_client", ge=1, le=65536)
    """Connections open at once from one client address; one more is closed and counted."""
    header_timeout_seconds: float = _default(Limits, "header_timeout", gt=0, le=600)
    """A request head must arrive within this of the connection (or of the keep-alive time
    after the previous answer), else the connection is closed."""
    body_timeout_seconds: float = _default(Limits, "body_timeout", gt=0, le=600)
    """A request body must arrive within this, else 408 (an unread one is drained for at most
    this, or 10 s)."""
    keepalive_timeout_seconds: float = _default(Limits, "keepalive_timeout", gt=0, le=3600)
    """An idle connection is closed after this."""
    requests_per_second: float = _rate_fields(_WEBHOOK_RATES)["requests_per_second"]
    requests_burst: int = _rate_fields(_WEBHOOK_RATES)["requests_burst"]
    client_requests_per_second: float = _rate_fields(_WEBHOOK_RATES)["client_requests_per_second"]
    client_requests_burst: int = _rate_fields(_WEBHOOK_RATES)["client_requests_burst"]
    max_tracked_clients: int = _rate_fields(_WEBHOOK_RATES)["max_tracked_clients"]

    def limits(self) -> Limits:
        return Limits(
            max_connections=self.max_connections,
            max_connections_per_client=self.max_connections_per_client,
            header_timeout=self.header_timeout_seconds,
            body_timeout=self.body_timeout_seconds,
            keepalive_timeout=self.keepalive_timeout_seconds,
            rates=self.rate_limits(),
        )


METRICS_RATES = RateLimits(per_second=200.0, burst=400, client_per_second=100.0, client_burst=200)
"""``[http]``: Prometheus scrapes every few seconds; a scrape within the freshness window costs
no Redis read, so these only stop a flood."""


class TlsConfig(_Model):
    """A listener's TLS (``ingest.sources.tls``); the files must load when the config does."""

    cert_file: Annotated[str, Field(min_length=1)]
    """PEM: the listener's certificate, then any intermediates."""
    key_file: Annotated[str, Field(min_length=1)]
    """PEM, unencrypted."""
    client_ca_file: Annotated[str, Field(min_length=1)] | None = None
    """PEM CAs; set, every client must present a certificate one of them signed (mutual TLS)."""
    min_version: Literal["1.2", "1.3"] = _default(TlsSettings, "min_version")
    reload_interval_seconds: float = _default(TlsSettings, "reload_interval", ge=0, le=86400)
    """Seconds between looks at the files (modification time, size); a change loads them
    again. 0: only on SIGHUP."""

    def tls(self) -> TlsSettings:
        return TlsSettings(
            cert_file=self.cert_file,
            key_file=self.key_file,
            client_ca_file=self.client_ca_file,
            min_version=self.min_version,
            reload_interval=self.reload_interval_seconds,
        )

    @model_validator(mode="after")
    def _loads(self) -> TlsConfig:
        try:
            tls_files.load(self.tls())
        except TlsError as exc:
            raise ValueError("; ".join(exc.problems)) from exc
        return self


class HttpConfig(ListenerLimits):
    listen: Annotated[str, Field(description="host:port of /metrics, /healthz, /readyz")] = (
        "127.0.0.1:9464"
    )
    tls: TlsConfig | None = None
    metrics_token_env: str | None = None
    """Environment variable holding the token /metrics requires (``Authorization: Bearer``)."""
    metrics_username: Annotated[str, Field(pattern=r"^[^:\s]{1,64}$")] | None = None
    """With ``metrics_password_env``: the user /metrics requires (HTTP basic authentication)."""
    metrics_password_env: str | None = None
    protect_probes: bool = False
    """Whether /healthz and /readyz require the credentials of /metrics too (orchestrators'
    probes usually cannot send any: open by default, they tell nothing but up and ready)."""
    max_connections: int = Field(32, ge=1, le=65536)
    max_connections_per_client: int = Field(8, ge=1, le=65536)
    requests_per_second: float = _rate_fields(METRICS_RATES)["requests_per_second"]
    requests_burst: int = _rate_fields(METRICS_RATES)["requests_burst"]
    client_requests_per_second: float = _rate_fields(METRICS_RATES)["client_requests_per_second"]
    client_requests_burst: int = _rate_fields(METRICS_RATES)["client_requests_burst"]
    scrape_freshness_seconds: float = Field(1.0, gt=0, le=1.0)
    """Business totals read for a scrape answer every scrape for this long."""
    scrape_max_connections: int = Field(2, ge=2, le=64)
    """Redis connections (per node of a cluster) for /metrics and /readyz, apart from commits."""
    _check = field_validator("listen")(lambda cls, v: _listen(v))

    @model_validator(mode="after")
    def _auth(self) -> HttpConfig:
        if (self.metrics_username is None) != (self.metrics_password_env is None):
            raise ValueError("metrics_username and metrics_password_env go together")
        if self.metrics_token_env is not None and self.metrics_username is not None:
            raise ValueError("metrics_token_env or metrics_username: one scheme, not both")
        if self.protect_probes and self.metrics_token_env is None and not self.metrics_username:
            raise ValueError("protect_probes needs metrics_token_env or metrics_username")
        return self


class DedupConfig(_Model):
    retention_hours: int = Field(48, ge=1, le=24 * 90)
    legacy_identities: bool = True
    """In the upgrade window, an event is also a duplicate if it was seen under its identity
    without namespace (as versions before namespaces wrote it)."""
    legacy_orders: bool = True
    """In the upgrade window, orders created before the upgrade can be cancelled (by any source:
    their state has no namespace). False closes that at once; their cancellations then wait for
    an order that never comes again."""

    def legacy(self) -> Legacy:
        return Legacy(identities=self.legacy_identities, orders=self.legacy_orders)


class StoryConfig(_Model):
    """The sale's story (``[story]``): timeline, sessions, feed gaps and the report."""

    timeline_retention_days: int = Field(30, ge=1, le=3660)
    """How long the per-minute timeline of a day is kept after the day ends."""
    session_idle_minutes: int = Field(30, ge=1, le=7 * 24 * 60)
    """A session with no event for this long has ended (how: "idle")."""
    report_utc_offset_minutes: int = Field(0, ge=-12 * 60, le=14 * 60)
    """The time zone of the report's times, as minutes east of UTC (Vietnam: 420)."""
    silent_seconds: int = Field(60, ge=1, le=24 * 3600)
    """A connected source that received no frame for this long is silent: a gap, unless
    another replica's same source received meanwhile."""


class BatchConfig(_Model):
    max_events: int = Field(1000, ge=1, le=20_000)
    max_delay_ms: float = Field(5.0, ge=0, le=1000)
    max_in_flight: int = Field(2, ge=1, le=16)
    buffer_events: int = Field(50_000, ge=1)
    buffer_bytes: int = Field(64 * 1024 * 1024, ge=64 * 1024)


class LabelsConfig(_Model):
    platforms: tuple[Annotated[str, Field(pattern=PLATFORM_PATTERN)], ...] = DEFAULT_PLATFORMS
    sku_limit: int = Field(200, ge=1, le=10_000)
    max_streams: int = Field(1000, ge=1, le=100_000)


class DeadLetterConfig(_Model):
    max_per_stream: int = Field(10_000, ge=1)


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["logfmt", "json"] = "logfmt"
    rejection_interval_seconds: float = Field(10.0, ge=0)


PATH_PATTERN = r"^/[A-Za-z0-9/_.-]*$"
SHOP_DOMAIN_PATTERN = r"^[a-z0-9][a-z0-9-]{0,99}\.myshopify\.com$"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.:-]{0,63}$"
StreamName = Annotated[str, Field(pattern=STREAM_PATTERN)]


class CatalogConfig(_Model):
    reload_interval_seconds: float = Field(2.0, ge=0, le=3600)
    """Seconds between checks of the catalog files for a change (0: only on SIGHUP)."""


class StreamConfig(_Model):
    """What the ingester knows of one stream ahead of the sale (``[streams.<stream>]``)."""

    catalog: str | None = None
    """The stream's catalog file, TOML or (``.csv``) CSV; relative to the config file."""
    target_grams: int | None = Field(None, ge=1, le=10**15)
    """What the sale means to sell (``livestream_target_grams``)."""
    low_stock_share: float = Field(0.1, gt=0, lt=1)
    """A SKU with less than this share of its stock left is low (LivestreamSkuLowStock)."""


class _SourceBase(_Model):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    namespace: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None
    """Identity namespace: dedup identities and order state are kept per namespace, so a
    source can neither claim nor cancel another's. Default: the source's name. Sources that
    are redundant copies of one feed share one to dedup each other."""
    stream: StreamName | None = None
    streams: tuple[StreamName, ...] | None = None
    max_frame_bytes: int = _default(FormatOptions, "max_frame_bytes", ge=64, le=64 * 1024 * 1024)
    max_events_per_frame: int = _default(FormatOptions, "max_events_per_frame", ge=1, le=100_000)

    @property
    def identity_namespace(self) -> str:
        return self.namespace or self.name

    @model_validator(mode="after")
    def _default_allowed(self) -> _SourceBase:
        if self.streams is not None and self.stream is not None and self.stream not in self.streams:
            raise ValueError(f"stream {self.stream!r} is not in streams")
        return self


def _needs_stream(source: WebsocketClientConfig | HttpServerConfig | HttpClientConfig) -> None:
    if source.format != "native" and source.stream is None:
        raise ValueError(f"format {source.format!r} needs a stream: its frames name none")


class TwitchConfig(_Model):
    """Twitch EventSub: the Helix API that creates the subscriptions, and what to subscribe to.

    The Helix token is either static (``token_env``) or refreshed (``refresh_token_env``, with
    ``client_secret_env`` unless the app is a public client)."""

    client_id: Annotated[str, Field(min_length=1)]
    token_env: str | None = None
    """Environment variable holding an access token (user token with the user:read:chat scope)
    kept valid outside the ingester: used as is."""
    refresh_token_env: str | None = None
    """Environment variable holding a refresh token: the ingester gets access tokens with it
    and refreshes them before they expire."""
    client_secret_env: str | None = None
    """Environment variable holding the app's client secret (none for a public client)."""
    refresh_token_file: str | None = None
    """File holding the latest refresh token: read at start when it exists (it then wins over
    ``refresh_token_env``), rewritten (mode 0600) when Twitch rotates the refresh token."""
    oauth_url: Annotated[str, Field(pattern=r"^https?://")] = _default(RefreshSettings, "oauth_url")
    """Twitch's OAuth server: ``<oauth_url>/token`` and ``<oauth_url>/validate``."""
    refresh_margin_seconds: float = _default(RefreshSettings, "refresh_margin", gt=0, le=86400)
    """Refresh once less than max(10 % of the lifetime, this) is left (at most half of it)."""
    broadcaster_user_id: Annotated[str, Field(pattern=r"^[0-9]{1,32}$")]
    user_id: Annotated[str, Field(pattern=r"^[0-9]{1,32}$")]
    """The user reading the chat (the token's user)."""
    helix_url: Annotated[str, Field(pattern=r"^https?://")] = "https://api.twitch.tv/helix"
    keepalive_margin_seconds: float = _default(EventSubSettings, "keepalive_margin", ge=0, le=60)

    @model_validator(mode="after")
    def _one_token(self) -> TwitchConfig:
        if (self.token_env is None) == (self.refresh_token_env is None):
            raise ValueError("set one of token_env (static) and refresh_token_env (refreshed)")
        if self.token_env is not None and (
            self.client_secret_env is not None or self.refresh_token_file is not None
        ):
            raise ValueError("client_secret_env and refresh_token_file go with refresh_token_env")
        return self


class WebsocketClientConfig(_SourceBase):
    type: Literal["websocket-client"]
    format: Literal["native", "twitch-eventsub", "socialstream"] = "native"
    url: Annotated[str, Field(pattern=r"^wss?://")]
    transport: Literal["websockets", "picows"] = "websockets"
    """The websocket library reading the frames; picows parses them in C (README)."""
    twitch: TwitchConfig | None = None
    subscribe: str | None = _default(WebsocketClientSettings, "subscribe")
    headers: dict[str, str] = _default(WebsocketClientSettings, "headers")
    token_env: str | None = None
    ping_interval: float | None = _default(WebsocketClientSettings, "ping_interval", gt=0)
    ping_timeout: float | None = _default(WebsocketClientSettings, "ping_timeout", gt=0)
    open_timeout: float = _default(WebsocketClientSettings, "open_timeout", gt=0)
    close_timeout: float = _default(WebsocketClientSettings, "close_timeout", gt=0)
    max_size: int = _default(WebsocketClientSettings, "max_size", ge=1024)
    backoff_initial: float = _default(WebsocketClientSettings, "backoff_initial", gt=0)
    backoff_max: float = _default(WebsocketClientSettings, "backoff_max", gt=0)
    backoff_reset_after: float = _default(WebsocketClientSettings, "backoff_reset_after", ge=0)

    @model_validator(mode="after")
    def _sizes(self) -> WebsocketClientConfig:
        if self.max_size < self.max_frame_bytes:
            raise ValueError("max_size (connection limit) must be >= max_frame_bytes")
        _needs_stream(self)
        if (self.format == "twitch-eventsub") != (self.twitch is not None):
            raise ValueError("format 'twitch-eventsub' and a [twitch] table go together")
        if self.format == "twitch-eventsub" and (self.subscribe or self.token_env):
            raise ValueError("twitch-eventsub sends nothing: no subscribe, no token_env")
        if self.format == "twitch-eventsub" and self.transport != "websockets":
            raise ValueError("twitch-eventsub reads through websockets: no transport")
        return self


class FacebookConfig(_Model):
    """Facebook Live comments: which live video, read how (``sse`` or ``poll``), and where."""

    live_video_id: Annotated[str, Field(pattern=r"^[0-9]{1,32}$")]
    mode: Literal["sse", "poll"] = _default(FacebookSettings, "mode")
    comment_rate: Literal["one_per_two_seconds", "ten_per_second"] = _default(
        FacebookSettings, "comment_rate"
    )
    """The SSE stream's most comments a second (above it Facebook picks the "best" ones)."""
    live_filter: Literal["no_filter", "filter_low_quality"] = _default(
        FacebookSettings, "live_filter"
    )
    """Polling: every comment (``no_filter``), or without those Facebook rates low quality."""
    api_version: Annotated[str, Field(pattern=r"^v[0-9]{1,3}\.[0-9]{1,2}$")] = _default(
        FacebookSettings, "api_version"
    )
    graph_url: Annotated[str, Field(pattern=r"^https?://")] = _default(
        FacebookSettings, "graph_url"
    )
    streaming_url: Annotated[str, Field(pattern=r"^https?://")] = _default(
        FacebookSettings, "streaming_url"
    )
    poll_interval_seconds: float = _default(FacebookSettings, "poll_interval", ge=0.01, le=600)
    page_limit: int = _default(FacebookSettings, "page_limit", ge=1, le=100)
    read_timeout_seconds: float = _default(FacebookSettings, "read_timeout", gt=0, le=3600)
    """An SSE stream silent for this long is dropped and opened again."""
    request_timeout_seconds: float = _default(FacebookSettings, "request_timeout", gt=0, le=300)
    status_interval_seconds: float = _default(FacebookSettings, "status_interval", gt=0, le=3600)
    """Polling: seconds between reads of the live video's status while no comment comes."""


class HttpClientConfig(_SourceBase):
    """A platform's HTTP API, read by the ingester (Facebook Live comments)."""

    type: Literal["http-client"]
    format: Literal["facebook-live"] = "facebook-live"
    facebook: FacebookConfig
    token_env: str | None = None
    """Environment variable holding the page access token (rotated by a restart)."""
    token_file: str | None = None
    """Instead: a file holding the token, read again on SIGHUP and when it changes."""
    token_poll_seconds: float = Field(2.0, gt=0, le=3600)
    open_timeout: float = _default(FacebookSettings, "open_timeout", gt=0, le=300)
    backoff_initial: float = _default(FacebookSettings, "backoff_initial", gt=0)
    backoff_max: float = _default(FacebookSettings, "backoff_max", gt=0)
    backoff_reset_after: float = _default(FacebookSettings, "backoff_reset_after", ge=0)

    @model_validator(mode="after")
    def _stream(self) -> HttpClientConfig:
        _needs_stream(self)
        return self


class YouTubeConfig(_Model):
    """YouTube Live chat: which chat, and the OAuth token the Data API takes.

    The chat is ``live_chat_id``, or the active chat of the broadcast ``video_id``. The token is
    static (``token_env``) or refreshed (``refresh_token_env`` with ``client_id`` and
    ``client_secret_env``) from Google's OAuth server."""

    live_chat_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,256}$")] | None = None
    video_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    token_env: str | None = None
    """Environment variable holding an access token kept valid outside the ingester."""
    refresh_token_env: str | None = None
    """Environment variable holding a refresh token: access tokens (an hour each) are got with
    it and refreshed before they expire."""
    client_id: Annotated[str, Field(min_length=1)] | None = None
    client_secret_env: str | None = None
    refresh_token_file: str | None = None
    """File holding the latest refresh token: read at start when it exists, rewritten (0600) if
    the OAuth server rotates it."""
    oauth_url: Annotated[str, Field(pattern=r"^https?://")] = "https://oauth2.googleapis.com"
    """Google's OAuth server: ``<oauth_url>/token``."""
    refresh_margin_seconds: float = _default(RefreshSettings, "refresh_margin", gt=0, le=86400)
    api_url: Annotated[str, Field(pattern=r"^https?://")] = _default(YouTubeSettings, "api_url")
    max_results: int = Field(500, ge=200, le=2000)
    """``maxResults`` of each poll (the API takes 200 to 2000; its default is 500)."""
    min_poll_interval_seconds: float = _default(
        YouTubeSettings, "min_poll_interval", ge=0.01, le=600
    )
    quota_probe_interval_seconds: float = _default(
        YouTubeSettings, "quota_probe_interval", ge=0.01, le=86400
    )
    max_page_bytes: int = _default(YouTubeSettings, "max_page_bytes", ge=64 * 1024, le=64 << 20)
    transport: Literal["poll", "stream"] = "poll"
    """``poll``: ``liveChatMessages.list`` at the server's interval; ``stream``:
    ``liveChatMessages.streamList`` over HTTP/JSON (messages as they come, one connection)."""
    stream_idle_timeout_seconds: float = _default(
        YouTubeSettings, "stream_idle_timeout", gt=0, le=3600
    )

    @model_validator(mode="after")
    def _consistent(self) -> YouTubeConfig:
        if (self.live_chat_id is None) == (self.video_id is None):
            raise ValueError("set one of live_chat_id and video_id")
        if (self.token_env is None) == (self.refresh_token_env is None):
            raise ValueError("set one of token_env (static) and refresh_token_env (refreshed)")
        if self.refresh_token_env is not None and self.client_id is None:
            raise ValueError("refresh_token_env needs client_id")
        if self.token_env is not None and (
            self.client_secret_env is not None or self.refresh_token_file is not None
        ):
            raise ValueError("client_secret_env and refresh_token_file go with refresh_token_env")
        return self


class HttpPollConfig(_SourceBase):
    """A platform API polled over HTTPS (YouTube Live chat)."""

    type: Literal["http-poll"]
    format: Literal["youtube-livechat"] = "youtube-livechat"
    youtube: YouTubeConfig
    request_timeout: float = _default(YouTubeSettings, "request_timeout", gt=0, le=300)
    backoff_initial: float = _default(YouTubeSettings, "backoff_initial", gt=0)
    backoff_max: float = _default(YouTubeSettings, "backoff_max", gt=0)
    backoff_reset_after: float = _default(YouTubeSettings, "backoff_reset_after", ge=0)

    @model_validator(mode="after")
    def _stream(self) -> HttpPollConfig:
        if self.stream is None:
            raise ValueError(f"format {self.format!r} needs a stream: its pages name none")
        return self


class HttpServerConfig(_SourceBase, ListenerLimits):
    """Webhook deliveries by HTTP POST (Shopify)."""

    type: Literal["http-server"]
    format: Literal["shopify"] = "shopify"
    listen: str = _default(ShopifyWebhookSettings, "listen")
    path: str = _default(ShopifyWebhookSettings, "path", pattern=PATH_PATTERN)
    secret_env: str | None = None
    """Environment variable holding the app's client secret, which signs every delivery."""
    previous_secret_env: str | None = None
    """Environment variable holding the secret being rotated out: a delivery signed by either
    is accepted (``livestream_ingest_webhook_signatures_total{secret}`` tells which)."""
    secrets_file: str | None = None
    """Instead of the variables: a file of ``current <secret>`` and ``previous <secret>``
    lines, read again on SIGHUP and when it changes."""
    secrets_poll_seconds: float = _default(
        ShopifyWebhookSettings, "secrets_poll_seconds", gt=0, le=3600
    )
    shop_domains: tuple[Annotated[str, Field(pattern=SHOP_DOMAIN_PATTERN)], ...] = ()
    """``X-Shopify-Shop-Domain`` values accepted (403 for another shop); empty: any."""
    refuse_stale_deliveries: bool = False
    """Refuse (200, dead-lettered as ``stale_delivery``) a delivery whose
    ``X-Shopify-Triggered-At`` is older than ``max_delivery_age_hours``."""
    max_delivery_age_hours: float | None = Field(None, gt=0)
    """Default: ``[dedup] retention_hours``; at most that."""
    max_body_bytes: int = _default(
        ShopifyWebhookSettings, "max_body_bytes", ge=1024, le=64 * 1024 * 1024
    )
    """Larger deliveries are refused (413); for this source it replaces ``max_frame_bytes``."""
    commit_timeout_seconds: float = _default(ShopifyWebhookSettings, "commit_timeout", gt=0, le=60)
    tls: TlsConfig | None = None
    """Answer 503 (Shopify delivers again) if a delivery is not committed by then; Shopify
    itself gives up on an answer after 5 s."""
    reuse_port: bool = _default(ShopifyWebhookSettings, "reuse_port")
    """Listen with SO_REUSEPORT: processes that all do so on one ``listen`` address share it,
    and the kernel spreads new connections over them; the bounds above are each process's."""
    _check = field_validator("listen")(lambda cls, v: _listen(v))
    _reuse = field_validator("reuse_port")(lambda cls, v: _reuse_port(v))

    @model_validator(mode="after")
    def _stream(self) -> HttpServerConfig:
        _needs_stream(self)
        return self


class WebsocketServerConfig(_SourceBase, RateLimitConfig):
    """Producers push over websocket; the rate limits count opening handshakes."""

    type: Literal["websocket-server"]
    format: Literal["native"] = "native"
    listen: str = _default(WebsocketServerSettings, "listen")
    path: str = _default(WebsocketServerSettings, "path", pattern=PATH_PATTERN)
    token_env: str | None = None
    """Environment variable holding the one token (producer ``env``)."""
    tokens_file: str | None = None
    """A file of ``<producer> <token>`` lines, read again on SIGHUP and when it changes."""
    tokens_poll_seconds: float = _default(
        WebsocketServerSettings, "tokens_poll_seconds", gt=0, le=3600
    )
    max_size: int = _default(WebsocketServerSettings, "max_size", ge=1024)
    ping_interval: float | None = _default(WebsocketServerSettings, "ping_interval", gt=0)
    ping_timeout: float | None = _default(WebsocketServerSettings, "ping_timeout", gt=0)
    open_timeout: float = _default(WebsocketServerSettings, "open_timeout", gt=0, le=600)
    """The opening handshake must finish within this of the connection, else it is dropped."""
    max_connections: int = _default(WebsocketServerSettings, "max_connections", ge=1, le=65536)
    max_connections_per_client: int = _default(
        WebsocketServerSettings, "max_connections_per_client", ge=1, le=65536
    )
    requests_per_second: float = _rate_fields(HANDSHAKE_RATES)["requests_per_second"]
    requests_burst: int = _rate_fields(HANDSHAKE_RATES)["requests_burst"]
    client_requests_per_second: float = _rate_fields(HANDSHAKE_RATES)["client_requests_per_second"]
    client_requests_burst: int = _rate_fields(HANDSHAKE_RATES)["client_requests_burst"]
    max_tracked_clients: int = _rate_fields(HANDSHAKE_RATES)["max_tracked_clients"]
    tls: TlsConfig | None = None
    reuse_port: bool = _default(WebsocketServerSettings, "reuse_port")
    """Listen with SO_REUSEPORT: processes that all do so on one ``listen`` address share it,
    and the kernel spreads new connections over them; the bounds above are each process's."""
    _check = field_validator("listen")(lambda cls, v: _listen(v))
    _reuse = field_validator("reuse_port")(lambda cls, v: _reuse_port(v))


class MqttTopicConfig(_Model):
    pattern: Annotated[
        str, Field(min_length=1, description="topic filter; a {stream} level names the stream")
    ]
    format: Literal["native"] = "native"

    @field_validator("pattern")
    @classmethod
    def _levels(cls, value: str) -> str:
        TopicPattern(value)  # raises ValueError with the reason
        return value


class MqttConfig(_SourceBase):
    type: Literal["mqtt"]
    format: Literal["native"] = "native"
    url: Annotated[str, Field(pattern=r"^mqtts?://[^/]+$")] = _default(MqttSettings, "url")
    client_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
    protocol: Literal["5", "3.1.1"] = _default(MqttSettings, "protocol")
    qos: Literal[0, 1] = _default(MqttSettings, "qos")
    topics: Annotated[list[MqttTopicConfig], Field(min_length=1)]
    shared_group: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] | None = None
    username: str | None = None
    password_env: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    session_expiry: int = _default(MqttSettings, "session_expiry", ge=0)
    receive_maximum: int = _default(MqttSettings, "receive_maximum", ge=1, le=65_535)
    keepalive: int = _default(MqttSettings, "keepalive", ge=5)
    backoff_initial: float = _default(MqttSettings, "backoff_initial", gt=0)
    backoff_max: float = _default(MqttSettings, "backoff_max", gt=0)
    backoff_reset_after: float = _default(MqttSettings, "backoff_reset_after", ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> MqttConfig:
        if self.cert_file is not None and not self.url.startswith("mqtts://"):
            raise ValueError("cert_file needs an mqtts:// url")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.shared_group is not None and self.protocol != "5":
            raise ValueError("shared_group needs protocol 5")
        return self


SourceConfig = Annotated[
    WebsocketClientConfig
    | WebsocketServerConfig
    | MqttConfig
    | HttpServerConfig
    | HttpClientConfig
    | HttpPollConfig,
    Field(discriminator="type"),
]


class Config(_Model):
    redis: RedisConfig = RedisConfig()
    http: HttpConfig = HttpConfig()
    dedup: DedupConfig = DedupConfig()
    batch: BatchConfig = BatchConfig()
    story: StoryConfig = StoryConfig()
    labels: LabelsConfig = LabelsConfig()
    dead_letters: DeadLetterConfig = DeadLetterConfig()
    log: LogConfig = LogConfig()
    catalogs: CatalogConfig = CatalogConfig()
    streams: dict[StreamName, StreamConfig] = {}
    regions: dict[
        Annotated[str, Field(pattern=r"^[A-Z]{2}$")],
        dict[Annotated[str, Field(pattern=r"^[^|]{1,64}$")], list[str]],
    ] = {}
    sources: list[SourceConfig] = []

    def delivery_max_age(self, source: HttpServerConfig) -> float | None:
        """Seconds after which a delivery of ``source`` is stale, or None if none is."""
        if not source.refuse_stale_deliveries:
            return None
        hours = source.max_delivery_age_hours or self.dedup.retention_hours
        return hours * 3600.0

    def catalog_files(self) -> list[CatalogFile]:
        return [
            CatalogFile(stream, Path(table.catalog), self.labels.sku_limit)
            for stream, table in self.streams.items()
            if table.catalog is not None
        ]

    def region_table(self) -> RegionTable:
        return RegionTable(DEFAULT_TABLES).merged(self.regions)

    def native_options(self, source: _SourceBase, regions: RegionTable) -> FormatOptions:
        return FormatOptions(
            default_stream=source.stream,
            allowed_streams=frozenset(source.streams) if source.streams is not None else None,
            platforms=frozenset(self.labels.platforms),
            max_frame_bytes=source.max_frame_bytes,
            max_events_per_frame=source.max_events_per_frame,
            regions=regions,
        )


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply(data: Any, path: list[str], value: Any) -> Any:
    head, rest = path[0], path[1:]
    if isinstance(data, list) and head.isdigit():
        index = int(head)
        while len(data) <= index:
            data.append({})
        data[index] = _apply(data[index], rest, value) if rest else value
        return data
    if not isinstance(data, dict):
        data = {}
    key = head.lower()
    data[key] = (
        _apply(data.get(key, [] if rest and rest[0].isdigit() else {}), rest, value)
        if rest
        else value
    )
    return data


def apply_environment(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``LIVESTREAM__...`` variables and ``REDIS_URL`` on the parsed file."""
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            _apply(data, name[len(ENV_PREFIX) :].split("__"), _env_value(environ[name]))
    if environ.get("REDIS_URL") and f"{ENV_PREFIX}REDIS__URL" not in environ:
        _apply(data, ["redis", "url"], environ["REDIS_URL"])
    return data


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in (
            "websocket-client",
            "websocket-server",
            "mqtt",
            "http-server",
            "http-client",
            "http-poll",
        ) or re.fullmatch(r"function-.*", part):
            continue
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


MIN_SECRET_BYTES = 16
"""Shortest token, password or signing secret taken from the environment (UTF-8 bytes)."""


SECRET_KEYS = (
    "token_env",
    "password_env",
    "secret_env",
    "previous_secret_env",
    "refresh_token_env",
    "client_secret_env",
    "metrics_token_env",
    "metrics_password_env",
)
"""Keys naming an environment variable that holds a secret, in any table below."""


def _weakness(secret: str) -> str | None:
    """Why a secret from the environment is unfit, or None. Its value is never shown."""
    if secret != secret.strip():
        return "starts or ends with whitespace"
    if len(secret.encode("utf-8", "surrogateescape")) < MIN_SECRET_BYTES:
        return f"shorter than {MIN_SECRET_BYTES} bytes"
    return None


def _secret_tables(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Each table that may name secrets, with its location: ``http``, each source, its twitch."""
    http = data.get("http")
    tables = [("http.", http)] if isinstance(http, dict) else []
    sources = data.get("sources")
    for index, source in enumerate(sources if isinstance(sources, list) else []):
        if not isinstance(source, dict):
            continue
        tables.append((f"sources[{index}].", source))
        for platform in ("twitch", "youtube"):
            table = source.get(platform)
            if isinstance(table, dict):
                tables.append((f"sources[{index}].{platform}.", table))
    return tables


def _secrets(data: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Checked on the raw data, so a missing or weak secret is reported along with every field
    error."""
    errors = []
    for where, table in _secret_tables(data):
        for key in SECRET_KEYS:
            name = table.get(key)
            if not isinstance(name, str):
                continue
            location = f"{where}{key}"
            secret = environ.get(name)
            if not secret:
                errors.append(f"{location}: environment variable {name} is not set")
            elif (weakness := _weakness(secret)) is not None:
                errors.append(f"{location}: environment variable {name} is {weakness}")
    sources = data.get("sources")
    for index, source in enumerate(sources if isinstance(sources, list) else []):
        if isinstance(source, dict):
            errors.extend(_secrets_files(source, index))
    return errors


def _secrets_files(source: dict[str, Any], index: int) -> list[str]:
    """Every problem of a source's tokens or secrets file (checked with the secrets)."""
    errors = []
    files = (
        ("tokens_file", read_tokens),
        ("secrets_file", read_secrets),
        ("token_file", read_page_token),
    )
    for key, read in files:
        path = source.get(key)
        if not isinstance(path, str):
            continue
        try:
            read(Path(path))
        except TokensError as exc:
            errors += [f"sources[{index}].{key}: {path}: {error}" for error in exc.errors]
    return errors


def _delivery_ages(data: dict[str, Any]) -> list[str]:
    """A maximum delivery age past the dedup retention defeats its purpose. Checked on the raw
    data, so it is reported along with every field error."""
    dedup = data.get("dedup")
    retention = dedup.get("retention_hours") if isinstance(dedup, dict) else None
    if retention is None:
        retention = DedupConfig.model_fields["retention_hours"].default
    sources = data.get("sources")
    errors = []
    for index, source in enumerate(sources if isinstance(sources, list) else []):
        age = source.get("max_delivery_age_hours") if isinstance(source, dict) else None
        if isinstance(age, int | float) and isinstance(retention, int) and age > retention:
            errors.append(
                f"sources[{index}].max_delivery_age_hours: {age} is more than [dedup] "
                f"retention_hours ({retention}): a replay after the retention would count again"
            )
    return errors


CREDENTIALS = {
    "websocket-server": ("token_env", "tokens_file"),
    "http-server": ("secret_env", "secrets_file"),
    "http-client": ("token_env", "token_file"),
}
"""The two ways a source can take its secrets: exactly one is given."""


def _credentials(data: dict[str, Any]) -> list[str]:
    """Checked on the raw data, so it is reported along with every field error."""
    sources = data.get("sources")
    errors = []
    for index, source in enumerate(sources if isinstance(sources, list) else []):
        if not isinstance(source, dict) or source.get("type") not in CREDENTIALS:
            continue
        keys = CREDENTIALS[source["type"]]
        if sum(source.get(key) is not None for key in keys) != 1:
            errors.append(f"sources[{index}]: exactly one of {keys[0]} and {keys[1]}")
        if source.get("previous_secret_env") is not None and source.get("secret_env") is None:
            errors.append(f"sources[{index}].previous_secret_env: goes with secret_env")
    return errors


def _duplicate_names(data: dict[str, Any]) -> list[str]:
    """Checked on the raw data, so it is reported along with every field error."""
    sources = data.get("sources")
    if not isinstance(sources, list):
        return []
    errors = []
    first: dict[str, int] = {}
    for index, source in enumerate(sources):
        name = source.get("name") if isinstance(source, dict) else None
        if not isinstance(name, str):
            continue
        if name in first:
            errors.append(f"sources[{index}].name: {name!r} is already sources[{first[name]}]")
        else:
            first[name] = index
    return errors


def _resolve_catalogs(data: dict[str, Any], base: Path) -> None:
    """Catalog paths relative to the config file's directory."""
    streams = data.get("streams")
    for table in streams.values() if isinstance(streams, dict) else ():
        if isinstance(table, dict) and isinstance(table.get("catalog"), str):
            table["catalog"] = str(base / table["catalog"])


def _catalog_problems(config: Config) -> list[str]:
    """Every problem of every catalog file, as "streams.<s>.catalog: <file>:<line>: ..."."""
    problems = []
    for file in config.catalog_files():
        try:
            read_catalog(file)
        except CatalogError as exc:
            problems += [f"streams.{file.stream}.catalog: {error}" for error in exc.errors]
    return problems


def parse(
    data: dict[str, Any],
    origin: str,
    environ: Mapping[str, str] | None = None,
    *,
    require_secrets: bool = True,
    base: Path | None = None,
) -> Config:
    """Validate parsed TOML (after environment overrides); raise ConfigError with every error.

    An unset secret is an error unless ``require_secrets`` is false (see :func:`unset_secrets`).
    Catalog files are read and checked too, relative to ``base`` (default: the working
    directory).
    """
    env = os.environ if environ is None else environ
    data = apply_environment(copy.deepcopy(data), env)
    _resolve_catalogs(data, base or Path())
    problems = _duplicate_names(data) + _delivery_ages(data) + _credentials(data)
    problems += _secrets(data, env) if require_secrets else []
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        errors = [f"{_location(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(origin, errors + problems) from exc
    try:
        config.region_table()
    except ValueError as exc:
        problems.append(f"regions: {exc}")
    problems += _catalog_problems(config)
    if problems:
        raise ConfigError(origin, problems)
    return config


def unset_secrets(config: Config, environ: Mapping[str, str] | None = None) -> list[str]:
    """The secrets ``config`` names that the environment does not hold, as "location: message"."""
    return _secrets(config.model_dump(), os.environ if environ is None else environ)


def load_redis(path: str | Path, environ: Mapping[str, str] | None = None) -> RedisConfig:
    """Only the ``[redis]`` section of a config file, environment applied (for ``top``, which
    neither needs the sources' secrets nor cares about the rest)."""
    data = _read(Path(path))
    data = apply_environment(data, os.environ if environ is None else environ)
    section = data.get("redis", {})
    try:
        return RedisConfig.model_validate(section)
    except ValidationError as exc:
        errors = [f"{_location(('redis', *e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(str(path), errors) from exc


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8: {exc.reason} at byte {exc.start}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from exc


def load(
    path: str | Path, environ: Mapping[str, str] | None = None, *, require_secrets: bool = True
) -> Config:
    """Read, override and validate a config file."""
    path = Path(path)
    data = _read(path)
    return parse(data, str(path), environ, require_secrets=require_secrets, base=path.parent)
