"""The fast business exposition writes exactly what ``generate_latest`` writes."""

from __future__ import annotations

from prometheus_client.exposition import generate_latest

from workers import keys
from workers.metrics import _Families, business_exposition, business_families
from workers.store import StreamTotals


def totals() -> list[StreamTotals]:
    odd = 'Hà "Nội"\\ line\nbreak'
    return [
        StreamTotals(
            "lucngan-2025",
            {
                f"{keys.ORDERS}|tiktok|VN": 3,
                f"{keys.ORDERS}|facebook|US": 1,
                f"{keys.GRAMS}|tiktok|VN": 12_345_678_901,
                f"{keys.VALUE}|tiktok|VND": 1_200_000,
                f"{keys.VALUE}|shopify|USD": 12_345,
                f"{keys.VALUE}|shopify|JPY": 5,
                f"{keys.CANCELLED}|tiktok|VN": 1,
                f"{keys.CANCELLED_GRAMS}|tiktok|VN": 1000,
                f"{keys.SKU_GRAMS}|VT01": 5000,
                f"{keys.SKU_GRAMS}|{odd}": 7,
                f"{keys.CANCELLED_VALUE}|tiktok|VND": 240_000,
                f"{keys.CANCELLED_VALUE}|shopify|USD": 1_250,
                f"{keys.CANCELLED_SKU_GRAMS}|VT01": 1000,
                f"{keys.UNWEIGHED}|tiktok|VT09": 4,
                f"{keys.UNWEIGHED}|shopify|other": 1,
                "a_field|of_a|newer_version": 9,
                f"{keys.COMMENTS}|tiktok": 42,
                f"{keys.REGION_ORDERS}|VN|{odd}": 2,
                f"{keys.REGION_ORDERS}|VN|Bắc Ninh": 1,
                f"{keys.COMMENT_ORDERS}|tiktok|VT05": 12,
                f"{keys.COMMENT_ORDERS}|facebook|{odd}": 1,
                f"{keys.COMMENT_ORDER_GRAMS}|VT05": 60_000,
                f"{keys.COMMENT_WITHDRAWALS}|tiktok|VT05": 2,
                f"{keys.COMMENT_WITH_PHONE}|tiktok": 9,
                f"{keys.COMMENT_CHANGES}|tiktok": 3,
                keys.COMMENT_AMBIGUOUS: 4,
                f"{keys.COMMENT_UNKNOWN_CODES}|tiktok": 5,
            },
            {"tiktok": 1500, "facebook": 0},
            7,
            3,
        ),
        StreamTotals("empty", {}, {}, 0, 0),
        StreamTotals("b-2", {f"{keys.COMMENTS}|youtube": 1, f"{keys.COMMENTS}|kick": 2}, {}, 1, 0),
    ]


def test_business_exposition_is_generate_latest_byte_for_byte() -> None:
    want = generate_latest(_Families(business_families(totals())))
    assert business_exposition(totals()) == want


def test_no_streams_still_describes_every_family() -> None:
    assert business_exposition([]) == generate_latest(_Families(business_families([])))


def test_cancelled_value_is_in_major_units_and_unweighed_items_per_sku() -> None:
    text = business_exposition(totals()).decode()
    assert (
        'livestream_cancelled_value_total{currency="USD",platform="shopify",'
        'stream="lucngan-2025"} 12.5\n'
    ) in text
    assert (
        'livestream_unweighed_items_total{platform="tiktok",sku="VT09",stream="lucngan-2025"} 4.0'
    ) in text
    assert "newer_version" not in text


def test_comment_order_families_and_the_one_without_labels() -> None:
    text = business_exposition(totals()).decode()
    for line in [
        'livestream_comment_orders_total{platform="tiktok",sku="VT05",stream="lucngan-2025"} 12.0',
        'livestream_comment_order_grams_total{sku="VT05",stream="lucngan-2025"} 60000.0',
        'livestream_comment_order_withdrawals_total{platform="tiktok",sku="VT05",'
        'stream="lucngan-2025"} 2.0',
        'livestream_comment_orders_with_phone_total{platform="tiktok",stream="lucngan-2025"} 9.0',
        'livestream_comment_order_changes_total{platform="tiktok",stream="lucngan-2025"} 3.0',
        'livestream_comment_ambiguous_total{stream="lucngan-2025"} 4.0',
        'livestream_comment_unknown_codes_total{platform="tiktok",stream="lucngan-2025"} 5.0',
    ]:
        assert line + "\n" in text
    assert totals()[0].by(keys.COMMENT_AMBIGUOUS) == {(): 4}
    assert totals()[1].by(keys.COMMENT_AMBIGUOUS) == {}
