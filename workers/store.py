"""Redis access: the atomic commit of a batch, dead letters, and reading totals back."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from ingest.model import Comment, Event, Order, Rejection, Viewers
from workers import keys
from workers.keys import StreamKeys, fingerprint

DEAD_LETTER_RAW_BYTES = 8192
"""Raw input kept per dead letter: enough to see what was wrong, bounded for memory."""

TOTALS_CHUNK = 200
"""Streams per round trip when reading totals: Redis answers one chunk at a time, and the event
loop sends and receives one at a time, so commits run between the chunks of a long read."""


class Outcome(enum.Enum):
    """What a commit did with one event."""

    NEW = "1"
    DUPLICATE = "0"
    TOTAL_LIMIT = "2"
    """Refused: a total would pass ``keys.TOTAL_LIMIT``."""
    STREAM_LIMIT = "s"
    """Refused: a new stream beyond ``max_streams``."""


_OUTCOMES = {ord(o.value): o for o in Outcome}


@dataclasses.dataclass(frozen=True, slots=True)
class StoreSettings:
    retention_seconds: int = 48 * 3600
    sku_limit: int = 200
    max_streams: int = 1000
    dead_letter_max: int = 10_000
    now_override: int | None = None
    """Seconds since the epoch used instead of the clock for dedup generations (tests only)."""
    read_concurrency: int = 64
    """Cluster mode: calls in flight at once when reading totals (at most the client's
    connections per node)."""


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    source: str
    rejection: Rejection


@dataclasses.dataclass(slots=True)
class StreamTotals:
    """One stream's totals as stored: raw counter fields, viewers and unique counts."""

    stream: str
    counters: dict[str, int]
    viewers: dict[str, int]
    unique_commenters: int
    unique_buyers: int

    def by(self, metric: str) -> dict[tuple[str, ...], int]:
        """Counter values of one metric, keyed by their label values."""
        prefix = metric + keys.SEP
        return {
            tuple(field[len(prefix) :].split(keys.SEP)): value
            for field, value in self.counters.items()
            if field.startswith(prefix)
        }

    def total(self, metric: str) -> int:
        return sum(self.by(metric).values())


_pack = msgspec.msgpack.Encoder().encode


def _records(events: Sequence[Event]) -> bytes:
    """The commit script's records (see ``keys.COMMIT_SCRIPT``), as one MessagePack blob."""
    records: list[tuple[object, ...]] = []
    append = records.append
    for event in events:
        shard, member = fingerprint(event.identity)
        record: tuple[object, ...]
        match event:
            case Comment():
                record = ("c", shard, str(member), event.platform, event.user or "")
            case Viewers():
                record = ("v", shard, str(member), event.platform, event.count, event.ts_ms)
            case Order(cancelled=True):
                record = ("x", shard, str(member), event.id)
            case Order():
                record = (
                    "o",
                    shard,
                    str(member),
                    event.id,
                    event.platform,
                    event.country,
                    event.region,
                    event.buyer or "",
                    event.currency,
                    str(event.amount_minor),
                    str(event.grams),
                    [(item.sku, str(item.grams)) for item in event.items],
                )
        if event.aliases:
            aliases = [fingerprint(alias) for alias in event.aliases]
            record = (*record, [(s, str(m)) for s, m in aliases])
        append(record)
    return _pack(records)


class Store:
    """Commits batches atomically per stream and reads totals. Owns no connection lifecycle.

    On a single Redis, one pipeline carries every stream's script call and the script reads the
    server's clock. On a Redis Cluster, each stream's call goes to its slot's primary, and every
    key the script may touch is declared: while a slot migrates, a call whose keys are split
    between the two nodes is refused (TRYAGAIN) and retried, instead of reading a set that has
    already moved as empty. The generations then come from this process's clock, and lookups
    also read the next generation, in case another replica's clock runs ahead.
    """

    def __init__(
        self,
        redis: Redis | RedisCluster,
        settings: StoreSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.clock = clock
        self.cluster = isinstance(redis, RedisCluster)
        self._script = redis.register_script(keys.COMMIT_SCRIPT)
        self._lookback = keys.lookback_generations(settings.retention_seconds)
        self._ahead = 1 if self.cluster else 0
        self._tail: list[str | int] = [
            keys.GENERATION_SECONDS,
            self._lookback,
            self._ahead,
            settings.sku_limit,
            keys.TOTAL_LIMIT,
        ]
        self._known_streams: set[str] = set()

    def _now(self) -> int | None:
        if self.settings.now_override is not None:
            return self.settings.now_override
        return int(self.clock()) if self.cluster else None

    def _generations(self, now: int) -> range:
        gen = now // keys.GENERATION_SECONDS
        return range(gen - self._lookback, gen + self._ahead + 1)

    def _declared(self, stream: str, events: Sequence[Event], now: int) -> list[str]:
        """Every key the script may touch for these events (cluster mode)."""
        k = StreamKeys(stream)
        generations = self._generations(now)
        shards = {
            fingerprint(identity)[0]
            for event in events
            for identity in (event.identity, *event.aliases)
        }
        declared = k.script_keys()
        declared += [f"{k.seen_prefix}{g}:{shard}" for shard in shards for g in generations]
        if any(isinstance(event, Order) for event in events):
            declared += [f"{k.orders_prefix}{g}" for g in generations]
        return declared

    async def commit(
        self, events: Sequence[Event], dead: Sequence[DeadLetter] = ()
    ) -> list[Outcome]:
        """Dedup and count ``events``, file ``dead`` letters; each event's outcome.

        One script call per stream, each atomic on its own; on a single Redis all in one
        pipeline round trip (two when a stream is new to this process).
        """
        by_stream: dict[str, list[int]] = defaultdict(list)
        for index, event in enumerate(events):
            by_stream[event.stream].append(index)
        outcomes = [Outcome.STREAM_LIMIT] * len(events)
        refused = await self._over_stream_limit(
            [s for s in by_stream if s not in self._known_streams]
        )
        for stream in refused:
            del by_stream[stream]
        now = self._now()
        head: list[str | int] = ["" if now is None else now, *self._tail]
        batches = {stream: [events[i] for i in indexes] for stream, indexes in by_stream.items()}
        if self.cluster:
            assert now is not None
            async with self.redis.pipeline() as pipe:  # other slots than the streams' own
                if batches:
                    pipe.sadd(keys.STREAMS, *batches)
                for letter in dead:
                    self._dead_letter(pipe, letter)
                await pipe.execute()
            replies: list[Any] = list(
                await asyncio.gather(
                    *(
                        self._script(
                            keys=self._declared(stream, batch, now),
                            args=[*head, _records(batch)],
                            client=self.redis,
                        )
                        for stream, batch in batches.items()
                    )
                )
            )
        else:
            assert isinstance(self.redis, Redis)
            async with self.redis.pipeline(transaction=False) as pipe:
                if batches:
                    pipe.sadd(keys.STREAMS, *batches)
                for stream, batch in batches.items():
                    await self._script(
                        keys=StreamKeys(stream).script_keys(),
                        args=[*head, _records(batch)],
                        client=pipe,
                    )
                for letter in dead:
                    self._dead_letter(pipe, letter)
                replies = (await pipe.execute())[1 if batches else 0 :]
        self._known_streams.update(batches)
        for indexes, reply in zip(by_stream.values(), replies, strict=False):
            for index, code in zip(indexes, reply, strict=True):
                outcomes[index] = _OUTCOMES[code]
        return outcomes

    async def _over_stream_limit(self, streams: list[str]) -> list[str]:
        """The streams, new to this process, that would pass ``max_streams`` (approximately:
        replicas racing for the last places may pass it by a few)."""
        if not streams:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.scard(keys.STREAMS)
            for stream in streams:
                pipe.sismember(keys.STREAMS, stream)
            count, *known = await pipe.execute()
        room = self.settings.max_streams - int(count)
        refused = []
        for stream, member in zip(streams, known, strict=True):
            if member:
                continue
            if room > 0:
                room -= 1
            else:
                refused.append(stream)
        return refused

    def _dead_letter(self, pipe: Any, letter: DeadLetter) -> None:
        rejection = letter.rejection
        key = StreamKeys(rejection.stream).dead if rejection.stream else keys.UNROUTED_DEAD
        fields = {
            "source": letter.source,
            "reason": rejection.reason.value,
            "kind": rejection.kind,
            "detail": rejection.detail[:500],
            "raw": rejection.raw[:DEAD_LETTER_RAW_BYTES],
            "at": f"{time.time():.3f}",
        }
        pipe.xadd(key, fields, maxlen=self.settings.dead_letter_max, approximate=True)

    async def streams(self) -> list[str]:
        members = await self.redis.smembers(keys.STREAMS)
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def totals(
        self, streams: Sequence[str] | None = None, chunk: int = TOTALS_CHUNK
    ) -> list[StreamTotals]:
        """Every stream's totals, ``chunk`` streams per pipeline round trip."""
        return parse_totals(await self.raw_totals(streams, chunk))

    async def raw_totals(
        self, streams: Sequence[str] | None = None, chunk: int = TOTALS_CHUNK
    ) -> RawTotals:
        """What :meth:`totals` reads, unparsed: :func:`parse_totals` can run off the loop."""
        names = list(streams) if streams is not None else await self.streams()
        replies: list[Any] = []
        for start in range(0, len(names), chunk):
            replies += await self._replies(names[start : start + chunk])
        return RawTotals(names, replies)

    async def _replies(self, names: list[str]) -> list[Any]:
        replies: list[Any]
        if self.cluster:  # a cluster pipeline refuses PFCOUNT: one call per stream, bounded
            limit = asyncio.Semaphore(self.settings.read_concurrency)

            async def bounded(call: Awaitable[Any]) -> Any:
                async with limit:
                    return await call

            calls = []
            for stream in names:
                k = StreamKeys(stream)
                calls += [
                    self.redis.hgetall(k.totals),
                    self.redis.hgetall(k.viewers),
                    self.redis.pfcount(k.commenters),
                    self.redis.pfcount(k.buyers),
                ]
            replies = list(await asyncio.gather(*(bounded(call) for call in calls)))
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream in names:
                    k = StreamKeys(stream)
                    pipe.hgetall(k.totals)
                    pipe.hgetall(k.viewers)
                    pipe.pfcount(k.commenters)
                    pipe.pfcount(k.buyers)
                replies = await pipe.execute()
        return replies

    async def dead_letters(self, stream: str | None, count: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters of a stream (or the unrouted ones), newest first."""
        key = StreamKeys(stream).dead if stream else keys.UNROUTED_DEAD
        entries = await self.redis.xrevrange(key, count=count) or []
        return [{_text(k or ""): v for k, v in (fields or {}).items()} for _, fields in entries]


@dataclasses.dataclass(frozen=True, slots=True)
class RawTotals:
    """Streams and their four replies each (totals, viewers, two unique counts), as read."""

    streams: list[str]
    replies: list[Any]


def parse_totals(raw: RawTotals) -> list[StreamTotals]:
    result = []
    replies = raw.replies
    for n, stream in enumerate(raw.streams):
        counters, viewers, commenters, buyers = replies[4 * n : 4 * n + 4]
        result.append(
            StreamTotals(
                stream=stream,
                counters={_text(f): int(v) for f, v in counters.items()},
                viewers={_text(f): int(v) for f, v in viewers.items() if b"|" not in _bytes(f)},
                unique_commenters=int(commenters),
                unique_buyers=int(buyers),
            )
        )
    return result


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
