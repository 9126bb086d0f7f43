"""Component tests for the websocket sources over real connections on 127.0.0.1.

No Redis: a recording Sink and Health stand in for the runtime. Backoff uses an rng that always
returns 1.0, so every delay is exactly its ceiling: 0.01, 0.02, 0.04, 0.08, 0.08, ...
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import CloseCode
from websockets.protocol import State

from ingest.adapter import FormatOptions
from ingest.model import Comment, Decoded, Order, Reason, Viewers
from ingest.native import NativeFormat
from ingest.sources.admission import RateLimits
from ingest.sources.tokens import read_tokens
from ingest.sources.websocket import (
    WebsocketClientSettings,
    WebsocketClientSource,
    WebsocketServerSettings,
    WebsocketServerSource,
)
from ingest.sources.websocket_picows import PicowsClientSource
from tests.recorders import ManualClock, RecordingHealth, RecordingSink, running
from tests.waiting import UNIT, until

HOST = "127.0.0.1"
STREAM = "live-1"
MAX_FRAME_BYTES = 1024
"""What the format accepts; frames between this and ``MAX_SIZE`` are dead-lettered as oversize."""
MAX_SIZE = 4096
"""What websockets accepts; a bigger frame closes the connection with 1009."""
TOKEN = "s3cret-producer-token"
PATH = "/ingest"
WAIT = 5.0
"""Upper bound, in UNIT seconds, of any single wait on a condition."""


def bounded() -> asyncio.Timeout:
    """An overall bound on a test's awaits, on top of the bound of each ``until``."""
    return asyncio.timeout(20 * UNIT)


def native() -> NativeFormat:
    return NativeFormat(
        FormatOptions(
            default_stream=STREAM,
            platforms=frozenset({"tiktok"}),
            max_frame_bytes=MAX_FRAME_BYTES,
        )
    )


def event(event_id: str, kind: str = "comment", **fields: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "id": event_id,
        "ts": "2024-05-01T12:00:00Z",
        "platform": "tiktok",
        "user": "u1",
        **fields,
    }


def frame(event_id: str, kind: str = "comment", **fields: Any) -> str:
    return orjson.dumps(event(event_id, kind, **fields)).decode()


def oversize_frame() -> str:
    """A frame the format rejects as oversize but websockets lets through."""
    text = frame("big", text="x" * (MAX_FRAME_BYTES + 500))
    assert MAX_FRAME_BYTES < len(text) < MAX_SIZE
    return text


def too_big_frame() -> str:
    """A frame websockets refuses: more than ``MAX_SIZE`` bytes."""
    text = frame("huge", text="x" * (MAX_SIZE + 500))
    assert len(text) > MAX_SIZE
    return text


INVALID_UTF8 = (
    b'{"kind":"comment","id":"bad-\xff\xfe","ts":"2024-05-01T12:00:00Z","platform":"tiktok"}'
)
"""Binary frame: websockets does not check binary frames for UTF-8, the format must."""


TRANSPORTS = {"websockets": WebsocketClientSource, "picows": PicowsClientSource}
"""The client source over each websocket library it can read through (``transport``)."""


@pytest.fixture(params=sorted(TRANSPORTS))
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def client_source(
    transport: str,
    url: str,
    sink: RecordingSink,
    health: RecordingHealth,
    clock: Callable[[], float] = time.monotonic,
    *,
    fmt: NativeFormat | None = None,
    **options: Any,
) -> WebsocketClientSource:
    options.setdefault("open_timeout", 2 * UNIT)
    options.setdefault("max_size", MAX_SIZE)
    settings = WebsocketClientSettings(url=url, backoff_initial=0.01, backoff_max=0.08, **options)
    kind = TRANSPORTS[transport]
    fmt = fmt or native()
    return kind("feed", fmt, sink, health, settings, clock=clock, rng=lambda: 1.0)


class ScriptedServer:
    """A websocket server the test drives: it records every connection and what it receives;
    the test sends and closes through ``connections``. Created bound but, with
    ``listening=False``, refusing connections until ``listen()``."""

    def __init__(self, *, listening: bool = True) -> None:
        self.listening = listening
        self.connections: list[ServerConnection] = []
        self.received: list[list[str | bytes]] = []
        self._server: Server | None = None

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        inbox: list[str | bytes] = []
        self.received.append(inbox)
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                inbox.append(message)

    async def __aenter__(self) -> ScriptedServer:
        self._server = await serve(
            self._handler, HOST, 0, ping_interval=None, start_serving=self.listening
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def listen(self) -> None:
        assert self._server is not None
        await self._server.start_serving()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://{HOST}:{port}/feed"

    def latest(self) -> ServerConnection:
        return self.connections[-1]


Session = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A bare TCP server running ``session`` on every connection; for peers a websockets server
    cannot play (one that never completes the handshake, one that never answers pings)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.accepted = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.session(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://{HOST}:{port}/feed"


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept the TCP connection, never answer the opening handshake."""
    await reader.read()


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def accept_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read a client's opening handshake and accept it (RFC 6455, section 4.2.2)."""
    request = await reader.readuntil(b"\r\n\r\n")
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


def server_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame, as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    assert n < 1 << 16
    return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload


async def client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame a client sent (masked, RFC 6455 section 5.3): opcode and payload."""
    head = await reader.readexactly(2)
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4)
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(length)))
    return opcode, data


class BurstWebsocket:
    """Accepts the handshake, then writes ``payloads`` as frames in one write (the client
    reads them in one go); answers the client's close frame and hangs up."""

    def __init__(self, payloads: list[bytes]) -> None:
        self.payloads = payloads

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_handshake(reader, writer)
        writer.write(b"".join(server_frame(payload) for payload in self.payloads))
        await writer.drain()
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                opcode, data = await client_frame(reader)
                if opcode == 0x8:
                    writer.write(bytes((0x88, 2)) + data[:2])
                    await writer.drain()
                    writer.close()
                    return


class LateWebsocket:
    """Answers the opening handshake ``delay`` seconds late, with a frame right behind it,
    then waits for the client to hang up; counts the connections that ended so."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.hung_up = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(self.delay)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await accept_handshake(reader, writer)
            writer.write(server_frame(frame(f"late-{self.hung_up}").encode()))
            await writer.drain()
            await reader.read()
        self.hung_up += 1


class DeafWebsocket:
    """Completes the opening handshake and sends one event, then reads but never answers: no
    pong to any ping. Hangs up when the client sends its close frame, recording the code."""

    def __init__(self) -> None:
        self.close_codes: list[int] = []
        self.pings = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_handshake(reader, writer)
        writer.write(server_frame(frame(f"deaf-{len(self.close_codes)}").encode()))
        await writer.drain()
        while True:
            opcode, data = await client_frame(reader)
            if opcode == 0x9:
                self.pings += 1
            elif opcode == 0x8:
                self.close_codes.append(int.from_bytes(data[:2], "big"))
                return


# --- WebsocketClientSource ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_client_submits_decoded_frames(transport: str) -> None:
    sink, health = RecordingSink(), RecordingHealth()
    async with ScriptedServer() as server, bounded():
        source = client_source(transport, server.url, sink, health)
        async with running(source.run()):
            await until(lambda: len(server.connections) == 1, WAIT, "a connection")
            await server.latest().send(frame("c1"))
            batch = [
                event("v1", "viewers", count=42),
                event("o1", "order", status="created", currency="EUR", amount="12.50",
                      items=[{"sku": "lychee-1kg", "qty": 2, "grams": 1000}]),
            ]  # fmt: skip
            await server.latest().send(orjson.dumps(batch).decode())
            await until(lambda: len(sink.events) == 3, WAIT, "three events")

    assert sink.sources == {"feed"}
    assert [len(items) for _, items in sink.frames] == [1, 2]
    comment, viewers, order = sink.events
    assert isinstance(comment, Comment)
    assert (comment.id, comment.stream, comment.platform, comment.user) == (
        "c1", STREAM, "tiktok", "u1",
    )  # fmt: skip
    assert isinstance(viewers, Viewers)
    assert (viewers.id, viewers.count) == ("v1", 42)
    assert isinstance(order, Order)
    assert (order.id, order.currency, order.amount_minor, order.grams) == ("o1", "EUR", 1250, 2000)
    assert sink.reasons == []
    assert health.received_count == 2
    assert health.story() == ["up", "down"]  # down: reported when the task is cancelled


@pytest.mark.asyncio
async def test_client_subscribes_on_first_connection_and_after_every_reconnect(
    transport: str,
) -> None:
    subscribe = orjson.dumps({"op": "subscribe", "streams": [STREAM]}).decode()
    sink, health = RecordingSink(), RecordingHealth()
    async with ScriptedServer() as server, bounded():
        source = client_source(transport, server.url, sink, health, subscribe=subscribe)
        async with running(source.run()):
            for attempt in range(1, 4):
                await until(lambda n=attempt: len(server.connections) == n, WAIT, "a connection")
                await until(lambda: len(server.received[-1]) == 1, WAIT, "the subscribe message")
                await server.latest().close(CloseCode.SERVICE_RESTART, "restart")

    assert server.received == [[subscribe]] * 3


@pytest.mark.asyncio
async def test_client_reconnects_by_itself_after_the_server_closes(transport: str) -> None:
    sink, health = RecordingSink(), RecordingHealth()
    async with ScriptedServer() as server, bounded():
        source = client_source(transport, server.url, sink, health)
        async with running(source.run()):
            await until(lambda: health.ups == 1, WAIT, "connected")
            await server.latest().send(frame("before"))
            await until(lambda: sink.event_ids == ["before"], WAIT, "the first event")
            await server.latest().close(CloseCode.SERVICE_RESTART, "restart")

            await until(lambda: health.ups == 2, WAIT, "connected again")
            assert health.story() == ["up", "down", "retry closed (1012) after 0.01", "up"]
            assert len(server.connections) == 2
            await server.latest().send(frame("after"))
            await until(lambda: len(sink.events) == 2, WAIT, "the event after the reconnect")

    assert sink.event_ids == ["before", "after"]


@pytest.mark.asyncio
async def test_client_backs_off_exponentially_while_refused_then_connects(transport: str) -> None:
    sink, health = RecordingSink(), RecordingHealth()
    async with ScriptedServer(listening=False) as server, bounded():
        source = client_source(transport, server.url, sink, health)
        async with running(source.run()):
            await until(lambda: len(health.retries) >= 6, WAIT, "six refused attempts")
            assert health.ups == 0
            await server.listen()
            await until(lambda: health.ups == 1, WAIT, "connected once listening")
            await server.latest().send(frame("first"))
            await until(lambda: sink.event_ids == ["first"], WAIT, "an event")

    refused = len(health.retries)
    assert set(health.reasons) == {"network"}
    assert health.delays == [0.01, 0.02, 0.04, 0.08] + [0.08] * (refused - 4)
    assert health.story()[-2:] == ["up", "down"]  # up after the last refusal, down on cancel


@pytest.mark.asyncio
async def test_client_backoff_resets_only_after_a_connection_that_lived_long_enough(
    transport: str,
) -> None:
    """Short-lived connections keep growing the delay; one that stayed up ``backoff_reset_after``
    (per the injected clock) starts it over."""
    clock = ManualClock()
    sink, health = RecordingSink(), RecordingHealth()
    async with ScriptedServer() as server, bounded():
        source = client_source(
            transport, server.url, sink, health, clock=clock, backoff_reset_after=5.0
        )
        async with running(source.run()):
            for attempt, lifetime in enumerate([0.0, 4.9, 0.0, 5.0, 0.0], start=1):
                await until(lambda n=attempt: health.ups == n, WAIT, f"connection {attempt}")
                clock.advance(lifetime)
                await server.latest().close(CloseCode.SERVICE_RESTART, "restart")
                await until(lambda n=attempt: len(health.retries) == n, WAIT, "a retry")

    assert set(health.reasons) == {"closed (1012)"}
    # 0.0 and 4.9 s: no reset, grows; 0.0: grows; 5.0 s: reset, starts over; 0.0: grows again.
    assert health.delays == [0.01, 0.02, 0.04, 0.01, 0.02]


@pytest.mark.asyncio
async def test_client_failed_attempts_never_reset_the_backoff_however_long_they_take(
    transport: str,
) -> None:
    """A server that accepts TCP but never answers the handshake: every attempt runs into
    ``open_timeout``, longer than ``backoff_reset_after``. Never having been connected, the
    attempts must not count as a healthy connection (with the defaults, open_timeout equals
    backoff_reset_after, so a hanging peer would otherwise pin the delay at its minimum)."""
    sink, health = RecordingSink(), RecordingHealth()
    async with RawServer(silent) as server, bounded():
        source = client_source(
            transport, server.url, sink, health, open_timeout=0.05, backoff_reset_after=0.04
        )
        async with running(source.run()):
            await until(lambda: len(health.retries) >= 5, WAIT, "five timed-out attempts")

    assert health.ups == 0
    assert set(health.reasons) == {"timeout"}
    assert health.delays[:5] == [0.01, 0.02, 0.04, 0.08, 0.08]


async def send_bad_mix(ws: ServerConnection | ClientConnection, sink: RecordingSink) -> None:
    """Valid, malformed, oversize, invalid UTF-8 (binary and text), unknown kind, valid."""
    await ws.send(frame("valid-1"))
    await ws.send('{"kind": "comment", "id": ')
    await ws.send(oversize_frame())
    await ws.send(INVALID_UTF8)
    await ws.send(INVALID_UTF8, text=True)  # a text frame: websockets must not fail the connection
    await ws.send(frame("g1", "gift"))
    await ws.send(frame("valid-2"))
    await until(lambda: len(sink.frames) == 7, WAIT, "seven submitted frames")


def assert_bad_mix(sink: RecordingSink) -> None:
    assert sink.event_ids == ["valid-1", "valid-2"]
    assert sink.reasons == [
        Reason.MALFORMED_JSON,
        Reason.OVERSIZE,
        Reason.INVALID_UTF8,
        Reason.INVALID_UTF8,
        Reason.UNKNOWN_KIND,
    ]


@pytest.mark.asyncio
async def test_client_keeps_the_connection_and_the_valid_events_around_bad_input(
    transport: str,
) -> None:
    sink, health = RecordingSink(), RecordingHealth()
    async with ScriptedServer() as server, bounded():
        source = client_source(transport, server.url, sink, health)
        async with running(source.run()):
            await until(lambda: health.ups == 1, WAIT, "connected")
            ws = server.latest()
            await send_bad_mix(ws, sink)
            assert ws.state is State.OPEN

    assert_bad_mix(sink)
    assert health.received_count == 7
    assert len(server.connections) == 1
    assert health.story() == ["up", "down"]  # never reconnected; down is the cancel


@pytest.mark.asyncio
async def test_client_frame_over_max_size_closes_with_1009_and_the_frame_is_lost(
    transport: str,
) -> None:
    """Documented behaviour: a frame bigger than ``max_size`` is not a rejection. websockets
    fails the connection with 1009 (message too big) before the format sees the frame, so it is
    neither submitted nor dead-lettered; the source reconnects and later frames arrive."""
    sink, health = RecordingSink(), RecordingHealth()
    async with ScriptedServer() as server, bounded():
        source = client_source(transport, server.url, sink, health)
        async with running(source.run()):
            await until(lambda: health.ups == 1, WAIT, "connected")
            first = server.latest()
            await first.send(frame("before"))
            await first.send(too_big_frame())
            await until(lambda: health.ups == 2, WAIT, "connected again")
            await server.latest().send(frame("after"))
            await until(lambda: len(sink.frames) == 2, WAIT, "the event after the reconnect")

    assert first.close_code == CloseCode.MESSAGE_TOO_BIG
    assert health.story()[:4] == ["up", "down", "retry closed (1009) after 0.01", "up"]
    assert sink.event_ids == ["before", "after"]
    assert sink.reasons == []


@pytest.mark.asyncio
async def test_client_detects_a_peer_that_stops_answering_pings_and_reconnects(
    transport: str,
) -> None:
    deaf = DeafWebsocket()
    sink, health = RecordingSink(), RecordingHealth()
    async with RawServer(deaf) as server, bounded():
        source = client_source(
            transport, server.url, sink, health, ping_interval=0.05, ping_timeout=0.05
        )
        async with running(source.run()):
            await until(lambda: health.ups >= 2, WAIT, "a reconnect after the ping timeout")
            await until(lambda: len(sink.events) >= 2, WAIT, "an event on each connection")

    # websockets sends 1011 (keepalive ping timeout), picows 1001 (no reply to its ping).
    code = CloseCode.INTERNAL_ERROR if transport == "websockets" else CloseCode.GOING_AWAY
    assert deaf.pings >= 1
    assert deaf.close_codes[0] == code
    # The client failed the connection itself; the reason carries the code it sent.
    assert health.story()[:4] == ["up", "down", f"retry closed ({code}) after 0.01", "up"]
    assert sink.event_ids[:2] == ["deaf-0", "deaf-1"]


@pytest.mark.asyncio
async def test_client_assembles_a_fragmented_message_and_refuses_one_over_max_size(
    transport: str,
) -> None:
    """A message sent in fragments is one frame for the format; fragments that add up to more
    than ``max_size`` fail the connection with 1009, as one frame that big does."""
    sink, health = RecordingSink(), RecordingHealth()
    text = frame("parts", text="y" * 600)
    async with ScriptedServer() as server, bounded():
        source = client_source(transport, server.url, sink, health)
        async with running(source.run()):
            await until(lambda: health.ups == 1, WAIT, "connected")
            first = server.latest()
            await first.send([text[:100], text[100:700], text[700:]])
            await until(lambda: sink.event_ids == ["parts"], WAIT, "the assembled message")
            await first.send(["x" * 3000, "x" * 3000])
            await until(lambda: health.ups == 2, WAIT, "connected again")

    assert first.close_code == CloseCode.MESSAGE_TOO_BIG
    assert health.story()[:3] == ["up", "down", "retry closed (1009) after 0.01"]
    assert len(sink.frames) == 1


class FullSink(RecordingSink):
    """A buffer that is full until ``room`` is set: ``offer`` refuses, ``put`` waits."""

    def __init__(self) -> None:
        super().__init__()
        self.room = asyncio.Event()
        self.waiting = 0

    def offer(self, source: str, items: Sequence[Decoded]) -> bool:
        return self.room.is_set() and super().offer(source, items)

    async def put(self, source: str, items: Sequence[Decoded]) -> None:
        self.waiting += 1
        try:
            await self.room.wait()
        finally:
            self.waiting -= 1
        await super().put(source, items)


async def send_while_full(
    server: ScriptedServer, sink: FullSink, health: RecordingHealth, ids: list[str]
) -> None:
    """Once connected, the server sends a frame per id; until one of them waits for room."""
    await until(lambda: health.ups == 1, WAIT, "connected")
    for event_id in ids:
        await server.latest().send(frame(event_id))
    await until(lambda: sink.waiting == 1, WAIT, "a frame waiting for room")


class CountingFormat(NativeFormat):
    """The native format, counting how often it decoded each frame."""

    def __init__(self) -> None:
        super().__init__(native().options)
        self.decoded: collections.Counter[bytes] = collections.Counter()

    def decode(self, frame: bytes | str) -> list[Decoded]:
        self.decoded[frame if isinstance(frame, bytes) else frame.encode()] += 1
        return super().decode(frame)


@pytest.mark.asyncio
async def test_client_decodes_each_frame_once_through_a_full_buffer(transport: str) -> None:
    """A format may keep state across frames (Social Stream numbers repeated messages): a frame
    that met a full buffer is not decoded again when it goes in."""
    fmt, sink, health = CountingFormat(), FullSink(), RecordingHealth()
    ids = [f"e{i}" for i in range(50)]
    async with ScriptedServer() as server, bounded():
        source = client_source(transport, server.url, sink, health, fmt=fmt)
        async with running(source.run()):
            await send_while_full(server, sink, health, ids)
            sink.room.set()
            await until(lambda: len(sink.frames) == len(ids), WAIT, "every frame")

    assert sink.event_ids == ids
    assert set(fmt.decoded.values()) == {1}


@pytest.mark.asyncio
async def test_client_waits_for_a_full_buffer_and_loses_no_frame_nor_their_order(
    transport: str,
) -> None:
    """While the buffer is full the source stops reading and waits; once there is room every
    frame arrives, in the order sent."""
    sink, health = FullSink(), RecordingHealth()
    ids = [f"e{i}" for i in range(300)]
    async with ScriptedServer() as server, bounded():
        source = client_source(transport, server.url, sink, health)
        async with running(source.run()):
            await send_while_full(server, sink, health, ids)
            assert sink.frames == []
            sink.room.set()
            await until(lambda: len(sink.frames) == len(ids), WAIT, "every frame")

    assert sink.event_ids == ids
    assert health.story() == ["up", "down"]


@pytest.mark.asyncio
async def test_client_counts_what_a_closed_connection_delivered_while_the_buffer_was_full(
    transport: str,
) -> None:
    """The server sends and closes while the buffer is full: the frames it sent before its
    close still go in, in order, once there is room; then the source reconnects."""
    sink, health = FullSink(), RecordingHealth()
    ids = [f"e{i}" for i in range(300)]
    async with ScriptedServer() as server, bounded():
        source = client_source(transport, server.url, sink, health)
        async with running(source.run()):
            await send_while_full(server, sink, health, ids)
            ws = server.latest()
            # Its close frame is sent at once; the answer comes once the client reads again.
            closing = asyncio.create_task(ws.close(CloseCode.SERVICE_RESTART, "restart"))
            await until(lambda: ws.state is not State.OPEN, WAIT, "the close frame sent")
            sink.room.set()
            await until(lambda: health.ups == 2, WAIT, "connected again")
            await closing

    assert sink.event_ids == ids
    assert health.story()[:4] == ["up", "down", "retry closed (1012) after 0.01", "up"]


@pytest.mark.asyncio
async def test_client_counts_the_frames_before_a_frame_over_max_size_while_the_buffer_was_full(
    transport: str,
) -> None:
    """Frames, then one over ``max_size``, sent while the buffer is full: the connection fails
    (1009), and the frames before it still go in, in order, once there is room."""
    sink, health = FullSink(), RecordingHealth()
    ids = [f"e{i}" for i in range(50)]
    payloads = [frame(event_id).encode() for event_id in ids] + [too_big_frame().encode()]
    async with RawServer(BurstWebsocket(payloads)) as server, bounded():
        source = client_source(transport, server.url, sink, health)
        async with running(source.run()):
            await until(lambda: health.ups == 1, WAIT, "connected")
            await until(lambda: sink.waiting == 1, WAIT, "a frame waiting for room")
            sink.room.set()
            await until(lambda: health.ups == 2, WAIT, "connected again")
            await until(lambda: len(sink.frames) == 2 * len(ids), WAIT, "the second burst")

    assert sink.event_ids == ids + ids
    assert health.story()[:3] == ["up", "down", "retry closed (1009) after 0.01"]


@pytest.mark.asyncio
async def test_client_never_reads_a_connection_whose_handshake_answered_too_late(
    transport: str,
) -> None:
    """An attempt that ran into ``open_timeout`` is over: when the server's answer comes after
    all, that connection is closed unread, not counted beside the next attempt's."""
    late = LateWebsocket(delay=0.3 * UNIT)
    sink, health = RecordingSink(), RecordingHealth()
    async with RawServer(late) as server, bounded():
        source = client_source(transport, server.url, sink, health, open_timeout=0.1 * UNIT)
        async with running(source.run()):
            await until(lambda: late.hung_up >= 2, WAIT, "two late answers hung up on")

    assert sink.frames == []
    assert health.ups == 0
    assert set(health.reasons) == {"timeout"}


@pytest.mark.asyncio
async def test_client_stopped_during_the_handshake_never_reads_that_connection(
    transport: str,
) -> None:
    """Stopped while waiting for the server's answer: when it comes, the connection is closed
    unread (nothing may count after a stop)."""
    late = LateWebsocket(delay=0.3 * UNIT)
    sink, health = RecordingSink(), RecordingHealth()
    async with RawServer(late) as server, bounded():
        source = client_source(transport, server.url, sink, health, open_timeout=5 * UNIT)
        async with running(source.run()):
            await until(lambda: server.accepted == 1, WAIT, "a connection")
        await until(lambda: late.hung_up == 1, WAIT, "the late answer hung up on")

    assert sink.frames == []
    assert health.ups == 0


@pytest.mark.asyncio
async def test_client_gives_up_on_a_bad_uri(transport: str) -> None:
    sink, health = RecordingSink(), RecordingHealth()
    source = client_source(transport, "http://127.0.0.1/feed", sink, health)
    async with bounded():
        with pytest.raises(InvalidURI):
            await source.run()
    assert health.retries == []


# --- WebsocketServerSource ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def server_source(
    sink: RecordingSink, health: RecordingHealth, **options: Any
) -> AsyncIterator[WebsocketServerSource]:
    """``options``: more settings, and the source's ``on_refused``, ``on_rate_limited`` and
    ``clock``."""
    hooks = {k: options.pop(k) for k in ("on_refused", "on_rate_limited", "clock") if k in options}
    settings = WebsocketServerSettings(
        listen=f"{HOST}:0", path=PATH, token=TOKEN, max_size=MAX_SIZE, **options
    )
    source = WebsocketServerSource("push", native(), sink, health, settings, **hooks)
    async with running(source.run()):
        await asyncio.wait_for(source.ready.wait(), WAIT * UNIT)
        yield source


def producer(
    source: WebsocketServerSource,
    *,
    path: str = PATH,
    authorization: str | None = f"Bearer {TOKEN}",
    address: str = HOST,
) -> connect:
    """A producer connecting from ``address`` (any of 127.0.0.0/8 reaches the source)."""
    headers = {} if authorization is None else {"Authorization": authorization}
    return connect(
        f"ws://{HOST}:{source.port}{path}",
        additional_headers=headers,
        open_timeout=WAIT * UNIT,
        proxy=None,
        local_addr=(address, 0),
    )


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", TOKEN, ""],
    ids=["missing", "wrong", "prefix", "extended", "no-scheme", "empty"],
)
async def test_server_refuses_a_bad_token_with_401(authorization: str | None) -> None:
    sink, health = RecordingSink(), RecordingHealth()
    async with bounded(), server_source(sink, health) as source:
        with pytest.raises(InvalidStatus) as refused:
            async with producer(source, authorization=authorization):
                pass
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert sink.frames == []


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/", "/ingest/", "/other", "/ingestx"])
async def test_server_refuses_a_wrong_path_with_404(path: str) -> None:
    sink, health = RecordingSink(), RecordingHealth()
    async with bounded(), server_source(sink, health) as source:
        with pytest.raises(InvalidStatus) as refused:
            async with producer(source, path=path):
                pass
    assert refused.value.response.status_code == 404


@pytest.mark.asyncio
@pytest.mark.parametrize("scheme", ["bearer", "BEARER"])
async def test_server_accepts_the_scheme_in_any_case(scheme: str) -> None:
    sink, health = RecordingSink(), RecordingHealth()
    async with (
        bounded(),
        server_source(sink, health) as source,
        producer(source, authorization=f"{scheme} {TOKEN}") as ws,
    ):
        await ws.send(frame("p1"))
        await until(lambda: len(sink.events) == 1, WAIT, "the event")


@pytest.mark.asyncio
async def test_server_accepts_frames_with_the_right_token() -> None:
    sink, health = RecordingSink(), RecordingHealth()
    async with (
        bounded(),
        server_source(sink, health) as source,
        producer(source, path=f"{PATH}?producer=a") as ws,
    ):
        await ws.send(frame("p1"))
        await ws.send(orjson.dumps([event("p2"), event("p3", "viewers", count=7)]).decode())
        await until(lambda: len(sink.events) == 3, WAIT, "three events")

    assert sink.sources == {"push"}
    assert sink.event_ids == ["p1", "p2", "p3"]
    assert {event.stream for event in sink.events} == {STREAM}
    assert health.received_count == 2


@pytest.mark.asyncio
async def test_server_delivers_two_producers_at_once() -> None:
    sink, health = RecordingSink(), RecordingHealth()
    async with (
        bounded(),
        server_source(sink, health) as source,
        producer(source) as a,
        producer(source) as b,
    ):
        for n in range(20):
            await a.send(frame(f"a{n}"))
            await b.send(frame(f"b{n}"))
        await until(lambda: len(sink.events) == 40, WAIT, "forty events")

    ids = sink.event_ids
    assert sorted(ids) == sorted([f"a{n}" for n in range(20)] + [f"b{n}" for n in range(20)])
    assert [i for i in ids if i.startswith("a")] == [f"a{n}" for n in range(20)]
    assert [i for i in ids if i.startswith("b")] == [f"b{n}" for n in range(20)]


@pytest.mark.asyncio
async def test_servers_with_reuse_port_share_one_port_and_each_takes_its_connections() -> None:
    """Two sources (as two processes would) listening on one port with ``reuse_port``: the
    kernel gives each connection to one of them, and each reads only its own."""
    sinks = [RecordingSink(), RecordingSink()]
    health = RecordingHealth()

    def taken() -> int:
        return sum(len(sink.events) for sink in sinks)

    first = WebsocketServerSource(
        "push",
        native(),
        sinks[0],
        health,
        WebsocketServerSettings(listen=f"{HOST}:0", path=PATH, token=TOKEN, reuse_port=True),
    )
    await first.bind()
    try:
        shared = WebsocketServerSettings(
            listen=f"{HOST}:{first.port}", path=PATH, token=TOKEN, reuse_port=True
        )
        second = WebsocketServerSource("push", native(), sinks[1], health, shared)
        async with bounded(), running(first.run()), running(second.run()):
            await asyncio.wait_for(second.ready.wait(), WAIT * UNIT)
            for n in range(32):  # each lands in one: all in one with a chance of 2 ** -31
                async with producer(second) as ws:
                    await ws.send(frame(f"c{n}"))
                    await until(lambda want=n + 1: taken() == want, WAIT, "the event")
            # A third that does not ask to share the port is refused it.
            alone = dataclasses.replace(shared, reuse_port=False)
            refused = WebsocketServerSource("push", native(), RecordingSink(), health, alone)
            with pytest.raises(OSError, match=r"(?i)address already in use") as info:
                await refused.bind()
            assert info.value.errno == errno.EADDRINUSE
        assert sorted(sinks[0].event_ids + sinks[1].event_ids) == sorted(f"c{n}" for n in range(32))
        assert all(sink.events for sink in sinks), [len(sink.events) for sink in sinks]
    finally:
        await first.close()


@pytest.mark.asyncio
async def test_server_keeps_a_connection_through_bad_frames() -> None:
    sink, health = RecordingSink(), RecordingHealth()
    async with bounded(), server_source(sink, health) as source, producer(source) as ws:
        await send_bad_mix(ws, sink)
        await ws.ping()  # still answered: the connection is alive
        assert ws.state is State.OPEN

    assert_bad_mix(sink)


@pytest.mark.asyncio
async def test_server_closes_only_the_connection_that_sends_over_max_size() -> None:
    """Like the client: a frame over ``max_size`` fails that connection with 1009 and is lost;
    other producers are unaffected."""
    sink, health = RecordingSink(), RecordingHealth()
    async with (
        bounded(),
        server_source(sink, health) as source,
        producer(source) as good,
        producer(source) as bad,
    ):
        await bad.send(too_big_frame())
        with pytest.raises(ConnectionClosedError) as closed:
            await bad.recv()
        await good.send(frame("still-fine"))
        await until(lambda: sink.event_ids == ["still-fine"], WAIT, "the good producer")

    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == CloseCode.MESSAGE_TOO_BIG
    assert sink.reasons == []


@pytest.mark.asyncio
async def test_server_reports_connected_while_listening() -> None:
    sink, health = RecordingSink(), RecordingHealth()
    async with bounded():
        async with server_source(sink, health) as source:
            assert source.port != 0
            assert health.story() == ["up"]
        assert health.story() == ["up", "down"]


# --- Push tokens from a file, rotated while the source runs ----------------------------------

TOKEN_A = "studio-a-token-0123456789"
TOKEN_B = "studio-b-token-0123456789"


def write_tokens(path: Path, *lines: str) -> None:
    """Replace the file at once, as an operator's ``mv`` (or a secrets volume) does."""
    staged = path.with_suffix(".new")
    staged.write_text("".join(f"{line}\n" for line in lines))
    staged.chmod(0o600)
    os.replace(staged, path)


@dataclasses.dataclass
class TokenEvents:
    reloads: list[bool] = dataclasses.field(default_factory=list)
    connected: list[str] = dataclasses.field(default_factory=list)
    revoked: list[int] = dataclasses.field(default_factory=list)
    unauthorized: list[str] = dataclasses.field(default_factory=list)


@contextlib.asynccontextmanager
async def file_source(
    path: Path, sink: RecordingSink, events: TokenEvents, poll: float = 0.05 * UNIT
) -> AsyncIterator[WebsocketServerSource]:
    settings = WebsocketServerSettings(
        listen=f"{HOST}:0",
        path=PATH,
        tokens=read_tokens(path),
        tokens_file=str(path),
        tokens_poll_seconds=poll,
        max_size=MAX_SIZE,
    )
    source = WebsocketServerSource(
        "push",
        native(),
        sink,
        RecordingHealth(),
        settings,
        on_unauthorized=events.unauthorized.append,
        on_connected=events.connected.append,
        on_revoked=events.revoked.append,
        on_reload=events.reloads.append,
    )
    async with running(source.run()):
        await asyncio.wait_for(source.ready.wait(), WAIT * UNIT)
        yield source


@pytest.mark.asyncio
async def test_server_rotates_tokens_from_its_file_and_closes_revoked_connections(
    tmp_path: Path,
) -> None:
    """Roll out a new producer's token, then revoke the old one: the old producer's open
    connection is closed (1008) and its new handshakes get 401; the new one keeps sending."""
    path = tmp_path / "push.tokens"
    write_tokens(path, f"studio-a {TOKEN_A}")
    sink, events = RecordingSink(), TokenEvents()
    async with (
        bounded(),
        file_source(path, sink, events) as source,
        producer(source, authorization=f"Bearer {TOKEN_A}") as old,
    ):
        await old.send(frame("a1"))
        with pytest.raises(InvalidStatus):  # not rolled out yet
            async with producer(source, authorization=f"Bearer {TOKEN_B}"):
                pass
        write_tokens(path, f"studio-a {TOKEN_A}", f"studio-b {TOKEN_B}")
        await until(lambda: events.reloads == [True], WAIT, "the file with both tokens")
        async with producer(source, authorization=f"Bearer {TOKEN_B}") as new:
            await old.send(frame("a2"))
            await new.send(frame("b1"))
            await until(lambda: len(sink.events) == 3, WAIT, "both producers' events")
            write_tokens(path, f"studio-b {TOKEN_B}")
            await until(lambda: events.reloads == [True, True], WAIT, "the revocation")
            with pytest.raises(ConnectionClosedError) as closed:
                await old.recv()
            with pytest.raises(InvalidStatus) as refused:
                async with producer(source, authorization=f"Bearer {TOKEN_A}"):
                    pass
            for n in range(2, 22):
                await new.send(frame(f"b{n}"))
            await until(lambda: len(sink.events) == 23, WAIT, "the new producer's events")
            assert new.state is State.OPEN

    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "token revoked")
    assert refused.value.response.status_code == 401
    assert sorted(sink.event_ids) == sorted(["a1", "a2", *(f"b{n}" for n in range(1, 22))])
    assert events.connected == ["studio-a", "studio-b"]
    assert events.revoked == [1]
    assert events.unauthorized == ["token", "token"]


@pytest.mark.asyncio
async def test_server_keeps_its_tokens_when_the_file_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad file (a short token, a repeated name) keeps the previous tokens and the open
    connections, is reported once and logged in one line without a token; a good file then
    applies. A reload asked for (SIGHUP) reads the file even when it did not change."""
    path = tmp_path / "push.tokens"
    write_tokens(path, f"studio-a {TOKEN_A}")
    sink, events = RecordingSink(), TokenEvents()
    async with (
        bounded(),
        file_source(path, sink, events, poll=0.05 * UNIT) as source,
        producer(source, authorization=f"Bearer {TOKEN_A}") as ws,
    ):
        with caplog.at_level("ERROR", logger="ingest.sources.tokens"):
            write_tokens(path, f"studio-a {TOKEN_B}", "studio-a short")
            await until(lambda: events.reloads == [False], WAIT, "the refused file")
            source.reload()  # asked again: the same bad file, refused again
            await until(lambda: events.reloads == [False, False], WAIT, "the second refusal")
        async with producer(source, authorization=f"Bearer {TOKEN_A}") as again:
            await again.send(frame("a2"))
        await ws.send(frame("a1"))
        await until(lambda: len(sink.events) == 2, WAIT, "both events with the kept token")
        write_tokens(path, f"studio-b {TOKEN_B}")
        await until(lambda: events.reloads == [False, False, True], WAIT, "the good file")
        with pytest.raises(ConnectionClosedError):
            await ws.recv()

    errors = [
        r.getMessage()
        for r in caplog.records
        if r.name == "ingest.sources.tokens" and r.levelno >= logging.ERROR
    ]
    assert len(errors) == 2  # one line per refusal
    assert "line 1: producer" not in errors[0]
    assert "line 2: token shorter than 16 bytes" in errors[0]
    assert "line 2: producer 'studio-a' is already on line 1" in errors[0]
    assert "the previous ones kept" in errors[0]
    assert all(TOKEN_A not in e and TOKEN_B not in e for e in errors)
    assert events.revoked == [1]


@pytest.mark.asyncio
async def test_server_with_one_token_calls_its_producer_env() -> None:
    sink, events = RecordingSink(), TokenEvents()
    settings = WebsocketServerSettings(listen=f"{HOST}:0", path=PATH, token=TOKEN)
    source = WebsocketServerSource(
        "push", native(), sink, RecordingHealth(), settings, on_connected=events.connected.append
    )
    source.reload()  # no tokens file: nothing to read
    async with bounded(), running(source.run()):
        await asyncio.wait_for(source.ready.wait(), WAIT * UNIT)
        async with producer(source) as ws:
            await ws.send(frame("p1"))
            await until(lambda: len(sink.events) == 1, WAIT, "the event")
    assert events.connected == ["env"]


@pytest.mark.asyncio
async def test_server_caps_connections_per_client_and_in_all_before_the_handshake() -> None:
    sink, health = RecordingSink(), RecordingHealth()
    refused: list[str] = []
    async with (
        bounded(),
        server_source(
            sink,
            health,
            max_connections=3,
            max_connections_per_client=2,
            on_refused=refused.append,
        ) as source,
        producer(source) as a,
        producer(source) as b,
    ):
        with pytest.raises((OSError, InvalidMessage)):  # dropped before any answer
            async with producer(source):
                pass
        async with producer(source, address="127.0.0.2") as c:
            with pytest.raises((OSError, InvalidMessage)):
                async with producer(source, address="127.0.0.3"):
                    pass
            assert refused == ["client", "listener"]
            for ws, name in ((a, "a"), (b, "b"), (c, "c")):  # the admitted ones still deliver
                await ws.send(frame(name))
            await until(lambda: sorted(sink.event_ids) == ["a", "b", "c"], WAIT, "three events")
        # A closed connection frees its place: 127.0.0.3 is taken now.
        await until(lambda: source.caps.open == 2, WAIT, "the closed connection to be released")
        async with producer(source, address="127.0.0.3") as d:
            await d.send(frame("d"))
            await until(lambda: "d" in sink.event_ids, WAIT, "the fourth event")
    assert refused == ["client", "listener"]


@pytest.mark.asyncio
async def test_server_answers_handshakes_past_the_client_rate_with_429_and_retry_after() -> None:
    sink, health = RecordingSink(), RecordingHealth()
    limited: list[str] = []
    clock = ManualClock()
    rates = RateLimits(per_second=1000.0, burst=1000, client_per_second=0.01, client_burst=2)
    async with (
        bounded(),
        server_source(
            sink, health, rates=rates, on_rate_limited=limited.append, clock=clock
        ) as source,
    ):
        with pytest.raises(InvalidStatus) as unauthorized:  # it takes a handshake too
            async with producer(source, authorization="Bearer wrong"):
                pass
        async with producer(source) as ws:
            await ws.send(frame("p1"))
            await until(lambda: sink.event_ids == ["p1"], WAIT, "the first event")
        with pytest.raises(InvalidStatus) as refused:
            async with producer(source):
                pass
        async with producer(source, address="127.0.0.2"):  # another client has its own share
            pass
        clock.advance(100)  # one token back at 0.01/s
        async with producer(source) as ws:
            await ws.send(frame("p2"))
            await until(lambda: sink.event_ids == ["p1", "p2"], WAIT, "the second event")
    assert unauthorized.value.response.status_code == 401
    assert refused.value.response.status_code == 429
    assert refused.value.response.headers["Retry-After"] == "100"
    assert limited == ["client"]
