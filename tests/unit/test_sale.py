"""Tests for the synthetic lychee sale (workers.demo.sale)."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import subprocess
import sys
import unicodedata
from collections import Counter
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from tests.waiting import UNIT
from workers.demo.sale import (
    PLATFORMS,
    REGIONS,
    Expected,
    Sale,
    frames,
    lychee_sale,
)

Key = tuple[object, ...]
ROOT = Path(__file__).resolve().parents[2]
DECIMALS = {"VND": 0, "JPY": 0, "USD": 2, "AUD": 2}


@pytest.fixture(scope="module")
def sale() -> Sale:
    """The default sale, generated once for the module."""
    return lychee_sale()


def identity(event: dict[str, object]) -> Key:
    """Dedup identity: (stream, kind, id), plus status for orders."""
    return (event["stream"], event["kind"], event["id"], event.get("status"))


def created_orders(sale: Sale) -> list[dict[str, object]]:
    return [e for e in sale.events if e["kind"] == "order" and e["status"] == "created"]


def order_grams(order: dict[str, object]) -> int:
    items = order["items"]
    assert isinstance(items, list)
    return sum(int(item["qty"]) * int(item["grams"]) for item in items)


def digest(sale: Sale) -> str:
    """Stable fingerprint of a sale's events and delivery schedule."""
    h = hashlib.sha256()
    for delivery in sale.deliveries:
        h.update(f"{delivery.at:.3f}".encode())
        h.update(orjson.dumps(delivery.event))
    return h.hexdigest()


def test_same_seed_same_sale_other_seed_differs() -> None:
    def small(seed: int) -> Sale:
        return lychee_sale(seed=seed, hours=0.5, target_grams=2_000_000)

    first, again, other = small(7), small(7), small(8)
    assert first == again
    assert digest(first) == digest(again)
    assert first.events != other.events


def test_independent_of_hash_seed(sale: Sale) -> None:
    code = "from tests.unit.test_sale import digest, lychee_sale; print(digest(lychee_sale()))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)},
        timeout=60 * UNIT,
    )
    assert result.stdout.strip() == digest(sale)


def test_weight_reaches_target(sale: Sale) -> None:
    total = sum(order_grams(order) for order in created_orders(sale))
    assert abs(total - 54_000_000) <= 540_000
    assert 10_000 <= len(created_orders(sale)) <= 15_000


def test_realistic_volumes(sale: Sale) -> None:
    kinds = Counter(e["kind"] for e in sale.events)
    assert 30_000 <= kinds["comment"] <= 50_000
    assert kinds["viewers"] > 10_000
    cancels = len(sale.events) - kinds["comment"] - kinds["viewers"] - len(created_orders(sale))
    assert 0.01 <= cancels / len(created_orders(sale)) <= 0.03


def test_duplicate_share(sale: Sale) -> None:
    share = 1 - len(sale.events) / len(sale.deliveries)
    assert share == pytest.approx(0.15, abs=0.01)
    no_dupes = lychee_sale(hours=0.1, target_grams=300_000, duplicate_share=0.0)
    assert len(no_dupes.deliveries) == len(no_dupes.events)


def test_every_event_delivered_and_only_known_events(sale: Sale) -> None:
    unique = {identity(e): e for e in sale.events}
    assert len(unique) == len(sale.events)
    delivered = Counter(identity(d.event) for d in sale.deliveries)
    assert set(delivered) == set(unique)
    for delivery in sale.deliveries:
        assert delivery.event == unique[identity(delivery.event)]
    assert max(delivered.values()) >= 2


def test_delivery_times_non_decreasing(sale: Sale) -> None:
    times = [d.at for d in sale.deliveries]
    assert times[0] >= 0
    assert all(a <= b for a, b in itertools.pairwise(times))


def test_events_in_time_order(sale: Sale) -> None:
    times = [datetime.fromisoformat(str(e["ts"])) for e in sale.events]
    assert all(a <= b for a, b in itertools.pairwise(times))


def test_some_deliveries_out_of_event_order(sale: Sale) -> None:
    seen: set[Key] = set()
    latest = None
    late = 0
    for delivery in sale.deliveries:
        key = identity(delivery.event)
        if key in seen:
            continue
        seen.add(key)
        when = datetime.fromisoformat(str(delivery.event["ts"]))
        if latest is not None and when < latest:
            late += 1
        latest = when if latest is None else max(latest, when)
    assert late > 0


def test_some_cancellations_arrive_before_their_creation(sale: Sale) -> None:
    first: dict[Key, int] = {}
    for i, delivery in enumerate(sale.deliveries):
        first.setdefault(identity(delivery.event), i)
    early = [
        key
        for key in first
        if key[3] == "cancelled" and first[key] < first[(key[0], key[1], key[2], "created")]
    ]
    assert 1 <= len(early) <= 50


def test_cancellations_follow_creation_in_event_time(sale: Sale) -> None:
    created = {e["id"]: e for e in created_orders(sale)}
    cancelled = [e for e in sale.events if e["kind"] == "order" and e["status"] == "cancelled"]
    assert cancelled
    for event in cancelled:
        creation = created[event["id"]]
        assert event["platform"] == creation["platform"]
        assert set(event) == {"kind", "id", "status", "stream", "platform", "ts"}
        created_ts = datetime.fromisoformat(str(creation["ts"]))
        assert datetime.fromisoformat(str(event["ts"])) > created_ts


def test_money_respects_currency_decimals(sale: Sale) -> None:
    patterns = {"VND": r"[1-9][0-9]*", "JPY": r"[1-9][0-9]*", "USD": r"[0-9]+\.[0-9]{2}"}
    patterns["AUD"] = patterns["USD"]
    currencies: Counter[str] = Counter()
    for order in created_orders(sale):
        currency = str(order["currency"])
        currencies[currency] += 1
        pattern = re.compile(patterns[currency])
        assert pattern.fullmatch(str(order["amount"]))
        items = order["items"]
        assert isinstance(items, list)
        assert 1 <= len(items) <= 3
        assert len({item["sku"] for item in items}) == len(items)
        total = Decimal(0)
        for item in items:
            assert pattern.fullmatch(item["price"])
            total += Decimal(item["price"]) * item["qty"]
        assert Decimal(str(order["amount"])) == total
    assert set(currencies) == {"VND", "USD", "AUD", "JPY"}


def test_countries_regions_and_platforms(sale: Sale) -> None:
    orders = created_orders(sale)
    countries = Counter(order["country"] for order in orders)
    assert set(countries) == {"VN", "US", "AU", "JP"}
    assert 0.85 <= countries["VN"] / len(orders) <= 0.95
    currency = {"VN": "VND", "US": "USD", "AU": "AUD", "JP": "JPY"}
    regions: Counter[str] = Counter()
    for order in orders:
        assert order["currency"] == currency[str(order["country"])]
        if order["country"] == "VN":
            region = str(order["region"])
            assert region in REGIONS
            assert unicodedata.is_normalized("NFC", region)
            regions[region] += 1
        else:
            assert "region" not in order
    top_two = {name for name, _ in regions.most_common(2)}
    assert top_two == {"Hà Nội", "Hồ Chí Minh"}
    assert {str(e["platform"]) for e in sale.events} <= set(PLATFORMS)


def test_users_repeat_and_comments_mix_languages(sale: Sale) -> None:
    comments = [e for e in sale.events if e["kind"] == "comment"]
    assert sale.expected.unique_commenters < len(comments)
    assert sale.expected.unique_buyers < len(created_orders(sale))
    texts = [str(e["text"]) for e in comments]
    assert any("chốt" in text for text in texts)
    assert any(text.startswith("ship to") for text in texts)
    assert all(unicodedata.is_normalized("NFC", text) for text in texts)


def test_orders_have_busy_peaks(sale: Sale) -> None:
    start = datetime.fromisoformat("2025-06-14T08:00:00+07:00")
    buckets = Counter(
        int((datetime.fromisoformat(str(o["ts"])) - start).total_seconds() // 600)
        for o in created_orders(sale)
    )
    counts = sorted(buckets.values())
    assert counts[-1] > 3 * counts[len(counts) // 2]


def test_viewer_updates_every_few_seconds(sale: Sale) -> None:
    by_platform: dict[object, list[datetime]] = {}
    for event in sale.events:
        if event["kind"] == "viewers":
            assert isinstance(event["count"], int)
            assert event["count"] >= 0
            by_platform.setdefault(event["platform"], []).append(
                datetime.fromisoformat(str(event["ts"]))
            )
    for times in by_platform.values():
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 2
        assert max(gaps) <= 10


def recompute(events: tuple[dict[str, object], ...]) -> Expected:
    """Ground truth recomputed from scratch, independently of the generator's own tally."""
    orders: Counter[tuple[str, str]] = Counter()
    grams: Counter[tuple[str, str]] = Counter()
    value: Counter[tuple[str, str]] = Counter()
    c_orders: Counter[tuple[str, str]] = Counter()
    c_grams: Counter[tuple[str, str]] = Counter()
    skus: Counter[str] = Counter()
    comments: Counter[str] = Counter()
    regions: Counter[tuple[str, str]] = Counter()
    by_id = {e["id"]: e for e in events if e["kind"] == "order" and e["status"] == "created"}
    viewers: dict[str, tuple[datetime, int]] = {}
    for e in events:
        platform = str(e["platform"])
        if e["kind"] == "comment":
            comments[platform] += 1
        elif e["kind"] == "viewers":
            when = datetime.fromisoformat(str(e["ts"]))
            if platform not in viewers or viewers[platform][0] < when:
                viewers[platform] = (when, int(str(e["count"])))
        elif e["status"] == "created":
            country = str(e["country"])
            orders[platform, country] += 1
            grams[platform, country] += order_grams(e)
            scale = 10 ** DECIMALS[str(e["currency"])]
            value[platform, str(e["currency"])] += int(Decimal(str(e["amount"])) * scale)
            for item in e["items"]:  # type: ignore[attr-defined]
                skus[item["sku"]] += item["qty"] * item["grams"]
            regions[country, str(e.get("region", "unknown"))] += 1
        else:
            creation = by_id[e["id"]]
            key = (str(creation["platform"]), str(creation["country"]))
            c_orders[key] += 1
            c_grams[key] += order_grams(creation)
    return Expected(
        orders=dict(orders),
        grams=dict(grams),
        value_minor=dict(value),
        cancelled_orders=dict(c_orders),
        cancelled_grams=dict(c_grams),
        sku_grams=dict(skus),
        comments=dict(comments),
        region_orders=dict(regions),
        unique_buyers=len({e["buyer"] for e in by_id.values()}),
        unique_commenters=len({e["user"] for e in events if e["kind"] == "comment"}),
        viewers={platform: count for platform, (_, count) in viewers.items()},
    )


def test_expected_matches_independent_recount(sale: Sale) -> None:
    assert recompute(sale.events) == sale.expected
    assert sum(sale.expected.cancelled_orders.values()) > 0
    assert set(sale.expected.sku_grams) >= {"VT01", "VT02", "VT05", "VTQ", "VTS20"}


def test_frames_single_and_batched(sale: Sale) -> None:
    head = sale.deliveries[:7]
    singles = frames(head)
    assert [orjson.loads(f) for f in singles] == [d.event for d in head]
    batched = frames(head, batch=3)
    decoded = [orjson.loads(f) for f in batched]
    assert [len(chunk) for chunk in decoded] == [3, 3, 1]
    assert [e for chunk in decoded for e in chunk] == [d.event for d in head]
    with pytest.raises(ValueError, match="batch"):
        frames(head, batch=0)


@pytest.mark.parametrize(
    "kwargs",
    [{"hours": 0}, {"target_grams": 0}, {"duplicate_share": 1.0}, {"start": datetime(2025, 6, 14)}],
)
def test_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        lychee_sale(**kwargs)  # type: ignore[arg-type]
