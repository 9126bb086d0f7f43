"""Tests for the native wire format (ingest.native): decoding, normalisation, rejections, schema."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

import ingest.model
import ingest.native
from ingest.adapter import FormatOptions
from ingest.model import (
    TEXT_CHARS,
    UNKNOWN_KIND,
    AuthorRole,
    Comment,
    Decoded,
    Event,
    LineItem,
    Order,
    Reason,
    Rejection,
    Viewers,
)
from ingest.native import NativeFormat, events_only, json_schema

DEFAULT = "lucngan-2025"
PLATFORMS = frozenset({"tiktok", "facebook", "shopee"})
TS = "2025-06-01T10:00:00+07:00"
TS_MS = 1_748_746_800_000  # 2025-06-01T03:00:00Z
SCHEMA_FILE = Path(ingest.native.__file__).with_name("native-event.schema.json")


def native(**overrides: Any) -> NativeFormat:
    options: dict[str, Any] = {"default_stream": DEFAULT, "platforms": PLATFORMS}
    options.update(overrides)
    return NativeFormat(FormatOptions(**options))


def comment(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "kind": "comment",
        "id": "c-1",
        "ts": TS,
        "platform": "tiktok",
        "user": "u-1",
        "text": "còn hàng không shop?",
    }
    event.update(changes)
    return event


def viewers(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "kind": "viewers",
        "id": "v-1",
        "ts": TS,
        "platform": "facebook",
        "count": 1234,
    }
    event.update(changes)
    return event


def order(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "kind": "order",
        "id": "o-1",
        "status": "created",
        "ts": TS,
        "platform": "shopee",
        "buyer": "b-1",
        "country": "VN",
        "region": "Bắc Giang",
        "currency": "VND",
        "amount": "240000",
        "items": [{"sku": "vai-thieu", "qty": 2, "grams": 500}],
    }
    event.update(changes)
    return event


def without(event: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in event.items() if key not in keys}


def cancelled(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "kind": "order",
        "id": "o-1",
        "status": "cancelled",
        "ts": TS,
        "platform": "shopee",
    }
    event.update(changes)
    return event


def encode(event: object) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode()


def array(*parts: bytes) -> bytes:
    return b"[" + b",".join(parts) + b"]"


def one(frame: bytes | str, fmt: NativeFormat | None = None) -> Decoded:
    results = (fmt or native()).decode(frame)
    assert len(results) == 1, results
    return results[0]


def decode_event(event: object, fmt: NativeFormat | None = None) -> Event:
    result = one(encode(event), fmt)
    assert not isinstance(result, Rejection), result
    return result


def decode_order(event: object, fmt: NativeFormat | None = None) -> Order:
    result = decode_event(event, fmt)
    assert isinstance(result, Order), result
    return result


def reject(frame: bytes | str, fmt: NativeFormat | None = None) -> Rejection:
    result = one(frame, fmt)
    assert isinstance(result, Rejection), result
    return result


# --- events ------------------------------------------------------------------------------------


def test_comment() -> None:
    assert decode_event(comment(stream="other-stream")) == Comment(
        stream="other-stream",
        platform="tiktok",
        id="c-1",
        ts_ms=TS_MS,
        user="u-1",
        text="còn hàng không shop?",
    )


def test_a_comment_keeps_the_start_of_its_text_for_the_comment_order_parser() -> None:
    decoded = decode_event(comment(text="VT05 x2 " * 500))
    assert isinstance(decoded, Comment)
    assert decoded.text == ("VT05 x2 " * 500)[:TEXT_CHARS]


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("host", AuthorRole.HOST),
        ("moderator", AuthorRole.MODERATOR),
        ("viewer", AuthorRole.VIEWER),
        (None, AuthorRole.VIEWER),
    ],
)
def test_comment_author_role(role: str | None, expected: AuthorRole) -> None:
    decoded = decode_event(comment(author_role=role))
    assert isinstance(decoded, Comment)
    assert decoded.author_role is expected
    assert decode_event(without(comment(), "author_role", "text")) == Comment(
        stream=DEFAULT, platform="tiktok", id="c-1", ts_ms=TS_MS, user="u-1"
    )
    assert Comment(DEFAULT, "tiktok", "c-1", TS_MS, "u-1").author_role is AuthorRole.VIEWER


def test_comment_without_stream_or_user_uses_the_default_stream() -> None:
    assert decode_event(without(comment(), "user", "text")) == Comment(
        stream=DEFAULT, platform="tiktok", id="c-1", ts_ms=TS_MS, user=None
    )
    assert decode_event(comment(stream=None)).stream == DEFAULT


def test_viewers() -> None:
    assert decode_event(viewers()) == Viewers(
        stream=DEFAULT, platform="facebook", id="v-1", ts_ms=TS_MS, count=1234
    )
    assert decode_event(viewers(count=0)) == Viewers(DEFAULT, "facebook", "v-1", TS_MS, 0)


@pytest.mark.parametrize(
    ("platform", "expected"),
    [("tiktok", "tiktok"), ("facebook", "facebook"), ("kick", "other"), ("my-shop_2", "other")],
)
def test_platform_outside_the_configured_list_is_other(platform: str, expected: str) -> None:
    assert decode_event(comment(platform=platform)).platform == expected
    assert decode_event(viewers(platform=platform)).platform == expected
    assert decode_order(order(platform=platform)).platform == expected


def test_no_configured_platforms_means_every_platform_is_other() -> None:
    assert decode_event(comment(), native(platforms=frozenset())).platform == "other"


def test_created_order() -> None:
    event = order(
        items=[
            {"sku": "vai-thieu", "qty": 2, "grams": 500},
            {"sku": "Box.1_a", "qty": 3, "grams": 1200},
        ],
        country=" vn ",
    )
    assert decode_order(event) == Order(
        stream=DEFAULT,
        platform="shopee",
        id="o-1",
        ts_ms=TS_MS,
        cancelled=False,
        buyer="b-1",
        country="VN",
        region="Bắc Ninh",
        currency="VND",
        amount_minor=240_000,
        grams=2 * 500 + 3 * 1200,
        items=(LineItem("VAI-THIEU", 1000, 2), LineItem("BOX.1_A", 3600, 3)),
    )


def test_cancelled_order_carries_only_its_identity() -> None:
    assert decode_order(cancelled(stream="s-2")) == Order(
        stream="s-2", platform="shopee", id="o-1", ts_ms=TS_MS, cancelled=True
    )


@pytest.mark.parametrize(
    ("currency", "amount", "minor"),
    [
        ("VND", "240000", 240_000),
        ("VND", 240000, 240_000),
        ("VND", "0", 0),
        ("USD", "12.50", 1250),
        ("USD", "12.5", 1250),
        ("USD", 3, 300),
        ("USD", "0.07", 7),
        ("JPY", "1500", 1500),
        ("KWD", "1.5", 1500),
        ("KWD", "0.001", 1),
        ("VND", "1000000000000000", 10**15),
        ("VND", 10**15, 10**15),
        ("USD", "10000000000000.00", 10**15),
    ],
)
def test_amount_in_minor_units(currency: str, amount: str | int, minor: int) -> None:
    decoded = decode_order(order(currency=currency, amount=amount))
    assert (decoded.currency, decoded.amount_minor) == (currency, minor)


def test_amount_computed_from_item_prices_when_absent() -> None:
    event = without(order(currency="USD"), "amount")
    event["items"] = [
        {"sku": "a", "qty": 2, "grams": 100, "price": "12.50"},
        {"sku": "b", "qty": 1, "grams": 100, "price": 3},
        {"sku": "c", "qty": 3, "grams": 100, "price": "0.1"},
    ]
    assert decode_order(event).amount_minor == 2 * 1250 + 300 + 3 * 10


def test_given_amount_wins_over_item_prices() -> None:
    event = order(currency="USD", amount="5")
    event["items"] = [{"sku": "a", "qty": 2, "grams": 100, "price": "12.50"}]
    assert decode_order(event).amount_minor == 500


@pytest.mark.parametrize(
    ("country", "expected"),
    [("VN", "VN"), ("vn", "VN"), (" th ", "TH"), ("ZZ", "unknown"), ("Viet Nam", "unknown")],
)
def test_country_is_normalised(country: str, expected: str) -> None:
    assert decode_order(order(country=country)).country == expected


def test_missing_country_and_region_are_unknown() -> None:
    decoded = decode_order(without(order(), "country", "region"))
    assert (decoded.country, decoded.region) == ("unknown", "unknown")
    assert decode_order(order(country=None, region=None)).country == "unknown"
    assert decode_order(order(region="")).region == "unknown"


@pytest.mark.parametrize(
    "spelling",
    [
        "Hà Nội",
        "Ha Noi",
        "HN",
        "hn",
        "Hanoi",
        "HÀ NỘI",
        "TP. Hà Nội",
        "Thành phố Hà Nội",
        unicodedata.normalize("NFD", "Hà Nội"),
    ],
)
def test_hanoi_spellings_agree(spelling: str) -> None:
    assert decode_order(order(country="VN", region=spelling)).region == "Hà Nội"


@pytest.mark.parametrize(
    ("region", "expected"),
    [
        ("Bắc Giang", "Bắc Ninh"),
        ("Sài Gòn", "Hồ Chí Minh"),
        ("TP.HCM", "Hồ Chí Minh"),
        ("Quảng Nam", "Đà Nẵng"),
        ("Atlantis", "other"),
    ],
)
def test_region_uses_the_default_vietnam_table(region: str, expected: str) -> None:
    assert decode_order(order(country="vn", region=region)).region == expected


def test_region_of_a_country_without_table_is_other() -> None:
    assert decode_order(order(country="TH", region="Bangkok")).region == "other"


@pytest.mark.parametrize(
    ("ts", "ts_ms"),
    [
        ("2025-06-01T03:00:00Z", TS_MS),
        ("2025-06-01T03:00:00+00:00", TS_MS),
        ("2025-06-01T10:00:00+07:00", TS_MS),
        ("2025-05-31T23:30:00-03:30", TS_MS),
        ("2025-06-01T03:00:00.5Z", TS_MS + 500),
        ("2025-06-01T03:00:00.123456789Z", TS_MS + 123),
        ("2025-06-01T10:00:00.042000001+07:00", TS_MS + 42),
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T07:00:00.001+07:00", 1),
        ("1969-12-31T23:59:59.5Z", -500),
    ],
)
def test_timestamp_to_epoch_milliseconds(ts: str, ts_ms: int) -> None:
    assert decode_event(comment(ts=ts)).ts_ms == ts_ms
    assert decode_order(order(ts=ts)).ts_ms == ts_ms


def test_dedup_identity() -> None:
    created, cancel = decode_order(order()), decode_order(cancelled())
    assert created.id == cancel.id == "o-1"
    assert created.identity != cancel.identity
    assert decode_order(order()).identity == created.identity
    assert decode_order(cancelled()).identity == cancel.identity
    # Same id, different kinds: different identities.
    same_id = {decode_event(comment(id="x")).identity, decode_event(viewers(id="x")).identity}
    same_id.add(decode_order(order(id="x")).identity)
    assert len(same_id) == 3


def test_equal_frames_decode_to_equal_events() -> None:
    frame = encode(order())
    assert native().decode(frame) == native().decode(frame)


# --- arrays ------------------------------------------------------------------------------------


def test_array_yields_one_result_per_element_in_order() -> None:
    results = native().decode(array(encode(comment()), encode(order()), encode(viewers())))
    assert [type(result) for result in results] == [Comment, Order, Viewers]
    assert events_only(results) == results


def test_bad_element_in_an_array_keeps_the_valid_ones_around_it() -> None:
    bad = encode(order(items=[{"sku": "a", "qty": "2", "grams": 1}], stream="s-9"))
    frame = array(encode(comment()), bad, encode(viewers()))
    first, middle, last = native().decode(frame)
    assert first == decode_event(comment())
    assert last == decode_event(viewers())
    assert isinstance(middle, Rejection)
    assert (middle.reason, middle.raw, middle.stream, middle.kind) == (
        Reason.INVALID_TYPE,
        bad,
        "s-9",
        "order",
    )
    assert events_only([first, middle, last]) == [first, last]


def test_an_element_that_only_normalising_refuses_keeps_its_own_bytes() -> None:
    # Schema-valid, so the array decodes in one pass; the currency is refused after it: the
    # frame is decoded again part by part, and the rejection holds its element's bytes only.
    bad = encode(order(currency="VND\n", stream="s-9"))
    first, middle, last = native().decode(array(encode(comment()), bad, encode(viewers())))
    assert (first, last) == (decode_event(comment()), decode_event(viewers()))
    assert isinstance(middle, Rejection)
    assert (middle.reason, middle.raw, middle.stream) == (Reason.INVALID_CURRENCY, bad, "s-9")


def test_names_found_valid_are_remembered_within_a_bound() -> None:
    fmt = native()
    for n in range(ingest.native.VALID_CACHE + 10):
        assert isinstance(fmt.decode(encode(comment(stream=f"s-{n}")))[0], Comment)
    assert 0 < len(fmt._valid["stream"]) <= ingest.native.VALID_CACHE
    assert isinstance(fmt.decode(encode(comment(stream="s-1\n")))[0], Rejection)


def test_array_with_whitespace_and_str_frame() -> None:
    frame = b" \n\t" + array(encode(comment()), encode(comment(id="c-2")))
    results = native().decode(frame)
    assert [getattr(result, "id", None) for result in results] == ["c-1", "c-2"]
    assert native().decode(frame.decode()) == results


def test_empty_array_yields_nothing() -> None:
    assert native().decode(b"[]") == []


def test_array_of_scalars_is_one_not_an_object_per_element() -> None:
    results = native().decode(b'[1, "x", null, [2]]')
    assert all(isinstance(result, Rejection) for result in results)
    assert [(r.reason, r.raw) for r in results if isinstance(r, Rejection)] == [
        (Reason.NOT_AN_OBJECT, b"1"),
        (Reason.NOT_AN_OBJECT, b'"x"'),
        (Reason.NOT_AN_OBJECT, b"null"),
        (Reason.NOT_AN_OBJECT, b"[2]"),
    ]


def test_too_many_events_in_an_array() -> None:
    fmt = native(max_events_per_frame=2)
    assert len(events_only(fmt.decode(array(encode(comment()), encode(viewers()))))) == 2
    frame = array(encode(comment()), encode(viewers()), encode(comment(id="c-2")))
    rejection = reject(frame, fmt)
    assert (rejection.reason, rejection.raw, rejection.stream, rejection.kind) == (
        Reason.TOO_MANY_EVENTS,
        frame,
        DEFAULT,
        UNKNOWN_KIND,
    )


# --- rejections --------------------------------------------------------------------------------

REJECTED: list[tuple[str, bytes, Reason, str]] = [
    # (test id, frame, reason, kind)
    ("malformed", b"{not json}", Reason.MALFORMED_JSON, UNKNOWN_KIND),
    ("garbage", b"hello", Reason.MALFORMED_JSON, UNKNOWN_KIND),
    ("empty", b"", Reason.MALFORMED_JSON, UNKNOWN_KIND),
    ("truncated", encode(comment())[:-5], Reason.MALFORMED_JSON, UNKNOWN_KIND),
    ("truncated-array", b"[" + encode(comment()), Reason.MALFORMED_JSON, UNKNOWN_KIND),
    ("int", b"42", Reason.NOT_AN_OBJECT, UNKNOWN_KIND),
    ("string", b'"order"', Reason.NOT_AN_OBJECT, UNKNOWN_KIND),
    ("null", b"null", Reason.NOT_AN_OBJECT, UNKNOWN_KIND),
    ("bool", b"true", Reason.NOT_AN_OBJECT, UNKNOWN_KIND),
    ("unknown-kind", encode(comment(kind="gift")), Reason.UNKNOWN_KIND, UNKNOWN_KIND),
    ("no-kind", encode(without(comment(), "kind")), Reason.MISSING_FIELD, UNKNOWN_KIND),
    ("comment-no-id", encode(without(comment(), "id")), Reason.MISSING_FIELD, "comment"),
    ("comment-no-ts", encode(without(comment(), "ts")), Reason.MISSING_FIELD, "comment"),
    ("no-platform", encode(without(comment(), "platform")), Reason.MISSING_FIELD, "comment"),
    ("order-no-status", encode(without(order(), "status")), Reason.MISSING_FIELD, "order"),
    ("viewers-no-count", encode(without(viewers(), "count")), Reason.MISSING_FIELD, "viewers"),
    (
        "string-qty",
        encode(order(items=[{"sku": "a", "qty": "2", "grams": 1}])),
        Reason.INVALID_TYPE,
        "order",
    ),
    (
        "bool-qty",
        encode(order(items=[{"sku": "a", "qty": True, "grams": 1}])),
        Reason.INVALID_TYPE,
        "order",
    ),
    (
        "float-qty",
        encode(order(items=[{"sku": "a", "qty": 1.5, "grams": 1}])),
        Reason.INVALID_TYPE,
        "order",
    ),
    ("float-amount", encode(order(amount=12.5)), Reason.INVALID_TYPE, "order"),
    ("bool-amount", encode(order(amount=True)), Reason.INVALID_TYPE, "order"),
    ("string-count", encode(viewers(count="5")), Reason.INVALID_TYPE, "viewers"),
    ("int-id", encode(comment(id=5)), Reason.INVALID_TYPE, "comment"),
    ("object-items", encode(order(items={})), Reason.INVALID_TYPE, "order"),
    ("int-currency", encode(order(currency=5)), Reason.INVALID_TYPE, "order"),
    ("unknown-status", encode(order(status="shipped")), Reason.INVALID_VALUE, "order"),
    (
        "bad-sku",
        encode(order(items=[{"sku": "a|b", "qty": 1, "grams": 1}])),
        Reason.INVALID_VALUE,
        "order",
    ),
    (
        "sku-newline",
        encode(order(items=[{"sku": "a\n", "qty": 1, "grams": 1}])),
        Reason.INVALID_VALUE,
        "order",
    ),
    ("upper-platform", encode(comment(platform="TikTok")), Reason.INVALID_VALUE, "comment"),
    ("unknown-role", encode(comment(author_role="owner")), Reason.INVALID_VALUE, "comment"),
    ("upper-role", encode(comment(author_role="Host")), Reason.INVALID_VALUE, "comment"),
    ("int-role", encode(comment(author_role=1)), Reason.INVALID_TYPE, "comment"),
    # Python's "$" matches before a final newline; the documented pattern does not.
    ("platform-newline", encode(comment(platform="tiktok\n")), Reason.INVALID_VALUE, "comment"),
    ("currency-newline", encode(order(currency="VND\n")), Reason.INVALID_CURRENCY, "order"),
    (
        "zero-qty",
        encode(order(items=[{"sku": "a", "qty": 0, "grams": 1}])),
        Reason.OUT_OF_RANGE,
        "order",
    ),
    (
        "negative-qty",
        encode(order(items=[{"sku": "a", "qty": -1, "grams": 1}])),
        Reason.OUT_OF_RANGE,
        "order",
    ),
    (
        "absurd-qty",
        encode(order(items=[{"sku": "a", "qty": 10_001, "grams": 1}])),
        Reason.OUT_OF_RANGE,
        "order",
    ),
    (
        "absurd-grams",
        encode(order(items=[{"sku": "a", "qty": 1, "grams": 1_000_001}])),
        Reason.OUT_OF_RANGE,
        "order",
    ),
    (
        "negative-grams",
        encode(order(items=[{"sku": "a", "qty": 1, "grams": -1}])),
        Reason.OUT_OF_RANGE,
        "order",
    ),
    ("absurd-viewers", encode(viewers(count=1_000_000_001)), Reason.OUT_OF_RANGE, "viewers"),
    ("negative-viewers", encode(viewers(count=-1)), Reason.OUT_OF_RANGE, "viewers"),
    (
        "too-many-items",
        encode(order(items=[{"sku": "a", "qty": 1, "grams": 1}] * 101)),
        Reason.OUT_OF_RANGE,
        "order",
    ),
    ("empty-id", encode(comment(id="")), Reason.OUT_OF_RANGE, "comment"),
    ("long-id", encode(comment(id="x" * 257)), Reason.OUT_OF_RANGE, "comment"),
    ("negative-int-amount", encode(order(amount=-5)), Reason.OUT_OF_RANGE, "order"),
    ("absurd-int-amount", encode(order(amount=10**15 + 1)), Reason.OUT_OF_RANGE, "order"),
    ("absurd-amount", encode(order(amount="1000000000000001")), Reason.OUT_OF_RANGE, "order"),
    (
        "usd-amount-above-the-minor-unit-cap",
        encode(order(currency="USD", amount="10000000000000.01")),
        Reason.OUT_OF_RANGE,
        "order",
    ),
    (
        "kwd-amount-above-the-minor-unit-cap",
        encode(order(currency="KWD", amount=10**15)),
        Reason.OUT_OF_RANGE,
        "order",
    ),
    (
        "absurd-usd-amount",
        encode(order(currency="USD", amount="999999999999999999.99")),
        Reason.OUT_OF_RANGE,
        "order",
    ),
    (
        "absurd-price-total",
        encode(
            without(order(items=[{"sku": "a", "qty": 2, "grams": 1, "price": 10**15}]), "amount")
        ),
        Reason.OUT_OF_RANGE,
        "order",
    ),
    ("naive-ts", encode(comment(ts="2025-06-01T10:00:00")), Reason.INVALID_TIMESTAMP, "comment"),
    ("bad-date", encode(order(ts="2025-02-30T10:00:00Z")), Reason.INVALID_TIMESTAMP, "order"),
    ("bad-hour", encode(viewers(ts="2025-06-01T24:00:00Z")), Reason.INVALID_TIMESTAMP, "viewers"),
    ("date-only", encode(comment(ts="2025-06-01")), Reason.INVALID_TIMESTAMP, "comment"),
    ("words-ts", encode(comment(ts="yesterday")), Reason.INVALID_TIMESTAMP, "comment"),
    ("currency-XXX", encode(order(currency="XXX")), Reason.INVALID_CURRENCY, "order"),
    ("currency-usd", encode(order(currency="usd")), Reason.INVALID_CURRENCY, "order"),
    ("currency-ABC", encode(order(currency="ABC")), Reason.INVALID_CURRENCY, "order"),
    ("currency-US", encode(order(currency="US")), Reason.INVALID_CURRENCY, "order"),
    (
        "usd-3-decimals",
        encode(order(currency="USD", amount="1.234")),
        Reason.INVALID_AMOUNT,
        "order",
    ),
    ("vnd-decimals", encode(order(currency="VND", amount="1.5")), Reason.INVALID_AMOUNT, "order"),
    ("minus", encode(order(amount="-5")), Reason.INVALID_AMOUNT, "order"),
    ("plus", encode(order(amount="+5")), Reason.INVALID_AMOUNT, "order"),
    ("exponent", encode(order(amount="1e5")), Reason.INVALID_AMOUNT, "order"),
    ("thousands", encode(order(amount="240,000")), Reason.INVALID_AMOUNT, "order"),
    ("empty-amount", encode(order(amount="")), Reason.INVALID_AMOUNT, "order"),
    (
        "bad-price",
        encode(
            without(
                order(currency="USD", items=[{"sku": "a", "qty": 1, "grams": 1, "price": "1.234"}]),
                "amount",
            )
        ),
        Reason.INVALID_AMOUNT,
        "order",
    ),
    ("created-no-items", encode(without(order(), "items")), Reason.MISSING_FIELD, "order"),
    ("created-empty-items", encode(order(items=[])), Reason.MISSING_FIELD, "order"),
    ("created-no-currency", encode(without(order(), "currency")), Reason.MISSING_FIELD, "order"),
    ("created-no-amount", encode(without(order(), "amount")), Reason.MISSING_FIELD, "order"),
    (
        "created-some-prices",
        encode(
            without(
                order(
                    items=[
                        {"sku": "a", "qty": 1, "grams": 1, "price": "5"},
                        {"sku": "b", "qty": 1, "grams": 1},
                    ]
                ),
                "amount",
            )
        ),
        Reason.MISSING_FIELD,
        "order",
    ),
]


@pytest.mark.parametrize(
    ("frame", "reason", "kind"), [case[1:] for case in REJECTED], ids=[case[0] for case in REJECTED]
)
def test_rejection(frame: bytes, reason: Reason, kind: str) -> None:
    rejection = reject(frame)
    assert (rejection.reason, rejection.kind, rejection.stream) == (reason, kind, DEFAULT)
    assert rejection.raw == frame
    assert rejection.detail


@pytest.mark.parametrize(("frame", "reason", "kind"), [case[1:] for case in REJECTED[:12]])
def test_rejection_of_a_str_frame_keeps_utf8_bytes(frame: bytes, reason: Reason, kind: str) -> None:
    rejection = reject(frame.decode())
    assert (rejection.reason, rejection.kind, rejection.raw) == (reason, kind, frame)


def test_rejection_stream_is_the_events_own_valid_stream() -> None:
    rejection = reject(encode(viewers(count=-1, stream="s-7")))
    assert (rejection.reason, rejection.stream, rejection.kind) == (
        Reason.OUT_OF_RANGE,
        "s-7",
        "viewers",
    )
    order_rejection = reject(encode(order(currency="XXX", stream="s-8")))
    assert (order_rejection.reason, order_rejection.stream) == (Reason.INVALID_CURRENCY, "s-8")


def test_rejection_without_default_stream_has_none() -> None:
    rejection = reject(b"{", native(default_stream=None))
    assert (rejection.reason, rejection.stream) == (Reason.MALFORMED_JSON, None)


@pytest.mark.parametrize(
    "stream",
    [
        "{x}",
        "a{b}",
        "x}",
        "{",
        "a b",
        "",
        "a:b",
        "-a",
        ".a",
        "a/b",
        "ä",
        "a" * 65,
        "a\nb",
        "a\n",
        "ab\n",
    ],
)
def test_invalid_stream_never_becomes_a_key(stream: str) -> None:
    for event in (comment(stream=stream), order(stream=stream), cancelled(stream=stream)):
        frame = encode(event)
        rejection = reject(frame)
        assert (rejection.reason, rejection.stream, rejection.raw) == (
            Reason.INVALID_VALUE,
            DEFAULT,
            frame,
        )
        assert reject(frame, native(default_stream=None)).stream is None


def test_longest_valid_stream_is_accepted() -> None:
    assert (
        decode_event(comment(stream="A" + "a._-" * 15 + "zzz")).stream == "A" + "a._-" * 15 + "zzz"
    )


def test_missing_stream_without_default() -> None:
    fmt = native(default_stream=None)
    for event, kind in ((comment(), "comment"), (order(), "order"), (viewers(), "viewers")):
        frame = encode(event)
        rejection = reject(frame, fmt)
        assert (rejection.reason, rejection.stream, rejection.kind, rejection.raw) == (
            Reason.MISSING_STREAM,
            None,
            kind,
            frame,
        )
    assert decode_event(comment(stream="s-1"), fmt).stream == "s-1"


def test_stream_allow_list() -> None:
    fmt = native(default_stream="a", allowed_streams=frozenset({"a", "b"}))
    assert decode_event(comment(), fmt).stream == "a"
    assert decode_event(comment(stream="b"), fmt).stream == "b"
    frame = encode(order(stream="c"))
    rejection = reject(frame, fmt)
    assert (rejection.reason, rejection.kind, rejection.raw) == (
        Reason.STREAM_NOT_ALLOWED,
        "order",
        frame,
    )
    # Filed under the default stream: a stream outside the allow-list gets no key of its own.
    assert rejection.stream == "a"
    invalid = reject(encode(viewers(count=-1, stream="c")), fmt)
    assert (invalid.reason, invalid.stream) == (Reason.OUT_OF_RANGE, "a")
    allowed = reject(encode(viewers(count=-1, stream="b")), fmt)
    assert (allowed.reason, allowed.stream) == (Reason.OUT_OF_RANGE, "b")
    no_default = native(default_stream=None, allowed_streams=frozenset({"a"}))
    assert reject(encode(comment(stream="c")), no_default).stream is None


def test_oversize_frame() -> None:
    fmt = native(max_frame_bytes=200)
    event = comment(text="")
    padding = 200 - len(encode(event))
    exact = encode(comment(text="x" * padding))
    assert len(exact) == 200
    assert isinstance(one(exact, fmt), Comment)
    over = encode(comment(text="x" * (padding + 1)))
    rejection = reject(over, fmt)
    assert (rejection.reason, rejection.raw, rejection.stream, rejection.kind) == (
        Reason.OVERSIZE,
        over,
        DEFAULT,
        UNKNOWN_KIND,
    )
    # A str frame is measured in UTF-8 bytes, not characters.
    wide = json.dumps(comment(text="ộ" * padding), ensure_ascii=False)
    assert len(wide) <= 200 < len(wide.encode())
    assert reject(wide, fmt).reason == Reason.OVERSIZE
    # An array is measured whole, before any element is decoded.
    assert reject(array(exact, exact), fmt).reason == Reason.OVERSIZE


def test_invalid_utf8_in_a_string() -> None:
    frame = encode(comment(user="PLACEHOLDER")).replace(b"PLACEHOLDER", b"u\xff1")
    rejection = reject(frame)
    assert (rejection.reason, rejection.raw, rejection.stream) == (
        Reason.INVALID_UTF8,
        frame,
        DEFAULT,
    )
    truncated = encode(comment(text="PLACEHOLDER")).replace(b"PLACEHOLDER", b"h\xe1\xbb")
    assert reject(truncated).reason == Reason.INVALID_UTF8


def test_invalid_utf8_in_an_array_keeps_the_valid_elements() -> None:
    bad = encode(comment(user="PLACEHOLDER")).replace(b"PLACEHOLDER", b"\xc3\x28")
    first, middle, last = native().decode(array(encode(comment(id="a")), bad, encode(viewers())))
    assert isinstance(first, Comment)
    assert isinstance(last, Viewers)
    assert isinstance(middle, Rejection)
    assert (middle.reason, middle.raw) == (Reason.INVALID_UTF8, bad)


def test_str_frame_decodes_like_its_bytes() -> None:
    event = order(region="Hà Nội", buyer="người mua")
    text = json.dumps(event, ensure_ascii=False)
    assert native().decode(text) == native().decode(text.encode())
    decoded = decode_order(event)
    assert (decoded.region, decoded.buyer) == ("Hà Nội", "người mua")


# --- JSON Schema -------------------------------------------------------------------------------

VALID_EXAMPLES: list[dict[str, Any]] = [
    comment(),
    without(comment(), "user", "text"),
    comment(stream="s-1", platform="kick"),
    viewers(),
    viewers(count=0, stream="b"),
    order(),
    order(currency="USD", amount="12.50", country=None, region=None),
    order(amount=240000, stream="lucngan-2025"),
    without(
        order(items=[{"sku": "a", "qty": 2, "grams": 1, "price": "1.5"}], currency="USD"), "amount"
    ),
    cancelled(),
    cancelled(stream="x", buyer="b"),
    comment(unknown_field={"ignored": True}),
    comment(author_role="host"),
    comment(author_role="moderator", stream="s-2"),
]

SCHEMA_INVALID: list[tuple[str, dict[str, Any]]] = [
    ("string-qty", order(items=[{"sku": "a", "qty": "2", "grams": 1}])),
    ("bool-qty", order(items=[{"sku": "a", "qty": True, "grams": 1}])),
    ("float-amount", order(amount=12.5)),
    ("string-count", viewers(count="5")),
    ("int-id", comment(id=5)),
    ("no-kind", without(comment(), "kind")),
    ("no-id", without(comment(), "id")),
    ("no-ts", without(viewers(), "ts")),
    ("no-platform", without(order(), "platform")),
    ("no-status", without(order(), "status")),
    ("no-count", without(viewers(), "count")),
    ("zero-qty", order(items=[{"sku": "a", "qty": 0, "grams": 1}])),
    ("absurd-qty", order(items=[{"sku": "a", "qty": 10_001, "grams": 1}])),
    ("absurd-grams", order(items=[{"sku": "a", "qty": 1, "grams": 1_000_001}])),
    ("negative-count", viewers(count=-1)),
    ("absurd-count", viewers(count=1_000_000_001)),
    ("too-many-items", order(items=[{"sku": "a", "qty": 1, "grams": 1}] * 101)),
    ("absurd-int-amount", order(amount=10**15 + 1)),
    ("empty-id", comment(id="")),
    ("unknown-kind", comment(kind="gift")),
    ("unknown-status", order(status="shipped")),
    ("created-no-items", without(order(), "items")),
    ("created-empty-items", order(items=[])),
    ("created-no-currency", without(order(), "currency")),
    ("lower-currency", order(currency="usd")),
    ("brace-stream", comment(stream="{x}")),
    ("upper-platform", comment(platform="TikTok")),
    ("unknown-role", comment(author_role="owner")),
    ("int-role", comment(author_role=1)),
]


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_committed_schema_is_current() -> None:
    assert json.loads(SCHEMA_FILE.read_text(encoding="utf-8")) == json_schema()


def test_schema_dialect() -> None:
    assert json_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("event", VALID_EXAMPLES)
def test_valid_examples_are_schema_valid_and_decode(
    validator: Draft202012Validator, event: dict[str, Any]
) -> None:
    assert list(validator.iter_errors(event)) == []
    decode_event(event)


@pytest.mark.parametrize(
    "event", [case[1] for case in SCHEMA_INVALID], ids=[case[0] for case in SCHEMA_INVALID]
)
def test_schema_invalid_examples_are_rejected_by_both(
    validator: Draft202012Validator, event: dict[str, Any]
) -> None:
    assert not validator.is_valid(event)
    reject(encode(event))


def test_deeply_nested_json_is_rejected_not_raised() -> None:
    fmt = NativeFormat(FormatOptions(default_stream="s"))
    for frame in (b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000):
        (result,) = fmt.decode(frame)
        assert isinstance(result, Rejection)
        assert result.reason is Reason.MALFORMED_JSON


def test_a_text_frame_with_a_lone_surrogate_is_invalid_utf8() -> None:
    fmt = NativeFormat(FormatOptions(default_stream="s"))
    (result,) = fmt.decode('{"kind": "comment", "id": "\ud800"}')
    assert isinstance(result, Rejection)
    assert result.reason is Reason.INVALID_UTF8


def test_events_dated_more_than_a_day_ahead_are_refused() -> None:
    now = 1_750_000_000.0  # 2025-06-15T15:06:40Z
    fmt = NativeFormat(
        FormatOptions(default_stream="s", platforms=frozenset({"tiktok"}), clock=lambda: now)
    )

    def at(ts: str) -> bytes:
        event = {"kind": "viewers", "id": "v", "platform": "tiktok", "ts": ts, "count": 5}
        return orjson.dumps(event)

    (soon,) = fmt.decode(at("2025-06-16T15:00:00Z"))
    (far,) = fmt.decode(at("9999-12-31T00:00:00Z"))
    assert not isinstance(soon, Rejection)
    assert isinstance(far, Rejection)
    assert (far.reason, far.stream) == (Reason.OUT_OF_RANGE, "s")


def test_a_rejection_keeps_at_most_the_dead_letter_bound_of_its_raw_bytes() -> None:
    """Nothing larger than a dead letter keeps is held while the rejection waits for Redis."""
    huge = b'{"kind": "comment", "pad": "' + b"x" * (1 << 20) + b'"'  # malformed: no end
    (rejection,) = native(max_frame_bytes=4 << 20).decode(huge)
    assert isinstance(rejection, Rejection)
    assert rejection.reason is Reason.MALFORMED_JSON
    assert rejection.raw == huge[:8192]
    (oversize,) = native().decode(huge)
    assert isinstance(oversize, Rejection)
    assert len(oversize.raw) == 8192 == ingest.model.RAW_BYTES
    assert len(Rejection(Reason.INVALID_VALUE, "d" * 5000, huge).detail) <= 500


def test_an_item_without_grams_has_an_unknown_weight_not_zero() -> None:
    event = order(
        items=[{"sku": "vt05", "qty": 3}, {"sku": "VT01", "qty": 2, "grams": 0}],
    )
    decoded = decode_order(event)
    assert decoded.items == (LineItem("VT05", None, 3), LineItem("VT01", 0, 2))
    assert decoded.grams == 0
