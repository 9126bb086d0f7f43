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
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ingest.adapter import FormatOptions
from ingest.catalog import CatalogError
from ingest.native import PLATFORM_PATTERN, STREAM_PATTERN
from ingest.regions import DEFAULT_TABLES, RegionTable
from ingest.sources.base import split_address
from ingest.sources.eventsub import EventSubSettings
from ingest.sources.http import Limits
from ingest.sources.mqtt import MqttSettings
from ingest.sources.topics import TopicPattern
from ingest.sources.webhook import ShopifyWebhookSettings
from ingest.sources.websocket import WebsocketClientSettings, WebsocketServerSettings
from workers.catalogs import CatalogFile
from workers.catalogs import read as read_catalog

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


class ListenerLimits(_Model):
    """Bounds of a listener that any client can reach (``ingest.sources.http.Limits``)."""

    max_connections: int = _default(Limits, "max_connections", ge=1, le=65536)
    """Connections open at once; one more is closed at once and counted."""
    header_timeout_seconds: float = _default(Limits, "header_timeout", gt=0, le=600)
    """A request head must arrive within this of the connection (or of the keep-alive time
    after the previous answer), else the connection is closed."""
    body_timeout_seconds: float = _default(Limits, "body_timeout", gt=0, le=600)
    """A request body must arrive within this, else 408 (an unread one is drained for at most
    this, or 10 s)."""
    keepalive_timeout_seconds: float = _default(Limits, "keepalive_timeout", gt=0, le=3600)
    """An idle connection is closed after this."""

    def limits(self) -> Limits:
        return Limits(
            max_connections=self.max_connections,
            header_timeout=self.header_timeout_seconds,
            body_timeout=self.body_timeout_seconds,
            keepalive_timeout=self.keepalive_timeout_seconds,
        )


class HttpConfig(ListenerLimits):
    listen: Annotated[str, Field(description="host:port of /metrics, /healthz, /readyz")] = (
        "127.0.0.1:9464"
    )
    max_connections: int = Field(32, ge=1, le=65536)
    scrape_freshness_seconds: float = Field(1.0, gt=0, le=1.0)
    """Business totals read for a scrape answer every scrape for this long."""
    scrape_max_connections: int = Field(2, ge=2, le=64)
    """Redis connections (per node of a cluster) for /metrics and /readyz, apart from commits."""
    _check = field_validator("listen")(lambda cls, v: _listen(v))


class DedupConfig(_Model):
    retention_hours: int = Field(48, ge=1, le=24 * 90)


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
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.:-]{0,63}$")]
    stream: StreamName | None = None
    streams: tuple[StreamName, ...] | None = None
    max_frame_bytes: int = _default(FormatOptions, "max_frame_bytes", ge=64, le=64 * 1024 * 1024)
    max_events_per_frame: int = _default(FormatOptions, "max_events_per_frame", ge=1, le=100_000)

    @model_validator(mode="after")
    def _default_allowed(self) -> _SourceBase:
        if self.streams is not None and self.stream is not None and self.stream not in self.streams:
            raise ValueError(f"stream {self.stream!r} is not in streams")
        return self


def _needs_stream(source: WebsocketClientConfig | HttpServerConfig) -> None:
    if source.format != "native" and source.stream is None:
        raise ValueError(f"format {source.format!r} needs a stream: its frames name none")


class TwitchConfig(_Model):
    """Twitch EventSub: the Helix API that creates the subscriptions, and what to subscribe to."""

    client_id: Annotated[str, Field(min_length=1)]
    token_env: str
    """Environment variable holding a user access token with the user:read:chat scope."""
    broadcaster_user_id: Annotated[str, Field(pattern=r"^[0-9]{1,32}$")]
    user_id: Annotated[str, Field(pattern=r"^[0-9]{1,32}$")]
    """The user reading the chat (the token's user)."""
    helix_url: Annotated[str, Field(pattern=r"^https?://")] = "https://api.twitch.tv/helix"
    keepalive_margin_seconds: float = _default(EventSubSettings, "keepalive_margin", ge=0, le=60)


class WebsocketClientConfig(_SourceBase):
    type: Literal["websocket-client"]
    format: Literal["native", "twitch-eventsub", "socialstream"] = "native"
    url: Annotated[str, Field(pattern=r"^wss?://")]
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
        return self


class HttpServerConfig(_SourceBase, ListenerLimits):
    """Webhook deliveries by HTTP POST (Shopify)."""

    type: Literal["http-server"]
    format: Literal["shopify"] = "shopify"
    listen: str = _default(ShopifyWebhookSettings, "listen")
    path: str = _default(ShopifyWebhookSettings, "path", pattern=PATH_PATTERN)
    secret_env: str
    """Environment variable holding the app's client secret, which signs every delivery."""
    max_body_bytes: int = _default(
        ShopifyWebhookSettings, "max_body_bytes", ge=1024, le=64 * 1024 * 1024
    )
    """Larger deliveries are refused (413); for this source it replaces ``max_frame_bytes``."""
    commit_timeout_seconds: float = _default(ShopifyWebhookSettings, "commit_timeout", gt=0, le=60)
    """Answer 503 (Shopify delivers again) if a delivery is not committed by then; Shopify
    itself gives up on an answer after 5 s."""
    _check = field_validator("listen")(lambda cls, v: _listen(v))

    @model_validator(mode="after")
    def _stream(self) -> HttpServerConfig:
        _needs_stream(self)
        return self


class WebsocketServerConfig(_SourceBase):
    type: Literal["websocket-server"]
    format: Literal["native"] = "native"
    listen: str = _default(WebsocketServerSettings, "listen")
    path: str = _default(WebsocketServerSettings, "path", pattern=PATH_PATTERN)
    token_env: str
    max_size: int = _default(WebsocketServerSettings, "max_size", ge=1024)
    ping_interval: float | None = _default(WebsocketServerSettings, "ping_interval", gt=0)
    ping_timeout: float | None = _default(WebsocketServerSettings, "ping_timeout", gt=0)
    _check = field_validator("listen")(lambda cls, v: _listen(v))


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
    WebsocketClientConfig | WebsocketServerConfig | MqttConfig | HttpServerConfig,
    Field(discriminator="type"),
]


class Config(_Model):
    redis: RedisConfig = RedisConfig()
    http: HttpConfig = HttpConfig()
    dedup: DedupConfig = DedupConfig()
    batch: BatchConfig = BatchConfig()
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
        ) or re.fullmatch(r"function-.*", part):
            continue
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


MIN_SECRET_BYTES = 16
"""Shortest token, password or signing secret taken from the environment (UTF-8 bytes)."""


def _weakness(secret: str) -> str | None:
    """Why a secret from the environment is unfit, or None. Its value is never shown."""
    if secret != secret.strip():
        return "starts or ends with whitespace"
    if len(secret.encode("utf-8", "surrogateescape")) < MIN_SECRET_BYTES:
        return f"shorter than {MIN_SECRET_BYTES} bytes"
    return None


def _secrets(data: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Checked on the raw data, so a missing or weak secret is reported along with every field
    error."""
    sources = data.get("sources")
    errors = []
    for index, source in enumerate(sources if isinstance(sources, list) else []):
        if not isinstance(source, dict):
            continue
        twitch = source.get("twitch")
        tables = [("", source), ("twitch.", twitch if isinstance(twitch, dict) else {})]
        for where, table in tables:
            for key in ("token_env", "password_env", "secret_env"):
                name = table.get(key)
                if not isinstance(name, str):
                    continue
                location = f"sources[{index}].{where}{key}"
                secret = environ.get(name)
                if not secret:
                    errors.append(f"{location}: environment variable {name} is not set")
                elif (weakness := _weakness(secret)) is not None:
                    errors.append(f"{location}: environment variable {name} is {weakness}")
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
    problems = _duplicate_names(data) + (_secrets(data, env) if require_secrets else [])
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
