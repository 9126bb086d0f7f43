"""MQTT topic patterns, per-stream decoding options and the MQTT source's config."""

from __future__ import annotations

import pytest

from ingest.adapter import FormatOptions
from ingest.model import Reason, Rejection
from ingest.native import NativeFormat
from ingest.sources.topics import TopicPattern
from workers.config import ConfigError, MqttConfig, parse


@pytest.mark.parametrize(
    ("pattern", "topic", "stream"),
    [
        ("livestream/{stream}/orders", "livestream/lucngan-2025/orders", "lucngan-2025"),
        ("shop/+/{stream}", "shop/eu/s1", "s1"),
        ("{stream}/#", "s2/a/b/c", "s2"),
        ("{stream}/#", "s2", "s2"),
        ("fixed/topic", "fixed/topic", None),
        ("a/+/c", "a/b/c", None),
    ],
)
def test_a_pattern_matches_and_takes_the_stream_level(
    pattern: str, topic: str, stream: str | None
) -> None:
    match = TopicPattern(pattern).match(topic)
    assert match is not None
    assert match.stream == stream


@pytest.mark.parametrize(
    ("pattern", "topic"),
    [
        ("livestream/{stream}/orders", "livestream/s/comments"),
        ("livestream/{stream}/orders", "livestream/s/orders/extra"),
        ("livestream/{stream}/orders", "livestream/s"),
        ("a/+/c", "a/c"),
        ("fixed/topic", "fixed"),
    ],
)
def test_a_pattern_rejects_other_topics(pattern: str, topic: str) -> None:
    assert TopicPattern(pattern).match(topic) is None


def test_the_subscription_filter_replaces_the_stream_level() -> None:
    assert TopicPattern("livestream/{stream}/orders").filter == "livestream/+/orders"
    assert TopicPattern("x/#").filter == "x/#"


@pytest.mark.parametrize(
    "pattern", ["", "a/b+/c", "a/#/c", "{stream}/{stream}", "a/{stream}x", "a/{b}"]
)
def test_invalid_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each has its own message
        TopicPattern(pattern)


def event(stream: str | None = None) -> bytes:
    extra = f', "stream": "{stream}"' if stream else ""
    return (
        b'{"kind": "comment", "id": "c1", "platform": "tiktok", '
        b'"ts": "2025-06-14T09:05:07Z"' + extra.encode() + b"}"
    )


def test_the_topic_stream_is_the_default_and_no_other_stream_is_allowed() -> None:
    options = FormatOptions(platforms=frozenset({"tiktok"})).for_stream("s1")
    fmt = NativeFormat(options)
    (first,) = fmt.decode(event())
    (second,) = fmt.decode(event("s1"))
    (third,) = fmt.decode(event("s2"))
    assert not isinstance(first, Rejection)
    assert not isinstance(second, Rejection)
    assert first.stream == second.stream == "s1"
    assert isinstance(third, Rejection)
    assert (third.reason, third.stream) == (Reason.STREAM_NOT_ALLOWED, "s1")


def test_a_topic_stream_outside_the_configured_allow_list_admits_nothing() -> None:
    options = FormatOptions(allowed_streams=frozenset({"s1"})).for_stream("s9")
    assert options.allowed_streams == frozenset()
    (result,) = NativeFormat(options).decode(event())
    assert isinstance(result, Rejection)
    assert result.reason is Reason.STREAM_NOT_ALLOWED


def mqtt(**fields: object) -> dict[str, object]:
    source: dict[str, object] = {
        "name": "m",
        "type": "mqtt",
        "client_id": "ingester-1",
        "topics": [{"pattern": "livestream/{stream}/orders"}],
    }
    source.update(fields)
    return {"sources": [source]}


def test_an_mqtt_source_with_defaults() -> None:
    (source,) = parse(mqtt(), "t.toml", {}).sources
    assert isinstance(source, MqttConfig)
    assert (source.url, source.qos, source.protocol) == ("mqtt://127.0.0.1:1883", 1, "5")
    assert source.session_expiry > 0


@pytest.mark.parametrize(
    ("fields", "location"),
    [
        ({"topics": []}, "sources[0].topics"),
        ({"topics": [{"pattern": "a/b+"}]}, "sources[0].topics[0].pattern"),
        ({"url": "http://broker"}, "sources[0].url"),
        ({"client_id": "has space"}, "sources[0].client_id"),
        ({"qos": 2}, "sources[0].qos"),
        ({"shared_group": "g", "protocol": "3.1.1"}, "sources[0]"),
        ({"cert_file": "c.pem", "key_file": "k.pem"}, "sources[0]"),
        ({"password_env": "MQTT_PASSWORD"}, "sources[0].password_env"),
    ],
)
def test_mqtt_mistakes_are_reported_where_they_are(
    fields: dict[str, object], location: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        parse(mqtt(**fields), "t.toml", {})
    assert [e.split(": ", 1)[0] for e in refused.value.errors] == [location]
