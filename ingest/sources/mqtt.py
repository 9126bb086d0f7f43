"""MQTT source on aiomqtt 2.x: persistent session, acknowledgement only after the commit.

Everything aiomqtt- and paho-specific lives in this module, so moving to aiomqtt 3 touches one
file. aiomqtt 2.x acknowledges QoS 1 messages as soon as paho hands them over; it builds the paho
client itself and has no option for manual acknowledgement. paho-mqtt 2 has one
(``manual_ack_set`` / ``ack``), so this module switches it on for the client aiomqtt created
before connecting, and sends each PUBACK only once the message's events are committed to Redis
(or rejected and dead-lettered). PUBACKs go out in the order the messages arrived, as MQTT
requires. If the process dies first, the broker redelivers and dedup makes that harmless.

Retry policy: every MQTT or network error reconnects, in the loop all client sources share
(``ingest.sources.reconnect``).
Backpressure: the broker sends at most ``receive_maximum`` unacknowledged QoS 1 messages (MQTT 5
Receive Maximum), so an ingester that stops acknowledging — because its buffer is full — stops
the flow at the broker instead of queueing without bound here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
from collections.abc import Callable, Sequence

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.model import Decoded, Reason, Rejection
from ingest.native import valid_stream
from ingest.sources.backoff import Backoff
from ingest.sources.base import Format, Health, Sink
from ingest.sources.reconnect import Reconnecting
from ingest.sources.topics import TopicPattern

_Ack = tuple[int, int, asyncio.Future[None]]


class MqttSource(Reconnecting):
    """Subscribes to topic patterns and forwards each message's events to the sink."""

    def __init__(
        self,
        name: str,
        formats: Callable[[str | None], Format],
        sink: Sink,
        health: Health,
        *,
        host: str,
        port: int,
        identifier: str,
        patterns: Sequence[TopicPattern],
        qos: int = 1,
        mqtt5: bool = True,
        shared_group: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        session_expiry: int = 86_400,
        receive_maximum: int = 1000,
        keepalive: int = 30,
        backoff: Backoff | None = None,
        backoff_reset_after: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.formats = formats
        self.sink = sink
        self.health = health
        self.host = host
        self.port = port
        self.identifier = identifier
        self.patterns = list(patterns)
        self.qos = qos
        self.mqtt5 = mqtt5
        self.shared_group = shared_group
        self.username = username
        self.password = password
        self.tls = tls
        self.session_expiry = session_expiry
        self.receive_maximum = receive_maximum
        self.keepalive = keepalive
        self.backoff = backoff or Backoff(0.5, 30.0)
        self.backoff_reset_after = backoff_reset_after
        self.clock = clock
        self.acknowledged = 0

    def _client(self) -> aiomqtt.Client:
        # The client's queue stays unbounded: aiomqtt would drop a message beyond a bound, and
        # a dropped QoS 1 message, never acknowledged, holds the broker's flow until a reconnect.
        # What bounds it is the broker's in-flight limit (Receive Maximum on MQTT 5, the
        # broker's own setting on 3.1.1); QoS 0 has none.
        if self.mqtt5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self.session_expiry
            properties.ReceiveMaximum = self.receive_maximum
            client = aiomqtt.Client(
                self.host,
                self.port,
                identifier=self.identifier,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=False,
                properties=properties,
                username=self.username,
                password=self.password,
                tls_context=self.tls,
                keepalive=self.keepalive,
            )
        else:
            client = aiomqtt.Client(
                self.host,
                self.port,
                identifier=self.identifier,
                protocol=aiomqtt.ProtocolVersion.V311,
                clean_session=False,
                username=self.username,
                password=self.password,
                tls_context=self.tls,
                keepalive=self.keepalive,
            )
        # Before connecting: a persistent session's queued messages arrive right after CONNACK.
        client._client.manual_ack_set(True)
        return client

    def _filters(self) -> list[str]:
        prefix = f"$share/{self.shared_group}/" if self.shared_group else ""
        return [prefix + pattern.filter for pattern in self.patterns]

    async def _session(self) -> None:
        async with self._client() as client:
            self._connected_at = self.clock()
            for topic in self._filters():
                await client.subscribe(topic, qos=self.qos)
            self.health.connected(self.name, True)  # connected means receiving
            await self._consume(client)

    def _retry_reason(self, exc: Exception) -> str | None:
        if isinstance(exc, aiomqtt.MqttCodeError):
            return f"mqtt rc {exc.rc}"
        if isinstance(exc, aiomqtt.MqttError):
            return "mqtt error"
        if isinstance(exc, OSError):
            return "network"
        return None

    async def _consume(self, client: aiomqtt.Client) -> None:
        pending: collections.deque[_Ack] = collections.deque()
        arrived = asyncio.Event()
        acking = asyncio.create_task(
            self._acknowledge(client, pending, arrived), name=f"source[{self.name}].ack"
        )
        try:
            async for message in client.messages:
                self.health.received(self.name)
                future = await self.sink.submit(self.name, self._decode(message))
                if message.qos > 0:
                    pending.append((message.mid, message.qos, future))
                    arrived.set()
        finally:
            acking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acking

    def _decode(self, message: aiomqtt.Message) -> list[Decoded]:
        payload = message.payload
        raw = payload if isinstance(payload, bytes) else str(payload or "").encode()
        topic = message.topic.value
        for pattern in self.patterns:
            match = pattern.match(topic)
            if match is None:
                continue
            if match.stream is not None and not valid_stream(match.stream):
                return [Rejection(Reason.INVALID_VALUE, f"stream level of {topic[:200]!r}", raw)]
            return list(self.formats(match.stream).decode(raw))
        return [Rejection(Reason.INVALID_VALUE, f"no pattern matches {topic[:200]!r}", raw)]

    async def _acknowledge(
        self, client: aiomqtt.Client, pending: collections.deque[_Ack], arrived: asyncio.Event
    ) -> None:
        """PUBACK each message once committed, in arrival order; stop at the first failure
        (the broker redelivers the rest after a reconnect)."""
        while True:
            while not pending:
                arrived.clear()
                await arrived.wait()
            _, _, head = pending[0]
            if not head.done():
                await asyncio.wait([head])
            # Commits complete a batch at a time: acknowledge every finished message in a row.
            while pending and pending[0][2].done():
                mid, qos, future = pending[0]
                if future.cancelled() or future.exception() is not None:
                    return
                client._client.ack(mid, qos)
                pending.popleft()
                self.acknowledged += 1


class Publisher:
    """Publishes (topic, payload) pairs in order at QoS 1, each until the broker acknowledges
    it, reconnecting after a broker restart — so, like any real producer, it may duplicate.
    ``at`` gives each message's due time in seconds from the start (None: as fast as possible).
    Used by the demo and the tests; it lives here to keep every aiomqtt call in one module."""

    def __init__(
        self,
        host: str,
        port: int,
        messages: Sequence[tuple[str, bytes]],
        *,
        at: Sequence[float] | None = None,
        pause: float = 0.0,
        tls: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.tls = tls
        self.port = port
        self.messages = list(messages)
        self.at = at
        self.pause = pause
        self.clock = clock
        self.position = 0
        self.reconnects = 0

    @property
    def done(self) -> bool:
        return self.position >= len(self.messages)

    async def run(self) -> None:
        started = self.clock()
        while not self.done:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, timeout=5, tls_context=self.tls
                ) as client:
                    while not self.done:
                        if self.at is not None:
                            due = started + self.at[self.position] - self.clock()
                            if due > 0:
                                await asyncio.sleep(due)
                        topic, payload = self.messages[self.position]
                        await client.publish(topic, payload, qos=1)
                        self.position += 1
                        if self.pause:
                            await asyncio.sleep(self.pause)
            except aiomqtt.MqttError:
                self.reconnects += 1
                await asyncio.sleep(0.1)
