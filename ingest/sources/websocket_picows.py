"""The websocket client source over picows: the same source, a transport that parses frames in C.

websockets stays the default. With ``transport = "picows"`` a websocket client source reads
through picows instead: websockets' receive path (frame parsing in Python, message assembly, an
awaited ``recv`` per frame) was the largest share of the ingester's CPU per event in the
benchmark (docs/benchmarks.md, "The websocket library: picows"). picows calls
:meth:`_Reader.on_ws_frame` for each frame as it parses a read; the frame is decoded and offered
to the buffer there, with no task switch. When the buffer is full, the frame waits in the reader
undecoded, reading from the socket pauses, and a task puts the waiting frames into the buffer as
it makes room, then resumes reading: the buffer's bounds hold as with websockets, and what waits
beside it is at most one read (``RECEIVE_BUFFER``). Frames still waiting when the connection
ends go in all the same.

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
import logging
import socket
import ssl
from collections.abc import Callable

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

RECEIVE_BUFFER = 256 * 1024
"""The socket's receive buffer (``SO_RCVBUF``), hence the most one read hands over."""

LOGGER = logging.getLogger("picows.client")
"""picows logs each connection at INFO and a peer's protocol error at ERROR; the source
reports both itself (its reconnect line names the close code)."""
LOGGER.setLevel(logging.WARNING)

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

    def __init__(
        self,
        name: str,
        fmt: Format,
        sink: Sink,
        health: Health,
        *,
        max_size: int,
        on_open: Callable[[], None],
    ) -> None:
        self.name = name
        self.on_open = on_open
        """Called once the connection is open, before its first frame."""
        self.fmt = fmt
        self.sink = sink
        self.health = health
        self.max_size = max_size
        self.transport: WSTransport | None = None
        self.message: bytearray | None = None
        """A fragmented message being assembled."""
        self.waiting: collections.deque[bytes] = collections.deque()
        """Frames that met a full buffer, in order, as received (decoded when they go in):
        reading is paused meanwhile, so they are at most what one read held."""
        self.head: list[Decoded] | None = None
        """The first waiting frame, decoded (once: a format may keep state across frames)."""
        self.wake = asyncio.Event()
        self.failed = False
        self.abandoned = False
        """The session gave up on this connection before it opened (a timeout, a stop)."""

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.abandoned:  # its session is over: nobody reads it
            self.failed = True
            transport.disconnect(graceful=False)
            return
        sock = transport.underlying_transport.get_extra_info("socket")
        if sock is not None:
            # A read takes at most what the kernel holds: this bounds what one read hands
            # over after reading pauses (a flood of tiny frames) to RECEIVE_BUFFER bytes.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self.on_open()

    def pause_writing(self) -> None:
        """Our writes (pongs, the close frame) pile up: the peer does not read. Nothing we
        send matters then; abort rather than hold what it will not take."""
        self.failed = True
        if self.transport is not None:
            self.transport.disconnect(graceful=False)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.failed:
            return
        if frame.rsv1 or frame.rsv2 or frame.rsv3:  # no extension was negotiated
            self._fail(transport, WSCloseCode.PROTOCOL_ERROR, b"reserved bits set")
            return
        kind = frame.msg_type
        if kind is _TEXT or kind is _BINARY:
            self._data(transport, frame)
        elif kind is _CONTINUATION:
            self._continuation(transport, frame)
        elif kind is _CLOSE:
            # Answered with the peer's code (1000 for a close without one); nothing after it
            # counts.
            code = frame.get_close_code()
            answer = WSCloseCode.OK if code is WSCloseCode.NO_INFO else code
            self._fail(transport, answer, frame.get_close_message())
        # A ping is answered by picows; a pong needs nothing.

    def _data(self, transport: WSTransport, frame: WSFrame) -> None:
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

    def _continuation(self, transport: WSTransport, frame: WSFrame) -> None:
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

    def _received(self, data: bytes) -> None:
        self.health.received(self.name)
        if self.waiting:
            self.waiting.append(data)
            return
        items = self.fmt.decode(data)
        if not self.sink.offer(self.name, items):
            assert self.transport is not None
            self.transport.underlying_transport.pause_reading()
            self.wake.set()
            self.waiting.append(data)
            self.head = items  # decoded already: a format may keep state across frames

    def _fail(self, transport: WSTransport, code: WSCloseCode, reason: bytes) -> None:
        """Close the connection with ``code`` (unless a close frame went already); nothing
        parsed after this counts. (A frame over
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
            await self.flush()
            transport = self.transport
            if transport is not None and not transport.underlying_transport.is_closing():
                transport.underlying_transport.resume_reading()

    async def flush(self) -> None:
        """Put the waiting frames, in order. A frame leaves ``waiting`` only once the buffer
        took it: cancelled while waiting for room, it stays first, decoded."""
        while self.waiting:
            if self.head is None:
                self.head = self.fmt.decode(self.waiting[0])
            await self.sink.put(self.name, self.head)
            self.head = None
            self.waiting.popleft()


def _first_close(transport: WSTransport) -> int | None:
    handshake = transport.close_handshake
    if handshake is None:
        return None
    first = handshake.recv if handshake.recv_then_sent else handshake.sent
    if first is None:
        first = handshake.sent or handshake.recv
    if first is None:
        return None
    code = int(first.code.value)
    return 1005 if code == 0 else code  # 1005: no status code (RFC 6455, 7.4.1)


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

    def _opened(self) -> None:
        """The connection is open (picows' ``on_ws_connected``), before its first frame."""
        self._connected_at = self.clock()
        self.health.connected(self.name, True)
        if self.on_connect is not None:
            self.on_connect()

    async def _session(self) -> None:
        settings = self.settings
        parse_uri(settings.url)  # InvalidURI, as websockets would raise: not retried
        ping = settings.ping_interval
        readers: list[_Reader] = []
        over = False

        def listener() -> _Reader:  # picows makes it once the handshake is answered
            reader = _Reader(
                self.name,
                self.fmt,
                self.sink,
                self.health,
                max_size=settings.max_size,
                on_open=self._opened,
            )
            reader.abandoned = over
            readers.append(reader)
            return reader

        try:
            async with asyncio.timeout(settings.open_timeout):
                transport, _ = await ws_connect(
                    listener,
                    settings.url,
                    ssl_context=_tls(settings.url),
                    websocket_handshake_timeout=settings.open_timeout,
                    logger_name=LOGGER,
                    enable_auto_ping=ping is not None,
                    auto_ping_idle_timeout=ping or 20.0,
                    auto_ping_reply_timeout=min(
                        settings.ping_timeout or ping or 20.0, ping or 20.0
                    ),
                    auto_ping_strategy=WSAutoPingStrategy.PING_WHEN_IDLE,
                    max_frame_size=settings.max_size,
                    extra_headers=dict(settings.headers),
                    max_redirects=0,
                    use_aiofastnet=False,
                )
        except BaseException:
            # Timed out or stopped while picows waited for the handshake's answer: picows
            # keeps that connection; should it open after all, it is closed at once.
            over = True
            for reader in readers:
                reader.abandoned = True
                if reader.transport is not None:
                    reader.transport.disconnect(graceful=False)
            raise
        (reader,) = readers
        forward = asyncio.create_task(reader.forward(), name=f"source[{self.name}].forward")
        try:
            if settings.subscribe is not None:
                transport.send(WSMsgType.TEXT, settings.subscribe.encode())
            await _until(transport, forward, settings.close_timeout)
        finally:
            forward.cancel()
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.GOING_AWAY)
            transport.disconnect(graceful=False)
        # The connection ended (we were not stopped): what it delivered still counts, as a
        # frame websockets received before the close is still read. Frames that met a full
        # buffer go in now, in order, once the forwarding task has let go.
        await asyncio.wait({forward})
        await reader.flush()
        raise Closed(_first_close(transport))


async def _until(transport: WSTransport, forward: asyncio.Task[None], close_timeout: float) -> None:
    """Until the connection ends, or ``close_timeout`` after a close frame was sent without
    its end (a peer that neither answers nor reads holds a graceful close for ever).
    Forwarding only ends by failing (``put`` only waits): its error is raised. So is the
    connection's, except a protocol error, which picows answered with its close frame (the
    code the session reports)."""
    ended = asyncio.ensure_future(transport.wait_disconnected())
    closing_since_last_look = False
    try:
        while True:
            done, _ = await asyncio.wait(
                {ended, forward}, timeout=close_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if done:
                break
            if closing_since_last_look:
                return  # the session's end aborts the connection
            closing_since_last_look = transport.is_close_frame_sent
    finally:
        if not ended.done():
            ended.cancel()
    exc = ended.exception() if ended in done else None
    if forward in done:
        forward.result()
    if exc is not None and not isinstance(exc, WSProtocolError):
        raise exc


def _tls(url: str) -> ssl.SSLContext | None:
    """The default client context for ``wss://`` (the system's CAs, hostname checked), as
    websockets uses."""
    return ssl.create_default_context() if url.startswith("wss://") else None
