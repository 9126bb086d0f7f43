"""MQTT source on aiomqtt 2.x: persistent session, acknowledgement only after the commit.

Everything aiomqtt- and paho-specific lives in this module, so moving to aiomqtt 3 touches one
file. aiomqtt 2.x acknowledges QoS 1 messages as soon as paho hands them over; it builds the paho
client itself and has no option for manual acknowledgement. paho-mqtt 2 has one
(``manual_ack_set`` / ``ack``), so this module switches it on for the client aiomqtt created
before connecting, and sends each PUBACK only once the message's events are committed to Redis
(or rejected and dead-lettered). PUBACKs go out in the order the messages arrived, as MQTT
requires. If the process dies first, the broker redelivers and dedup makes that harmless.

Retry policy: every MQTT or network error reconnects, in the loop all client sources share
(``ingest.sources.reconnect``); so does a session that went silent (``Watchdog``).

The socket's event-loop callbacks are ours (``_SocketWatch``), not aiomqtt's: under uvloop,
an error event on the socket (a reset while unread data is buffered, as when the broker
restarts during a backlog) runs the reader once and then ends the loop's watch of that socket
for good, so paho never read as far as the error and the session hung "connected" until the
keepalive gave up; and aiomqtt's registrations, deferred with ``call_soon_threadsafe``, then
failed on the dead watch. The reader here keeps reading, without waiting for another readiness
event, while the socket has input, so paho always reaches the error or the end of the stream.

Backpressure: the broker sends at most ``receive_maximum`` unacknowledged QoS 1 messages (MQTT 5
Receive Maximum), so an ingester that stops acknowledging — because its buffer is full — stops
the flow at the broker instead of queueing without bound here.

Throughput: the consumer hands every message already read to the sink as one frame (at most a
quarter of ``receive_maximum``), so a backlog is committed in batches of hundreds rather than
message by message; while consuming, the reader stays at most half of ``receive_maximum`` ahead.
paho's own per-packet costs are cut where they were the ingester's largest: its MQTT 5
property tables are built once (``SharedTableProperties``), its socket is read 64 KiB at a time
(``BufferedReceive``), and each topic's route is looked up once (docs/benchmarks.md, "MQTT").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import importlib
import random
import select
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.model import Decoded, Reason, Rejection
from ingest.native import valid_stream
from ingest.redact import masked, masked_text
from ingest.sources.base import Format, Health, Sink
from ingest.sources.reconnect import Reconnecting, ReconnectSettings, checkpoint
from ingest.sources.topics import TopicPattern

_Ack = tuple[int, int, asyncio.Future[None]]


class SharedTableProperties(Properties):
    """paho's MQTT 5 properties, with their tables made once rather than for every packet.

    Each paho ``Properties`` builds three tables of every property's name, type and packets,
    and paho makes one for every MQTT 5 PUBLISH it decodes: a fifth of the ingester's CPU in a
    QoS 1 drain (docs/benchmarks.md, "MQTT"). paho only ever reads the tables, so every
    instance here shares those of one template; anything else behaves as paho's own.
    """

    _TABLES: ClassVar[dict[str, Any]] = {}

    def __init__(self, packetType: int) -> None:
        object.__setattr__(self, "packetType", packetType)
        for name, table in self._TABLES.items():
            object.__setattr__(self, name, table)


def share_property_tables() -> bool:
    """Have paho decode packets with :class:`SharedTableProperties`; False (and nothing
    changed) if this paho's ``Properties`` holds anything but the known tables."""
    template = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    tables = {name: value for name, value in vars(template).items() if name != "packetType"}
    if set(tables) != {"types", "names", "properties"}:
        return False
    SharedTableProperties._TABLES = tables
    modules: list[Any] = [paho]
    with contextlib.suppress(ImportError):  # paho 2.2 decodes packets in a module of its own
        modules.append(importlib.import_module("paho.mqtt._packet"))
    for module in modules:
        if getattr(module, "Properties", None) is Properties:
            module.Properties = SharedTableProperties
    return True


share_property_tables()

READS_PER_CALLBACK = 64
"""Packets read in one go before the reader lets other callbacks run."""

ROUTES_KEPT = 1024
"""Topics whose format (or rejection) a source remembers; beyond, it starts over."""

BURSTS_IN_WINDOW = 4
"""A frame holds at most a quarter of the broker's in-flight window (``receive_maximum``): a
frame of the whole window would stop the broker until its commit, so that reading and
committing took turns instead of overlapping."""


class SessionStalled(Exception):
    """Nothing arrived from the broker, not even a PINGRESP, for longer than keepalive allows."""


class Watchdog:
    """Says when a session has been silent too long. paho pings after ``keepalive`` seconds
    without traffic, so on a live connection something arrives at least that often; ``limit``
    (1.5 × keepalive) leaves room for the ping's round trip."""

    def __init__(self, limit: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self.last = clock()

    def feed(self) -> None:
        self.last = self.clock()

    def expired(self) -> bool:
        return self.clock() - self.last > self.limit


RECEIVE_BYTES = 65536
"""What one read of the socket asks for (see :class:`BufferedReceive`)."""


def _no_reads(bufsize: int) -> bytes:
    raise ConnectionError("this paho client reads its socket otherwise")


class BufferedReceive:
    """paho's socket reads, through a buffer.

    paho reads a packet in three or more ``recv`` calls (its type, each byte of its length,
    then its body): most of a QoS 1 drain's system calls. Installed in place of the client's
    ``_sock_recv``, this reads the socket :data:`RECEIVE_BYTES` at a time with paho's own method
    (so its errors, and the empty read of a closed stream, reach paho as before) and hands out
    the pieces paho asks for. Bytes read from one socket are never served for another.
    """

    def __init__(self, client: paho.Client) -> None:
        self.client = client
        recv = getattr(client, "_sock_recv", None)
        self._recv: Callable[[int], bytes] = recv if callable(recv) else _no_reads
        self._sock: Any = None
        self._data = b""
        self._at = 0
        # Only where paho reads through these two (every paho 2 so far); else paho stays as is.
        if hasattr(client, "_sock") and callable(recv):
            client._sock_recv = self  # type: ignore[method-assign]  # paho calls it as its own

    def pending(self) -> bool:
        """Bytes of the client's current socket wait here."""
        return self._at < len(self._data) and self._sock is getattr(self.client, "_sock", None)

    def __call__(self, bufsize: int) -> bytes:
        if not self.pending():
            self._sock, self._data, self._at = getattr(self.client, "_sock", None), b"", 0
            data = self._recv(RECEIVE_BYTES)
            if len(data) <= bufsize:
                return data
            self._data = data
        start = self._at
        self._at = start + bufsize
        if self._at >= len(self._data):
            piece = self._data[start:]
            self._data, self._at = b"", 0
            return piece
        return self._data[start : self._at]


def _has_input(sock: Any) -> bool:
    """Bytes, an end of stream or an error wait on ``sock`` (checked without blocking)."""
    pending = getattr(sock, "pending", None)  # TLS: decrypted bytes paho has not taken yet
    if pending is not None and pending() > 0:
        return True
    fd = sock.fileno()
    if fd < 0:
        return False
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


class _SocketWatch:
    """Connects paho's socket to the running loop in place of aiomqtt 2.x's callbacks.

    paho calls these from the executor thread that connects as well as from the loop; work
    for the loop is done directly on its thread and handed over otherwise. A registration
    for a socket paho has closed meanwhile is dropped. If the loop refuses to watch the socket
    (uvloop, after an error event) the session ends instead of hanging. Each arrival feeds the
    watchdog.
    """

    def __init__(
        self, client: aiomqtt.Client, watchdog: Watchdog, read_ahead: int | None = None
    ) -> None:
        self.client = client
        self.paho = client._client
        self.receive = BufferedReceive(self.paho)
        self.watchdog = watchdog
        self.read_ahead = read_ahead
        """Messages read and not yet taken by the consumer at which reading pauses (None:
        never). Without it the reader, called round after round while the broker sends a
        backlog, read far ahead of the commits (Mosquitto 2.0.11 sends a resumed session more
        than Receive Maximum), and the event loop spent its turns on it: the consumer, the
        committer and /metrics waited, and the growing queue of messages cost collections."""
        self.paused_at: float | None = None
        """When reading paused (watchdog clock), or None while reading."""
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.paho.on_socket_open = self._on_open
        self.paho.on_socket_close = self._on_close
        self.paho.on_socket_register_write = self._on_register_write
        self.paho.on_socket_unregister_write = self._on_unregister_write

    def _on_loop(self, callback: Callable[..., object], *args: Any) -> None:
        if threading.get_ident() == self.thread:
            callback(*args)
        else:
            self.loop.call_soon_threadsafe(callback, *args)

    def _live(self, sock: Any) -> bool:
        fd: int = sock.fileno()
        return fd >= 0 and self.paho.socket() is sock

    def fail(self, exc: BaseException) -> None:
        """End the session: the consumer sees ``MqttError`` caused by ``exc``."""
        disconnected = self.client._disconnected
        if not disconnected.done():
            disconnected.set_exception(exc)

    def _on_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._open, sock)

    def _open(self, sock: Any) -> None:
        if not self._live(sock):
            return
        try:
            self.loop.add_reader(sock.fileno(), self._readable)
        except RuntimeError as exc:
            self.fail(exc)
            return
        self.client._misc_task = self.loop.create_task(self.client._misc_loop(), name="mqtt.misc")

    def _ahead(self) -> bool:
        return self.read_ahead is not None and self.client._queue.qsize() >= self.read_ahead

    def _pause(self) -> None:
        sock = self.paho.socket()
        if sock is not None and sock.fileno() >= 0:
            self.loop.remove_reader(sock.fileno())
        self.paused_at = self.watchdog.clock()

    def resume(self) -> None:
        """Read again after a pause (called once the consumer took messages, and by the
        guard after a pause of a while, so paho's keepalive and the watchdog stay served)."""
        if self.paused_at is None:
            return
        self.paused_at = None
        self.watchdog.feed()  # silence while paused was ours, not the broker's
        sock = self.paho.socket()
        if sock is None or not self._live(sock):
            return
        try:
            self.loop.add_reader(sock.fileno(), self._readable)
        except RuntimeError as exc:
            self.fail(exc)
            return
        self.loop.call_soon(self._readable)

    def _readable(self) -> None:
        if self.paused_at is not None:
            return
        self.watchdog.feed()
        try:
            for _ in range(READS_PER_CALLBACK):
                if self._ahead():
                    self._pause()
                    return
                sock = self.paho.socket()
                if sock is None or self.paho.loop_read() != paho.MQTT_ERR_SUCCESS:
                    return  # paho closed the socket and reported the disconnection
                if not (self.receive.pending() or _has_input(sock)):
                    return
        except Exception as exc:
            self.fail(exc)
            return
        # More is waiting: go on next round rather than wait for a readiness event, which
        # uvloop no longer delivers after an error event on the socket.
        self.loop.call_soon(self._readable)

    def _on_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._closed, sock.fileno())
        misc = self.client._misc_task
        if misc is not None and not misc.done():
            self._on_loop(misc.cancel)

    def _closed(self, fd: int) -> None:
        if fd >= 0:
            # Also drops uvloop's dead watch, which would refuse the next socket with this fd.
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._start_writing, sock)

    def _start_writing(self, sock: Any) -> None:
        if not self._live(sock) or not self.paho.want_write():
            return
        try:
            self.loop.add_writer(sock.fileno(), self._writable)
        except RuntimeError as exc:  # uvloop: its watch of this socket ended on an error
            self.fail(exc)

    def _writable(self) -> None:
        try:
            self.paho.loop_write()
        except Exception as exc:
            self.fail(exc)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._stop_writing, sock.fileno())

    def _stop_writing(self, fd: int) -> None:
        if fd >= 0:
            self.loop.remove_writer(fd)

    def close(self) -> None:
        """Stop watching and close the socket if the session ended without paho closing it."""
        disconnected = self.client._disconnected
        if disconnected.done() and not disconnected.cancelled():
            # Mark it retrieved: a session stopped before it read the disconnection would
            # otherwise log "Future exception was never retrieved".
            disconnected.exception()
        sock = self.paho.socket()
        if sock is None:
            return
        self._closed(sock.fileno())
        with contextlib.suppress(OSError):
            sock.close()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MqttSettings(ReconnectSettings):
    client_id: str
    """The session's identifier: the broker keeps the session (and what it queued) under it."""
    topics: tuple[TopicPattern, ...]
    url: str = "mqtt://127.0.0.1:1883"
    """``mqtt://host[:port]``, or ``mqtts://`` for TLS (port 1883 or 8883 by default)."""
    protocol: str = "5"
    """``"5"`` or ``"3.1.1"``."""
    qos: int = 1
    shared_group: str | None = None
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    session_expiry: int = 86_400
    """Seconds the broker keeps the session after a disconnection (MQTT 5)."""
    receive_maximum: int = 1000
    """Unacknowledged QoS 1 messages the broker sends at most (MQTT 5)."""
    keepalive: int = 30
    stop_timeout: float = 2.0
    """Seconds a stop waits for the DISCONNECT to go out."""


def tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    """The TLS context of an ``mqtts://`` url (None for ``mqtt://``)."""
    if not settings.url.startswith("mqtts://"):
        return None
    context = ssl.create_default_context(cafile=settings.ca_file)
    if settings.cert_file is not None:
        context.load_cert_chain(settings.cert_file, settings.key_file)
    return context


class MqttSource(Reconnecting):
    """Subscribes to topic patterns and forwards each message's events to the sink."""

    def __init__(
        self,
        name: str,
        formats: Callable[[str | None], Format],
        sink: Sink,
        health: Health,
        settings: MqttSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self.formats = formats
        self.sink = sink
        self.health = health
        self.settings = settings
        address = urlsplit(settings.url)
        self.host = address.hostname or "127.0.0.1"
        self.port = address.port or (8883 if address.scheme == "mqtts" else 1883)
        self.tls = tls_context(settings)
        self._reconnect_with(settings, clock, rng)
        self.acknowledged = 0
        self._routes: dict[str, Format | str] = {}

    def _client(self) -> aiomqtt.Client:
        # The client's queue stays unbounded: aiomqtt would drop a message beyond a bound, and
        # a dropped QoS 1 message, never acknowledged, holds the broker's flow until a reconnect.
        # What bounds it is the broker's in-flight limit (Receive Maximum on MQTT 5, the
        # broker's own setting on 3.1.1); QoS 0 has none.
        settings = self.settings
        session: dict[str, Any]
        if settings.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = settings.session_expiry
            properties.ReceiveMaximum = settings.receive_maximum
            session = {
                "protocol": aiomqtt.ProtocolVersion.V5,
                "clean_start": False,
                "properties": properties,
            }
        else:
            session = {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": False}
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=settings.client_id,
            username=settings.username,
            password=settings.password,
            tls_context=self.tls,
            keepalive=settings.keepalive,
            **session,
        )
        # Before connecting: a persistent session's queued messages arrive right after CONNACK.
        client._client.manual_ack_set(True)
        return client

    def _filters(self) -> list[str]:
        group = self.settings.shared_group
        prefix = f"$share/{group}/" if group else ""
        return [prefix + pattern.filter for pattern in self.settings.topics]

    async def _session(self) -> None:
        client = self._client()
        watchdog = Watchdog(1.5 * self.settings.keepalive, self.clock)
        watch = _SocketWatch(client, watchdog)
        try:
            async with client:
                self._connected_at = self.clock()
                for topic in self._filters():
                    await client.subscribe(topic, qos=self.settings.qos)
                checkpoint()  # a stop that met CONNACK or SUBACK (see checkpoint)
                self.health.connected(self.name, True)  # connected means receiving
                try:
                    await self._consume(client, watch)
                except asyncio.CancelledError:
                    # Stopping: aiomqtt waits ``timeout`` for its DISCONNECT to go out, which a
                    # hung broker never lets happen; don't hold the shutdown that long.
                    client.timeout = self.settings.stop_timeout
                    raise
        finally:
            watch.close()

    def _retry_reason(self, exc: Exception) -> str | None:
        if isinstance(exc.__cause__, SessionStalled):
            return "stalled"
        if isinstance(exc, aiomqtt.MqttCodeError):
            return f"mqtt rc {exc.rc}"
        if isinstance(exc, aiomqtt.MqttError):
            return "mqtt error"
        if isinstance(exc, OSError):
            return "network"
        return None

    async def _consume(self, client: aiomqtt.Client, watch: _SocketWatch) -> None:
        pending: collections.deque[_Ack] = collections.deque()
        arrived = asyncio.Event()
        acking = asyncio.create_task(
            self._acknowledge(client, pending, arrived), name=f"source[{self.name}].ack"
        )
        guarding = asyncio.create_task(self._guard(watch), name=f"source[{self.name}].watchdog")
        queue: asyncio.Queue[aiomqtt.Message] = client._queue
        # Read ahead at most half the in-flight window, enough to keep commits full; only
        # from here on: a SUBACK behind the first messages must be read while nobody consumes.
        watch.read_ahead = max(1, self.settings.receive_maximum // 2)
        most = max(1, self.settings.receive_maximum // BURSTS_IN_WINDOW)
        try:
            async for first in client.messages:
                # Whatever paho has already read waits in the queue: take it all (up to
                # ``most``) and hand it over as one frame. Submitting each message on its own
                # let the committer run between two, so a deep backlog drained in commits of
                # a few events (see docs/benchmarks.md, "MQTT").
                burst = [first]
                while len(burst) < most and not queue.empty():
                    burst.append(queue.get_nowait())
                self.health.received(self.name)
                items: list[Decoded] = []
                for message in burst:
                    items += self._decode(message)
                watch.resume()
                future = await self.sink.submit(self.name, items)
                for message in burst:
                    if message.qos > 0:
                        pending.append((message.mid, message.qos, future))
                arrived.set()
        finally:
            for task in (acking, guarding):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _guard(self, watch: _SocketWatch) -> None:
        """End a session from which nothing arrives any more (counted as a reconnect)."""
        watchdog = watch.watchdog
        while True:
            await asyncio.sleep(min(1.0, watchdog.limit / 10))
            paused = watch.paused_at
            if paused is not None and watchdog.clock() - paused > watchdog.limit / 6:
                watch.resume()  # the consumer is held up (buffer full): keep the session alive
            if watchdog.expired():
                break
        watch.fail(SessionStalled(f"nothing from the broker for {watchdog.limit:g} s"))

    def _route(self, topic: str) -> Format | str:
        """The format of a topic's messages, or why they are rejected; remembered for the
        last :data:`ROUTES_KEPT` topics (a drain's messages come on a few topics)."""
        route = self._routes.get(topic)
        if route is not None:
            return route
        route = masked_text(f"no pattern matches {topic[:200]!r}")
        for pattern in self.settings.topics:
            match = pattern.match(topic)
            if match is None:
                continue
            if match.stream is not None and not valid_stream(match.stream):
                route = masked_text(f"stream level of {topic[:200]!r}")
            else:
                route = self.formats(match.stream)
            break
        if len(self._routes) >= ROUTES_KEPT:
            self._routes.clear()
        self._routes[topic] = route
        return route

    def _decode(self, message: aiomqtt.Message) -> list[Decoded]:
        payload = message.payload
        raw = payload if isinstance(payload, bytes) else str(payload or "").encode()
        route = self._route(message.topic.value)
        if isinstance(route, str):
            return [Rejection(Reason.INVALID_VALUE, route, masked(raw))]
        return route.decode(raw)

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
