"""Property: any interleaving, duplication and batching of a set of events gives the same totals.

Each example commits the deliveries to one stream and the unique events, once and in a canonical
order, to another; everything Redis holds for the two must agree.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from ingest.model import Comment, Event, LineItem, Order, Viewers
from tests.servers import RedisServer
from workers.store import Store, StoreSettings, StreamTotals

PLATFORMS = st.sampled_from(["tiktok", "shopee", "facebook"])
COUNTRIES = st.sampled_from(["VN", "US", "JP", "unknown"])
SKUS = st.sampled_from(["VT01", "VT02", "VT05", "VTQ"])


@st.composite
def events(draw: st.DrawFn) -> list[Event]:
    result: list[Event] = []
    for n in range(draw(st.integers(0, 12))):
        items = tuple(
            LineItem(draw(SKUS), draw(st.none() | st.integers(0, 50_000)))
            for _ in range(draw(st.integers(1, 3)))
        )
        created = Order(
            "s",
            draw(PLATFORMS),
            f"o{n}",
            draw(st.integers(0, 10**6)),
            False,
            buyer=draw(st.sampled_from(["b1", "b2", "b3", None])),
            country=draw(COUNTRIES),
            region=draw(st.sampled_from(["Hà Nội", "other", "unknown"])),
            currency=draw(st.sampled_from(["VND", "USD"])),
            amount_minor=draw(st.integers(0, 10**12)),
            grams=sum(item.grams or 0 for item in items),
            items=items,
        )
        result.append(created)
        if draw(st.booleans()):
            result.append(Order("s", created.platform, created.id, created.ts_ms + 1, True))
    for n in range(draw(st.integers(0, 12))):
        user = draw(st.sampled_from(["u1", "u2", "u3", None]))
        result.append(Comment("s", draw(PLATFORMS), f"c{n}", draw(st.integers(0, 10**6)), user))
    for n in range(draw(st.integers(0, 6))):
        ts, count = draw(st.integers(0, 5)), draw(st.integers(0, 1000))
        result.append(Viewers("s", draw(PLATFORMS), f"v{n}", ts, count))
    return result


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[Event], list[list[int]]]:
    """Unique events, and batches of indexes into them: every event at least once, in any order."""
    unique = draw(events())
    order = list(range(len(unique)))
    order += draw(st.lists(st.sampled_from(order), max_size=20)) if order else []
    order = draw(st.permutations(order))
    cuts = sorted(draw(st.lists(st.integers(0, len(order)), max_size=5)))
    bounds = [0, *cuts, len(order)]
    return unique, [order[a:b] for a, b in itertools.pairwise(bounds)]


def restream(event: Event, stream: str) -> Event:
    return type(event)(
        **{**{f: getattr(event, f) for f in event.__struct_fields__}, "stream": stream}
    )


def canonical(unique: list[Event]) -> list[Event]:
    """Creations before their cancellations: the order a perfect source would deliver."""
    return sorted(unique, key=lambda e: isinstance(e, Order) and e.cancelled)


def state(totals: StreamTotals, *, exact_skus: bool = True) -> tuple[object, ...]:
    counters = dict(totals.counters)
    if not exact_skus:  # fields labelled by SKU: their sum per metric (and platform)
        for field in list(counters):
            metric, _, labels = field.partition("|")
            if metric in ("sku_grams", "cancelled_sku_grams"):
                key = f"{metric} (sum)"
            elif metric == "unweighed":
                key = f"{metric}|{labels.split('|')[0]} (sum)"
            else:
                continue
            counters[key] = counters.get(key, 0) + counters.pop(field)
    return counters, totals.viewers, totals.unique_commenters, totals.unique_buyers


async def check(url: str, unique: list[Event], batches: list[list[int]]) -> None:
    """Under the SKU limit everything is equal; beyond it, which SKUs keep their own label is
    first come, first served (documented), so only their sum is compared."""
    redis = Redis.from_url(url)
    try:
        for sku_limit, exact_skus in ((10, True), (2, False)):
            store = Store(redis, StoreSettings(sku_limit=sku_limit))
            tag = uuid.uuid4().hex[:10]
            messy, clean = f"messy-{tag}", f"clean-{tag}"
            for batch in batches:
                await store.commit([restream(unique[i], messy) for i in batch])
            await store.commit([restream(e, clean) for e in canonical(unique)])
            got, want = await store.totals([messy, clean])
            assert state(got, exact_skus=exact_skus) == state(want, exact_skus=exact_skus)
    finally:
        await redis.aclose()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=deliveries())
def test_any_interleaving_and_duplication_gives_the_same_totals(
    redis_server: RedisServer, case: tuple[list[Event], list[list[int]]]
) -> None:
    unique, batches = case
    asyncio.run(check(redis_server.url, unique, batches))
