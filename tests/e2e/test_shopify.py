"""Shopify order webhooks end to end: signed deliveries to the ingester as a user runs it.

A known set of orders is delivered as Shopify does: retried with the same event id, delivered
again under another webhook id, cancellations before their orders, ``total_weight: 0`` while
the line items weigh; and bad deliveries around them. The scraped totals must be exact.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from ingest.shopify import signature
from tests.e2e.support import (
    SECRET,
    SECRET_ENV,
    IngesterProcess,
    scrape,
    select,
    webhook_source,
    write_config,
)
from tests.platforms import Shop
from tests.servers import RedisServer, free_port
from tests.waiting import UNIT, until
from workers.store import Store, StoreSettings

COUNTRIES: dict[str, list[str | None]] = {
    "VN": ["Hà Nội", "Bắc Giang", "TP Hồ Chí Minh"],
    "US": [None],
    "AU": [None],
}


@dataclasses.dataclass
class ShopOrder:
    id: int
    body: dict[str, Any]
    country: str
    region: str
    grams: int
    value: int
    skus: dict[str, int]


def make_order(rng: random.Random, order_id: int) -> ShopOrder:
    country = rng.choice(list(COUNTRIES))
    province = rng.choice(COUNTRIES[country])
    items = []
    skus: Counter[str] = Counter()
    value = 0
    for line in range(rng.randint(1, 3)):
        sku = rng.choice(["VT01", "VT02", "vt03"])
        quantity = rng.randint(1, 4)
        grams = rng.choice([500, 1000, 2000])
        price = rng.choice([60_000, 120_000, 240_000])
        items.append(
            {
                "id": order_id * 10 + line,
                "sku": sku,
                "quantity": quantity,
                "grams": grams,
                "price": f"{price}.00",
                "title": "Vải thiều Lục Ngạn",
            }
        )
        skus[sku.upper()] += grams * quantity
        value += price * quantity
    body = {
        "id": order_id,
        "name": f"#{order_id}",
        "created_at": "2025-06-14T09:05:07+07:00",
        "cancelled_at": None,
        "currency": "VND",
        "total_price": f"{value}.00",
        "total_weight": 0,  # as in Shopify's own sample: not the weight
        "line_items": items,
        "customer": {"id": 900 + order_id % 17},
        "shipping_address": {"country_code": country, "province": province, "city": "x"},
    }
    region = "unknown" if province is None else province
    return ShopOrder(order_id, body, country, region, sum(skus.values()), value, dict(skus))


def cancelled(order: ShopOrder) -> dict[str, Any]:
    return {
        **order.body,
        "cancelled_at": "2025-06-14T10:00:00+07:00",
        "cancel_reason": "customer",
    }


def expected_totals(
    orders: list[ShopOrder], cancels: list[ShopOrder]
) -> dict[str, dict[tuple[str, ...], float]]:
    """The metrics a stream of these orders and cancellations must show."""
    by_country: Counter[tuple[str, ...]] = Counter()
    grams: Counter[tuple[str, ...]] = Counter()
    regions: Counter[tuple[str, ...]] = Counter()
    skus: Counter[str] = Counter()
    cancelled_orders: Counter[tuple[str, ...]] = Counter()
    cancelled_grams: Counter[tuple[str, ...]] = Counter()
    # Bắc Giang is part of Bắc Ninh since the 2025 merger of provinces.
    region_names = {"Bắc Giang": "Bắc Ninh", "TP Hồ Chí Minh": "Hồ Chí Minh"}
    for order in orders:
        by_country[order.country, "shopify"] += 1
        grams[order.country, "shopify"] += order.grams
        regions[order.country, region_names.get(order.region, order.region)] += 1
        skus.update(order.skus)
    for order in cancels:
        cancelled_orders[order.country, "shopify"] += 1
        cancelled_grams[order.country, "shopify"] += order.grams
    return {
        "livestream_orders_total": dict(by_country),
        "livestream_sold_grams_total": dict(grams),
        "livestream_order_value_total": {("VND", "shopify"): sum(o.value for o in orders)},
        "livestream_cancelled_orders_total": dict(cancelled_orders),
        "livestream_cancelled_grams_total": dict(cancelled_grams),
        "livestream_sku_sold_grams_total": {(s,): v for s, v in skus.items()},
        "livestream_region_orders_total": dict(regions),
    }


@pytest.fixture
def ingester(tmp_path: Path, redis_url: str, stream: str) -> Iterator[tuple[IngesterProcess, Shop]]:
    http_port, hook_port = free_port(), free_port()
    config = write_config(
        tmp_path / "shop.toml",
        redis_url=redis_url,
        http_port=http_port,
        sources=webhook_source(hook_port, stream),
    )
    shop = Shop(f"http://127.0.0.1:{hook_port}/webhooks/shopify", SECRET)
    with IngesterProcess(config, http_port, env={SECRET_ENV: SECRET}) as process:
        yield process, shop


@pytest.mark.asyncio
async def test_orders_are_exact_through_retries_duplicates_and_early_cancels(
    ingester: tuple[IngesterProcess, Shop], stream: str
) -> None:
    process, shop = ingester
    rng = random.Random(4)
    orders = [make_order(rng, 5_000_000 + n) for n in range(80)]
    cancels = orders[::5]  # 16 cancelled, every other one before its order
    early = cancels[::2]
    deliveries: list[tuple[str, bytes, str]] = []
    for order in orders:
        deliveries.append(("orders/create", orjson.dumps(order.body), f"ev-c-{order.id}"))
    for order in cancels:
        delivery = ("orders/cancelled", orjson.dumps(cancelled(order)), f"ev-x-{order.id}")
        if order in early:
            deliveries.insert(0, delivery)
        else:
            deliveries.append(delivery)
    statuses: Counter[int] = Counter()
    async with aiohttp.ClientSession() as http:
        for topic, body, event_id in deliveries:
            statuses[await shop.deliver(http, topic, body, event_id=event_id)] += 1
        # Retries with the original payload, by event id; another subscription's delivery of
        # the same event (new webhook id); and an old-style delivery without an event id.
        for topic, body, event_id in rng.sample(deliveries, 40):
            statuses[await shop.deliver(http, topic, body, event_id=event_id)] += 1
            statuses[await shop.deliver(http, topic, body, event_id=event_id, webhook_id="w2")] += 1
        for topic, body, _ in rng.sample(deliveries, 10):
            statuses[await shop.deliver(http, topic, body, event_id=None)] += 1
        # Bad deliveries, each answered and none counted.
        body = orjson.dumps(orders[0].body)
        forged = await shop.deliver(
            http, "orders/create", body, event_id="forged", hmac_header="AAAA"
        )
        tampered = await shop.deliver(  # a body changed after it was signed
            http,
            "orders/create",
            body.replace(b'"quantity":', b'"quantity":9', 1),
            event_id="tampered",
            hmac_header=signature(SECRET.encode(), body),
        )
        statuses.update([forged, tampered])
        statuses[await shop.deliver(http, "orders/paid", body, event_id="ev-paid")] += 1
        broken = orjson.dumps({**orders[1].body, "line_items": "none"})
        statuses[await shop.deliver(http, "orders/create", broken, event_id="ev-broken")] += 1
        huge = orjson.dumps({**orders[2].body, "note": "x" * 70_000})
        statuses[await shop.deliver(http, "orders/create", huge, event_id="ev-huge")] += 1

    assert statuses == {200: len(deliveries) + 80 + 10 + 2, 401: 2, 413: 1}
    samples = scrape(process.http_port)
    assert {
        name: select(samples, name, stream=stream) for name in expected_totals(orders, cancels)
    } == expected_totals(orders, cancels)
    health = {
        name: select(samples, name, source="shop")
        for name in (
            "livestream_ingest_unauthorized_requests_total",
            "livestream_ingest_ignored_total",
            "livestream_ingest_rejections_total",
        )
    }
    assert health == {
        "livestream_ingest_unauthorized_requests_total": {(): 2},
        "livestream_ingest_ignored_total": {("unknown_topic",): 1},
        "livestream_ingest_rejections_total": {("invalid_type",): 1},
    }


@pytest.mark.asyncio
async def test_a_delivery_is_acknowledged_only_once_committed(tmp_path: Path, stream: str) -> None:
    """With Redis down, Shopify gets 503 and delivers again later; nothing is lost or doubled."""
    redis = RedisServer(None, "--appendonly", "yes", "--appendfsync", "always")
    redis.start()
    http_port, hook_port = free_port(), free_port()
    config = write_config(
        tmp_path / "shop.toml",
        redis_url=redis.url,
        http_port=http_port,
        sources=webhook_source(hook_port, stream),
    )
    shop = Shop(f"http://127.0.0.1:{hook_port}/webhooks/shopify", SECRET)
    rng = random.Random(9)
    orders = [make_order(rng, 7_000_000 + n) for n in range(5)]
    try:
        with IngesterProcess(config, http_port, env={SECRET_ENV: SECRET}) as process:
            async with aiohttp.ClientSession() as http:

                async def deliver(order: ShopOrder) -> int:
                    body = orjson.dumps(order.body)
                    return await shop.deliver(
                        http, "orders/create", body, event_id=f"ev-{order.id}"
                    )

                assert await deliver(orders[0]) == 200
                redis.stop()
                assert await asyncio.gather(*(deliver(o) for o in orders[1:])) == [503] * 4
                unavailable = "livestream_ingest_webhook_unavailable_total"
                assert select(scrape(process.http_port), unavailable) == {("shop",): 4}
                redis.start()
                # Shopify's retries: the same deliveries, until each is answered 200 (the
                # committer may still be in its backoff when Redis is back).
                for order in orders:
                    statuses: list[int] = []

                    async def accepted(
                        order: ShopOrder = order, seen: list[int] = statuses
                    ) -> bool:
                        seen.append(await deliver(order))
                        return seen[-1] == 200

                    await until(accepted, 20, f"order {order.id} to be answered 200")
                    assert set(statuses) <= {200, 503}

                def total_orders() -> float:
                    return sum(
                        select(
                            scrape(process.http_port), "livestream_orders_total", stream=stream
                        ).values()
                    )

                await until(lambda: total_orders() == 5, 20, "five orders")
                grams = select(
                    scrape(process.http_port), "livestream_sold_grams_total", stream=stream
                )
                assert sum(grams.values()) == sum(o.grams for o in orders)
    finally:
        redis.close()


@pytest.mark.asyncio
async def test_a_signed_body_replayed_under_another_topic_is_refused(
    ingester: tuple[IngesterProcess, Shop], redis: Redis, stream: str
) -> None:
    """The topic header is not signed: a captured orders/create body re-posted as
    orders/cancelled (and a cancellation re-posted as orders/create) must not count. Each is
    answered 200 (it can never count: no retries for hours), rejected and dead-lettered."""
    process, shop = ingester
    rng = random.Random(12)
    orders = [make_order(rng, 8_000_000 + n) for n in range(4)]
    async with aiohttp.ClientSession() as http:
        statuses = [
            await shop.deliver(http, "orders/create", orjson.dumps(o.body), event_id=f"c{o.id}")
            for o in orders
        ]
        captured = orjson.dumps(orders[0].body)
        for n in range(3):  # replayed with its own signature, under new event ids
            statuses.append(
                await shop.deliver(http, "orders/cancelled", captured, event_id=f"forged-{n}")
            )
        real_cancel = orjson.dumps(cancelled(orders[1]))
        statuses.append(await shop.deliver(http, "orders/cancelled", real_cancel, event_id="x1"))
        statuses.append(  # a captured cancellation as a new order: refused too
            await shop.deliver(http, "orders/create", real_cancel, event_id="forged-create")
        )
    assert statuses == [200] * 9
    samples = scrape(process.http_port)
    expected = expected_totals(orders, [orders[1]])
    assert {name: select(samples, name, stream=stream) for name in expected} == expected
    rejections = select(samples, "livestream_ingest_rejections_total", source="shop")
    assert rejections == {("topic_mismatch",): 4}
    letters = await Store(redis, StoreSettings()).dead_letters(stream)
    assert [f["reason"] for f in letters] == [b"topic_mismatch"] * 4
    kept = [orjson.loads(f["raw"]) for f in letters]  # the allow-listed fields of the body
    assert sorted((k["id"], k["_delivery"]["topic"], k["_delivery"]["event_id"]) for k in kept) == (
        sorted(
            [(orders[0].id, "orders/cancelled", f"forged-{n}") for n in range(3)]
            + [(orders[1].id, "orders/create", "forged-create")]
        )
    )
    assert {k["_redacted"]["bytes"] for k in kept} == {len(captured), len(real_cancel)}


OLD_SECRET = "shpss_old_secret_fedcba9876543210"
OLD_SECRET_ENV = "LIVESTREAM_TEST_SHOPIFY_OLD_SECRET"
OUR_SHOP = "lucngan-farm.myshopify.com"


def triggered(hours_ago: float) -> str:
    """An X-Shopify-Triggered-At value, in Shopify's own shape (nanoseconds, Z)."""
    when = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours_ago)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


@pytest.mark.asyncio
async def test_rotation_window_freshness_and_shop_domains(
    tmp_path: Path, redis_url: str, redis: Redis, stream: str
) -> None:
    """During a secret rotation both secrets verify (and the scrape says which one did); a
    delivery triggered longer ago than the dedup retention, or without a readable trigger time,
    is answered 200 and dead-lettered, never counted; another shop's signed delivery is 403.
    The fresh deliveries of the same run count exactly."""
    http_port, hook_port = free_port(), free_port()
    sources = webhook_source(hook_port, stream) + (
        f'previous_secret_env = "{OLD_SECRET_ENV}"\n'
        f'shop_domains = ["{OUR_SHOP}"]\n'
        "refuse_stale_deliveries = true\n"  # at most [dedup] retention_hours (48) old
    )
    config = write_config(
        tmp_path / "shop.toml", redis_url=redis_url, http_port=http_port, sources=sources
    )
    url = f"http://127.0.0.1:{hook_port}/webhooks/shopify"
    new, old = Shop(url, SECRET, OUR_SHOP), Shop(url, OLD_SECRET, OUR_SHOP)
    stranger = Shop(url, "shpss_someone_else_0123456789abcdef", OUR_SHOP)
    other_shop = Shop(url, SECRET, "someone-else.myshopify.com")
    rng = random.Random(21)
    orders = [make_order(rng, 9_100_000 + n) for n in range(14)]
    env = {SECRET_ENV: SECRET, OLD_SECRET_ENV: OLD_SECRET}
    with IngesterProcess(config, http_port, env=env) as process:
        async with aiohttp.ClientSession() as http:

            async def deliver(shop: Shop, n: int, hours_ago: float | str = 0) -> int:
                at = hours_ago if isinstance(hours_ago, str) else triggered(hours_ago)
                body = orjson.dumps(orders[n].body)
                return await shop.deliver(
                    http, "orders/create", body, event_id=f"ev-{n}", triggered_at=at
                )

            statuses = [await deliver(new, n) for n in range(5)]
            statuses += [await deliver(old, n) for n in range(5, 8)]
            statuses.append(await deliver(new, 8, 47.5))  # late, within the retention
            statuses.append(await deliver(stranger, 9))
            statuses.append(await deliver(other_shop, 10))
            statuses.append(await deliver(new, 11, 48.5))  # past the retention: a replay
            statuses.append(await deliver(old, 12, "yesterday"))
            statuses.append(await deliver(new, 13, "2025-06-15T15:05:00"))  # no zone
        samples = scrape(process.http_port)

    assert statuses == [200] * 9 + [401, 403, 200, 200, 200]
    counted = orders[:9]
    expected = expected_totals(counted, [])
    assert {name: select(samples, name, stream=stream) for name in expected} == expected
    health = {
        name: select(samples, name, source="shop")
        for name in (
            "livestream_ingest_webhook_signatures_total",
            "livestream_ingest_unauthorized_requests_total",
            "livestream_ingest_webhook_forbidden_total",
            "livestream_ingest_rejections_total",
        )
    }
    assert health == {
        # 0-4, 8, the other shop's, 11 and 13 by the new secret; 5-7 and 12 by the old one
        "livestream_ingest_webhook_signatures_total": {("current",): 9, ("previous",): 4},
        "livestream_ingest_unauthorized_requests_total": {(): 1},
        "livestream_ingest_webhook_forbidden_total": {(): 1},
        "livestream_ingest_rejections_total": {
            ("stale_delivery",): 1,
            ("invalid_trigger_time",): 2,
        },
    }
    letters = await Store(redis, StoreSettings()).dead_letters(stream)
    kept = sorted((f["reason"], orjson.loads(f["raw"])["id"]) for f in letters)
    assert kept == sorted(
        [
            (b"stale_delivery", orders[11].id),
            (b"invalid_trigger_time", orders[12].id),
            (b"invalid_trigger_time", orders[13].id),
        ]
    )


async def reload_on_sighup(process: IngesterProcess) -> float:
    """SIGHUP, and wait until the secrets file was read after it: the successful reads so far,
    1 or 2 (the watch, every 0.1 s, may have read the new file before the signal was handled)."""
    assert process.process is not None
    process.process.send_signal(signal.SIGHUP)

    def read_after_the_signal() -> bool:
        after = process.log.read_text().partition("reloading on SIGHUP")[2]
        return any("secrets file" in line and "loaded" in line for line in after.split("\n"))

    await until(read_after_the_signal, 10, "the secrets file read on SIGHUP")
    samples = scrape(process.http_port)
    (ok,) = select(samples, "livestream_ingest_secrets_reloads_total", outcome="ok").values()
    assert ok in (1, 2)
    return ok


@pytest.mark.asyncio
async def test_secrets_file_rotation_without_a_restart(
    tmp_path: Path, redis_url: str, stream: str
) -> None:
    """The secrets file gains the new secret (SIGHUP), keeps the old as previous, survives a
    bad version, then drops the old one (picked up by the file watch): deliveries signed by
    whatever the file holds count, the others get 401; the totals are exact."""
    http_port, hook_port = free_port(), free_port()
    secrets = tmp_path / "shopify.secrets"

    def write(text: str) -> None:
        staged = tmp_path / "shopify.secrets.new"
        staged.write_text(text)
        staged.chmod(0o600)
        staged.replace(secrets)

    write(f"current {OLD_SECRET}\n")
    source = webhook_source(hook_port, stream).replace(
        f'secret_env = "{SECRET_ENV}"',
        f'secrets_file = "{secrets}"\nsecrets_poll_seconds = {0.1 * UNIT}',
    )
    config = write_config(
        tmp_path / "shop.toml", redis_url=redis_url, http_port=http_port, sources=source
    )
    url = f"http://127.0.0.1:{hook_port}/webhooks/shopify"
    new, old = Shop(url, SECRET), Shop(url, OLD_SECRET)
    rng = random.Random(33)
    orders = [make_order(rng, 9_200_000 + n) for n in range(8)]
    with IngesterProcess(config, http_port) as process:

        def health(name: str, **labels: str) -> dict[tuple[str, ...], float]:
            return select(scrape(process.http_port), name, source="shop", **labels)

        async def reloaded(outcome: str, times: int) -> None:
            await until(
                lambda: (
                    health("livestream_ingest_secrets_reloads_total", outcome=outcome)
                    == {(): times}
                ),
                10,
                f"{outcome} x{times}",
            )

        async with aiohttp.ClientSession() as http:

            async def deliver(shop: Shop, n: int) -> int:
                body = orjson.dumps(orders[n].body)
                return await shop.deliver(http, "orders/create", body, event_id=f"ev-{n}")

            statuses = [await deliver(old, 0), await deliver(new, 1)]
            write(f"current {SECRET}\nprevious {OLD_SECRET}\n")
            ok = await reload_on_sighup(process)
            statuses += [await deliver(new, 1), await deliver(old, 2)]
            write("current short\n")  # refused: both secrets stay
            await reloaded("error", 1)
            assert health("livestream_ingest_secrets_file_valid") == {(): 0}
            statuses += [await deliver(new, 3), await deliver(old, 4)]
            write(f"current {SECRET}\n")  # the old secret dropped, seen by the watch
            await reloaded("ok", int(ok) + 1)
            statuses += [await deliver(old, 5), await deliver(new, 6), await deliver(new, 7)]
        samples = scrape(process.http_port)

    assert statuses == [200, 401, 200, 200, 200, 200, 401, 200, 200]
    counted = [orders[n] for n in (0, 1, 2, 3, 4, 6, 7)]
    expected = expected_totals(counted, [])
    assert {name: select(samples, name, stream=stream) for name in expected} == expected
    assert select(samples, "livestream_ingest_webhook_signatures_total", source="shop") == {
        ("current",): 5,  # 0 (old, while current), then 1, 3, 6, 7 (new)
        ("previous",): 2,  # 2, 4 (old, as previous)
    }
    assert select(samples, "livestream_ingest_unauthorized_requests_total", source="shop") == {
        (): 2
    }
    assert select(samples, "livestream_ingest_secrets_file_valid", source="shop") == {(): 1}
    log = process.log.read_text()
    assert SECRET not in log
    assert OLD_SECRET not in log
    refusals = [line for line in log.splitlines() if "secrets file" in line and "refused" in line]
    assert len(refusals) == 1, log
