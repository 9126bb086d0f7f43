"""The websocket client source over picows: the same source, a transport that parses frames in C.

websockets stays the default. With ``transport = "picows"`` a websocket client source reads
through picows instead: websockets' receive path (frame parsing in Python, message assembly, an
awaited ``recv`` per frame) was the largest share of the ingester's CPU per event in the
benchmark (docs/benchmarks.md, "picows"). picows calls :meth:`_Reader.on_ws_frame` for each
frame as it parses a read; the frame is decoded and offered to the buffer there, with no task
switch. When the buffer is full, the frame waits in the reader, reading from the socket pauses,
and a task puts the waiting frames into the buffer as it makes room, then resumes reading: the
buffer's bounds hold as with websockets, and what waits beside it is at most one read's frames.

What differs from websockets, by the library's design:

- keepalive pings go out only when nothing arrived for ``ping_interval`` (websockets pings on
  a timer); a ping unanswered for ``ping_timeout`` (at most ``ping_interval``) ends the
  connection with 1001 (websockets: 1011);
- the close handshake on cancellation is a close frame and a disconnect, without waiting up to
  ``close_timeout`` for the peer's answer.
"""

from __future__ import annotations

import asyncio
import collections
import ssl

from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSError,
    WSFrame,
    WSInvalidStatusError,
    WSListener,
    WSMsgType,
    WSProtocolError,
    WSTransport,
    ws_connect,
)
from websockets.uri import parse_uri

from ingest.model import Decoded
from ingest.sources.base import Format, Health, Sink
from ingest.sources.websocket import WebsocketClientSource, retry_reason

_TEXT, _BINARY, _CONTINUATION, _CLOSE = (
    WSMsgType.TEXT,
    WSMsgType.BINARY,
    WSMsgType.CONTINUATION,
    WSMsgType.CLOSE,
)


class Closed(Exception):
    """The connection ended; ``code`` is the close code sent or received first, if any."""

    def __init__(self, code: int | None) -> None:
        super().__init__(code)
        self.code = code


class _Reader(WSListener):
    """One connection's frames: decoded and offered to the buffer as they are parsed."""

    def __init__(self, name: str, fmt: Format, sink: Sink, health: Health, max_size: int) -> None:
        self.name = name
        self.fmt = fmt
        self.sink = sink
        self.health = health
        self.max_size = max_size
        self.transport: WSTransport | None = None
        self.message: bytearray | None = None
        """A fragmented message being assembled."""
        self.waiting: collections.deque[list[Decoded]] = collections.deque()
        """Frames decoded while the buffer was full, in order; reading is paused meanwhile."""
        self.wake = asyncio.Event()
        self.failed = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.failed:
            return
        kind = frame.msg_type
        if kind is _TEXT or kind is _BINARY:
            if self.message is not None:
                self._fail(transport, WSCloseCode.PROTOCOL_ERROR, b"expected a continuation")
                return
            data = frame.get_payload_as_bytes()
            if len(data) > self.max_size:
                self._fail(transport, WSCloseCode.MESSAGE_TOO_BIG, b"message too big")
            elif frame.fin:
                self._received(data)
            else:
                self.message = bytearray(data)
        elif kind is _CONTINUATION:
            message = self.message
            if message is None:
                self._fail(transport, WSCloseCode.PROTOCOL_ERROR, b"unexpected continuation")
                return
            message += frame.get_payload_as_memoryview()
            if len(message) > self.max_size:
                self._fail(transport, WSCloseCode.MESSAGE_TOO_BIG, b"message too big")
            elif frame.fin:
                self.message = None
                self._received(bytes(message))
        elif kind is _CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        # A ping is answered by picows; a pong needs nothing.

    def _received(self, data: bytes) -> None:
        self.health.received(self.name)
        items = self.fmt.decode(data)
        if self.waiting or not self.sink.offer(self.name, items):
            if not self.waiting:
                assert self.transport is not None
                self.transport.underlying_transport.pause_reading()
                self.wake.set()
            self.waiting.append(items)

    def _fail(self, transport: WSTransport, code: WSCloseCode, reason: bytes) -> None:
        """Fail the connection; nothing parsed after this counts. (A frame over
        ``max_frame_size`` makes picows send 1009 itself, yet it still hands the frame over,
        and what follows it: the length check above fails on it too, and the close frame
        already sent is kept.)"""
        self.failed = True
        if not transport.is_close_frame_sent:
            transport.send_close(code, reason)
        transport.disconnect()

    async def forward(self) -> None:
        """Put the frames that met a full buffer, in order, as it makes room; then read on."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.waiting:
                await self.sink.put(self.name, self.waiting[0])
                self.waiting.popleft()
            transport = self.transport
            if transport is not None:
                transport.underlying_transport.resume_reading()


def _first_close(transport: WSTransport) -> int | None:
    handshake = transport.close_handshake
    if handshake is None:
        return None
    first = handshake.recv if handshake.recv_then_sent else handshake.sent
    if first is None:
        first = handshake.sent or handshake.recv
    return None if first is None else int(first.code.value)


def picows_retry_reason(exc: BaseException) -> str | None:
    """:func:`ingest.sources.websocket.retry_reason` for picows' errors."""
    if isinstance(exc, Closed):
        return f"closed ({exc.code})" if exc.code is not None else "closed"
    if isinstance(exc, WSInvalidStatusError) and exc.response is not None:
        return f"http {int(exc.response.status)}"
    if isinstance(exc, WSProtocolError):
        return f"closed ({int(exc.args[0].value)})"
    if isinstance(exc, WSError):
        return "handshake"
    return retry_reason(exc)


class PicowsClientSource(WebsocketClientSource):
    """:class:`WebsocketClientSource` with picows as its transport (``transport = "picows"``)."""

    def _retry_reason(self, exc: Exception) -> str | None:
        return picows_retry_reason(exc)

    async def _session(self) -> None:
        settings = self.settings
        parse_uri(settings.url)  # InvalidURI, as websockets would raise: not retried
        ping = settings.ping_interval
        reader: _Reader | None = None

        def listener() -> _Reader:
            nonlocal reader
            reader = _Reader(self.name, self.fmt, self.sink, self.health, settings.max_size)
            return reader

        async with asyncio.timeout(settings.open_timeout):
            transport, _ = await ws_connect(
                listener,
                settings.url,
                ssl_context=_tls(settings.url),
                websocket_handshake_timeout=settings.open_timeout,
                logger_name=f"client.{self.name}",
                enable_auto_ping=ping is not None,
                auto_ping_idle_timeout=ping or 20.0,
                auto_ping_reply_timeout=min(settings.ping_timeout or ping or 20.0, ping or 20.0),
                auto_ping_strategy=WSAutoPingStrategy.PING_WHEN_IDLE,
                max_frame_size=settings.max_size,
                extra_headers=dict(settings.headers),
                max_redirects=0,
                use_aiofastnet=False,
            )
        assert reader is not None
        forward = asyncio.create_task(reader.forward(), name=f"source[{self.name}].forward")
        try:
            self._connected_at = self.clock()
            self.health.connected(self.name, True)
            if self.on_connect is not None:
                self.on_connect()
            if settings.subscribe is not None:
                transport.send(WSMsgType.TEXT, settings.subscribe.encode())
            await _until(transport, forward)
        finally:
            forward.cancel()
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.GOING_AWAY)
            transport.disconnect(graceful=False)
        raise Closed(_first_close(transport))


async def _until(transport: WSTransport, forward: asyncio.Task[None]) -> None:
    """Until the connection ends. Forwarding only ends by failing (``put`` only waits): its
    error is raised. So is the connection's, except a protocol error, which picows answered
    with its close frame (the code the session reports)."""
    ended = asyncio.ensure_future(transport.wait_disconnected())
    try:
        done, _ = await asyncio.wait({ended, forward}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not ended.done():
            ended.cancel()
    if forward in done:
        forward.result()
    exc = ended.exception() if ended in done else None
    if exc is not None and not isinstance(exc, WSProtocolError):
        raise exc


def _tls(url: str) -> ssl.SSLContext | None:
    """The default client context for ``wss://`` (the system's CAs, hostname checked), as
    websockets uses."""
    return ssl.create_default_context() if url.startswith("wss://") else None
