"""Identity namespaces against a real Redis: sources apart unless they share a namespace, and
the upgrade from versions without namespaces (what they wrote stays seen and cancellable for
one retention, not after it)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from ingest.model import Comment, Event
from tests.component.test_store import cancel, comment, order
from tests.legacy import RETENTION, old_commit
from tests.servers import RedisServer
from tests.waiting import UNIT
from workers import keys
from workers.committer import BatchSettings, Committer
from workers.keys import StreamKeys, fingerprint
from workers.metrics import HealthMetrics
from workers.store import Legacy, Outcome, Store, StoreSettings

NEW, DUPLICATE = Outcome.NEW, Outcome.DUPLICATE
DAY = keys.GENERATION_SECONDS


async def cancelled(store: Store, stream: str) -> dict[tuple[str, ...], int]:
    (totals,) = await store.totals([stream])
    return totals.by("cancelled")


@pytest.mark.asyncio
async def test_one_namespace_can_neither_cancel_nor_pre_cancel_anothers_orders(
    redis: Redis, stream: str
) -> None:
    s = Store(redis, StoreSettings())
    assert await s.commit([order(stream, "o1")], namespaces=["shop"]) == [NEW]
    assert await s.commit([cancel(stream, "o1")], namespaces=["push"]) == [NEW]  # its own event
    assert await s.commit([cancel(stream, "o2")], namespaces=["push"]) == [NEW]
    assert await s.commit([order(stream, "o2", grams=3000)], namespaces=["shop"]) == [NEW]
    assert await cancelled(s, stream) == {}
    (totals,) = await s.totals([stream])
    assert totals.by("orders") == {("shopee", "VN"): 2}
    # The owner's cancellations count, once each.
    owner = [cancel(stream, "o1"), cancel(stream, "o2"), cancel(stream, "o1")]
    assert await s.commit(owner, namespaces=["shop"] * 3) == [NEW, NEW, DUPLICATE]
    (totals,) = await s.totals([stream])
    assert totals.by("cancelled") == {("shopee", "VN"): 2}
    assert totals.by("cancelled_grams") == {("shopee", "VN"): 5000}
    # The push producer's early cancellation waited in its own namespace, for its own order.
    mine = [order(stream, "o2", grams=1000, country="JP")]
    assert await s.commit(mine, namespaces=["push"]) == [NEW]
    assert await cancelled(s, stream) == {("shopee", "VN"): 2, ("shopee", "JP"): 1}


@pytest.mark.asyncio
async def test_identities_and_aliases_are_per_namespace(redis: Redis, stream: str) -> None:
    s = Store(redis, StoreSettings())
    aliased = order(stream, "o1", aliases=("shopify-event\x1fe-1",))
    assert await s.commit([aliased, comment(stream, "c1")], namespaces=["a", "a"]) == [NEW] * 2
    assert await s.commit([aliased, comment(stream, "c1")], namespaces=["b", "b"]) == [NEW] * 2
    again = [order(stream, oid, aliases=aliased.aliases) for oid in ("o2", "o3")]
    assert await s.commit(again, namespaces=["a", "b"]) == [DUPLICATE] * 2  # by the alias
    assert await s.commit([aliased, aliased], namespaces=["a", "c"]) == [DUPLICATE, NEW]


@contextlib.asynccontextmanager
async def committing(
    redis: Redis, namespaces: dict[str, str] | None = None
) -> AsyncIterator[tuple[Committer, HealthMetrics]]:
    health = HealthMetrics()
    c = Committer(Store(redis, StoreSettings()), health, BatchSettings(), namespaces=namespaces)
    async with running(c.run()):
        yield c, health


@contextlib.asynccontextmanager
async def running(coro: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    task = asyncio.create_task(coro, name="test.committer")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def outcomes(health: HealthMetrics, source: str) -> dict[str, float]:
    result = {}
    for outcome in ("accepted", "duplicate"):
        labels = {"source": source, "kind": "comment", "outcome": outcome}
        value = health.registry.get_sample_value("livestream_ingest_events_total", labels)
        result[outcome] = value or 0.0
    return result


async def submitted(c: Committer, source: str, events: list[Event]) -> None:
    async with asyncio.timeout(10 * UNIT):
        await (await c.submit(source, events))


@pytest.mark.asyncio
async def test_sources_sharing_a_namespace_dedup_each_other(redis: Redis, stream: str) -> None:
    events: list[Event] = [comment(stream, f"c{n}") for n in range(10)]
    shared = {"relay-ws": "relay", "relay-mqtt": "relay"}
    async with committing(redis, shared) as (c, health):
        await submitted(c, "relay-ws", events)
        await submitted(c, "relay-mqtt", events)
        await submitted(c, "push", events)  # a source of its own: not the relay's ids
    assert outcomes(health, "relay-ws") == {"accepted": 10, "duplicate": 0}
    assert outcomes(health, "relay-mqtt") == {"accepted": 0, "duplicate": 10}
    assert outcomes(health, "push") == {"accepted": 10, "duplicate": 0}


@pytest.mark.asyncio
async def test_replicas_of_a_source_dedup_each_other_by_its_name(redis: Redis, stream: str) -> None:
    events: list[Event] = [comment(stream, f"c{n}") for n in range(10)]
    async with committing(redis) as (one, first), committing(redis) as (two, second):
        await submitted(one, "feed", events)
        await submitted(two, "feed", events)
    assert outcomes(first, "feed") == {"accepted": 10, "duplicate": 0}
    assert outcomes(second, "feed") == {"accepted": 0, "duplicate": 10}


# --- the upgrade from versions without namespaces -------------------------------------------


@dataclasses.dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def upgraded(own_redis: RedisServer) -> AsyncIterator[Redis]:
    """A Redis an older version used: an order, a comment and an early cancellation, committed
    by its commit script (Redis' clock)."""
    client = Redis.from_url(own_redis.url)
    stream = "upgraded"
    before: list[Event] = [
        order(stream, "o1", aliases=("shopify-event\x1fe-1",)),
        comment(stream, "c1"),
        cancel(stream, "o2"),
        order(stream, "o3", grams=700),
    ]
    assert await old_commit(client, stream, before) == "1111"
    yield client
    await client.aclose()


def upgraded_store(redis: Redis, clock: Clock, legacy: Legacy | None = None) -> Store:
    settings = StoreSettings(retention_seconds=RETENTION)
    if legacy is None:
        return Store(redis, settings, clock)
    return Store(redis, settings, clock, legacy=legacy)


async def window_end(redis: Redis) -> int:
    value = await redis.get(keys.LEGACY_UNTIL)
    assert isinstance(value, bytes)
    return int(value)


@pytest.mark.asyncio
async def test_within_the_window_what_an_older_version_saw_stays_seen_and_cancellable(
    upgraded: Redis,
) -> None:
    stream, redis = "upgraded", upgraded
    clock = Clock((await redis.time())[0])
    s = upgraded_store(redis, clock)
    seen_before: list[Event] = [
        order(stream, "o1"),
        order(stream, "o9", aliases=("shopify-event\x1fe-1",)),  # the same delivery
        comment(stream, "c1"),
    ]
    assert await s.commit(seen_before, namespaces=["shop", "shop", "chat"]) == [DUPLICATE] * 3
    gen = int(clock.now) // DAY
    assert await window_end(redis) == (gen + 2 + 1) * DAY  # when the old sets expire
    # A cancellation of an order created before the upgrade cancels it once, even when two
    # namespaces send it in one batch (the old state has none: either may settle it).
    both = [cancel(stream, "o1"), cancel(stream, "o1"), cancel(stream, "o1")]
    assert await s.commit(both, namespaces=["shop", "push", "shop"]) == [NEW, NEW, DUPLICATE]
    # The creation of an order whose cancellation came before the upgrade settles it.
    assert await s.commit([order(stream, "o2", grams=900)], namespaces=["shop"]) == [NEW]
    (totals,) = await s.totals([stream])
    assert totals.by("cancelled") == {("shopee", "VN"): 2}
    assert totals.by("cancelled_grams") == {("shopee", "VN"): 2000 + 900}
    assert totals.by("orders") == {("shopee", "VN"): 3}
    # Nothing is written as an older version would: the new comment is only namespaced.
    await s.commit([comment(stream, "c2")], namespaces=["chat"])
    shard, member = fingerprint(comment(stream, "c2").identity)
    seen = f"{StreamKeys(stream).seen_prefix}{gen}:{shard}"
    assert not await redis.sismember(seen, str(member))
    old_state = [k async for k in redis.scan_iter(match=f"{StreamKeys(stream).tag}:orders:*")]
    assert [await redis.hkeys(k) for k in old_state] == [[b"o3"]]  # only what is left of it


@pytest.mark.asyncio
async def test_after_the_window_what_an_older_version_wrote_is_not_looked_up(
    upgraded: Redis,
) -> None:
    stream, redis = "upgraded", upgraded
    clock = Clock((await redis.time())[0])
    s = upgraded_store(redis, clock)
    assert await s.commit([comment(stream, "c1")], namespaces=["chat"]) == [DUPLICATE]
    clock.now = await window_end(redis)  # the old sets are still there (Redis' clock)
    assert await s.commit([comment(stream, "c1")], namespaces=["chat"]) == [NEW]
    assert await s.commit([cancel(stream, "o3")], namespaces=["shop"]) == [NEW]
    assert await s.commit([order(stream, "o2")], namespaces=["shop"]) == [NEW]
    assert await cancelled(s, stream) == {}


@pytest.mark.asyncio
async def test_the_old_order_state_can_be_left_alone(upgraded: Redis) -> None:
    """``legacy_orders = false``: no source reaches an order created before the upgrade."""
    stream, redis = "upgraded", upgraded
    clock = Clock((await redis.time())[0])
    s = upgraded_store(redis, clock, Legacy(identities=True, orders=False))
    assert await s.commit([order(stream, "o1")], namespaces=["shop"]) == [DUPLICATE]
    assert await s.commit([cancel(stream, "o3")], namespaces=["shop"]) == [NEW]
    assert await s.commit([order(stream, "o2")], namespaces=["shop"]) == [NEW]
    assert await cancelled(s, stream) == {}


@pytest.mark.asyncio
async def test_a_redis_no_older_version_used_has_no_window(own_redis: RedisServer) -> None:
    redis = Redis.from_url(own_redis.url)
    try:
        clock = Clock((await redis.time())[0])
        s = upgraded_store(redis, clock)
        assert await s.commit([comment("fresh", "c0")], namespaces=["chat"]) == [NEW]
        assert await window_end(redis) == 0
        # Written the old way afterwards (an old replica left running): not looked up.
        assert await old_commit(redis, "fresh", [comment("fresh", "c1")]) == "1"
        assert await s.commit([comment("fresh", "c1")], namespaces=["chat"]) == [NEW]
        # A second process reads the same window.
        other = upgraded_store(redis, Clock(clock.now))
        again = [Comment("fresh", "tiktok", "c1", 1, "u")]
        assert await other.commit(again, namespaces=["chat"]) == [DUPLICATE]
        assert await window_end(redis) == 0
    finally:
        await redis.aclose()
