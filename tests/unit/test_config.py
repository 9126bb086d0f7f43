"""Tests for configuration loading and validation (workers.config) and ``check-config``."""

from __future__ import annotations

import base64
import copy
import os
import re
import socket
from pathlib import Path
from typing import Any

import pydantic
import pytest

from ingest.sources.http import Credentials
from ingest.sources.webhook import ShopifyWebhookSettings
from ingest.sources.websocket import WebsocketServerSettings
from tests.certs import Certificates
from workers import cli
from workers.config import (
    DEFAULT_PLATFORMS,
    Config,
    ConfigError,
    FacebookConfig,
    HttpClientConfig,
    HttpServerConfig,
    TwitchConfig,
    WebsocketClientConfig,
    WebsocketServerConfig,
    _SourceBase,
    load,
    parse,
    unset_secrets,
)
from workers.runtime import Ingester

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "ingester.toml"
DEMO = ROOT / "workers" / "demo" / "demo.toml"
TOKEN = {"LIVESTREAM_PUSH_TOKEN": "secret-0123456789"}

MINIMAL: dict[str, Any] = {
    "sources": [{"name": "relay", "type": "websocket-client", "url": "ws://127.0.0.1:1/feed"}]
}


def minimal() -> dict[str, Any]:
    return copy.deepcopy(MINIMAL)


def errors_of(data: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(data, "test.toml", environ or {})
    assert info.value.source == "test.toml"
    return info.value.errors


def test_shipped_config_is_valid() -> None:
    config = load(SHIPPED, TOKEN)
    assert config.redis.url == "redis://127.0.0.1:6379/0"
    assert config.http.listen == "127.0.0.1:9464"
    assert config.dedup.retention_hours == 48
    assert config.batch.max_events == 1000
    assert config.labels.platforms == DEFAULT_PLATFORMS
    assert [source.name for source in config.sources] == ["shop-relay", "push"]
    relay, push = config.sources
    assert isinstance(relay, WebsocketClientConfig)
    assert (relay.url, relay.stream, relay.backoff_initial) == (
        "ws://127.0.0.1:8765/feed",
        "lucngan-2025",
        0.5,
    )
    assert isinstance(push, WebsocketServerConfig)
    assert (push.listen, push.path, push.token_env) == (
        "127.0.0.1:8766",
        "/ingest",
        "LIVESTREAM_PUSH_TOKEN",
    )


def test_shipped_config_needs_its_token() -> None:
    with pytest.raises(ConfigError) as info:
        load(SHIPPED, {})
    assert info.value.errors == [
        "sources[1].token_env: environment variable LIVESTREAM_PUSH_TOKEN is not set"
    ]
    with pytest.raises(ConfigError):
        load(SHIPPED, {"LIVESTREAM_PUSH_TOKEN": ""})


def test_demo_config_is_valid() -> None:
    config = load(DEMO, {})
    assert len(config.sources) == 1
    source = config.sources[0]
    assert isinstance(source, WebsocketClientConfig)
    assert (source.name, source.stream, source.backoff_max) == ("demo-feed", None, 5.0)


PLATFORMS = ROOT / "config" / "platforms.toml"
PLATFORM_SECRETS = {
    "TWITCH_REFRESH_TOKEN": "r" * 50,
    "TWITCH_CLIENT_SECRET": "c" * 30,
    "SHOPIFY_SECRET": "s" * 32,
    "FACEBOOK_PAGE_TOKEN": "f" * 40,
    "YOUTUBE_REFRESH_TOKEN": "y" * 50,
    "YOUTUBE_CLIENT_SECRET": "g" * 30,
}


def test_platforms_config_is_valid_and_complete() -> None:
    config = load(PLATFORMS, PLATFORM_SECRETS)
    twitch, shop, relay, facebook, *_ = config.sources  # then YouTube: test_youtube_config.py
    assert isinstance(facebook, HttpClientConfig)
    assert (facebook.format, facebook.facebook.mode) == ("facebook-live", "sse")
    assert isinstance(twitch, WebsocketClientConfig)
    assert twitch.twitch is not None
    assert (twitch.format, twitch.twitch.broadcaster_user_id) == ("twitch-eventsub", "1001")
    assert isinstance(shop, HttpServerConfig)
    assert (shop.format, shop.path, shop.secret_env) == (
        "shopify",
        "/webhooks/shopify",
        "SHOPIFY_SECRET",
    )
    assert isinstance(relay, WebsocketClientConfig)
    assert relay.format == "socialstream"
    assert twitch.twitch.refresh_token_env == "TWITCH_REFRESH_TOKEN"
    # Every key of the platform tables is shown (with its default where it has one; commented
    # out where setting it asks for more, as an environment variable).
    text = PLATFORMS.read_text(encoding="utf-8")
    for key in [
        *TwitchConfig.model_fields,
        *HttpServerConfig.model_fields,
        *(key for key in HttpClientConfig.model_fields if key != "facebook"),  # its table
        *FacebookConfig.model_fields,
    ]:
        if key not in _SourceBase.model_fields:
            assert re.search(rf"^(# )?{key} = ", text, re.M), key


def test_platform_sources_report_every_mistake_with_its_location() -> None:
    data = {
        "sources": [
            {
                "name": "a",
                "type": "websocket-client",
                "format": "twitch-eventsub",
                "url": "wss://x",
            },
            {
                "name": "b",
                "type": "websocket-client",
                "format": "twitch-eventsub",
                "url": "wss://x",
                "stream": "s",
                "twitch": {
                    "client_id": "c",
                    "token_env": "NO_SUCH_TOKEN",
                    "broadcaster_user_id": "abc",
                    "user_id": "1",
                },
            },
            {"name": "c", "type": "websocket-client", "format": "socialstream", "url": "wss://x"},
            {"name": "d", "type": "http-server", "secret_env": "NO_SUCH_SECRET"},
            {"name": "e", "type": "http-server", "format": "native", "stream": "s"},
            {"name": "f", "type": "mqtt", "format": "shopify", "client_id": "x", "topics": []},
        ]
    }
    errors = errors_of(data)
    expected = [
        "sources[0]: Value error, format 'twitch-eventsub' needs a stream: its frames name none",
        "sources[1].twitch.broadcaster_user_id: String should match pattern '^[0-9]{1,32}$'",
        "sources[2]: Value error, format 'socialstream' needs a stream: its frames name none",
        "sources[3]: Value error, format 'shopify' needs a stream: its frames name none",
        "sources[4].format: Input should be 'shopify'",
        "sources[5].format: Input should be 'native'",
        "sources[5].topics: List should have at least 1 item after validation, not 0",
        "sources[4]: exactly one of secret_env and secrets_file",
        "sources[1].twitch.token_env: environment variable NO_SUCH_TOKEN is not set",
        "sources[3].secret_env: environment variable NO_SUCH_SECRET is not set",
    ]
    assert errors == expected


def test_twitch_table_and_format_go_together() -> None:
    data = minimal()
    twitch = {"client_id": "c", "token_env": "T", "broadcaster_user_id": "1", "user_id": "2"}
    data["sources"][0].update(stream="s", twitch=twitch)
    assert errors_of(data, {"T": "t" * 16}) == [
        "sources[0]: Value error, format 'twitch-eventsub' and a [twitch] table go together"
    ]


def test_the_websocket_library_is_chosen_per_client_source() -> None:
    """websockets by default; picows where asked; not for Twitch, whose source is its own."""
    assert parse(minimal(), "test.toml", {}).sources[0].transport == "websockets"  # type: ignore[union-attr]
    data = minimal()
    data["sources"][0]["transport"] = "picows"
    assert parse(data, "test.toml", {}).sources[0].transport == "picows"  # type: ignore[union-attr]
    twitch = {"client_id": "c", "token_env": "T", "broadcaster_user_id": "1", "user_id": "2"}
    data["sources"][0].update(stream="s", format="twitch-eventsub", twitch=twitch)
    assert errors_of(data, {"T": "t" * 16}) == [
        "sources[0]: Value error, twitch-eventsub reads through websockets: no transport"
    ]


def test_empty_config_is_all_defaults() -> None:
    config = parse({}, "empty.toml", {})
    assert config == Config()
    assert config.sources == []


def test_native_options_follow_the_source() -> None:
    data = minimal()
    data["sources"][0].update(stream="a", streams=["a", "b"], max_frame_bytes=4096)
    config = parse(data, "test.toml", {})
    options = config.native_options(config.sources[0], config.region_table())
    assert options.default_stream == "a"
    assert options.allowed_streams == frozenset({"a", "b"})
    assert options.platforms == frozenset(DEFAULT_PLATFORMS)
    assert options.max_frame_bytes == 4096


def test_every_mistake_is_reported_with_its_location() -> None:
    data: dict[str, Any] = {
        "redis": {"url": "http://127.0.0.1:6379"},
        "http": {"listen": "9464"},
        "batch": {"max_events": -5},
        "colour": "blue",
        "sources": [
            {"name": "a", "type": "websocket-client"},
            {"name": "a", "type": "websocket-client", "url": "ws://x/"},
            {"name": "c", "type": "kafka", "url": "ws://x/"},
            {"name": "d", "type": "websocket-server", "listen": "localhost", "token_env": "T"},
        ],
    }
    errors = errors_of(data, {"T": "t" * 16})
    locations = sorted(error.split(":", 1)[0] for error in errors)
    assert locations == sorted(
        [
            "redis.url",
            "http.listen",
            "batch.max_events",
            "colour",
            "sources[0].url",
            "sources[1].name",
            "sources[2]",
            "sources[3].listen",
        ]
    )
    text = "\n".join(errors)
    assert "redis://" in text
    assert "'a' is already sources[0]" in text
    assert "kafka" in text


def test_duplicate_source_names_alone() -> None:
    data = minimal()
    data["sources"].append(dict(data["sources"][0]))
    data["sources"].append(dict(data["sources"][0], name="other"))
    data["sources"].append(dict(data["sources"][0]))
    assert errors_of(data) == [
        "sources[1].name: 'relay' is already sources[0]",
        "sources[3].name: 'relay' is already sources[0]",
    ]


@pytest.mark.parametrize(
    ("section", "key", "value", "location"),
    [
        ("redis", "socket_timeout", 0, "redis.socket_timeout"),
        ("dedup", "retention_hours", 0, "dedup.retention_hours"),
        ("batch", "max_in_flight", 17, "batch.max_in_flight"),
        ("batch", "max_events", "many", "batch.max_events"),
        ("labels", "platforms", ["TikTok"], "labels.platforms[0]"),
        ("labels", "platforms", ["tiktok\n"], "labels.platforms[0]"),  # "$" is the end
        ("log", "level", "verbose", "log.level"),
        ("log", "format", "xml", "log.format"),
        ("http", "listen", "127.0.0.1:70000", "http.listen"),
        ("http", "listen", "127.0.0.1:", "http.listen"),
    ],
)
def test_one_bad_value(section: str, key: str, value: object, location: str) -> None:
    errors = errors_of({section: {key: value}})
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{location}: ")


@pytest.mark.parametrize(
    ("changes", "location"),
    [
        ({"url": "http://x/"}, "sources[0].url"),
        ({"name": "Bad Name"}, "sources[0].name"),
        ({"stream": "{x}"}, "sources[0].stream"),
        ({"stream": "live\n"}, "sources[0].stream"),
        ({"name": "push\n"}, "sources[0].name"),
        ({"streams": ["ok", "a b"]}, "sources[0].streams[1]"),
        ({"stream": "a", "streams": ["b"]}, "sources[0]"),
        ({"max_size": 1024, "max_frame_bytes": 2048}, "sources[0]"),
        ({"format": "protobuf"}, "sources[0].format"),
        ({"transport": "aiohttp"}, "sources[0].transport"),
        ({"backoff_initial": 0}, "sources[0].backoff_initial"),
        ({"listen": "x:1"}, "sources[0].listen"),
    ],
)
def test_one_bad_source_value(changes: dict[str, Any], location: str) -> None:
    data = minimal()
    data["sources"][0].update(changes)
    errors = errors_of(data)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{location}: ")


def test_missing_token_variable() -> None:
    data = {"sources": [{"name": "push", "type": "websocket-server", "token_env": "PUSH_TOKEN"}]}
    assert errors_of(data, {"OTHER": "x"}) == [
        "sources[0].token_env: environment variable PUSH_TOKEN is not set"
    ]
    (source,) = parse(data, "test.toml", {"PUSH_TOKEN": "t" * 16}).sources
    assert isinstance(source, WebsocketServerConfig)
    assert source.token_env == "PUSH_TOKEN"


@pytest.mark.parametrize(
    "secret", ["x", " ", " " * 40, "short-secret-15", "é" * 7, " padded-secret-0123456789 "]
)
def test_weak_secrets_are_refused_with_their_key(secret: str) -> None:
    data = {
        "sources": [
            {"name": "push", "type": "websocket-server", "token_env": "PUSH_TOKEN"},
            {
                "name": "shop",
                "type": "http-server",
                "format": "shopify",
                "stream": "s",
                "secret_env": "SHOP_SECRET",
            },
            {
                "name": "mqtt",
                "type": "mqtt",
                "client_id": "i",
                "topics": [{"pattern": "live/+"}],
                "password_env": "MQTT_PASSWORD",
            },
        ]
    }
    env = {"PUSH_TOKEN": secret, "SHOP_SECRET": secret, "MQTT_PASSWORD": secret}
    assert [error.split(":")[0] for error in errors_of(data, env)] == [
        "sources[0].token_env",
        "sources[1].secret_env",
        "sources[2].password_env",
    ]
    strong = dict.fromkeys(env, "0123456789abcdef")  # 16 bytes
    assert len(parse(data, "test.toml", strong).sources) == 3


@pytest.mark.parametrize(
    "credentials", [{}, {"token_env": "PUSH_TOKEN", "tokens_file": "/x"}], ids=["none", "both"]
)
def test_server_source_takes_exactly_one_of_token_env_and_tokens_file(
    credentials: dict[str, str],
) -> None:
    source = {"name": "push", "type": "websocket-server", **credentials}
    errors = errors_of({"sources": [source]}, {"PUSH_TOKEN": "0123456789abcdef"})
    assert errors[0] == "sources[0]: exactly one of token_env and tokens_file"


GOOD_TOKENS = "# producer token\nstudio-a 0123456789abcdef-a\n\nstudio-b 0123456789abcdef-b\n"


def test_a_tokens_file_is_checked_with_the_secrets(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.tokens", tmp_path / "bad.tokens"
    good.write_text(GOOD_TOKENS)
    bad.write_text("studio-a short\nStudio-B 0123456789abcdef-b\nstudio-a 0123456789abcdef-b\nx\n")
    sources = [
        {"name": f"push{n}", "type": "websocket-server", "tokens_file": str(path)}
        for n, path in enumerate([good, bad, tmp_path / "missing"])
    ]
    data = {"sources": sources}
    errors = errors_of(data)
    assert errors == [
        f"sources[1].tokens_file: {bad}: line 1: token shorter than 16 bytes",
        f"sources[1].tokens_file: {bad}: line 2: producer name must match "
        "[a-z0-9][a-z0-9_.-]{0,63}",
        f"sources[1].tokens_file: {bad}: line 3: producer 'studio-a' is already on line 1",
        f"sources[1].tokens_file: {bad}: line 3: the same token is already on line 2",
        f"sources[1].tokens_file: {bad}: line 4: expected '<producer> <token>'",
        f"sources[2].tokens_file: {tmp_path / 'missing'}: cannot read: No such file or directory",
    ]
    for error in errors:  # a token is never shown
        assert "0123456789abcdef" not in error
    # Without require_secrets (check-config's default) they are warnings.
    config = parse(data, "test.toml", {}, require_secrets=False)
    assert [p.split(":")[0] for p in unset_secrets(config, {})] == [
        "sources[1].tokens_file"
    ] * 5 + ["sources[2].tokens_file"]


def test_shopify_rotation_and_freshness_keys() -> None:
    shop = {
        "name": "shop",
        "type": "http-server",
        "stream": "s",
        "secret_env": "SHOP_SECRET",
        "previous_secret_env": "OLD_SHOP_SECRET",
        "shop_domains": ["lucngan-farm.myshopify.com"],
        "refuse_stale_deliveries": True,
    }
    env = {"SHOP_SECRET": "n" * 32, "OLD_SHOP_SECRET": "o" * 3}
    assert errors_of({"sources": [shop]}, env) == [
        "sources[0].previous_secret_env: environment variable OLD_SHOP_SECRET is shorter than "
        "16 bytes"
    ]
    env["OLD_SHOP_SECRET"] = "o" * 32
    config = parse({"sources": [shop], "dedup": {"retention_hours": 24}}, "t", env)
    (source,) = config.sources
    assert isinstance(source, HttpServerConfig)
    assert config.delivery_max_age(source) == 24 * 3600  # the dedup retention by default
    shorter = {**shop, "max_delivery_age_hours": 6}
    config = parse({"sources": [shorter]}, "t", env)
    assert config.delivery_max_age(config.sources[0]) == 6 * 3600  # type: ignore[arg-type]
    off = parse({"sources": [{**shorter, "refuse_stale_deliveries": False}]}, "t", env)
    assert off.delivery_max_age(off.sources[0]) is None  # type: ignore[arg-type]
    longer = {**shop, "max_delivery_age_hours": 49, "shop_domains": ["Evil.example.com"]}
    errors = errors_of({"sources": [longer]}, env)
    assert errors[0].startswith("sources[0].shop_domains[0]: String should match pattern")
    assert errors[1:] == [
        "sources[0].max_delivery_age_hours: 49 is more than [dedup] retention_hours (48): a "
        "replay after the retention would count again"
    ]


REUSE_SOURCES: list[dict[str, Any]] = [
    {"name": "push", "type": "websocket-server", "token_env": "PUSH_TOKEN"},
    {"name": "shop", "type": "http-server", "stream": "s", "secret_env": "SHOP_SECRET"},
]


def test_push_listeners_share_their_port_only_when_asked() -> None:
    env = {"PUSH_TOKEN": "t" * 16, "SHOP_SECRET": "s" * 16}

    def listeners(sources: list[dict[str, Any]], **variables: str) -> list[bool]:
        return [
            source.reuse_port
            for source in parse({"sources": sources}, "t", {**env, **variables}).sources
            if isinstance(source, WebsocketServerConfig | HttpServerConfig)
        ]

    assert listeners(REUSE_SOURCES) == [False, False]
    shared = [{**source, "reuse_port": True} for source in REUSE_SOURCES]
    assert listeners(shared) == [True, True]
    # One process of several, from one file: the environment turns it on too.
    assert listeners(REUSE_SOURCES, LIVESTREAM__SOURCES__1__REUSE_PORT="true") == [False, True]
    # What the listeners are built with (workers.runtime).
    push, shop = parse({"sources": shared}, "t", env).sources
    assert isinstance(push, WebsocketServerConfig)
    assert isinstance(shop, HttpServerConfig)
    assert push.settings(WebsocketServerSettings, token="t" * 16).reuse_port is True
    assert shop.settings(ShopifyWebhookSettings, secret="s" * 16).reuse_port is True
    wrong = [{**source, "reuse_port": "sometimes"} for source in REUSE_SOURCES]
    assert errors_of({"sources": wrong}, env) == [
        f"sources[{n}].reuse_port: Input should be a valid boolean, unable to interpret input"
        for n in range(2)
    ]


def test_reuse_port_is_refused_where_the_system_has_no_so_reuseport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(socket, "SO_REUSEPORT", raising=False)
    env = {"PUSH_TOKEN": "t" * 16, "SHOP_SECRET": "s" * 16}
    shared = [{**source, "reuse_port": True} for source in REUSE_SOURCES]
    assert errors_of({"sources": shared}, env) == [
        f"sources[{n}].reuse_port: Value error, this system has no SO_REUSEPORT (Linux has)"
        for n in range(2)
    ]
    assert len(parse({"sources": REUSE_SOURCES}, "t", env).sources) == 2  # false: no need


def test_ambiguous_region_table() -> None:
    data = {"regions": {"TH": {"Bangkok": ["BKK"], "Krung Thep": ["bkk"]}}}
    errors = errors_of(data)
    assert len(errors) == 1
    assert errors[0].startswith("regions: ")


def test_extra_region_table() -> None:
    config = parse({"regions": {"TH": {"Bangkok": ["BKK"]}}}, "test.toml", {})
    table = config.region_table()
    assert table.normalise("TH", "bkk") == "Bangkok"
    assert table.normalise("VN", "Ha Noi") == "Hà Nội"


def test_redis_url_environment_variable() -> None:
    config = parse(minimal(), "test.toml", {"REDIS_URL": "redis://cache:6380/3"})
    assert config.redis.url == "redis://cache:6380/3"
    file_value = {"redis": {"url": "redis://file:1/0"}}
    assert parse(file_value, "t", {"REDIS_URL": "rediss://env:2/0"}).redis.url == "rediss://env:2/0"
    assert parse(file_value, "t", {"REDIS_URL": ""}).redis.url == "redis://file:1/0"


def test_explicit_override_wins_over_redis_url() -> None:
    environ = {"REDIS_URL": "redis://a:1/0", "LIVESTREAM__REDIS__URL": "redis://b:2/0"}
    assert parse({}, "t", environ).redis.url == "redis://b:2/0"


def test_redis_url_from_environment_is_validated() -> None:
    assert errors_of({}, {"REDIS_URL": "http://x"})[0].startswith("redis.url: ")


def test_section_overrides() -> None:
    environ = {
        "LIVESTREAM__BATCH__MAX_EVENTS": "7",
        "LIVESTREAM__BATCH__MAX_DELAY_MS": "2.5",
        "LIVESTREAM__LOG__LEVEL": "debug",
        "LIVESTREAM__LABELS__PLATFORMS": '["tiktok", "kick"]',
        "LIVESTREAM__HTTP__LISTEN": "0.0.0.0:9000",
        "UNRELATED": "ignored",
    }
    config = parse({"batch": {"max_events": 100, "max_in_flight": 4}}, "t", environ)
    assert config.batch.max_events == 7
    assert config.batch.max_delay_ms == 2.5
    assert config.batch.max_in_flight == 4
    assert config.log.level == "debug"
    assert config.labels.platforms == ("tiktok", "kick")
    assert config.http.listen == "0.0.0.0:9000"


def test_source_overrides() -> None:
    environ = {
        "LIVESTREAM__SOURCES__0__URL": "wss://relay.example:443/feed",
        "LIVESTREAM__SOURCES__0__STREAM": "s-1",
        "LIVESTREAM__SOURCES__0__PING_INTERVAL": "3.5",
        "LIVESTREAM__SOURCES__0__SUBSCRIBE": '{"subscribe": "s-1"}',
    }
    source = parse(minimal(), "t", environ).sources[0]
    assert isinstance(source, WebsocketClientConfig)
    assert source.url == "wss://relay.example:443/feed"
    assert source.stream == "s-1"
    assert source.ping_interval == 3.5
    assert source.subscribe == '{"subscribe": "s-1"}'


def test_overrides_can_add_a_source() -> None:
    environ = {
        "LIVESTREAM__SOURCES__1__NAME": "second",
        "LIVESTREAM__SOURCES__1__TYPE": "websocket-client",
        "LIVESTREAM__SOURCES__1__URL": "ws://second/",
    }
    config = parse(minimal(), "t", environ)
    assert [source.name for source in config.sources] == ["relay", "second"]


def test_override_values_are_toml_values_when_they_parse() -> None:
    # "7" is the integer 7; "abc" stays a string and is then reported as not an integer.
    assert errors_of({}, {"LIVESTREAM__BATCH__MAX_EVENTS": "abc"}) == [
        "batch.max_events: Input should be a valid integer, unable to parse string as an integer"
    ]
    # A value that reads as a TOML boolean is one: a boolean is not a valid url string.
    errors = errors_of(minimal(), {"LIVESTREAM__SOURCES__0__URL": "true"})
    assert len(errors) == 1
    assert errors[0].startswith("sources[0].url: ")
    # A bare word that is not TOML stays a string.
    source = parse(minimal(), "t", {"LIVESTREAM__SOURCES__0__STREAM": "lucngan"}).sources[0]
    assert source.stream == "lucngan"
    # TOML numbers: an integer where a float is expected is fine.
    assert parse({}, "t", {"LIVESTREAM__REDIS__SOCKET_TIMEOUT": "2"}).redis.socket_timeout == 2.0


def test_override_with_an_unknown_key_is_reported() -> None:
    assert errors_of({}, {"LIVESTREAM__BATCH__MAX_EVENT": "7"})[0].startswith("batch.max_event: ")


def test_parse_does_not_need_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVESTREAM__BATCH__MAX_EVENTS", "not a number")
    monkeypatch.setenv("REDIS_URL", "http://nope")
    assert parse({}, "t", {}).batch.max_events == 1000
    with pytest.raises(ConfigError):
        parse({}, "t")


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load(missing, {})
    assert info.value.source == str(missing)
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith("cannot read: ")
    with pytest.raises(ConfigError) as directory:
        load(tmp_path, {})
    assert len(directory.value.errors) == 1


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[batch]\nmax_events = = 3\n[[sources]\nname = "x"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path, {})
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith("not valid TOML: ")
    assert str(path) in str(info.value)


def test_invalid_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[log]\nlevel = "info" # caf\xe9\n')
    with pytest.raises(ConfigError) as info:
        load(path, {})
    assert info.value.errors == ["not UTF-8: invalid continuation byte at byte 26"]


def test_parse_leaves_its_input_alone() -> None:
    data = minimal()
    parse(data, "t", {"LIVESTREAM__SOURCES__0__URL": "ws://other/", "REDIS_URL": "redis://r/0"})
    assert data == MINIMAL


def test_error_message_lists_every_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse({"batch": {"max_events": 0, "max_in_flight": 0}}, "x.toml", {})
    assert str(info.value).splitlines() == ["x.toml: 2 error(s)", *info.value.errors]


def test_config_is_frozen() -> None:
    config = load(SHIPPED, TOKEN)
    with pytest.raises(pydantic.ValidationError):
        config.batch.max_events = 5  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        config.redis = config.redis  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        config.sources[0].name = "x"  # type: ignore[misc]
    assert config.labels.platforms == DEFAULT_PLATFORMS
    assert isinstance(config.labels.platforms, tuple)


# --- check-config ------------------------------------------------------------------------------


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("LIVESTREAM") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    return monkeypatch


def test_check_config_accepts_a_good_file(
    clean_environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_environment.setenv("LIVESTREAM_PUSH_TOKEN", "secret-0123456789")
    assert cli.main(["check-config", "-c", str(SHIPPED)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{SHIPPED}: ok (2 source(s))\n"
    assert err == ""
    assert cli.main(["check-config", "--config", str(DEMO)]) == 0


def test_check_config_reports_every_error(
    clean_environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        "\n".join(
            [
                "[redis]",
                'url = "http://localhost"',
                "[batch]",
                "max_events = -1",
                "[[sources]]",
                'name = "a"',
                'type = "websocket-client"',
                "[[sources]]",
                'name = "a"',
                'type = "websocket-client"',
                'url = "ws://x/"',
            ]
        ),
        encoding="utf-8",
    )
    assert cli.main(["check-config", "-c", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{path}: 4 error(s)" in err
    for location in ("redis.url: ", "batch.max_events: ", "sources[0].url: ", "sources[1].name: "):
        assert f"\n{location}" in err


def test_check_config_reports_a_missing_file(
    clean_environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["check-config", "-c", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_check_config_reads_the_environment(
    clean_environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_environment.setenv("LIVESTREAM__SOURCES__1__LISTEN", "nowhere")
    assert cli.main(["check-config", "-c", str(SHIPPED)]) == 2
    assert "sources[1].listen: " in capsys.readouterr().err


def test_check_config_warns_of_unset_secrets_and_passes(
    clean_environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check-config", "-c", str(SHIPPED)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{SHIPPED}: ok (2 source(s))\n"
    assert err == (
        "warning: sources[1].token_env: environment variable LIVESTREAM_PUSH_TOKEN is not set"
        " (run refuses to start without it)\n"
    )


def test_check_config_require_secrets_makes_them_errors(
    clean_environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check-config", "--require-secrets", "-c", str(SHIPPED)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "\nsources[1].token_env: environment variable LIVESTREAM_PUSH_TOKEN is not set" in err
    clean_environment.setenv("LIVESTREAM_PUSH_TOKEN", "secret-0123456789")
    assert cli.main(["check-config", "--require-secrets", "-c", str(SHIPPED)]) == 0
    assert capsys.readouterr().err == ""


def test_run_still_refuses_to_start_without_a_secret(
    clean_environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", "-c", str(SHIPPED)]) == 2
    assert "LIVESTREAM_PUSH_TOKEN is not set" in capsys.readouterr().err


TWITCH = {"client_id": "c", "broadcaster_user_id": "1", "user_id": "2"}


def twitch_source(**twitch: str) -> dict[str, Any]:
    source = {
        "name": "twitch",
        "type": "websocket-client",
        "format": "twitch-eventsub",
        "url": "wss://x",
        "stream": "s",
        "twitch": {**TWITCH, **twitch},
    }
    return {"sources": [source]}


def test_twitch_takes_one_token_mode() -> None:
    env = {"T": "t" * 16, "R": "r" * 40, "S": "s" * 30}
    one_of = "sources[0].twitch: Value error, set one of token_env (static) and refresh_token_env"
    assert errors_of(twitch_source(), env) == [f"{one_of} (refreshed)"]
    assert errors_of(twitch_source(token_env="T", refresh_token_env="R"), env) == [
        f"{one_of} (refreshed)"
    ]
    assert errors_of(twitch_source(token_env="T", client_secret_env="S"), env) == [
        "sources[0].twitch: Value error, client_secret_env and refresh_token_file go with "
        "refresh_token_env"
    ]
    config = parse(twitch_source(refresh_token_env="R"), "test.toml", env)  # a public client
    (source,) = config.sources
    assert isinstance(source, WebsocketClientConfig)
    assert source.twitch is not None
    assert source.twitch.oauth_url == "https://id.twitch.tv/oauth2"
    assert source.twitch.refresh_margin_seconds == 300


def test_twitch_refresh_secrets_are_checked_like_every_secret() -> None:
    data = twitch_source(refresh_token_env="NO_REFRESH", client_secret_env="NO_SECRET")
    assert errors_of(data, {"NO_SECRET": "short"}) == [
        "sources[0].twitch.refresh_token_env: environment variable NO_REFRESH is not set",
        "sources[0].twitch.client_secret_env: environment variable NO_SECRET is shorter than "
        "16 bytes",
    ]


def test_check_config_and_run_check_the_tokens_file(
    clean_environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tokens = tmp_path / "push.tokens"
    tokens.write_text("studio-a 0123456789abcdef-a\nstudio-b 0123456789\n")
    clean_environment.setenv("LIVESTREAM__SOURCES__1__TOKENS_FILE", str(tokens))
    config = SHIPPED.read_text().replace('token_env = "LIVESTREAM_PUSH_TOKEN"', "")
    path = tmp_path / "ingester.toml"
    path.write_text(config)  # the shipped config, with the file instead of the variable
    problem = f"sources[1].tokens_file: {tokens}: line 2: token shorter than 16 bytes"
    assert cli.main(["check-config", "--require-secrets", "-c", str(path)]) == 2
    assert f"\n{problem}" in capsys.readouterr().err
    assert cli.main(["check-config", "-c", str(path)]) == 0
    assert capsys.readouterr().err == f"warning: {problem} (run refuses to start without it)\n"
    assert cli.main(["run", "-c", str(path)]) == 2
    assert problem in capsys.readouterr().err
    tokens.write_text("studio-a 0123456789abcdef-a\nstudio-b 0123456789abcdef-b\n")
    assert cli.main(["check-config", "--require-secrets", "-c", str(path)]) == 0
    assert "0123456789abcdef" not in capsys.readouterr().err


def test_a_tokens_file_spoilt_after_the_check_refuses_the_start_without_a_traceback(
    tmp_path: Path,
) -> None:
    tokens = tmp_path / "push.tokens"
    tokens.write_text("studio-a 0123456789abcdef-a\n")
    source = {"name": "push", "type": "websocket-server", "tokens_file": str(tokens)}
    config = parse({"sources": [source]}, "test.toml", {})
    tokens.write_text("studio-a short\n")
    with pytest.raises(ConfigError) as refused:
        Ingester(config, environ={})
    assert refused.value.errors == ["line 1: token shorter than 16 bytes"]
    assert refused.value.source == str(tokens)


def test_a_shopify_secrets_file_is_checked_with_the_secrets(tmp_path: Path) -> None:
    secrets = tmp_path / "shopify.secrets"
    secrets.write_text("current shpss_0123456789abcdef\nprevious short\n")
    shop = {"name": "shop", "type": "http-server", "stream": "s", "secrets_file": str(secrets)}
    both = {**shop, "name": "both", "secret_env": "SHOP_SECRET", "previous_secret_env": "OLD"}
    alone = {**shop, "name": "alone", "previous_secret_env": "OLD"}
    env = {"SHOP_SECRET": "n" * 32, "OLD": "o" * 32}
    assert errors_of({"sources": [shop, both, alone]}, env) == [
        "sources[1]: exactly one of secret_env and secrets_file",
        "sources[2].previous_secret_env: goes with secret_env",
        f"sources[0].secrets_file: {secrets}: line 2: secret shorter than 16 bytes",
        f"sources[1].secrets_file: {secrets}: line 2: secret shorter than 16 bytes",
        f"sources[2].secrets_file: {secrets}: line 2: secret shorter than 16 bytes",
    ]
    secrets.write_text("current shpss_0123456789abcdef\nprevious shpss_fedcba9876543210\n")
    assert len(parse({"sources": [shop]}, "test.toml", {}).sources) == 1


# --- TLS and /metrics credentials ---------------------------------------------------------------


def tls_config(tmp_path: Path) -> tuple[dict[str, Any], Certificates]:
    """Every listener on TLS with good files: /metrics, a websocket server, a webhook."""
    certificates = Certificates(tmp_path)
    good = {"cert_file": str(certificates.cert_file), "key_file": str(certificates.key_file)}
    data = {
        "http": {"tls": dict(good)},
        "sources": [
            {"name": "push", "type": "websocket-server", "token_env": "PUSH_TOKEN", "tls": good},
            {
                "name": "shop",
                "type": "http-server",
                "stream": "s",
                "secret_env": "SHOP_SECRET",
                "tls": {**good, "client_ca_file": str(certificates.client_ca_file)},
            },
        ],
    }
    return data, certificates


SERVER_SECRETS = {"PUSH_TOKEN": "t" * 16, "SHOP_SECRET": "s" * 16}


def test_tls_files_load_with_the_config(tmp_path: Path) -> None:
    data, certificates = tls_config(tmp_path)
    config = parse(data, "test.toml", SERVER_SECRETS)
    assert config.http.tls is not None
    assert (config.http.tls.min_version, config.http.tls.reload_interval_seconds) == ("1.2", 30)
    push, shop = config.sources
    assert isinstance(push, WebsocketServerConfig)
    assert push.tls is not None
    assert push.tls.client_ca_file is None
    assert isinstance(shop, HttpServerConfig)
    assert shop.tls is not None
    assert shop.tls.client_ca_file == str(certificates.client_ca_file)


def test_bad_tls_files_are_reported_with_every_location(tmp_path: Path) -> None:
    data, certificates = tls_config(tmp_path)
    data["http"]["tls"]["cert_file"] = str(tmp_path / "missing.crt")
    data["http"]["tls"]["min_version"] = "1.1"
    data["sources"][0]["tls"] = {**data["sources"][0]["tls"], "key_file": str(SHIPPED)}
    data["sources"][1]["tls"]["client_ca_file"] = str(certificates.key_file)
    errors = errors_of(data, SERVER_SECRETS)
    assert [error.split(":")[0] for error in errors] == [
        "http.tls.min_version",
        "sources[0].tls",
        "sources[1].tls",
    ], errors
    assert f"key_file: {SHIPPED}: " in errors[1]
    assert f"client_ca_file: {certificates.client_ca_file.with_name('server.key')}" in errors[2]
    del data["http"]["tls"]["min_version"]
    errors = errors_of(data, SERVER_SECRETS)
    assert errors[0].startswith("http.tls: ")
    assert f"cert_file: {tmp_path / 'missing.crt'}: cannot read: No such file" in errors[0]


def test_check_config_refuses_a_key_that_does_not_match(
    clean_environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    certificates = Certificates(tmp_path)
    path = tmp_path / "tls.toml"
    path.write_text(f"[http]\ntls = {certificates.toml()}\n", encoding="utf-8")
    assert cli.main(["check-config", "-c", str(path)]) == 0
    certificates.break_key()
    assert cli.main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"\nhttp.tls: Value error, key_file: {certificates.key_file}: " in err
    assert "KEY_VALUES_MISMATCH" in err


def test_metrics_credentials_are_secrets_and_go_together() -> None:
    bearer = {"http": {"metrics_token_env": "METRICS_TOKEN"}}
    assert errors_of(bearer, {"METRICS_TOKEN": "short"}) == [
        "http.metrics_token_env: environment variable METRICS_TOKEN is shorter than 16 bytes"
    ]
    assert parse(bearer, "test.toml", {"METRICS_TOKEN": "m" * 16}).http.protect_probes is False
    basic = {"http": {"metrics_username": "prometheus", "metrics_password_env": "METRICS_PW"}}
    assert errors_of(basic) == [
        "http.metrics_password_env: environment variable METRICS_PW is not set"
    ]
    assert parse(basic, "test.toml", {"METRICS_PW": "p" * 16}).http.metrics_username == (
        "prometheus"
    )
    for http, message in [
        ({"metrics_username": "prometheus"}, "go together"),
        ({**basic["http"], "metrics_token_env": "METRICS_TOKEN"}, "one scheme"),
        ({"protect_probes": True}, "protect_probes needs"),
    ]:
        env = {"METRICS_PW": "p" * 16, "METRICS_TOKEN": "m" * 16}
        (error,) = errors_of({"http": http}, env)
        assert error.startswith("http: "), error
        assert message in error, error


@pytest.mark.parametrize(
    ("values", "refusal"),
    [
        ([], "missing"),
        (
            ["Basic " + base64.b64encode(b"prometheus:pw-0123456789abcdef").decode()] * 2,
            "duplicate",
        ),
        (["Bearer pw-0123456789abcdef"], "scheme"),
        (["Basic !!!"], "malformed"),
        (["Basic " + base64.b64encode(b"no-colon").decode()], "malformed"),
        (["Basic " + base64.b64encode(b"prometheus:pw-0123456789abcdeF").decode()], "credentials"),
        (["Basic " + base64.b64encode(b"Prometheus:pw-0123456789abcdef").decode()], "credentials"),
        (["basic " + base64.b64encode(b"prometheus:pw-0123456789abcdef").decode()], None),
    ],
)
def test_basic_credentials(values: list[str], refusal: str | None) -> None:
    credentials = Credentials(username="prometheus", password="pw-0123456789abcdef")
    assert credentials.refusal(values) == refusal
    assert credentials.challenge() == 'Basic realm="livestream-ingester", charset="UTF-8"'


def test_a_source_namespace_is_its_name_unless_the_config_names_one() -> None:
    data = minimal()
    data["sources"].append(dict(data["sources"][0], name="copy", namespace="relay"))
    data["dedup"] = {"legacy_orders": False}
    config = parse(data, "test.toml", {})
    assert [s.identity_namespace for s in config.sources] == ["relay", "relay"]
    assert (config.dedup.legacy_identities, config.dedup.legacy_orders) == (True, False)
    bad = minimal()
    bad["sources"][0]["namespace"] = "shopify\x1e"
    assert [e.split(":")[0] for e in errors_of(bad)] == ["sources[0].namespace"]


CATALOG_CSV = "sku,name,unit_grams,stock_units\nVT05,Vải 5 kg,5000,100\n"


def test_a_streams_catalog_is_read_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "catalogs").mkdir()
    (tmp_path / "catalogs" / "lucngan.csv").write_text(CATALOG_CSV, encoding="utf-8")
    path = tmp_path / "ingester.toml"
    path.write_text(
        "[catalogs]\nreload_interval_seconds = 0.5\n"
        '[streams.lucngan-2025]\ncatalog = "catalogs/lucngan.csv"\ntarget_grams = 54_000_000\n'
        "[streams.other]\ntarget_grams = 1000\nlow_stock_share = 0.25\n",
        encoding="utf-8",
    )
    config = load(path, {})
    assert config.catalogs.reload_interval_seconds == 0.5
    table = config.streams["lucngan-2025"]
    assert (table.target_grams, table.low_stock_share) == (54_000_000, 0.1)
    assert config.streams["other"].low_stock_share == 0.25
    (file,) = config.catalog_files()
    assert (file.stream, file.path, file.sku_limit) == (
        "lucngan-2025",
        tmp_path / "catalogs" / "lucngan.csv",
        200,
    )


def test_catalog_errors_are_reported_with_every_other_error(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("sku,name,unit_grams\nVT05,,0\n", encoding="utf-8")
    path = tmp_path / "ingester.toml"
    path.write_text(
        '[http]\nlisten = "nowhere"\n'
        '[streams.a]\ncatalog = "bad.csv"\n'
        '[streams.b]\ncatalog = "missing.toml"\nlow_stock_share = 1.5\n'
        '[streams."bad name"]\ntarget_grams = 0\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load(path, {})
    errors = info.value.errors
    assert errors[0].startswith("http.listen: ")
    assert any(e.startswith("streams.b.low_stock_share: ") for e in errors)
    assert any(e.startswith("streams.bad name.") for e in errors)
    # a catalog is read once the tables are valid; its errors come with the checks after that
    path.write_text(
        '[streams.a]\ncatalog = "bad.csv"\n[streams.b]\ncatalog = "missing.toml"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load(path, {})
    bad = tmp_path / "bad.csv"
    assert info.value.errors == [
        f"streams.a.catalog: {bad}:2: name: required, at most 128 characters",
        f"streams.a.catalog: {bad}:2: unit_grams: required, grams of one unit (1 to 1000000) "
        'or "kg"',
        f"streams.b.catalog: {tmp_path / 'missing.toml'}: cannot read: No such file or directory",
    ]


def test_check_config_reports_a_bad_catalog(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.toml").write_text('[[products]]\nsku = "A"\n', encoding="utf-8")
    path = tmp_path / "ingester.toml"
    path.write_text('[streams.s]\ncatalog = "c.toml"\n', encoding="utf-8")
    assert cli.main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "streams.s.catalog: " in err
    assert "c.toml:1: products[0]: name: required" in err
