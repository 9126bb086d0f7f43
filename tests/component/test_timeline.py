"""The per-minute timeline against a real Redis: written by the commit script with the totals,
so its buckets sum to the totals whatever the duplicates, replicas and arrival order."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from redis.asyncio import Redis

from ingest.model import Comment, Event, LineItem, Order, Viewers
from tests.servers import RedisServer
from workers import keys
from workers.keys import StreamKeys
from workers.store import Store, StoreSettings, StreamTotals
from workers.timeline import Minute, read_timeline, sum_minutes

# A recent start (buckets of days past the retention expire at once), on a minute boundary.
START_MS = (int(time.time()) // 86_400 - 1) * 86_400_000 + 23 * 3_600_000 + 50 * 60_000
"""Yesterday 23:50 UTC: a sale that crosses midnight writes two day hashes."""
MINUTE = 60_000


def order(stream: str, n: int, minute: int, *, currency: str = "VND") -> Order:
    grams = 500 + 250 * (n % 7)
    return Order(
        stream,
        "shopee" if n % 2 else "tiktok",
        f"o{n}",
        START_MS + minute * MINUTE + n % 60 * 1000,
        False,
        buyer=f"b{n % 13}",
        country="VN",
        region="Hà Nội",
        currency=currency,
        amount_minor=10_000 + n,
        grams=grams,
        items=(LineItem("VT01", grams),),
    )


def cancel(stream: str, n: int, minute: int) -> Order:
    return Order(stream, "shopee" if n % 2 else "tiktok", f"o{n}", START_MS + minute * MINUTE, True)


def comment(stream: str, n: int, minute: int) -> Comment:
    return Comment(stream, "tiktok", f"c{n}", START_MS + minute * MINUTE + 5000, f"u{n % 9}")


def viewers(stream: str, n: int, minute: int, count: int) -> Viewers:
    return Viewers(stream, "tiktok", f"v{n}", START_MS + minute * MINUTE + n % 50 * 1000, count)


def sale(stream: str) -> list[Event]:
    """Twenty minutes: orders, comments, viewers, cancellations (some before their order)."""
    events: list[Event] = []
    for n in range(300):
        events.append(order(stream, n, n // 15, currency="USD" if n % 10 == 0 else "VND"))
        events.append(comment(stream, n, n // 15))
    for n in range(0, 300, 17):
        events.append(cancel(stream, n, n // 15 + 3))
    for n in range(60):
        events.append(viewers(stream, n, n // 3, 1000 + (n * 37) % 500))
    return events


def assert_buckets_sum_to_totals(minutes: list[Minute], totals: StreamTotals) -> None:
    s = sum_minutes(minutes)
    assert s.orders == totals.total(keys.ORDERS)
    assert s.grams == totals.total(keys.GRAMS)
    assert s.cancelled == totals.total(keys.CANCELLED)
    assert s.cancelled_grams == totals.total(keys.CANCELLED_GRAMS)
    assert s.comments == totals.total(keys.COMMENTS)
    value: dict[str, int] = {}
    for (_, currency), minor in totals.by(keys.VALUE).items():
        value[currency] = value.get(currency, 0) + minor
    assert s.value == value
    cancelled_value: dict[str, int] = {}
    for (_, currency), minor in totals.by(keys.CANCELLED_VALUE).items():
        cancelled_value[currency] = cancelled_value.get(currency, 0) + minor
    assert s.cancelled_value == cancelled_value


def expected_minutes(events: list[Event]) -> dict[int, tuple[int, int, int, int]]:
    """minute -> (orders, grams, comments, peak viewers), from the unique events."""
    out: dict[int, list[int]] = {}
    for e in events:
        m = out.setdefault(e.ts_ms // MINUTE, [0, 0, 0, 0])
        match e:
            case Order(cancelled=False):
                m[0] += 1
                m[1] += e.grams
            case Comment():
                m[2] += 1
            case Viewers():
                m[3] = max(m[3], e.count)
    return {k: (v[0], v[1], v[2], v[3]) for k, v in out.items() if any(v)}


async def read(redis: Redis, stream: str) -> tuple[list[Minute], StreamTotals]:
    first = START_MS // MINUTE
    minutes = await read_timeline(redis, stream, first - 60, first + 120)
    (totals,) = await Store(redis, StoreSettings()).totals([stream])
    return minutes, totals


def shape(minutes: list[Minute]) -> dict[int, tuple[int, int, int, int]]:
    """Minutes with orders, comments or viewers (a cancellation alone is not in the shape)."""
    out = {m.minute: (m.orders, m.grams, m.comments, m.peak_viewers) for m in minutes}
    return {k: v for k, v in out.items() if any(v)}


@pytest.mark.asyncio
async def test_buckets_hold_each_event_once_in_its_minute(redis: Redis, stream: str) -> None:
    events = sale(stream)
    s = Store(redis, StoreSettings())
    await s.commit(events)
    await s.commit(events[::3])  # redelivered: no bucket moves
    minutes, totals = await read(redis, stream)
    assert shape(minutes) == expected_minutes(events)
    assert_buckets_sum_to_totals(minutes, totals)
    assert totals.total(keys.ORDERS) == 300
    assert totals.total(keys.CANCELLED) == 18
    # cancellations land in their own minute (3 after the order), with the order's grams
    first = START_MS // MINUTE
    by_minute = {m.minute: m for m in minutes}
    assert by_minute[first + 3].cancelled == 1  # o0, cancelled at minute 3
    assert by_minute[first + 3].cancelled_grams == 500
    assert by_minute[first + 3].cancelled_value == {"USD": 10_000}
    # ten-minute hashes (the sale crosses midnight), each expiring after the retention
    span = keys.TIMELINE_SPAN_MINUTES
    found = redis.scan_iter(match=f"{StreamKeys(stream).timeline_prefix}*")
    numbers = sorted([int(key.rsplit(b":", 1)[1]) async for key in found])
    last = max(e.ts_ms for e in events) // MINUTE
    assert numbers == list(range(first // span, last // span + 1))
    for n in numbers:
        ttl = await redis.ttl(StreamKeys(stream).timeline(n))
        end = max((n + 1) * span * 60, time.time())
        assert abs(ttl - (end + keys.TIMELINE_RETENTION_SECONDS - time.time())) < 60
        assert await redis.object("encoding", StreamKeys(stream).timeline(n)) == b"listpack"


@pytest.mark.asyncio
async def test_late_and_out_of_order_events_land_in_their_minute(redis: Redis, stream: str) -> None:
    events = sale(stream)
    shuffled = events[:]
    random.Random(15).shuffle(shuffled)  # cancellations before orders, late minutes, ...
    s = Store(redis, StoreSettings())
    for j in range(0, len(shuffled), 37):
        await s.commit(shuffled[j : j + 37])
    minutes, totals = await read(redis, stream)
    assert shape(minutes) == expected_minutes(events)
    assert_buckets_sum_to_totals(minutes, totals)
    assert totals.total(keys.CANCELLED) == 18


@pytest.mark.asyncio
async def test_two_replicas_with_overlapping_deliveries(
    own_redis: RedisServer, stream: str
) -> None:
    """Two replicas commit the same sale at once, each in its own order and batching."""
    events = sale(stream)
    clients = [Redis.from_url(own_redis.url) for _ in range(2)]
    try:

        async def replica(n: int) -> None:
            mine = events[:]
            random.Random(n).shuffle(mine)
            s = Store(clients[n], StoreSettings())
            for j in range(0, len(mine), 11 + n * 20):
                await s.commit(mine[j : j + 11 + n * 20])
                await asyncio.sleep(0)  # interleave the two replicas' commits

        await asyncio.gather(replica(0), replica(1))
        minutes, totals = await read(clients[0], stream)
        assert shape(minutes) == expected_minutes(events)
        assert_buckets_sum_to_totals(minutes, totals)
    finally:
        for client in clients:
            await client.aclose()


@pytest.mark.asyncio
async def test_peak_viewers_is_the_largest_count_of_the_minute(redis: Redis, stream: str) -> None:
    s = Store(redis, StoreSettings())
    counts = [1200, 5400, 300]
    for n, count in enumerate(counts):  # one per batch: the max is kept across commits
        await s.commit([viewers(stream, n, 0, count)])
    await s.commit([Viewers(stream, "shopee", "s1", START_MS + 1000, 70)])
    minutes, _ = await read(redis, stream)
    assert [(m.viewers, m.peak_viewers) for m in minutes] == [
        ({"tiktok": 5400, "shopee": 70}, 5470)
    ]
