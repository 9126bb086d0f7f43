"""Shopify order webhooks: a verified delivery (topic, ids, raw body) in, order events out.

Pure; the HTTP endpoint is ``ingest.sources.webhook``. Facts relied on (shopify.dev, webhooks
"ignore duplicates" and "best practices"; the REST Order resource):

- ``X-Shopify-Hmac-Sha256`` is the base64 HMAC-SHA256 of the raw body under the app's secret.
- Deliveries are at least once, retried with the original payload, in no guaranteed order; the
  same ``X-Shopify-Event-Id`` on several deliveries is one event (older advice used
  ``X-Shopify-Webhook-Id``, which every delivery still has).
- ``total_weight`` is not reliable (Shopify's own sample order says 0 while its line items
  weigh): the weight is Σ ``line_items[].grams`` × ``quantity``.

An order's identity is (order id, topic): ``orders/create`` is the order, ``orders/cancelled``
its cancellation, whichever comes first (the commit script settles a cancellation that arrives
before its order). The event id is an alias, so any delivery of one event counts once.

The topic header is not covered by the signature: anyone holding one signed body can post it
under another topic. So the body must be what its topic says, else it is refused as
``topic_mismatch``: a cancellation is an order with ``cancelled_at`` and ``cancel_reason`` set
(as Shopify sends it), a new order one without ``cancelled_at`` (its payload is the order as it
was when created).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Iterator, Sequence
from typing import Annotated, Final

import msgspec

from ingest.adapter import FormatOptions, PlatformAdapter
from ingest.model import Decoded, LineItem, Order, Reason, Rejection
from ingest.money import to_minor
from ingest.native import SKU_PATTERN
from ingest.redact import Spec, allowed_json
from ingest.regions import UNKNOWN, normalise_country

CREATE: Final = "orders/create"
CANCEL: Final = "orders/cancelled"
TOPICS: Final = frozenset({CREATE, CANCEL})
EVENT_NAMESPACE: Final = "shopify-event\x1f"
OTHER_SKU: Final = "OTHER"
"""The SKU of a line item without a usable one (missing, or not a label-safe code)."""

_SKU = re.compile(SKU_PATTERN)

KEPT_FIELDS: Final[Spec] = {
    "id": None,
    "order_number": None,
    "created_at": None,
    "updated_at": None,
    "processed_at": None,
    "cancelled_at": None,
    "cancel_reason": None,
    "currency": None,
    "presentment_currency": None,
    "total_price": None,
    "subtotal_price": None,
    "total_tax": None,
    "total_discounts": None,
    "total_weight": None,
    "financial_status": None,
    "fulfillment_status": None,
    "test": None,
    "line_items": {
        "id": None,
        "product_id": None,
        "variant_id": None,
        "sku": None,
        "quantity": None,
        "grams": None,
        "price": None,
    },
    "shipping_address": {"country_code": None, "province": None, "province_code": None},
    "customer": {"id": None},
}
"""What of a rejected order body its dead letter keeps (an allow-list: the order, its money and
items, where it ships to, by region only, and its customer's opaque id). Names, emails, phones,
addresses, notes, a line item's title and properties, and every field Shopify adds later are
dropped."""

Count = Annotated[int, msgspec.Meta(ge=1, le=100_000)]
Grams = Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]


class _LineItem(msgspec.Struct, frozen=True):
    quantity: Count
    price: str
    grams: Grams | None = None
    """Of one unit. Shopify writes 0 for a product without a weight: taken as unknown."""
    sku: str | None = None


class _Address(msgspec.Struct, frozen=True):
    country_code: str | None = None
    province: str | None = None
    province_code: str | None = None


class _Customer(msgspec.Struct, frozen=True):
    id: int | None = None


class _Order(msgspec.Struct, frozen=True):
    id: Annotated[int, msgspec.Meta(ge=1)]
    created_at: dt.datetime
    currency: str
    total_price: str
    line_items: Annotated[list[_LineItem], msgspec.Meta(max_length=1000)]
    cancelled_at: dt.datetime | None = None
    """Set in a cancelled order only; an ``orders/create`` body with it is refused."""
    shipping_address: _Address | None = None
    customer: _Customer | None = None


class _Cancelled(msgspec.Struct, frozen=True):
    id: Annotated[int, msgspec.Meta(ge=1)]
    cancelled_at: dt.datetime | None = None
    cancel_reason: str | None = None


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Shopify-Hmac-Sha256`` value of a body."""
    return base64.b64encode(hmac.digest(secret, body, hashlib.sha256)).decode()


def verified(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the body's signature, compared in constant time."""
    if not header:
        return False
    try:
        offered = header.strip().encode("ascii")
    except UnicodeEncodeError:  # not base64 at all
        return False
    return hmac.compare_digest(signature(secret, body).encode(), offered)


def signed_by(secrets: Sequence[bytes], body: bytes, header: str | None) -> int | None:
    """The index of the secret that signed ``body`` (``header``), or None: each secret is tried,
    always all of them, in constant time."""
    found = None
    for index, secret in enumerate(secrets):
        if verified(secret, body, header):
            found = index if found is None else found
    return found


def trigger_age(header: str | None, now: float) -> float | None:
    """Seconds since ``X-Shopify-Triggered-At`` (RFC 3339 UTC, up to nanoseconds:
    ``2025-03-11T20:54:30.516267807Z``), or None when missing or unreadable. Negative when it
    is in the future."""
    if not header or len(header) > 64:
        return None
    try:
        when = dt.datetime.fromisoformat(header.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return now - when.timestamp()


class ShopifyFormat(PlatformAdapter):
    def __init__(self, options: FormatOptions) -> None:
        super().__init__(options, "shopify")
        self._order = msgspec.json.Decoder(_Order)
        self._cancelled = msgspec.json.Decoder(_Cancelled)
        self._delivery: dict[str, object] | None = None

    def redact(self, raw: bytes) -> bytes:
        """The allow-listed fields of a rejected body (:data:`KEPT_FIELDS`), with the topic and
        event id of the delivery being decoded."""
        return allowed_json(raw, KEPT_FIELDS, self._delivery)

    @contextlib.contextmanager
    def _delivering(self, topic: str, event_id: str) -> Iterator[None]:
        """What :meth:`redact` adds to a rejection made meanwhile (decoding is synchronous:
        no other delivery runs in between)."""
        self._delivery = {"topic": topic[:64], "event_id": event_id[:256]}
        try:
            yield
        finally:
            self._delivery = None

    def decode_delivery(self, topic: str, event_id: str, body: bytes) -> list[Decoded]:
        """The events of one verified delivery of ``topic`` (one of :data:`TOPICS`)."""
        with self._delivering(topic, event_id):
            return self.guarded(body, lambda: [self._decode(topic, event_id, body)])

    def refuse(
        self, reason: Reason, detail: str, topic: str, event_id: str, body: bytes
    ) -> Rejection:
        """The rejection of a delivery refused before it is decoded (too old, not dated)."""
        with self._delivering(topic, event_id):
            return self.reject(reason, detail, body, "order")

    def _decode(self, topic: str, event_id: str, body: bytes) -> Decoded:
        aliases = (EVENT_NAMESPACE + event_id[:256],) if event_id else ()
        if topic == CANCEL:
            try:
                cancelled = self._cancelled.decode(body)
            except msgspec.DecodeError as exc:
                return self.invalid(exc, body, "order")
            if cancelled.cancelled_at is None or not cancelled.cancel_reason:
                detail = "an orders/cancelled body without cancelled_at and cancel_reason"
                return self.reject(Reason.TOPIC_MISMATCH, detail, body, "order")
            ts_ms = self.timestamp(cancelled.cancelled_at, body, "order")
            if isinstance(ts_ms, Rejection):
                return ts_ms
            oid = f"shopify:{cancelled.id}"
            return Order(self.stream, self.platform, oid, ts_ms, cancelled=True, aliases=aliases)
        try:
            order = self._order.decode(body)
        except msgspec.DecodeError as exc:
            return self.invalid(exc, body, "order")
        return self._created(order, aliases, body)

    def _created(self, order: _Order, aliases: tuple[str, ...], body: bytes) -> Decoded:
        def reject(reason: Reason, detail: str) -> Decoded:
            return self.reject(reason, detail, body, "order")

        if order.cancelled_at is not None:
            return reject(Reason.TOPIC_MISMATCH, "an orders/create body of a cancelled order")
        if not order.line_items:
            return reject(Reason.MISSING_FIELD, "an order needs at least one line item")
        ts_ms = self.timestamp(order.created_at, body, "order")
        if isinstance(ts_ms, Rejection):
            return ts_ms
        amount = self.amount(lambda: to_minor(order.total_price, order.currency), body)
        if isinstance(amount, Rejection):
            return amount
        items = tuple(
            LineItem(
                _sku(item.sku), item.grams * item.quantity if item.grams else None, item.quantity
            )
            for item in order.line_items
        )
        address = order.shipping_address or _Address()
        country = normalise_country(address.country_code)
        province = address.province or address.province_code
        region = self.options.regions.normalise(country, province) if province else UNKNOWN
        customer = order.customer.id if order.customer is not None else None
        return Order(
            self.stream,
            self.platform,
            f"shopify:{order.id}",
            ts_ms,
            cancelled=False,
            buyer=None if customer is None else f"shopify:{customer}",
            country=country,
            region=region,
            currency=order.currency,
            amount_minor=amount,
            grams=sum(item.grams for item in items if item.grams is not None),
            items=items,
            aliases=aliases,
        )


def _sku(sku: str | None) -> str:
    if sku is None or not _SKU.fullmatch(sku):
        return OTHER_SKU
    return sku.upper()
