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
                f"{keys.COMMENTS}|tiktok": 42,
                f"{keys.REGION_ORDERS}|VN|{odd}": 2,
                f"{keys.REGION_ORDERS}|VN|Bắc Ninh": 1,
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
