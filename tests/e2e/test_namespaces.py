"""Identity namespaces end to end: one source cannot cancel or claim another source's orders.

A Shopify webhook source and a push producer (websocket server) write to the same stream, as
the ingester runs. The push producer holds a valid token, so everything it sends is counted as
its own events; it must not reach the orders Shopify delivered, whatever ids it names.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.e2e.support import (
    PUSH_TOKEN,
    PUSH_TOKEN_ENV,
    SECRET,
    SECRET_ENV,
    IngesterProcess,
    push_and_shop_sources,
    scrape,
    select,
    write_config,
)
from tests.e2e.test_shopify import ShopOrder, cancelled, make_order
from tests.platforms import Shop
from tests.servers import free_port
from tests.waiting import until

TOKEN = PUSH_TOKEN
TOKEN_ENV = PUSH_TOKEN_ENV


class Sources:
    """An ingester with a push source and a Shopify source on one stream."""

    def __init__(self, process: IngesterProcess, push: int, hook: int, stream: str) -> None:
        self.process, self.stream = process, stream
        self.push_url = f"ws://127.0.0.1:{push}/ingest"
        self.shop = Shop(f"http://127.0.0.1:{hook}/webhooks/shopify", SECRET)

    def totals(self, name: str) -> dict[tuple[str, ...], float]:
        return select(scrape(self.process.http_port), name, stream=self.stream)

    def handled(self, source: str, outcome: str) -> float:
        samples = scrape(self.process.http_port)
        events = select(samples, "livestream_ingest_events_total", source=source, outcome=outcome)
        return sum(events.values())

    async def push(self, ws: ClientConnection, event: dict[str, object], outcome: str) -> None:
        """Send one native event and wait until it is committed with ``outcome``."""
        before = self.handled("push", outcome)
        await ws.send(orjson.dumps(event).decode())
        await until(lambda: self.handled("push", outcome) > before, 20, f"push {outcome}")


@pytest.fixture
def sources(tmp_path: Path, redis_url: str, stream: str) -> Iterator[Sources]:
    http, push, hook = free_port(), free_port(), free_port()
    config = push_and_shop_sources(push, hook, stream)
    path = write_config(tmp_path / "two.toml", redis_url=redis_url, http_port=http, sources=config)
    with IngesterProcess(path, http, env={SECRET_ENV: SECRET, TOKEN_ENV: TOKEN}) as process:
        yield Sources(process, push, hook, stream)


def native_cancel(order: ShopOrder, stream: str) -> dict[str, object]:
    """What a push producer forges: a native cancellation naming Shopify's order id."""
    return {
        "kind": "order",
        "id": f"shopify:{order.id}",
        "status": "cancelled",
        "stream": stream,
        "platform": "shopify",
        "ts": "2025-06-14T10:00:00+07:00",
    }


def native_order(order: ShopOrder, stream: str) -> dict[str, object]:
    """A native creation under Shopify's order id: the push producer's own order."""
    return {
        "kind": "order",
        "id": f"shopify:{order.id}",
        "status": "created",
        "stream": stream,
        "platform": "shopify",
        "ts": "2025-06-14T09:00:00+07:00",
        "country": "JP",
        "currency": "VND",
        "amount": "1000",
        "items": [{"sku": "FAKE", "qty": 1, "grams": 1}],
    }


@pytest.mark.asyncio
async def test_a_push_producer_cannot_cancel_or_claim_shopify_orders(
    sources: Sources, stream: str
) -> None:
    rng = random.Random(12)
    counted, early, claimed = (make_order(rng, 8_000_000 + n) for n in range(3))
    async with (
        aiohttp.ClientSession() as http,
        connect(sources.push_url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws,
    ):

        async def create(order: ShopOrder) -> None:
            body = orjson.dumps(order.body)
            assert await sources.shop.deliver(http, "orders/create", body, event_id=None) == 200

        # A Shopify order, then the push producer's cancellation of it.
        await create(counted)
        await sources.push(ws, native_cancel(counted, stream), "accepted")
        # A cancellation that comes first, then Shopify's order.
        await sources.push(ws, native_cancel(early, stream), "accepted")
        await create(early)
        # The push producer's own order under a Shopify id does not make Shopify's a duplicate.
        await sources.push(ws, native_order(claimed, stream), "accepted")
        await create(claimed)

        assert sources.totals("livestream_cancelled_orders_total") == {}
        shopify_orders = {(o.country, "shopify"): 0.0 for o in (counted, early, claimed)}
        for order in (counted, early, claimed):
            shopify_orders[order.country, "shopify"] += 1
        shopify_orders[("JP", "shopify")] = shopify_orders.get(("JP", "shopify"), 0) + 1
        assert sources.totals("livestream_orders_total") == shopify_orders
        assert sources.handled("shop", "accepted") == 3
        assert sources.handled("shop", "duplicate") == 0

        # Shopify's own cancellation still cancels its order, once.
        body = orjson.dumps(cancelled(counted))
        for _ in range(2):
            assert await sources.shop.deliver(http, "orders/cancelled", body, event_id="x1") == 200
    assert sources.totals("livestream_cancelled_orders_total") == {(counted.country, "shopify"): 1}
    assert sources.totals("livestream_cancelled_grams_total") == {
        (counted.country, "shopify"): counted.grams
    }
