"""The terminal views' pure parts: exact figures, top lists, and health read from /metrics."""

from __future__ import annotations

from workers import keys
from workers.display import (
    Plan,
    Rates,
    comment_orders,
    kilograms,
    money,
    progress,
    revenue,
    stock_left,
    summary,
    top_countries,
    top_skus,
)
from workers.metrics import HealthMetrics, exposition
from workers.store import StreamTotals
from workers.top import metrics_url, parse_health


def totals() -> StreamTotals:
    counters = {
        f"{keys.GRAMS}|tiktok|VN": 5_000,
        f"{keys.GRAMS}|shopee|VN": 1_001,
        f"{keys.GRAMS}|shopify|US": 2_500,
        f"{keys.ORDERS}|tiktok|VN": 3,
        f"{keys.VALUE}|tiktok|VND": 240_000,
        f"{keys.VALUE}|shopee|VND": 120_000,
        f"{keys.VALUE}|shopify|USD": 1_250,
        f"{keys.SKU_GRAMS}|VT01": 6_001,
        f"{keys.SKU_GRAMS}|VT05": 2_500,
        f"{keys.COMMENTS}|tiktok": 9,
    }
    return StreamTotals("s", counters, {"tiktok": 10}, 1, 1)


def test_figures_are_exact() -> None:
    assert kilograms(7_250) == "7.250"
    assert kilograms(54_012_345_678) == "54,012,345.678"
    assert kilograms(5) == "0.005"
    assert kilograms(-1_005) == "-1.005"  # stock sold beyond what there was
    assert money(1_250, "USD") == "12.50"
    assert money(5_592_510_000, "VND") == "5,592,510,000"
    assert money(1_234_567_891, "KWD") == "1,234,567.891"


def test_totals_are_summed_over_platforms() -> None:
    stream = totals()
    assert summary(stream) == {
        "grams": 8_501,
        "orders": 3,
        "comments": 9,
        "cancelled": 0,
        "comment_orders": 0,
    }
    assert top_countries(stream, 5) == [("VN", 6_001), ("US", 2_500)]
    assert top_countries(stream, 1) == [("VN", 6_001)]
    assert top_skus(stream, 5) == [("VT01", 6_001), ("VT05", 2_500)]
    assert revenue(stream) == {"USD": 1_250, "VND": 360_000}


def test_ties_are_ranked_by_name_whatever_order_redis_keeps() -> None:
    for names in (["VTQ", "VT01", "AU"], ["AU", "VT01", "VTQ"]):
        counters = {f"{keys.SKU_GRAMS}|{sku}": 3_000 for sku in names}
        counters |= {f"{keys.GRAMS}|tiktok|{country}": 1_000 for country in names}
        stream = StreamTotals("s", counters, {}, 0, 0)
        assert top_skus(stream, 2) == [("AU", 3_000), ("VT01", 3_000)]
        assert top_countries(stream, 3) == [("AU", 1_000), ("VT01", 1_000), ("VTQ", 1_000)]


def test_rates_are_per_minute_over_the_window() -> None:
    now = [0.0]
    rates = Rates(window=60, clock=lambda: now[0])
    assert rates.add({"orders": 10}) == {"orders": 0.0}
    now[0] = 30.0
    assert rates.add({"orders": 40}) == {"orders": 60.0}


def test_metrics_urls_accept_host_and_port() -> None:
    assert metrics_url("127.0.0.1:9464") == "http://127.0.0.1:9464/metrics"
    assert metrics_url("http://ingester-1:9464") == "http://ingester-1:9464/metrics"
    assert metrics_url("https://host/custom") == "https://host/custom"


def test_health_comes_from_the_exposition() -> None:
    health = HealthMetrics()
    health.add_source("relay")
    health.add_source("push")
    health.connected.labels("relay").set(1)
    health.last_event.labels("relay").set(1_000.0)
    health.events.labels("relay", "comment", "accepted").inc(5)
    health.events.labels("relay", "order", "accepted").inc(2)
    health.events.labels("relay", "order", "duplicate").inc(1)
    health.reconnects.labels("push").inc(3)
    health.buffered.set(7)
    health.redis_up.set(0)

    process = parse_health("u", exposition(health, None).decode(), now=1_012.5)

    assert (process.redis_up, process.buffered, process.error) == (False, 7.0, None)
    push, relay = process.sources
    assert (relay.source, relay.connected, relay.since_last_input) == ("relay", True, 12.5)
    assert relay.outcomes == {"accepted": 7.0, "duplicate": 1.0}
    assert (push.source, push.connected, push.since_last_input) == ("push", False, None)
    assert push.reconnects == 3.0


def test_target_progress_and_stock_left_from_a_plan() -> None:
    stream = StreamTotals(
        "s",
        {
            "grams|tiktok|VN": 7_000,
            "cancelled_grams|tiktok|VN": 1_000,
            "sku_grams|VT01": 6_000,
            "sku_grams|VT05": 1_000,
            "cancelled_sku_grams|VT01": 1_000,
            "comment_orders|tiktok|VT01": 3,
            "comment_withdrawals|tiktok|VT01": 1,
            "comment_ambiguous": 2,
        },
        {},
        0,
        0,
    )
    plan = Plan(12_000, {"VT01": 5_000, "VT05": 10_000, "VTQ": 3_000})
    assert progress(stream, plan) == "50.0% of 12.000 kg"  # net 6 kg
    assert progress(stream, Plan()) == "-"
    assert stock_left(stream, plan) == [("VT01", 0), ("VTQ", 3_000), ("VT05", 9_000)]
    assert comment_orders(stream) == (
        "3, withdrawn 1, with phone 0, changed 0, ambiguous 2, unknown codes 0"
    )
