"""Demo feed: serves a synthetic sale's deliveries over a websocket, paced, with one cut.

The feed is live: one position shared by all connections, advanced only by sending while someone
is connected. By default a newer connection supersedes an older one; with ``broadcast`` every
connection receives the feed (two ingester replicas watching one source). Every connection first
receives again the last ``replay`` deliveries sent before it, then follows the shared position.
The scenario clock starts with the first connection and keeps running across reconnects, so a
client that was away gets the deliveries that fell due meanwhile in one burst. With ``retime``
the events' timestamps are moved to the wall clock of the replay (order kept), so event lag on
the dashboards means something.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
import math
from http import HTTPStatus
from types import TracebackType
from typing import Self

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from workers.demo.sale import Sale

__all__ = ["FEED_PATH", "SUPERSEDED", "FeedServer"]

FEED_PATH = "/feed"
SUPERSEDED = 4000  # close code for a connection replaced by a newer one
_CHUNK = 256  # deliveries sent between two yields to the event loop
_NAP = 0.25  # longest pacing sleep (s), so a vanished client is noticed promptly
_RETIME_FAST = 100.0  # compression of the scenario clock when retiming at speed 0: distinct
# event times stay distinct to the millisecond


class FeedServer:
    """Async context manager serving ``sale`` at ``ws://host:port/feed``."""

    def __init__(
        self,
        sale: Sale,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 120.0,
        disconnect_at: float | None = 0.5,
        replay: int = 200,
        batch: int = 1,
        broadcast: bool = False,
        retime: bool = False,
    ) -> None:
        if not speed >= 0:
            raise ValueError("speed must be >= 0 (0 or inf: as fast as possible)")
        if disconnect_at is not None and not 0.0 < disconnect_at <= 1.0:
            raise ValueError("disconnect_at must be in (0, 1] or None")
        if replay < 0 or batch < 1:
            raise ValueError("replay must be >= 0 and batch >= 1")
        self._deliveries = sale.deliveries
        self._times = [delivery.at for delivery in sale.deliveries]
        self._host, self._port = host, port
        self._speed = 0.0 if math.isinf(speed) else speed
        self._replay, self._batch = replay, batch
        self._broadcast, self._retime = broadcast, retime
        self._retimed: dict[int, object] = {}
        self._wall0: dt.datetime | None = None
        self._origin = min(
            (dt.datetime.fromisoformat(str(d.event["ts"])) for d in self._deliveries),
            default=None,
        )
        total = len(self._deliveries)
        self._cut: int | None = None
        if disconnect_at is not None and total:
            self._cut = max(1, min(total, math.ceil(disconnect_at * total)))
        self._pos = 0
        self._clock0: float | None = None
        self._subscribers: set[ServerConnection] = set()
        self._someone = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._server: Server | None = None
        self._url: str | None = None
        self.done = asyncio.Event()
        self.cut_at: int | None = None
        self.disconnects = 0
        self.connections = 0
        self.replayed = 0
        if not total:
            self.done.set()

    @property
    def url(self) -> str:
        """``ws://host:port/feed`` with the port actually bound."""
        if self._url is None:
            raise RuntimeError("FeedServer is not started")
        return self._url

    @property
    def sent(self) -> int:
        """Deliveries sent so far (the shared feed position; replays not counted)."""
        return self._pos

    @property
    def total(self) -> int:
        """Number of deliveries in the sale."""
        return len(self._deliveries)

    async def __aenter__(self) -> Self:
        self._server = await serve(
            self._handle, self._host, self._port, process_request=self._route
        )
        port = self._server.sockets[0].getsockname()[1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._url = f"ws://{host}:{port}{FEED_PATH}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse the handshake for any path but the feed's."""
        if request.path.partition("?")[0] != FEED_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        """A subscriber: supersede the others (unless broadcasting), replay, then follow."""
        self.connections += 1
        if not self._broadcast:
            for previous in list(self._subscribers):
                await previous.close(SUPERSEDED, "superseded by a newer connection")
        try:
            async with self._lock:  # the pump waits: nothing is sent between replay and joining
                await self._send_range([ws], max(0, self._pos - self._replay), self._pos)
                self._subscribers.add(ws)
                self._someone.set()
            if self._pump_task is None:
                self._pump_task = asyncio.create_task(self._pump(), name="demo.feed.pump")
            await ws.wait_closed()
        except ConnectionClosed:
            pass
        finally:
            self._subscribers.discard(ws)
            if not self._subscribers:
                self._someone.clear()

    async def _pump(self) -> None:
        """Send due deliveries to the subscribers until all are sent; pause while none."""
        loop = asyncio.get_running_loop()
        total = len(self._deliveries)
        while self._pos < total:
            await self._someone.wait()
            if self._clock0 is None:
                self._clock0 = loop.time()
                self._wall0 = dt.datetime.now(dt.UTC)
            due = total
            if self._speed:
                scenario = (loop.time() - self._clock0) * self._speed
                due = bisect.bisect_right(self._times, scenario)
            if due <= self._pos:
                wait = self._times[self._pos] / self._speed - (loop.time() - self._clock0)
                await asyncio.sleep(min(max(wait, 0.0), _NAP))
                continue
            end = min(due, self._pos + self._batch * max(1, _CHUNK // self._batch))
            cut = self._cut if self.cut_at is None else None
            if cut is not None and self._pos < cut:
                end = min(end, cut)
            async with self._lock:
                await self._send_range(list(self._subscribers), self._pos, end, advance=True)
            if cut is not None and self._pos >= cut:
                self.cut_at = self._pos
                self.disconnects += 1
                for ws in list(self._subscribers):
                    await ws.close(CloseCode.SERVICE_RESTART, "service restart")
            await asyncio.sleep(0)
        self.done.set()

    def _event(self, event: dict[str, object]) -> object:
        """The event as sent: as generated, or moved to the replay's wall clock."""
        if not self._retime or self._origin is None or self._wall0 is None:
            return event
        found = self._retimed.get(id(event))  # redeliveries share the same object
        if found is None:
            offset = dt.datetime.fromisoformat(str(event["ts"])) - self._origin
            stamped = self._wall0 + offset / (self._speed or _RETIME_FAST)
            found = {**event, "ts": stamped.isoformat(timespec="microseconds")}
            self._retimed[id(event)] = found
        return found

    async def _send_range(
        self, subscribers: list[ServerConnection], lo: int, hi: int, *, advance: bool = False
    ) -> None:
        """Send deliveries ``[lo, hi)`` as text frames of up to ``batch`` events."""
        for start in range(lo, hi, self._batch):
            stop = min(start + self._batch, hi)
            events = [self._event(d.event) for d in self._deliveries[start:stop]]
            payload = orjson.dumps(events[0] if self._batch == 1 else events)
            for ws in subscribers:
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(payload, text=True)
            if advance:
                self._pos = stop
            else:
                self.replayed += stop - start
