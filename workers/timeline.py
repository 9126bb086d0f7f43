"""Reading a stream's per-minute timeline back (the commit script writes it: workers/keys.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from workers import keys
from workers.keys import StreamKeys

MAX_DAYS = 62
"""Most days one read covers: a session longer than that is cut (bounded reads)."""
READ_CHUNK = 144
"""Timeline hashes per round trip (a day's)."""


@dataclasses.dataclass(slots=True)
class Minute:
    """One minute of a stream, by event time. Grams and money are integers (minor units)."""

    minute: int
    """Epoch minutes."""
    orders: int = 0
    grams: int = 0
    value: dict[str, int] = dataclasses.field(default_factory=dict)
    """Currency -> minor units, gross (cancellations are apart)."""
    cancelled: int = 0
    cancelled_grams: int = 0
    cancelled_value: dict[str, int] = dataclasses.field(default_factory=dict)
    comments: int = 0
    comment_orders: int = 0
    """Buyers' comment orders counted (streams with a catalog)."""
    comment_withdrawals: int = 0
    viewers: dict[str, int] = dataclasses.field(default_factory=dict)
    """Platform -> the largest count reported within the minute."""

    @property
    def peak_viewers(self) -> int:
        """Viewers over all platforms: each platform's peak of the minute, summed."""
        return sum(self.viewers.values())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_PLAIN = {
    keys.TL_ORDERS: "orders",
    keys.TL_GRAMS: "grams",
    keys.TL_CANCELLED: "cancelled",
    keys.TL_CANCELLED_GRAMS: "cancelled_grams",
    keys.TL_COMMENTS: "comments",
    keys.TL_COMMENT_ORDERS: "comment_orders",
    keys.TL_COMMENT_WITHDRAWALS: "comment_withdrawals",
}
"""Timeline fields that are one integer counter of a minute, and its attribute."""


def parse_span(n: int, fields: Mapping[Any, Any]) -> dict[int, Minute]:
    """The minutes of timeline hash ``n``; unknown fields are ignored (a newer version's)."""
    minutes: dict[int, Minute] = {}
    for raw_field, raw_value in fields.items():
        offset, _, rest = _text(raw_field).partition(keys.SEP)
        name, _, label = rest.partition(keys.SEP)
        if not offset.isdigit():
            continue
        minute = n * keys.TIMELINE_SPAN_MINUTES + int(offset)
        m = minutes.get(minute)
        if m is None:
            m = minutes[minute] = Minute(minute)
        value = int(raw_value)
        plain = _PLAIN.get(name)
        if plain is not None:
            setattr(m, plain, getattr(m, plain) + value)
        elif name == keys.TL_VALUE:
            m.value[label] = m.value.get(label, 0) + value
        elif name == keys.TL_CANCELLED_VALUE:
            m.cancelled_value[label] = m.cancelled_value.get(label, 0) + value
        elif name == keys.TL_VIEWERS:
            m.viewers[label] = max(m.viewers.get(label, 0), value)
    return minutes


def spans_between(start_minute: int, end_minute: int) -> range:
    """The timeline hashes of the minutes [start, end], at most ``MAX_DAYS`` of them (the
    last ones)."""
    span = keys.TIMELINE_SPAN_MINUTES
    first, last = start_minute // span, end_minute // span
    most = MAX_DAYS * keys.MINUTES_PER_DAY // span
    return range(max(first, last - most + 1), last + 1)


async def read_timeline(
    redis: Redis | RedisCluster, stream: str, start_minute: int, end_minute: int
) -> list[Minute]:
    """The stream's minutes in [start, end] that saw anything, in time order."""
    k = StreamKeys(stream)
    spans = spans_between(start_minute, end_minute)
    result: dict[int, Minute] = {}
    for chunk in range(spans.start, spans.stop, READ_CHUNK):
        numbers = range(chunk, min(chunk + READ_CHUNK, spans.stop))
        async with redis.pipeline(transaction=False) as pipe:  # one slot: the stream's
            for n in numbers:
                pipe.hgetall(k.timeline(n))
            replies = await pipe.execute()
        for n, fields in zip(numbers, replies, strict=True):
            result.update(parse_span(n, fields))
    return [result[m] for m in sorted(result) if start_minute <= m <= end_minute]


def sum_minutes(minutes: Iterable[Minute]) -> Minute:
    """Every minute added up (viewers: the peak of each platform)."""
    total = Minute(minute=0)
    for m in minutes:
        total.orders += m.orders
        total.grams += m.grams
        total.cancelled += m.cancelled
        total.cancelled_grams += m.cancelled_grams
        total.comments += m.comments
        total.comment_orders += m.comment_orders
        total.comment_withdrawals += m.comment_withdrawals
        for currency, minor in m.value.items():
            total.value[currency] = total.value.get(currency, 0) + minor
        for currency, minor in m.cancelled_value.items():
            total.cancelled_value[currency] = total.cancelled_value.get(currency, 0) + minor
        for platform, count in m.viewers.items():
            total.viewers[platform] = max(total.viewers.get(platform, 0), count)
    return total
