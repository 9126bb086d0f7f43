"""The Shopify webhook adapter (ingest.shopify): signatures, and deliveries to order events."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
from typing import Any

import orjson
import pytest

from ingest.adapter import FormatOptions
from ingest.model import RAW_BYTES, LineItem, Order, Reason, Rejection
from ingest.shopify import (
    CANCEL,
    CREATE,
    EVENT_NAMESPACE,
    ShopifyFormat,
    signature,
    signed_by,
    trigger_age,
    verified,
)
from ingest.sources.tokens import TokensError
from ingest.sources.webhook import parse_secrets

STREAM = "lucngan-2025"
NOW = 1_750_000_000.0
OPTIONS = FormatOptions(
    default_stream=STREAM, platforms=frozenset({"shopify"}), max_frame_bytes=8192, clock=lambda: NOW
)
SECRET = b"hush"
WHEN = "2025-06-14T10:00:00+07:00"

# In the documented shape; total_weight 0 while the items weigh, as in Shopify's own sample.
ORDER: dict[str, Any] = {
    "id": 820982911946154508,
    "name": "#9999",
    "created_at": "2025-06-14T09:05:07+07:00",
    "cancelled_at": None,
    "cancel_reason": None,
    "currency": "VND",
    "total_price": "540000.00",
    "total_weight": 0,
    "line_items": [
        {"id": 1, "sku": "vt01", "quantity": 2, "grams": 1000, "price": "120000.00"},
        {"id": 2, "sku": "VT02", "quantity": 1, "grams": 3000, "price": "300000.00"},
        {"id": 3, "sku": None, "quantity": 1, "grams": 0, "price": "0.00"},
        {"id": 4, "sku": "Lychee box #1", "quantity": 3, "grams": 500, "price": "0.00"},
    ],
    "customer": {"id": 115310627314723954},
    "shipping_address": {"country_code": "VN", "province": "Bắc Giang", "city": "Lục Ngạn"},
}


def body(**changes: Any) -> bytes:
    data = copy.deepcopy(ORDER)
    data.update(changes)
    return orjson.dumps(data)


def one(topic: str, raw: bytes, event_id: str = "ev-1") -> Order | Rejection:
    (item,) = ShopifyFormat(OPTIONS).decode_delivery(topic, event_id, raw)
    assert isinstance(item, Order | Rejection)
    return item


def test_signature_is_base64_hmac_sha256_of_the_raw_body() -> None:
    raw = body()
    expected = base64.b64encode(hmac.new(SECRET, raw, hashlib.sha256).digest()).decode()
    assert signature(SECRET, raw) == expected
    assert verified(SECRET, raw, expected)
    assert verified(SECRET, raw, f" {expected} ")
    assert not verified(SECRET, raw + b" ", expected)
    assert not verified(b"other", raw, expected)
    assert not verified(SECRET, raw, None)
    assert not verified(SECRET, raw, "")
    assert not verified(SECRET, raw, "Zm9v")
    assert not verified(SECRET, raw, "é")  # not ASCII: refused, not an error
    assert not verified(SECRET, raw, "\udcff")  # a non-UTF-8 header byte, as aiohttp gives it


def test_an_order_weighs_what_its_line_items_weigh() -> None:
    order = one(CREATE, body())
    assert order == Order(
        STREAM,
        "shopify",
        "shopify:820982911946154508",
        1_749_866_707_000,
        cancelled=False,
        buyer="shopify:115310627314723954",
        country="VN",
        region="Bắc Ninh",  # Bắc Giang merged into Bắc Ninh in 2025
        currency="VND",
        amount_minor=540_000,
        grams=2000 + 3000 + 1500,
        items=(
            LineItem("VT01", 2000, 2),
            LineItem("VT02", 3000, 1),
            LineItem("OTHER", None, 1),  # Shopify's 0 g: a product without a weight
            LineItem("OTHER", 1500, 3),
        ),
        aliases=(EVENT_NAMESPACE + "ev-1",),
    )


def test_money_is_exact_in_the_currency_minor_units() -> None:
    usd = one(CREATE, body(currency="USD", total_price="1234567890123.45"))
    assert isinstance(usd, Order)
    assert usd.amount_minor == 123_456_789_012_345
    too_precise = one(CREATE, body(currency="USD", total_price="12.345"))
    assert isinstance(too_precise, Rejection)
    assert too_precise.reason == Reason.INVALID_AMOUNT


def test_without_an_address_country_and_region_are_unknown() -> None:
    order = one(CREATE, body(shipping_address=None, customer=None))
    assert isinstance(order, Order)
    assert (order.country, order.region, order.buyer) == ("unknown", "unknown", None)


def test_a_cancellation_carries_its_order_id_and_event() -> None:
    cancel = one(CANCEL, body(cancelled_at=WHEN, cancel_reason="customer"), "ev-2")
    assert cancel == Order(
        STREAM,
        "shopify",
        "shopify:820982911946154508",
        1_749_870_000_000,
        cancelled=True,
        aliases=(EVENT_NAMESPACE + "ev-2",),
    )
    created = one(CREATE, body())
    assert isinstance(created, Order)
    assert cancel.identity != created.identity  # (order id, topic)


def test_without_an_event_id_the_order_and_topic_are_the_identity() -> None:
    order = one(CREATE, body(), event_id="")
    assert isinstance(order, Order)
    assert order.aliases == ()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", Reason.MALFORMED_JSON),
        (b"[]", Reason.INVALID_TYPE),
        (body(line_items=[]), Reason.MISSING_FIELD),
        (body(line_items="none"), Reason.INVALID_TYPE),
        (body(id="abc"), Reason.INVALID_TYPE),
        (body(currency="XYZ"), Reason.INVALID_CURRENCY),
        (body(total_price="-5.00"), Reason.INVALID_AMOUNT),
        (body(total_price=540000.0), Reason.INVALID_TYPE),
        (body(created_at="2025-06-20T00:00:00Z"), Reason.OUT_OF_RANGE),
        (body(created_at="soon"), Reason.INVALID_TIMESTAMP),
        (
            body(line_items=[{"quantity": 0, "grams": 1, "price": "1.00"}]),
            Reason.OUT_OF_RANGE,
        ),
        (body(note="x" * 9000), Reason.OVERSIZE),
        (body(currency="PLACEHOLDER").replace(b"PLACEHOLDER", b"\xff"), Reason.INVALID_UTF8),
    ],
)
def test_unusable_orders_are_rejected_with_a_reason(raw: bytes, reason: Reason) -> None:
    rejection = one(CREATE, raw)
    assert isinstance(rejection, Rejection)
    assert (rejection.reason, rejection.stream) == (reason, STREAM)
    assert len(rejection.raw) <= RAW_BYTES
    kept = orjson.loads(rejection.raw)  # redacted, and still JSON after the cut
    assert kept["_redacted"]["bytes"] == len(raw)
    assert kept["_delivery"] == {"topic": CREATE, "event_id": "ev-1"}
    assert "note" not in kept


def test_an_unusable_cancellation_is_rejected() -> None:
    rejection = one(CANCEL, b'{"cancelled_at": "2025-06-14T10:00:00Z", "cancel_reason": "other"}')
    assert isinstance(rejection, Rejection)
    assert (rejection.reason, rejection.kind) == (Reason.MISSING_FIELD, "order")


@pytest.mark.parametrize(
    "raw",
    [
        body(),  # a signed orders/create body, re-posted under orders/cancelled
        body(cancelled_at=None, cancel_reason="customer"),
        body(cancelled_at=WHEN, cancel_reason=None),
        orjson.dumps({"id": 1, "created_at": WHEN, "cancelled_at": WHEN}),
    ],
)
def test_a_cancellation_must_be_a_cancelled_order(raw: bytes) -> None:
    """The topic is not signed: only the body says whether an order was cancelled."""
    rejection = one(CANCEL, raw)
    assert isinstance(rejection, Rejection)
    assert (rejection.reason, rejection.kind) == (Reason.TOPIC_MISMATCH, "order")
    kept, sent = orjson.loads(rejection.raw), orjson.loads(raw)
    for field in ("id", "created_at", "cancelled_at", "cancel_reason", "currency", "total_price"):
        assert kept.get(field) == sent.get(field)


def test_a_cancelled_order_is_not_a_new_order() -> None:
    """A captured cancellation re-posted under orders/create is refused too."""
    raw = body(cancelled_at=WHEN, cancel_reason="customer")
    rejection = one(CREATE, raw)
    assert isinstance(rejection, Rejection)
    assert (rejection.reason, rejection.kind) == (Reason.TOPIC_MISMATCH, "order")


def test_during_a_rotation_either_secret_verifies_and_says_which() -> None:
    new, old, other = b"n" * 32, b"o" * 32, b"x" * 32
    body = orjson.dumps(ORDER)
    assert signed_by([new, old], body, signature(new, body)) == 0
    assert signed_by([new, old], body, signature(old, body)) == 1
    assert signed_by([new], body, signature(old, body)) is None
    assert signed_by([new, old], body, signature(other, body)) is None
    assert signed_by([new, old], body + b" ", signature(old, body)) is None
    assert signed_by([new, old], body, None) is None
    assert signed_by([new, new], body, signature(new, body)) == 0  # the first that signs


@pytest.mark.parametrize(
    ("header", "age"),
    [
        ("2025-06-15T15:05:00Z", 100.0),  # NOW is 2025-06-15T15:06:40Z
        ("2025-06-15T15:05:00.516267807Z", 99.483733),  # Shopify's nanoseconds
        ("2025-06-15T15:05:00.000000Z", 100.0),
        ("2025-06-15T22:05:00+07:00", 100.0),
        ("2025-06-13T15:06:40Z", 48 * 3600.0),
        ("2025-06-15T15:08:20Z", -100.0),  # ahead of our clock
    ],
)
def test_trigger_age_reads_shopify_timestamps(header: str, age: float) -> None:
    assert trigger_age(header, NOW) == pytest.approx(age, abs=1e-6)


@pytest.mark.parametrize(
    "header",
    [None, "", "yesterday", "2025-06-15T15:05:00", "1750000000", "2025-13-01T00:00:00Z", "9" * 65],
)
def test_trigger_age_of_a_missing_or_unreadable_header_is_none(header: str | None) -> None:
    assert trigger_age(header, NOW) is None


def test_a_secrets_file_has_a_current_and_maybe_a_previous_secret() -> None:
    new, old = "shpss_" + "n" * 32, "shpss_" + "o" * 32
    assert parse_secrets(f"current {new}\n") == (new,)
    assert parse_secrets(f"# rotating\nprevious {old}\ncurrent {new}\n") == (new, old)
    with pytest.raises(TokensError) as refused:
        parse_secrets(f"previous {old}\nnext {new}\ncurrent short\n")
    assert refused.value.errors == [
        "line 3: secret shorter than 16 bytes",
        "line 2: 'next' is neither current nor previous",
    ]
    with pytest.raises(TokensError) as refused:
        parse_secrets(f"previous {old}\n")
    assert refused.value.errors == ["no current secret: every delivery would be refused"]
    with pytest.raises(TokensError) as refused:
        parse_secrets(f"current {new}\nprevious {new}\n")
    assert refused.value.errors == ["line 2: the same secret is already on line 1"]
