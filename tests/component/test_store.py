"""The atomic commit script against a real Redis: dedup, totals, cancellations, retention."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from redis.asyncio import Redis

from ingest.model import Comment, Event, LineItem, Order, Reason, Rejection, Viewers
from tests.servers import RedisServer
from workers import keys
from workers.keys import StreamKeys
from workers.store import DeadLetter, Outcome, Store, StoreSettings

DAY = keys.GENERATION_SECONDS
NOW = 40_000 * DAY  # a fixed generation boundary in 2079: keys expire long after the test


def order(stream: str, oid: str, *, grams: int = 2000, country: str = "VN", **kw: object) -> Order:
    fields: dict[str, object] = {
        "buyer": f"b-{oid}",
        "country": country,
        "region": "Hà Nội" if country == "VN" else "unknown",
        "currency": "VND",
        "amount_minor": 120_000,
        "grams": grams,
        "items": (LineItem("VT01", grams),),
    }
    fields.update(kw)
    return Order(stream, "shopee", oid, 1_750_000_000_000, False, **fields)  # type: ignore[arg-type]


def cancel(stream: str, oid: str) -> Order:
    return Order(stream, "shopee", oid, 1_750_000_100_000, cancelled=True)


def comment(stream: str, cid: str, user: str = "u1") -> Comment:
    return Comment(stream, "tiktok", cid, 1_750_000_000_000, user)


def flags(outcomes: list[Outcome]) -> list[bool]:
    """True where the event was counted, False where it was a duplicate."""
    assert all(o in (Outcome.NEW, Outcome.DUPLICATE) for o in outcomes)
    return [o is Outcome.NEW for o in outcomes]


def store(redis: Redis, **kw: int) -> Store:
    settings = StoreSettings(now_override=kw.pop("now", NOW), **kw)
    return Store(redis, settings)


@pytest.mark.asyncio
async def test_new_events_count_once_and_duplicates_are_reported(redis: Redis, stream: str) -> None:
    s = store(redis)
    events: list[Event] = [order(stream, "o1"), comment(stream, "c1"), comment(stream, "c2", "u2")]
    assert flags(await s.commit(events)) == [True, True, True]
    assert flags(await s.commit([*events, comment(stream, "c3")])) == [False, False, False, True]
    (totals,) = await s.totals([stream])
    assert totals.by("orders") == {("shopee", "VN"): 1}
    assert totals.by("grams") == {("shopee", "VN"): 2000}
    assert totals.by("value") == {("shopee", "VND"): 120_000}
    assert totals.by("comments") == {("tiktok",): 3}
    assert totals.by("region") == {("VN", "Hà Nội"): 1}
    assert totals.by("sku_grams") == {("VT01",): 2000}
    assert totals.unique_commenters == 2
    assert totals.unique_buyers == 1
    assert stream in await s.streams()


@pytest.mark.asyncio
async def test_duplicates_within_one_batch_count_once(redis: Redis, stream: str) -> None:
    s = store(redis)
    o = order(stream, "o1")
    assert flags(await s.commit([o, o, comment(stream, "c"), o])) == [True, False, True, False]
    (totals,) = await s.totals([stream])
    assert totals.total("orders") == 1


@pytest.mark.asyncio
async def test_an_event_is_a_duplicate_if_any_of_its_identities_was_seen(
    redis: Redis, stream: str
) -> None:
    s = store(redis)
    first = Comment(stream, "twitch", "chat-1", 1, "u1", aliases=("d\x1fdelivery-1",))
    resent = Comment(stream, "twitch", "chat-1", 1, "u1", aliases=("d\x1fdelivery-2",))
    same_delivery = Comment(stream, "twitch", "chat-9", 1, "u1", aliases=("d\x1fdelivery-1",))
    other = Comment(stream, "twitch", "chat-2", 1, "u1", aliases=("d\x1fdelivery-3",))
    assert flags(await s.commit([first])) == [True]
    assert flags(await s.commit([resent, same_delivery, other])) == [False, False, True]
    # Within one batch too, and a duplicate marks nothing: delivery-2 was never counted.
    again = Comment(stream, "twitch", "chat-3", 1, "u1", aliases=("d\x1fdelivery-2",))
    assert flags(await s.commit([other, again, again])) == [False, True, False]
    cancelled = Order(stream, "shopify", "o1", 1, cancelled=True, aliases=("e\x1fevent-1",))
    created = order(stream, "o1", aliases=("e\x1fevent-1",))  # same event id: a duplicate
    assert flags(await s.commit([cancelled, created])) == [True, False]
    (totals,) = await s.totals([stream])
    assert totals.total("comments") == 3
    assert totals.total("orders") == 0


@pytest.mark.asyncio
async def test_cancellation_is_a_new_event_and_uses_the_creation_labels(
    redis: Redis, stream: str
) -> None:
    s = store(redis)
    await s.commit([order(stream, "o1", grams=5000, country="JP")])
    assert flags(await s.commit([cancel(stream, "o1"), cancel(stream, "o1")])) == [True, False]
    (totals,) = await s.totals([stream])
    assert totals.by("cancelled") == {("shopee", "JP"): 1}
    assert totals.by("cancelled_grams") == {("shopee", "JP"): 5000}
    assert totals.by("orders") == {("shopee", "JP"): 1}


@pytest.mark.asyncio
async def test_cancellation_before_creation_counts_once_each(redis: Redis, stream: str) -> None:
    s = store(redis)
    assert flags(await s.commit([cancel(stream, "o9")])) == [True]
    (totals,) = await s.totals([stream])
    assert totals.total("cancelled") == 0  # labels unknown until the creation arrives
    assert flags(await s.commit([order(stream, "o9", grams=3000), cancel(stream, "o9")])) == [
        True,
        False,
    ]
    (totals,) = await s.totals([stream])
    assert totals.by("orders") == {("shopee", "VN"): 1}
    assert totals.by("cancelled") == {("shopee", "VN"): 1}
    assert totals.by("cancelled_grams") == {("shopee", "VN"): 3000}
    prefix = StreamKeys(stream).orders_prefix
    assert [k async for k in redis.scan_iter(match=f"{prefix}*")] == []  # state cleared


@pytest.mark.asyncio
async def test_a_retried_batch_changes_nothing(redis: Redis, stream: str) -> None:
    s = store(redis)
    batch = [order(stream, f"o{i}") for i in range(50)] + [cancel(stream, "o3")]
    await s.commit(batch)
    before = await redis.hgetall(StreamKeys(stream).totals)
    assert flags(await s.commit(batch)) == [False] * len(batch)
    assert await redis.hgetall(StreamKeys(stream).totals) == before


@pytest.mark.asyncio
async def test_skus_beyond_the_limit_are_labelled_other(redis: Redis, stream: str) -> None:
    s = store(redis, sku_limit=2)
    events = [
        order(stream, f"o{sku}", items=(LineItem(sku, 1000),), grams=1000)
        for sku in ("A", "B", "C", "A", "D")
    ]
    await s.commit(events[:3])
    await s.commit(events[3:])
    (totals,) = await s.totals([stream])
    assert totals.by("sku_grams") == {("A",): 1000, ("B",): 1000, ("other",): 2000}


@pytest.mark.asyncio
async def test_viewers_keep_the_latest_by_event_time(redis: Redis, stream: str) -> None:
    s = store(redis)
    late, early = (
        Viewers(stream, "tiktok", "v2", 2_000, 300),
        Viewers(stream, "tiktok", "v1", 1_000, 100),
    )
    await s.commit([late])
    await s.commit([early, Viewers(stream, "youtube", "v3", 1_500, 7)])
    (totals,) = await s.totals([stream])
    assert totals.viewers == {"tiktok": 300, "youtube": 7}


@pytest.mark.asyncio
async def test_viewers_in_one_batch_keep_the_latest_whatever_their_order(
    redis: Redis, stream: str
) -> None:
    s = store(redis)
    await s.commit([Viewers(stream, "tiktok", "v0", 1_500, 50), Viewers(stream, "fb", "f0", 9, 5)])
    batch = [
        Viewers(stream, "tiktok", "v1", 2_000, 300),
        Viewers(stream, "tiktok", "v2", 2_000, 400),  # a tie keeps the larger count
        Viewers(stream, "tiktok", "v3", 1_000, 900),  # older than the stored one
        Viewers(stream, "tiktok", "v4", 2_000, 350),
        Viewers(stream, "fb", "f1", 8, 70),  # the batch's latest is older than the stored one
    ]
    for n, order in enumerate((batch, batch[::-1])):
        await s.commit([msgspec.structs.replace(v, id=f"{v.id}-{n}") for v in order])
        (totals,) = await s.totals([stream])
        assert totals.viewers == {"tiktok": 400, "fb": 5}


@pytest.mark.asyncio
async def test_money_beyond_double_precision_stays_exact(redis: Redis, stream: str) -> None:
    s = store(redis)
    big = 2**53 + 1
    await s.commit([order(stream, "o1", amount_minor=big), order(stream, "o2", amount_minor=big)])
    (totals,) = await s.totals([stream])
    assert totals.by("value") == {("shopee", "VND"): 2 * big}


@pytest.mark.asyncio
async def test_ids_are_remembered_for_the_retention_then_forgotten(
    redis: Redis, stream: str
) -> None:
    retention = 2 * DAY
    event = comment(stream, "c1")
    assert flags(await store(redis, now=NOW, retention_seconds=retention).commit([event])) == [True]
    for later in (NOW + DAY, NOW + retention, NOW + retention + DAY - 1):
        s = store(redis, now=later, retention_seconds=retention)
        assert flags(await s.commit([event])) == [False], later - NOW
    # The fingerprint's generation is past every lookback: its set expires and the id is new.
    s = store(redis, now=NOW + retention + DAY, retention_seconds=retention)
    assert flags(await s.commit([comment(stream, "c1")])) == [True]
    shard, _ = keys.fingerprint(event.identity)
    ttl_at = await redis.expiretime(f"{StreamKeys(stream).seen_prefix}{NOW // DAY}:{shard}")
    assert ttl_at == (NOW // DAY + 3) * DAY


@pytest.mark.asyncio
async def test_dead_letters_are_kept_per_stream_and_capped(redis: Redis, stream: str) -> None:
    s = Store(redis, StoreSettings(dead_letter_max=5))
    await s.commit([comment(stream, "c1")])  # admitted: its dead letters get a key of its own
    bad = Rejection(Reason.MALFORMED_JSON, "broken", b"{nope", stream)
    unrouted = Rejection(Reason.MISSING_STREAM, "no stream", b"{}", None)
    await s.commit([], [DeadLetter("src", bad)] * 300 + [DeadLetter("src", unrouted)])
    letters = await s.dead_letters(stream, count=1000)
    assert 5 <= len(letters) < 300  # MAXLEN ~ trims whole nodes
    assert letters[0]["reason"] == b"malformed_json"
    assert letters[0]["raw"] == b"{nope"
    assert letters[0]["source"] == b"src"
    assert (await s.dead_letters(None))[0]["reason"] == b"missing_stream"
    (totals,) = await s.totals([stream])
    assert totals.counters == {"comments|tiktok": 1}


@pytest.mark.asyncio
async def test_memory_per_remembered_id_is_small(redis: Redis, stream: str) -> None:
    """100k fingerprints in intsets: far below the ~130 B of a key with a TTL per id."""
    s = store(redis)
    n = 100_000
    for start in range(0, n, 5000):
        await s.commit([comment(stream, f"c{i}", "") for i in range(start, start + 5000)])
    prefix = StreamKeys(stream).seen_prefix
    total = 0
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        total += await redis.memory_usage(key) or 0
    per_id = total / n
    print(f"dedup memory: {per_id:.1f} bytes per remembered id ({n} ids)")
    assert per_id < 20


@pytest.mark.asyncio
async def test_an_order_that_would_overflow_a_total_is_refused_whole(
    redis: Redis, stream: str
) -> None:
    """Redis keeps a script's writes when it fails midway: the script checks every total
    before writing anything, so a refused order leaves no trace and its neighbours count."""
    s = store(redis)
    await redis.hset(StreamKeys(stream).totals, "value|shopee|VND", keys.TOTAL_LIMIT - 1000)
    big = order(stream, "big", amount_minor=10**6, buyer="b-big")
    fits = order(stream, "fits", amount_minor=10, buyer="b-fits")
    outcomes = await s.commit([comment(stream, "c1", "u1"), big, fits, comment(stream, "c2", "u2")])
    assert outcomes == [Outcome.NEW, Outcome.TOTAL_LIMIT, Outcome.NEW, Outcome.NEW]
    (totals,) = await s.totals([stream])
    assert totals.by("orders") == {("shopee", "VN"): 1}
    assert totals.by("grams") == {("shopee", "VN"): 2000}
    assert totals.by("value") == {("shopee", "VND"): keys.TOTAL_LIMIT - 1000 + 10}
    assert totals.unique_buyers == 1
    assert totals.by("comments") == {("tiktok",): 2}
    # Not remembered: once the total has room (an operator reset), a redelivery counts.
    await redis.hset(StreamKeys(stream).totals, "value|shopee|VND", 0)
    assert await s.commit([big]) == [Outcome.NEW]


@pytest.mark.asyncio
async def test_streams_beyond_the_limit_are_refused(redis: Redis) -> None:
    await redis.delete(keys.STREAMS)
    s = store(redis, max_streams=2)
    a, b, c = (f"lim-{n}" for n in "abc")
    assert await s.commit([comment(a, "1"), comment(b, "1")]) == [Outcome.NEW] * 2
    assert await s.commit([comment(c, "1"), comment(a, "2")]) == [
        Outcome.STREAM_LIMIT,
        Outcome.NEW,
    ]
    assert await s.streams() == [a, b]


@pytest.mark.asyncio
async def test_order_state_expires_with_the_dedup_memory_of_its_order(
    redis: Redis, stream: str
) -> None:
    s = store(redis)
    created = order(stream, "o1")
    await s.commit([created, cancel(stream, "o2")])
    k = StreamKeys(stream)
    shard, _ = keys.fingerprint(created.identity)
    generation = NOW // DAY
    state_expiry = await redis.expiretime(f"{k.orders_prefix}{generation}")
    seen_expiry = await redis.expiretime(f"{k.seen_prefix}{generation}:{shard}")
    assert state_expiry == seen_expiry > NOW + 2 * DAY
    # The next day, a cancellation still finds the order in the previous generation.
    later = store(redis, now=NOW + DAY)
    assert await later.commit([cancel(stream, "o1"), order(stream, "o2")]) == [Outcome.NEW] * 2
    (totals,) = await later.totals([stream])
    assert totals.by("cancelled") == {("shopee", "VN"): 2}


@pytest.mark.asyncio
async def test_a_refused_order_claims_no_sku_label(redis: Redis, stream: str) -> None:
    s = store(redis, sku_limit=1)
    await redis.hset(StreamKeys(stream).totals, "value|shopee|VND", keys.TOTAL_LIMIT - 1000)
    refused = order(stream, "big", amount_minor=10**6, items=(LineItem("AAA", 2000),))
    counted = order(stream, "ok", amount_minor=1, items=(LineItem("BBB", 2000),))
    assert await s.commit([refused, counted]) == [Outcome.TOTAL_LIMIT, Outcome.NEW]
    (totals,) = await s.totals([stream])
    assert totals.by("sku_grams") == {("BBB",): 2000}
    assert await redis.smembers(StreamKeys(stream).skus) == {b"BBB"}


@pytest.mark.asyncio
async def test_the_total_limit_is_checked_in_exact_integers(redis: Redis, stream: str) -> None:
    """Near 9e18 doubles are 1,024 apart: a float check let $5 orders through at the limit."""
    s = store(redis)
    field = "value|shopee|USD"
    await redis.hset(StreamKeys(stream).totals, field, keys.TOTAL_LIMIT)
    five = [order(stream, f"at{i}", currency="USD", amount_minor=500) for i in range(5)]
    assert await s.commit(five) == [Outcome.TOTAL_LIMIT] * 5
    assert int(await redis.hget(StreamKeys(stream).totals, field) or 0) == keys.TOTAL_LIMIT
    # 1,000 below the limit: two fit exactly, the third would pass it by 500.
    await redis.hset(StreamKeys(stream).totals, field, keys.TOTAL_LIMIT - 1000)
    near = [order(stream, f"near{i}", currency="USD", amount_minor=500) for i in range(3)]
    assert await s.commit(near) == [Outcome.NEW, Outcome.NEW, Outcome.TOTAL_LIMIT]
    assert int(await redis.hget(StreamKeys(stream).totals, field) or 0) == keys.TOTAL_LIMIT
    # One more minor unit than the room is refused, exactly the room fits.
    await redis.hset(StreamKeys(stream).totals, field, keys.TOTAL_LIMIT - 7)
    assert await s.commit([order(stream, "x8", currency="USD", amount_minor=8)]) == [
        Outcome.TOTAL_LIMIT
    ]
    assert await s.commit([order(stream, "x7", currency="USD", amount_minor=7)]) == [Outcome.NEW]
    assert int(await redis.hget(StreamKeys(stream).totals, field) or 0) == keys.TOTAL_LIMIT


@pytest.mark.asyncio
async def test_dead_letters_of_a_stream_that_is_not_admitted_get_no_key(
    own_redis: RedisServer,
) -> None:
    async with Redis.from_url(own_redis.url) as redis:
        s = store(redis, max_streams=2)
        assert await s.commit([comment("in-a", "1"), comment("in-b", "1")]) == [Outcome.NEW] * 2
        letters = [
            DeadLetter("src", Rejection(Reason.MISSING_FIELD, "no items", b"{}", f"new-{n}"))
            for n in range(50)
        ]
        admitted = DeadLetter("src", Rejection(Reason.MALFORMED_JSON, "x", b"{", "in-a"))
        await s.commit([], [*letters, admitted])
        dead_keys = {k async for k in redis.scan_iter(match="li:*dead")}
        assert dead_keys == {keys.UNROUTED_DEAD.encode(), StreamKeys("in-a").dead.encode()}
        unrouted = await s.dead_letters(None, count=100)
        assert len(unrouted) == 50
        assert {letter["stream"] for letter in unrouted} == {f"new-{n}".encode() for n in range(50)}
        assert (await s.dead_letters("in-a"))[0]["reason"] == b"malformed_json"


@pytest.mark.asyncio
async def test_max_streams_holds_across_concurrent_replicas(own_redis: RedisServer) -> None:
    """Four replicas each commit three batches of 1,000 new streams at once."""
    clients = [Redis.from_url(own_redis.url) for _ in range(4)]
    try:
        replicas = [Store(client, StoreSettings(max_streams=1000)) for client in clients]

        async def replica(n: int) -> list[Outcome]:
            outcomes: list[Outcome] = []
            for batch in range(3):
                events = [comment(f"r{n}-b{batch}-{i}", "1") for i in range(1000)]
                outcomes += await replicas[n].commit(events)
            return outcomes

        results = await asyncio.gather(*(replica(n) for n in range(4)))
        outcomes = [o for result in results for o in result]
        assert outcomes.count(Outcome.NEW) == 1000
        assert outcomes.count(Outcome.STREAM_LIMIT) == 11_000
        assert len(await replicas[0].streams()) == 1000
    finally:
        for client in clients:
            await client.aclose()


@pytest.mark.asyncio
async def test_idle_streams_retire_and_free_their_place(own_redis: RedisServer) -> None:
    retention = 2 * DAY
    async with Redis.from_url(own_redis.url) as redis:
        early = store(redis, now=NOW, max_streams=2, retention_seconds=retention)
        assert (
            await early.commit([comment("daily-1", "1"), comment("daily-2", "1")])
            == [Outcome.NEW] * 2
        )
        busy = store(redis, now=NOW + DAY, max_streams=2, retention_seconds=retention)
        assert await busy.commit([comment("daily-2", "2")]) == [Outcome.NEW]
        later = store(redis, now=NOW + retention + 1, max_streams=2, retention_seconds=retention)
        assert await later.streams() == ["daily-2"]  # daily-1 is idle: out of the scrape
        assert await later.commit([comment("daily-3", "1")]) == [Outcome.NEW]
        assert await later.streams() == ["daily-2", "daily-3"]
        assert await later.commit([comment("daily-4", "1")]) == [Outcome.STREAM_LIMIT]


@pytest.mark.asyncio
async def test_a_stream_set_from_an_older_version_is_converted(own_redis: RedisServer) -> None:
    async with Redis.from_url(own_redis.url) as redis:
        await redis.sadd(keys.STREAMS, "old-a", "old-b")
        s = store(redis, max_streams=3)
        assert await s.streams() == ["old-a", "old-b"]
        assert await s.commit([comment("old-a", "1"), comment("new-c", "1")]) == [Outcome.NEW] * 2
        assert await s.commit([comment("new-d", "1")]) == [Outcome.STREAM_LIMIT]
        assert await redis.type(keys.STREAMS) == b"zset"


@pytest.mark.asyncio
@pytest.mark.parametrize("room", [0, 1, 999_999_999, 1_000_000_000, 1_000_000_001, 2**40])
async def test_the_exact_limit_adds_increments_across_limbs(
    redis: Redis, stream: str, room: int
) -> None:
    """Two lines of one SKU add up in the script before the check; carries cross 10^9."""
    s = store(redis)
    field = "sku_grams|VT01"
    await redis.hset(StreamKeys(stream).totals, field, keys.TOTAL_LIMIT - room)
    half = room // 2
    items = (LineItem("VT01", half), LineItem("VT01", room - half + 1))
    assert await s.commit([order(stream, "over", items=items, grams=1)]) == [Outcome.TOTAL_LIMIT]
    items = (LineItem("VT01", half), LineItem("VT01", room - half))
    assert await s.commit([order(stream, "fits", items=items, grams=1)]) == [Outcome.NEW]
    assert int(await redis.hget(StreamKeys(stream).totals, field) or 0) == keys.TOTAL_LIMIT


@pytest.mark.asyncio
async def test_totals_read_in_chunks_are_every_streams_in_order(redis: Redis, stream: str) -> None:
    s = store(redis)
    streams = [f"{stream}-{n}" for n in range(7)]
    await s.commit([comment(name, f"c{n}") for n, name in enumerate(streams) for _ in range(n + 1)])
    chunked = await s.totals(streams, chunk=3)
    assert [t.stream for t in chunked] == streams
    assert [t.total(keys.COMMENTS) for t in chunked] == [1] * 7
    assert chunked == await s.totals(streams)
