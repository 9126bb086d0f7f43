"""Feed gaps: when no replica received from a source.

Every replica marks, for each of its sources, each second in which the source was *receiving*:
not disconnected, and a frame (or the connection itself) within ``silent_seconds``. The marks go
to one bitmap per source and UTC day, shared by the replicas (``SETBIT`` is idempotent, so
their marks simply add up): a second no replica marked is a gap. Each replica also logs its
sources' state changes (connected, disconnected, reconnecting, silent, receiving) to a capped
Redis stream per source, which names what a gap was.

Keys (outside any stream: a source may feed many streams)::

    li:feeds                   set     names of the sources that ever marked; bounded by the
                                       configs (source names); no TTL
    li:feed:{<source>}:<day>   string  bitmap, bit = second of the UTC day; 10.8 kB a day;
                                       expires with the timeline (retention after the day)
    li:feed:{<source>}:log     stream  state changes: replica, state, at; MAXLEN ~ 1000

A silence is only known once it has lasted ``silent_seconds``: the seconds before were marked,
so a silent gap starts that much after the last frame.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from workers import keys
from workers.logs import Throttle

log = structlog.get_logger("feeds")

FEEDS = f"{keys.PREFIX}:feeds"
LOG_MAX = 1000
TICK_SECONDS = 0.5
MARK_BACK_SECONDS = 5
"""A tick marks the receiving seconds since the previous tick, at most this many (a loop that
stalled longer leaves a gap of its own: it did not receive either)."""
MIN_GAP_SECONDS = 3
"""Shorter unmarked runs are not reported: a replica's tick may miss a second under load."""
MAX_DAYS = 62


def bitmap_key(source: str, day: int) -> str:
    return f"{keys.PREFIX}:feed:{{{source}}}:{day}"


def log_key(source: str) -> str:
    return f"{keys.PREFIX}:feed:{{{source}}}:log"


class State(enum.StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    RECONNECTING = "reconnecting"
    SILENT = "silent"
    RECEIVING = "receiving"


@dataclasses.dataclass(frozen=True, slots=True)
class Gap:
    source: str
    start: int
    """First second no replica received (epoch seconds)."""
    end: int
    """First second one did again (or now, if ``ongoing``)."""
    state: str
    """What the replicas reported: disconnected, reconnecting, silent (or unknown)."""
    ongoing: bool = False


@dataclasses.dataclass(slots=True)
class _Source:
    up: bool | None = None
    """None: the source has no connection state (a listener)."""
    since: float = 0.0
    """When it last connected, or its last frame, whichever is later."""
    state: State | None = None
    marked: int = 0
    """Last second marked."""
    receiving: bool = False
    """Whether it was receiving at the last tick."""
    became: float | None = None
    """Its first connect or frame since the last tick."""


class FeedRecorder:
    """Follows one replica's sources (SourceHealth calls the hooks) and writes their receiving
    seconds and state changes to Redis every ``TICK_SECONDS``."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        silent_seconds: float,
        retention_seconds: int,
        clock: Callable[[], float] = time.time,
        replica: str | None = None,
    ) -> None:
        self.redis = redis
        self.silent_seconds = silent_seconds
        self.retention_seconds = retention_seconds
        self.clock = clock
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}"
        self._sources: dict[str, _Source] = {}
        self._pending: list[tuple[str, State, float]] = []
        self._throttle = Throttle(30.0)
        self._known: set[str] = set()

    # -- hooks (synchronous, from the sources' health calls) -------------------------------------

    def _source(self, name: str) -> _Source:
        return self._sources.setdefault(name, _Source())

    def connected(self, source: str, up: bool) -> None:
        s = self._source(source)
        s.up = up
        if up:
            s.since = self.clock()
            s.became = s.became or s.since
        self._set(source, s, State.CONNECTED if up else State.DISCONNECTED)

    def reconnecting(self, source: str) -> None:
        s = self._source(source)
        s.up = False
        self._set(source, s, State.RECONNECTING)

    def received(self, source: str) -> None:
        s = self._source(source)
        s.since = self.clock()
        if s.became is None:
            s.became = s.since
        if s.state is not State.RECEIVING:
            self._set(source, s, State.RECEIVING)

    def _set(self, source: str, s: _Source, state: State) -> None:
        if s.state is not state:
            s.state = state
            self._pending.append((source, state, self.clock()))

    # -- the loop ----------------------------------------------------------------------------

    def receiving(self, s: _Source, now: float) -> bool:
        return s.up is not False and s.since > 0 and now - s.since < self.silent_seconds

    def tick_commands(self, now: float) -> list[tuple[str, Any]]:
        """What this tick writes: (command, args) pairs, the state changes logged last.
        Marks each receiving source's seconds since its last mark (at most
        ``MARK_BACK_SECONDS``); a source silent for ``silent_seconds`` becomes SILENT."""
        commands: list[tuple[str, Any]] = []
        second = int(now)
        for name, s in self._sources.items():
            silent = s.up is not False and s.since > 0 and not self.receiving(s, now)
            if silent and s.state is not State.SILENT:
                self._set(name, s, State.SILENT)
            became, s.became = s.became, None
            was, s.receiving = s.receiving, self.receiving(s, now)
            if not s.receiving:
                continue
            first = max(s.marked + 1, second - MARK_BACK_SECONDS + 1)
            if not was:  # from when it came back, not before
                first = max(first, int(became if became is not None else now))
            days: set[int] = set()
            for t in range(first, second + 1):
                day = t // keys.DAY_SECONDS
                days.add(day)
                commands.append(("setbit", (bitmap_key(name, day), t - day * keys.DAY_SECONDS, 1)))
            for day in sorted(days):
                expire = max((day + 1) * keys.DAY_SECONDS, second) + self.retention_seconds
                commands.append(("expireat", (bitmap_key(name, day), expire)))
            s.marked = second
            if name not in self._known:
                commands.append(("sadd", (FEEDS, name)))
        for source, state, at in self._pending:
            fields = {"replica": self.replica, "state": state.value, "at": f"{at:.3f}"}
            commands.append(("xadd", (log_key(source), fields)))
        return commands

    async def tick(self) -> None:
        now = self.clock()
        commands = self.tick_commands(now)
        pending = self._pending
        self._pending = []
        if not commands:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name, args in commands:
                    if name == "xadd":
                        pipe.xadd(args[0], args[1], maxlen=LOG_MAX, approximate=True)
                    else:
                        getattr(pipe, name)(*args)
                await pipe.execute()
            self._known.update(self._sources)
        except (RedisError, RedisClusterException, OSError) as exc:
            self._pending = pending + self._pending  # log them with the next tick
            for s in self._sources.values():
                s.marked = min(s.marked, int(now) - MARK_BACK_SECONDS)
            decision = self._throttle.decide("tick")
            if decision.allowed:
                log.warning("feed state not written", error=type(exc).__name__)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.tick()
            try:
                async with asyncio.timeout(TICK_SECONDS):
                    await stop.wait()
            except TimeoutError:
                pass


# -- reading gaps ---------------------------------------------------------------------------------


def zero_runs(bits: bytes, offset: int, first: int, last: int) -> list[tuple[int, int]]:
    """Runs [start, end) of unmarked seconds within [first, last) of a bitmap whose bit 0 is
    second ``offset``."""
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for t in range(first, last):
        i = t - offset
        marked = 0 <= i // 8 < len(bits) and bits[i // 8] >> (7 - i % 8) & 1
        if not marked and start is None:
            start = t
        elif marked and start is not None:
            runs.append((start, t))
            start = None
    if start is not None:
        runs.append((start, last))
    return runs


def gaps_in(
    source: str,
    bitmaps: dict[int, bytes],
    start: int,
    end: int,
    *,
    changes: Iterable[tuple[float, str]],
    now: float,
    open_end: bool = True,
) -> list[Gap]:
    """The gaps of ``source`` within [start, end): unmarked runs of at least
    ``MIN_GAP_SECONDS`` between its first marked second there and ``end`` (a run reaching
    ``end`` while ``end`` is about now is ``ongoing``, if ``open_end``; without it, such a run
    is the source's end, not a gap). ``changes``: (at, state) logged."""
    runs: list[tuple[int, int]] = []
    first: int | None = None  # where the window's first day read begins
    for day in sorted(bitmaps):
        offset = day * keys.DAY_SECONDS
        lo, hi = max(start, offset), min(end, offset + keys.DAY_SECONDS)
        if lo < hi:
            first = lo if first is None else first
            for a, b in zero_runs(bitmaps[day], offset, lo, hi):
                joined = runs.pop()[0] if runs and runs[-1][1] == a else a  # across midnight
                runs.append((joined, b))
    if runs and runs[0][0] == first:
        runs.pop(0)  # before the source's first mark in the window: not yet feeding
    ongoing_end = open_end and end - now > -MIN_GAP_SECONDS  # the window reaches now
    if runs and runs[-1][1] == end and not ongoing_end:
        runs.pop()  # after its last mark, the window closed: the source had stopped
    problems = sorted(
        (at, what)
        for at, what in changes
        if what in (State.DISCONNECTED, State.RECONNECTING, State.SILENT)
    )
    gaps = []
    for a, b in runs:
        if b - a < MIN_GAP_SECONDS:
            continue
        state = "unknown"
        for at, what in problems:
            if a - 3600 <= at < b:
                state = what
        gaps.append(Gap(source, a, b, state, ongoing=b == end and ongoing_end))
    return gaps


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def read_gaps(
    redis: Redis | RedisCluster,
    stream: str,
    start: float,
    end: float,
    *,
    clock: Callable[[], float] = time.time,
    open_end: bool = True,
) -> list[Gap]:
    """Every source's gaps within [start, end) (seconds). Sources are not tied to streams
    (one may feed many): every source that marked within the window is shown. ``stream`` is
    kept for when sources name their streams."""
    del stream
    lo, hi = int(start), int(end) + 1
    first_day, last_day = lo // keys.DAY_SECONDS, hi // keys.DAY_SECONDS
    days = range(max(first_day, last_day - MAX_DAYS + 1), last_day + 1)
    sources = sorted(_text(s) for s in await redis.smembers(FEEDS))
    gaps: list[Gap] = []
    for source in sources[:100]:
        bitmaps: dict[int, bytes] = {}
        for day in days:
            raw = await redis.get(bitmap_key(source, day))
            bitmaps[day] = raw if isinstance(raw, bytes) else b""
        if not any(any(b) for b in bitmaps.values()):
            continue
        entries = await redis.xrange(log_key(source), min=f"{(lo - 3600) * 1000}", count=LOG_MAX)
        changes = [
            (float(_text(fields.get(b"at", b"0"))), _text(fields.get(b"state", b"")))
            for _, fields in entries or []
            if fields
        ]
        gaps += gaps_in(source, bitmaps, lo, hi, changes=changes, now=clock(), open_end=open_end)
    return sorted(gaps, key=lambda g: (g.start, g.source))
