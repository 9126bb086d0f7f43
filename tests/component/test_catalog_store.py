"""Catalog weights, unweighed items, cancelled value and SKU grams in the commit script, against
a real Redis; order state written by the previous version still cancels."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from ingest.catalog import Catalog, Product
from ingest.model import LineItem, Order
from tests.component.test_store import NOW, cancel, flags, store
from tests.servers import RedisServer
from workers import keys
from workers.keys import StreamKeys
from workers.store import Store, StoreSettings

CATALOG = Catalog(
    (
        Product("VT05", "Vải 5 kg", ("vt 05",), 5000, {"VND": 250_000}, 100_000),
        Product("VTQ", "Vải cân ký", (), None, {}, 50_000),
    )
)


def weigh(stream: str, sku: str, quantity: int) -> int | None:
    product = CATALOG.get(sku)
    return None if product is None else product.line_grams(quantity)


def catalog_store(redis: Redis) -> Store:
    return Store(redis, StoreSettings(now_override=NOW), weigh=weigh)


def order(stream: str, oid: str, *items: LineItem, **kw: object) -> Order:
    fields: dict[str, object] = {
        "currency": "VND",
        "amount_minor": 500_000,
        "grams": sum(item.grams or 0 for item in items),
        "items": items,
    }
    fields.update(kw)
    return Order(stream, "tiktok", oid, 1_750_000_000_000, False, country="VN", **fields)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_items_without_grams_take_the_catalogs_and_unknown_ones_are_counted_apart(
    redis: Redis, stream: str
) -> None:
    s = catalog_store(redis)
    created = order(
        stream,
        "o1",
        LineItem("VT05", None, 3),  # 3 boxes of 5 kg, from the catalog
        LineItem("vtq", None, 2),  # sold by the kg: 2 kg
        LineItem("VT01", 1200, 1),  # the feed's own weight wins
        LineItem("NOPE", None, 4),  # nobody knows: unweighed, not 0 kg
    )
    assert flags(await s.commit([created, created])) == [True, False]
    (totals,) = await s.totals([stream])
    assert totals.by(keys.GRAMS) == {("tiktok", "VN"): 15_000 + 2000 + 1200}
    assert totals.by(keys.SKU_GRAMS) == {("VT05",): 15_000, ("vtq",): 2000, ("VT01",): 1200}
    assert totals.by(keys.UNWEIGHED) == {("tiktok", "NOPE"): 1}
    assert totals.by(keys.ORDERS) == {("tiktok", "VN"): 1}


@pytest.mark.asyncio
async def test_without_a_catalog_an_item_without_grams_is_unweighed(
    redis: Redis, stream: str
) -> None:
    s = store(redis)
    await s.commit([order(stream, "o1", LineItem("VT05", None, 3), LineItem("VT01", 0, 1))])
    (totals,) = await s.totals([stream])
    assert totals.by(keys.UNWEIGHED) == {("tiktok", "VT05"): 1}
    assert totals.by(keys.GRAMS) == {("tiktok", "VN"): 0}
    assert totals.by(keys.SKU_GRAMS) == {("VT01",): 0}  # a weight of 0 g given is 0 g


@pytest.mark.asyncio
async def test_a_cancellation_counts_its_value_and_sku_grams_in_any_order(
    redis: Redis, stream: str
) -> None:
    s = catalog_store(redis)
    first = order(stream, "o1", LineItem("VT05", None, 2), LineItem("X1", None, 1))
    second = order(stream, "o2", LineItem("VT05", 5000, 1), amount_minor=250_000, currency="USD")
    third = order(stream, "o3", LineItem("VTQ", 700, 1), amount_minor=7)
    batches = [
        [first, cancel(stream, "o2")],  # o2's cancellation comes before it
        [second, cancel(stream, "o1"), cancel(stream, "o1")],
        [third, cancel(stream, "o3")],  # created and cancelled in one batch
    ]
    for batch in batches:
        await s.commit(batch)
    (totals,) = await s.totals([stream])
    assert totals.by(keys.CANCELLED) == {("tiktok", "VN"): 3}
    assert totals.by(keys.CANCELLED_VALUE) == {
        ("tiktok", "VND"): 500_007,
        ("tiktok", "USD"): 250_000,
    }
    assert totals.by(keys.CANCELLED_SKU_GRAMS) == {("VT05",): 15_000, ("VTQ",): 700}
    assert totals.by(keys.CANCELLED_GRAMS) == {("tiktok", "VN"): 10_000 + 5000 + 700}
    assert totals.by(keys.VALUE) == totals.by(keys.CANCELLED_VALUE)  # all three cancelled
    assert totals.by(keys.UNWEIGHED) == {("tiktok", "X1"): 1}
    prefix = StreamKeys(stream).orders_prefix
    assert [k async for k in redis.scan_iter(match=f"{prefix}*")] == []


@pytest.mark.asyncio
async def test_order_state_written_by_the_previous_version_still_cancels(
    own_redis: RedisServer, stream: str
) -> None:
    """The previous version kept "platform|country|grams" by order id alone: within the
    upgrade window such an order cancels as it did then (count and grams), without a value or
    SKU grams, which it never recorded."""
    redis = Redis.from_url(own_redis.url)
    try:
        await redis.set(keys.LEGACY_UNTIL, NOW + keys.GENERATION_SECONDS)  # the window is open
        s = catalog_store(redis)
        k = StreamKeys(stream)
        old = f"{k.legacy_orders_prefix}{NOW // keys.GENERATION_SECONDS}"
        await redis.hset(old, "old-1", "shopee|JP|4200")
        await s.commit([order(stream, "new-1", LineItem("VT05", None, 1))])
        both = [cancel(stream, "old-1"), cancel(stream, "new-1")]
        assert flags(await s.commit(both)) == [True, True]
        (totals,) = await s.totals([stream])
        assert await redis.hlen(old) == 0  # settled
    finally:
        await redis.aclose()
    assert totals.by(keys.CANCELLED) == {("shopee", "JP"): 1, ("tiktok", "VN"): 1}
    assert totals.by(keys.CANCELLED_GRAMS) == {("shopee", "JP"): 4200, ("tiktok", "VN"): 5000}
    assert totals.by(keys.CANCELLED_VALUE) == {("tiktok", "VND"): 500_000}
    assert totals.by(keys.CANCELLED_SKU_GRAMS) == {("VT05",): 5000}


@pytest.mark.asyncio
async def test_skus_beyond_the_limit_are_unweighed_and_cancelled_as_other(
    redis: Redis, stream: str
) -> None:
    s = Store(redis, StoreSettings(now_override=NOW, sku_limit=1), weigh=weigh)
    await s.commit([order(stream, "o1", LineItem("VT01", 100, 1))])  # takes the one label
    await s.commit([order(stream, "o2", LineItem("VT05", None, 1), LineItem("Z9", None, 2))])
    await s.commit([cancel(stream, "o2")])
    (totals,) = await s.totals([stream])
    assert totals.by(keys.SKU_GRAMS) == {("VT01",): 100, ("other",): 5000}
    assert totals.by(keys.UNWEIGHED) == {("tiktok", "other"): 1}
    assert totals.by(keys.CANCELLED_SKU_GRAMS) == {("other",): 5000}
