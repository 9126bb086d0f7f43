"""The bounded buffer between sources and Redis, and the batching committer behind it.

Sources ``submit`` decoded frames, or ``put`` them when they acknowledge nothing upstream; when
``capacity`` events, or ``buffer_bytes`` bytes of them, wait uncommitted, both wait
(backpressure). A frame is taken whenever the buffer is below both bounds, so one frame larger
than a bound still passes an empty buffer. ``max_in_flight``
workers each take a batch of whole frames and commit it in one Redis round trip. A worker
commits at once when nothing else is in flight (low latency at low rates); otherwise it waits up
to ``max_delay`` for a fuller batch. Batches that may decide comment orders (comments with text,
where streams have catalogs) commit one at a time, in the order they were taken: a buyer's
"first" comment order is the first committed, so a later comment must not overtake it. A failed
commit is retried with backoff until it succeeds — the commit is idempotent — while the buffer
fills and sources wait.

Each frame is committed in the identity namespace of the source that submitted it (its name,
unless ``namespaces`` maps it to a shared one): the source, never the frame, decides it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

import msgspec
import structlog
from redis.exceptions import RedisClusterException, RedisError

from ingest.model import UNKNOWN_KIND, Comment, Decoded, Event, Order, Reason, Rejection
from ingest.redact import masked
from ingest.sources.backoff import Backoff
from workers.logs import Throttle
from workers.metrics import HealthMetrics, observe_many
from workers.store import DeadLetter, Outcome, Store

log = structlog.get_logger("committer")


EVENT_BYTES = 512
"""Memory an event is counted as holding in the buffer: an upper estimate (a decoded comment or
order of a typical frame measures ~300–350 bytes, its share of the frame's list included)."""
REJECTION_BYTES = 256
"""A rejection's own memory, on top of its raw bytes (at most ``ingest.model.RAW_BYTES``) and its
detail."""


TEXT_CHAR_BYTES = 4
"""A comment's text is counted as 4 bytes a character (the most a str takes per character)."""


def held_bytes(items: Sequence[Decoded]) -> int:
    """What the buffer counts a frame's items as holding (see :data:`EVENT_BYTES`)."""
    size = EVENT_BYTES * len(items)
    for item in items:
        if isinstance(item, Rejection):
            size += REJECTION_BYTES - EVENT_BYTES + len(item.raw) + len(item.detail)
        elif isinstance(item, Comment) and item.text:
            size += TEXT_CHAR_BYTES * len(item.text)
    return size


class _Frame(msgspec.Struct, frozen=True, gc=False):
    """A frame waiting in the buffer. Neither it nor its items tuple (of events, which are
    untracked too) is tracked by the cyclic garbage collector: a full buffer of 50,000 frames
    held 150,000 tracked objects (frame, list, future), every full collection walked them all,
    and they were a seventh of the ingester's CPU (docs/benchmarks.md, "The collector and the
    buffer"). Nothing a frame holds refers back to it, so it can be in no cycle."""

    source: str
    items: tuple[Decoded, ...]
    future: asyncio.Future[None] | None
    """None for a frame :meth:`Committer.put`: nobody waits for its commit."""
    arrived: float
    size: int
    """Bytes held, per :func:`held_bytes`."""


@dataclasses.dataclass(frozen=True, slots=True)
class BatchSettings:
    max_events: int = 1000
    max_delay: float = 0.005
    max_in_flight: int = 2
    capacity: int = 50_000
    buffer_bytes: int = 64 * 1024 * 1024


class Committer:
    """Owns the buffer and the commit workers; run it inside the runtime's task group."""

    def __init__(
        self,
        store: Store,
        health: HealthMetrics,
        settings: BatchSettings,
        *,
        log_interval: float = 10.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        namespaces: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.namespaces = dict(namespaces or {})
        """Source name -> identity namespace; a source not named here has its own name."""
        self.health = health
        self.settings = settings
        self.clock = clock
        self.monotonic = monotonic
        self._frames: collections.deque[_Frame] = collections.deque()
        self._buffered = 0
        self._buffered_bytes = 0
        self._queued = 0
        """Events waiting in ``_frames`` (not yet taken by a worker)."""
        self._in_flight = 0
        self._data = asyncio.Event()
        self._full = asyncio.Event()
        self._space = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._throttle = Throttle(log_interval, monotonic)
        self._in_order = asyncio.Lock()
        """Held by a batch that may decide comment orders, until it is committed: such batches
        commit one at a time, in the order workers took them (the lock is fair, and a worker
        asks for it before another can take the next batch)."""
        health.buffered.set_function(lambda: self._buffered)
        health.buffered_bytes.set_function(lambda: self._buffered_bytes)
        self._outcomes: dict[tuple[str, str, str], int] = collections.Counter()
        self.submitted = 0
        """Events (and rejections) submitted since start."""
        self.committed = 0
        """Of those, committed to Redis (counted, found duplicate, or dead-lettered)."""

    @property
    def buffered(self) -> int:
        """Events submitted and not yet committed (including those being committed)."""
        return self._buffered

    @property
    def buffered_bytes(self) -> int:
        """Bytes the buffered events hold (an estimate, see :func:`held_bytes`)."""
        return self._buffered_bytes

    async def submit(self, source: str, items: Sequence[Decoded]) -> asyncio.Future[None]:
        """Queue a frame (waits while the buffer is full); the future completes once every
        item is committed or dead-lettered."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not items:
            future.set_result(None)
            return future
        if not self._has_room():
            await self._room()
        self._append(source, items, future)
        return future

    async def put(self, source: str, items: Sequence[Decoded]) -> None:
        """:meth:`submit` for a source that acknowledges nothing upstream: no future to keep."""
        if not items:
            return
        if not self._has_room():
            await self._room()
        self._append(source, items, None)

    def offer(self, source: str, items: Sequence[Decoded]) -> bool:
        """:meth:`put` without waiting, for a source that reads in callbacks: queued now if
        the buffer has room (as ``put`` would queue it), else False and nothing queued."""
        if not self._has_room():
            return False
        if items:
            self._append(source, items, None)
        return True

    def _has_room(self) -> bool:
        """Below both bounds: a frame may go in (whatever its size)."""
        settings = self.settings
        return self._buffered < settings.capacity and self._buffered_bytes < settings.buffer_bytes

    async def _room(self) -> None:
        while not self._has_room():
            self._space.clear()
            await self._space.wait()

    def _append(
        self, source: str, items: Sequence[Decoded], future: asyncio.Future[None] | None
    ) -> None:
        size = held_bytes(items)
        count = len(items)
        self._frames.append(_Frame(source, tuple(items), future, self.monotonic(), size))
        self._buffered += count
        self._buffered_bytes += size
        self._queued += count
        self.submitted += count
        self._empty.clear()
        self._data.set()
        if self._queued >= self.settings.max_events:
            self._full.set()

    async def run(self) -> None:
        """Run the commit workers until cancelled."""
        async with asyncio.TaskGroup() as group:
            for n in range(self.settings.max_in_flight):
                group.create_task(self._worker(), name=f"committer.worker[{n}]")

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed."""
        await self._empty.wait()

    async def _worker(self) -> None:
        while True:
            batch = await self._next_batch()
            self._in_flight += 1
            try:
                await self._commit(batch)
            finally:
                self._in_flight -= 1
                self._buffered -= sum(len(frame.items) for frame in batch)
                self._buffered_bytes -= sum(frame.size for frame in batch)
                self._space.set()
                if self._buffered == 0:
                    self._empty.set()

    async def _next_batch(self) -> list[_Frame]:
        settings = self.settings
        while True:
            while not self._frames:
                self._data.clear()
                await self._data.wait()
            if self._in_flight and self._queued < settings.max_events:
                remaining = self._frames[0].arrived + settings.max_delay - self.monotonic()
                if remaining > 0:
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(remaining):
                            await self._full.wait()
            if not self._frames:
                continue
            batch: list[_Frame] = []
            size = 0
            while self._frames and (
                not batch or size + len(self._frames[0].items) <= settings.max_events
            ):
                frame = self._frames.popleft()
                batch.append(frame)
                size += len(frame.items)
            self._queued -= size
            return batch

    async def _commit(self, batch: list[_Frame]) -> None:
        events: list[Event] = []
        sources: list[str] = []
        spaces: list[str] = []
        dead: list[DeadLetter] = []
        namespaces = self.namespaces
        for frame in batch:
            source = frame.source
            namespace = namespaces.get(source, source)
            for item in frame.items:
                if isinstance(item, Rejection):
                    dead.append(DeadLetter(source, item))
                else:
                    events.append(item)
                    sources.append(source)
                    spaces.append(namespace)
        try:
            outcomes = await self._commit_in_turn(events, dead, spaces)
            refused = self._refused(events, sources, outcomes)
            if refused:  # rare: a total at its limit, or too many streams
                await self._commit_with_retry([], refused)
                dead += refused
        except BaseException as exc:
            for frame in batch:
                future = frame.future
                if future is None or future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                    future.exception()  # mark retrieved: nobody may be waiting
                else:
                    future.cancel()
            raise
        self._account(events, sources, outcomes, dead)
        self.committed += len(events) + len(dead) - len(refused)
        for frame in batch:
            future = frame.future
            if future is not None and not future.done():
                future.set_result(None)

    async def _commit_in_turn(
        self, events: list[Event], dead: list[DeadLetter], spaces: list[str]
    ) -> list[Outcome]:
        """Commit; a batch that may decide comment orders waits for the earlier ones."""
        if not self.store.orders_from_comments(events):
            return await self._commit_with_retry(events, dead, spaces)
        async with self._in_order:  # asked for before any other worker takes its next batch
            return await self._commit_with_retry(events, dead, spaces)

    @staticmethod
    def _refused(
        events: list[Event], sources: list[str], outcomes: list[Outcome]
    ) -> list[DeadLetter]:
        letters = []
        for event, source, outcome in zip(events, sources, outcomes, strict=True):
            if outcome is Outcome.TOTAL_LIMIT:
                reason, detail = Reason.OUT_OF_RANGE, "a total would pass its limit"
            elif outcome is Outcome.STREAM_LIMIT:
                reason, detail = Reason.STREAM_NOT_ALLOWED, "the stream limit is reached"
            else:
                continue
            raw = masked(msgspec.json.encode(_anonymous(event)))
            # The store files a stream that is not admitted under li:dead, with its name.
            letters.append(
                DeadLetter(source, Rejection(reason, detail, raw, event.stream, event.kind.value))
            )
        return letters

    async def _commit_with_retry(
        self, events: list[Event], dead: list[DeadLetter], namespaces: list[str] | None = None
    ) -> list[Outcome]:
        backoff = Backoff(0.05, 5.0)
        while True:
            started = self.monotonic()
            try:
                outcomes = await self.store.commit(events, dead, namespaces)
            except (RedisError, RedisClusterException, OSError) as exc:
                self.health.redis_up.set(0)
                self.health.commit_errors.labels(type(exc).__name__).inc()
                delay = backoff.next()
                log.warning(
                    "commit failed, retrying",
                    error=type(exc).__name__,
                    detail=str(exc)[:200],
                    retry_in=round(delay, 3),
                    events=len(events),
                )
                await asyncio.sleep(delay)
                continue
            self.health.redis_up.set(1)
            self.health.commit_duration.observe(self.monotonic() - started)
            self.health.batch_size.observe(len(events) + len(dead))
            return outcomes

    def _account(
        self,
        events: list[Event],
        sources: list[str],
        results: list[Outcome],
        dead: list[DeadLetter],
    ) -> None:
        health = self.health
        now_ms = self.clock() * 1000
        outcomes = self._outcomes
        outcomes.clear()
        kinds = [event.kind for event in events]
        for (source, event_kind, result), count in collections.Counter(
            zip(sources, kinds, results, strict=True)
        ).items():
            # refused events are counted with the dead letters below
            if result is Outcome.NEW or result is Outcome.DUPLICATE:
                outcomes[source, event_kind.value, _OUTCOME_LABELS[result]] += count
        times_by_source: dict[str, list[int]] = collections.defaultdict(list)
        for event, source, result in zip(events, sources, results, strict=True):
            if result is Outcome.NEW:
                times_by_source[source].append(event.ts_ms)
        for letter in dead:
            rejection = letter.rejection
            outcomes[letter.source, rejection.kind, "rejected"] += 1
            health.rejections.labels(letter.source, rejection.reason.value).inc()
            decision = self._throttle.decide((letter.source, rejection.reason))
            if decision.allowed:
                log.warning(
                    "rejected input",
                    source=letter.source,
                    reason=rejection.reason.value,
                    kind=rejection.kind,
                    stream=rejection.stream,
                    detail=rejection.detail[:200],
                    suppressed_since_last=decision.suppressed,
                )
        for (source, kind, outcome), count in outcomes.items():
            health.events.labels(source, kind or UNKNOWN_KIND, outcome).inc(count)
        for source, times in times_by_source.items():
            lags = [max(0.0, (now_ms - ts_ms) / 1000) for ts_ms in times]
            observe_many(health.lag.labels(source), lags)


_OUTCOME_LABELS = {Outcome.NEW: "accepted", Outcome.DUPLICATE: "duplicate"}


def _anonymous(event: Event) -> Event:
    """``event`` without who wrote or bought it (a user or buyer may be a name or a phone
    number) or what a comment says (it may hold one): what a dead letter of a refused event
    keeps."""
    if isinstance(event, Order):
        return msgspec.structs.replace(event, buyer=None)
    if isinstance(event, Comment):
        return msgspec.structs.replace(event, user=None, text="")
    return event
