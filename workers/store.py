"""Redis access: the atomic commit of a batch, dead letters, and reading totals back."""

from __future__ import annotations

import dataclasses
import enum
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis

from ingest.model import Comment, Event, Order, Rejection, Viewers
from workers import keys
from workers.keys import StreamKeys, fingerprint

DEAD_LETTER_RAW_BYTES = 8192
"""Raw input kept per dead letter: enough to see what was wrong, bounded for memory."""


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
    """Seconds since the epoch used instead of Redis TIME for dedup generations (tests only)."""


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
        match event:
            case Comment():
                append(("c", shard, str(member), event.platform, event.user or ""))
            case Viewers():
                append(("v", shard, str(member), event.platform, event.count, event.ts_ms))
            case Order(cancelled=True):
                append(("x", shard, str(member), event.id))
            case Order():
                append(
                    (
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
                )
    return _pack(records)


class Store:
    """Commits batches atomically per stream and reads totals. Owns no connection lifecycle."""

    def __init__(self, redis: Redis, settings: StoreSettings) -> None:
        self.redis = redis
        self.settings = settings
        self._script = redis.register_script(keys.COMMIT_SCRIPT)
        lookback = keys.lookback_generations(settings.retention_seconds)
        self._head: list[str | int] = [
            "" if settings.now_override is None else settings.now_override,
            keys.GENERATION_SECONDS,
            lookback,
            settings.sku_limit,
            keys.TOTAL_LIMIT,
        ]
        self._known_streams: set[str] = set()

    async def commit(
        self, events: Sequence[Event], dead: Sequence[DeadLetter] = ()
    ) -> list[Outcome]:
        """Dedup and count ``events``, file ``dead`` letters; each event's outcome.

        One pipeline round trip (two when a stream is new to this process); one script call
        per stream, each atomic on its own.
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
        async with self.redis.pipeline(transaction=False) as pipe:
            if by_stream:
                pipe.sadd(keys.STREAMS, *by_stream)
            for stream, indexes in by_stream.items():
                records = _records([events[i] for i in indexes])
                await self._script(
                    keys=StreamKeys(stream).script_keys(), args=[*self._head, records], client=pipe
                )
            for letter in dead:
                self._dead_letter(pipe, letter)
            replies: list[Any] = await pipe.execute()
        self._known_streams.update(by_stream)
        first = 1 if by_stream else 0
        for indexes, reply in zip(by_stream.values(), replies[first:], strict=False):
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

    async def totals(self, streams: Sequence[str] | None = None) -> list[StreamTotals]:
        """Every stream's totals, read in one pipeline round trip."""
        names = list(streams) if streams is not None else await self.streams()
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in names:
                k = StreamKeys(stream)
                pipe.hgetall(k.totals)
                pipe.hgetall(k.viewers)
                pipe.pfcount(k.commenters)
                pipe.pfcount(k.buyers)
            replies: list[Any] = await pipe.execute()
        result = []
        for n, stream in enumerate(names):
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

    async def dead_letters(self, stream: str | None, count: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters of a stream (or the unrouted ones), newest first."""
        key = StreamKeys(stream).dead if stream else keys.UNROUTED_DEAD
        entries = await self.redis.xrevrange(key, count=count) or []
        return [{_text(k or ""): v for k, v in (fields or {}).items()} for _, fields in entries]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
