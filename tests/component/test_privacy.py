"""Buyers' names, phone numbers, emails and addresses never reach a dead letter in clear: signed
Shopify deliveries that are refused, native and chat frames that are rejected, and events the
committer refuses, each filed in a real Redis and searched whole (every field, the detail too)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from ingest.adapter import FormatOptions, as_bytes
from ingest.model import Order, Reason, Rejection
from ingest.native import NativeFormat
from ingest.shopify import ShopifyFormat, signature
from ingest.socialstream import SocialStreamFormat
from ingest.sources.webhook import ShopifyWebhookSettings, ShopifyWebhookSource
from tests.recorders import RecordingHealth, running
from tests.waiting import UNIT, until
from workers import keys
from workers.committer import BatchSettings, Committer
from workers.keys import StreamKeys
from workers.metrics import HealthMetrics
from workers.runtime import redis_client
from workers.store import Store, StoreSettings

SECRET = "shpss_privacy_secret_0123456789"
NOW = 1_750_000_000.0
PERSONAL = (
    "Nguyễn Thị Lan",
    "Nguyễn",
    "Thị Lan",
    "lan.nguyen@example.vn",
    "0912345678",
    "912345678",
    "0987654321",
    "987654321",
    "12 Hàng Bạc",
    "Hoàn Kiếm",
    "100000",
    "Gọi trước khi giao",
    "Trần Văn Hùng",
    "hung.tran@example.vn",
    "Ghi tên bé Na",
    "zalo-lan-1990",
)
"""What a Shopify order below says of its customer: none of it may be stored."""


ADDRESS: dict[str, Any] = {
    "first_name": "Lan",
    "last_name": "Nguyễn Thị",
    "name": "Nguyễn Thị Lan",
    "address1": "12 Hàng Bạc",
    "address2": "Hoàn Kiếm",
    "city": "Hà Nội",
    "zip": "100000",
    "phone": "0912345678",
    "country_code": "VN",
    "province": "Hà Nội",
    "latitude": 21.0341,
    "longitude": 105.8522,
}


def customer_order(order_id: int) -> dict[str, Any]:
    """An orders/create body as Shopify sends it, personal data included (and a field Shopify
    might add later, ``buyer_zalo``)."""
    address = ADDRESS
    return {
        "id": order_id,
        "name": "#1042",
        "order_number": 1042,
        "email": "lan.nguyen@example.vn",
        "contact_email": "lan.nguyen@example.vn",
        "phone": "+84 912 345 678",
        "note": "Gọi trước khi giao: 0987 654 321",
        "buyer_zalo": "zalo-lan-1990",
        "created_at": "2025-06-14T09:05:08+07:00",
        "currency": "VND",
        "total_price": "240000",
        "line_items": [
            {
                "id": 77,
                "sku": "VT01",
                "quantity": 2,
                "grams": 500,
                "price": "120000",
                "title": "Vải thiều",
                "properties": [{"name": "Ghi chú", "value": "Ghi tên bé Na"}],
            }
        ],
        "customer": {
            "id": 5150,
            "first_name": "Lan",
            "last_name": "Nguyễn Thị",
            "email": "lan.nguyen@example.vn",
            "phone": "+84912345678",
            "default_address": address,
        },
        "shipping_address": address,
        "billing_address": {**address, "name": "Trần Văn Hùng", "phone": "0987654321"},
        "note_attributes": [{"name": "email người nhận", "value": "hung.tran@example.vn"}],
    }


def leaks(entries: list[tuple[bytes, dict[bytes, bytes]]], secrets: tuple[str, ...]) -> list[str]:
    """Which of ``secrets`` appear anywhere in the stored entries (names and values)."""
    stored = b"\n".join(k + b"=" + v for _, fields in entries for k, v in fields.items())
    text = stored.decode("utf-8", "replace")
    return [s for s in secrets if s in text or s.encode() in stored]


async def dead(redis: Redis, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The stream's dead letters: in its own key once admitted, else in ``li:dead``."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = []
    for key in (keys.UNROUTED_DEAD, StreamKeys(stream).dead):
        for entry_id, fields in await redis.xrange(key) or []:
            assert isinstance(entry_id, bytes)
            assert fields is not None
            if key == keys.UNROUTED_DEAD and fields.get(b"stream") != stream.encode():
                continue
            entries.append((entry_id, {as_bytes(k): as_bytes(v) for k, v in fields.items()}))
    return entries


@contextlib.asynccontextmanager
async def committer(url: str) -> AsyncIterator[Committer]:
    client = redis_client(url, socket_timeout=1.0)
    c = Committer(Store(client, StoreSettings()), HealthMetrics(), BatchSettings())
    task = asyncio.create_task(c.run(), name="test.committer")
    try:
        yield c
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()


def triggered(seconds_ago: float) -> str:
    return dt.datetime.fromtimestamp(NOW - seconds_ago, dt.UTC).isoformat()


async def deliver(
    redis_url: str, stream: str, deliveries: list[tuple[str, str, bytes, float]]
) -> list[int]:
    """Post each signed delivery (topic, event id, body, seconds since triggered) to a webhook
    source that refuses deliveries older than an hour and commits to Redis; the statuses."""
    settings = ShopifyWebhookSettings(secret=SECRET, listen="127.0.0.1:0", max_delivery_age=3600.0)
    fmt = ShopifyFormat(FormatOptions(default_stream=stream, platforms=frozenset({"shopify"})))
    statuses: list[int] = []
    async with committer(redis_url) as sink:
        source = ShopifyWebhookSource(
            "shop", fmt, sink, RecordingHealth(), settings, clock=lambda: NOW
        )
        async with asyncio.timeout(30 * UNIT), running(source.run()):
            await until(lambda: source._runner is not None, 5.0, "the webhook to listen")
            url = f"http://127.0.0.1:{source.port}{settings.path}"
            async with aiohttp.ClientSession() as http:
                for topic, event_id, body, age in deliveries:
                    headers = {
                        "X-Shopify-Topic": topic,
                        "X-Shopify-Event-Id": event_id,
                        "X-Shopify-Triggered-At": triggered(age),
                        "X-Shopify-Hmac-Sha256": signature(SECRET.encode(), body),
                    }
                    async with http.post(url, data=body, headers=headers) as answer:
                        statuses.append(answer.status)
    return statuses


@pytest.mark.asyncio
async def test_refused_shopify_deliveries_keep_the_order_but_nothing_of_the_customer(
    redis_url: str, redis: Redis, stream: str
) -> None:
    order = customer_order(450789469)
    bad = customer_order(450789470)
    bad["line_items"][0]["quantity"] = "two"
    not_json = (
        b"name=Nguy\xe1\xbb\x85n Th\xe1\xbb\x8b Lan&phone=0912345678&email=lan.nguyen@example.vn"
    )
    deliveries = [  # topic, event id, body, seconds since triggered
        ("orders/cancelled", "ev-mismatch", orjson.dumps(order), 10.0),
        ("orders/create", "ev-stale", orjson.dumps(order), 7200.0),
        ("orders/create", "ev-invalid", orjson.dumps(bad), 10.0),
        ("orders/create", "ev-not-json", not_json, 10.0),
    ]
    assert await deliver(redis_url, stream, deliveries) == [200] * 4
    entries = await dead(redis, stream)
    reasons = sorted(fields[b"reason"].decode() for _, fields in entries)
    assert reasons == ["invalid_type", "malformed_json", "stale_delivery", "topic_mismatch"]
    assert leaks(entries, PERSONAL) == []
    by_reason = {fields[b"reason"].decode(): orjson.loads(fields[b"raw"]) for _, fields in entries}
    for reason, event_id, order_id, quantity in (
        ("topic_mismatch", "ev-mismatch", 450789469, 2),
        ("stale_delivery", "ev-stale", 450789469, 2),
        ("invalid_type", "ev-invalid", 450789470, "two"),
    ):
        kept = by_reason[reason]
        topic = "orders/cancelled" if reason == "topic_mismatch" else "orders/create"
        assert kept["_delivery"] == {"topic": topic, "event_id": event_id}
        assert (kept["id"], kept["created_at"], kept["currency"], kept["total_price"]) == (
            order_id,
            "2025-06-14T09:05:08+07:00",
            "VND",
            "240000",
        )
        item = kept["line_items"][0]
        assert (item["sku"], item["quantity"], item["grams"]) == ("VT01", quantity, 500)
        assert kept["shipping_address"] == {"country_code": "VN", "province": "Hà Nội"}
        assert kept["customer"] == {"id": 5150}
        assert kept["_redacted"]["bytes"] > 1000
    opaque = by_reason["malformed_json"]
    assert opaque["_redacted"]["bytes"] == len(not_json)
    assert opaque["_delivery"] == {"topic": "orders/create", "event_id": "ev-not-json"}
    assert set(opaque) == {"_redacted", "_delivery"}


PHONES = ("0912345678", "0912 345 678", "+84 987.654.321", "0987654321", "buyer@mail.vn")


def masked_out(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[str]:
    found = leaks(entries, PHONES)
    stored = b"".join(v for _, fields in entries for v in fields.values())
    digits = [run for run in ("912345678", "987654321") if run in stored.decode(errors="replace")]
    return found + digits


@pytest.mark.asyncio
async def test_rejected_native_and_chat_frames_keep_no_phone_number_or_email(
    redis_url: str, redis: Redis, stream: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """In the dead letter (its raw frame and its detail) and in the log line of the rejection."""
    native = NativeFormat(FormatOptions(default_stream=stream, platforms=frozenset({"tiktok"})))
    chat = SocialStreamFormat(FormatOptions(default_stream=stream, platforms=frozenset({"tiktok"})))
    frames = [  # each rejected: a bad timestamp, an amount, an unknown kind
        b'{"kind":"comment","id":"c-1","platform":"tiktok","ts":"yesterday",'
        b'"user":"u-1","text":"VT01 2kg, sdt 0912345678 giao Ha Noi"}',
        b'{"kind":"order","id":"o-1","status":"created","platform":"tiktok",'
        b'"ts":"2025-06-14T09:05:08+07:00","buyer":"0912 345 678","amount":"12,5"}',
        b'{"kind":"gift","id":"g-1","text":"+84 987.654.321 buyer@mail.vn"}',
        b'{"kind":"0912345678","id":"g-2"}',  # msgspec quotes an unknown tag in the detail
    ]
    decoded = [item for frame in frames for item in native.decode(frame)]
    decoded += chat.decode(  # a chat name with a phone number in it; a user id of a wrong type
        b'{"chatname":"Lan 0987654321","chatmessage":"VT01","type":"tiktok","userid":[1]}'
    )
    assert all(isinstance(item, Rejection) for item in decoded)
    async with committer(redis_url) as sink:
        await asyncio.wait_for(await sink.submit("feed", decoded), 10 * UNIT)
    entries = await dead(redis, stream)
    assert len(entries) == 5
    assert masked_out(entries) == []
    logged = capsys.readouterr()
    assert "rejected input" in logged.out + logged.err
    assert [p for p in (*PHONES, "912345678") if p in logged.out + logged.err] == []
    raws = [fields[b"raw"] for _, fields in entries]
    assert any(b"sdt ##########" in raw for raw in raws)  # the comment is kept, its number not
    assert any(b'"id":"o-1"' in raw and b'"amount":"12,5"' in raw for raw in raws)


@pytest.mark.asyncio
async def test_an_order_refused_at_the_total_limit_keeps_no_buyer(
    redis_url: str, redis: Redis, stream: str
) -> None:
    """An order the commit refuses (a total would pass its limit) is dead-lettered as the event
    it was: without its buyer, who may be a phone number."""
    await redis.hset(StreamKeys(stream).totals, "value|tiktok|VND", keys.TOTAL_LIMIT - 1000)
    huge = Order(
        stream,
        "tiktok",
        "o-huge",
        1_750_000_000_000,
        cancelled=False,
        buyer="tiktok:0912345678",
        currency="VND",
        amount_minor=10_000,
    )
    async with committer(redis_url) as sink:
        await asyncio.wait_for(await sink.submit("feed", [huge]), 10 * UNIT)
    entries = await dead(redis, stream)
    assert [fields[b"reason"] for _, fields in entries] == [Reason.OUT_OF_RANGE.value.encode()]
    assert masked_out(entries) == []
    assert b'"id":"o-huge"' in entries[0][1][b"raw"]
