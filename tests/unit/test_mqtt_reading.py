"""The MQTT source's speed-ups of paho: shared property tables, buffered socket reads, and the
per-topic routes. Pure logic; the MQTT end-to-end tests run them against a real broker."""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.adapter import FormatOptions
from ingest.model import Rejection
from ingest.native import NativeFormat
from ingest.sources.mqtt import (
    RECEIVE_BYTES,
    ROUTES_KEPT,
    BufferedReceive,
    MqttSettings,
    MqttSource,
    SharedTableProperties,
)
from ingest.sources.topics import TopicPattern


def publish_properties(cls: Any) -> Any:
    properties = cls(PacketTypes.PUBLISH)
    properties.ContentType = "application/json"
    properties.MessageExpiryInterval = 60
    properties.UserProperty = ("stream", "lychee")
    properties.UserProperty = ("shop", "luc-ngan")
    return properties


def test_paho_decodes_packets_with_the_shared_tables() -> None:
    assert vars(paho)["Properties"] is SharedTableProperties
    with contextlib.suppress(ImportError):  # paho 2.2 decodes packets in a module of its own
        assert importlib.import_module("paho.mqtt._packet").Properties is SharedTableProperties


def test_shared_table_properties_unpack_what_paho_packs_as_paho_does() -> None:
    packed = publish_properties(Properties).pack()
    stock: Any = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    shared: Any = SharedTableProperties(PacketTypes.PUBLISH)
    stock.unpack(packed)
    shared.unpack(packed)
    assert shared.json() == stock.json()
    assert shared.UserProperty == [("stream", "lychee"), ("shop", "luc-ngan")]
    assert publish_properties(SharedTableProperties).pack() == packed


def test_shared_table_properties_keep_their_values_apart_and_their_checks() -> None:
    one, other = (
        SharedTableProperties(PacketTypes.PUBLISH),
        SharedTableProperties(PacketTypes.PUBLISH),
    )
    one.ContentType = "text/plain"
    assert not hasattr(other, "ContentType")
    assert one.names is other.names  # the tables, and only they, are shared
    with pytest.raises(Exception, match="Property name must be one of"):  # paho's MQTTException
        one.NoSuchProperty = 1
    with pytest.raises(Exception, match="does not apply"):  # a CONNACK property on a PUBLISH
        one.ServerKeepAlive = 5


class Sock:
    pass


class Client:
    """What BufferedReceive uses of a paho client: its socket and its own read method."""

    def __init__(self, reads: list[bytes | type[Exception]]) -> None:
        self._sock: Any = Sock()
        self.reads = reads
        self.asked: list[int] = []

    def _sock_recv(self, bufsize: int) -> bytes:
        self.asked.append(bufsize)
        read = self.reads.pop(0)
        if isinstance(read, type):
            raise read()
        return read


def test_buffered_receive_hands_out_pieces_of_one_read() -> None:
    client = Client([b"\x30\x05hello\x30\x02hi"])
    receive = BufferedReceive(client)  # type: ignore[arg-type]
    assert client._sock_recv == receive  # installed in the client's place
    assert [receive(1), receive(1), receive(5)] == [b"\x30", b"\x05", b"hello"]
    assert receive.pending()
    assert [receive(1), receive(1), receive(10)] == [b"\x30", b"\x02", b"hi"]  # short at the end
    assert not receive.pending()
    assert client.asked == [RECEIVE_BYTES]


def test_buffered_receive_passes_paho_its_errors_and_the_end_of_the_stream() -> None:
    client = Client([BlockingIOError, b"ab", b""])
    receive = BufferedReceive(client)  # type: ignore[arg-type]
    with pytest.raises(BlockingIOError):
        receive(1)
    assert receive(2) == b"ab"  # what fits is handed over as read
    assert receive(1) == b""  # closed: paho sees the empty read
    assert not receive.pending()


def test_buffered_receive_never_serves_one_sockets_bytes_for_another() -> None:
    client = Client([b"old bytes", b"new"])
    receive = BufferedReceive(client)  # type: ignore[arg-type]
    assert receive(3) == b"old"
    client._sock = Sock()  # paho reconnected
    assert not receive.pending()
    assert receive(3) == b"new"


class Sink:
    async def submit(self, source: str, items: Any) -> Any:
        raise AssertionError("not used")


class Health:
    def received(self, source: str) -> None: ...
    def connected(self, source: str, up: bool) -> None: ...


def source() -> MqttSource:
    settings = MqttSettings(client_id="test", topics=(TopicPattern("livestream/{stream}/events"),))
    fmt = NativeFormat(FormatOptions())
    return MqttSource("mqtt", lambda stream: fmt, Sink(), Health(), settings)  # type: ignore[arg-type]


def test_routes_are_remembered_per_topic_and_bounded() -> None:
    mqtt = source()
    assert isinstance(mqtt._route("livestream/lychee/events"), NativeFormat)
    assert mqtt._route("livestream/lychee/events") is mqtt._route("livestream/lychee/events")
    assert "no pattern matches" in str(mqtt._route("elsewhere"))
    assert "stream level" in str(mqtt._route("livestream/bad{tag}/events"))
    for n in range(3 * ROUTES_KEPT):  # a broker that sends on ever new topics
        mqtt._route(f"livestream/s{n}/events")
        assert len(mqtt._routes) <= ROUTES_KEPT


def test_a_topic_no_pattern_matches_is_rejected_however_often_it_comes() -> None:
    mqtt = source()
    for _ in range(2):
        (rejection,) = mqtt._decode(Message("elsewhere", b'{"kind": "comment"}'))  # type: ignore[arg-type]
        assert isinstance(rejection, Rejection)
        assert rejection.raw == b'{"kind": "comment"}'


class Topic:
    def __init__(self, value: str) -> None:
        self.value = value


class Message:
    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic = Topic(topic)
        self.payload = payload


def test_buffered_receive_leaves_a_client_without_those_attributes_alone() -> None:
    class Other:
        def read(self, bufsize: int) -> bytes:
            return b""

    other = Other()
    receive = BufferedReceive(other)  # type: ignore[arg-type]
    assert not hasattr(other, "_sock_recv")
    assert not receive.pending()
