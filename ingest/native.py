"""The native wire format: one JSON event per frame, or a JSON array of events.

Pure: bytes in, a list of normalised events and rejections out. The wire shapes below are also the
published JSON Schema (``ingest/native-event.schema.json``, regenerated with
``python -m ingest.native``); bounds that make a value absurd are part of the schema.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from collections.abc import Iterable
from typing import Annotated, Literal

import msgspec
import orjson

from ingest.adapter import Adapter, FormatOptions, as_bytes
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
from ingest.money import MAX_AMOUNT, to_minor
from ingest.regions import UNKNOWN, normalise_country

STREAM_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
PLATFORM_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"
REGION_CACHE = 4096
VALID_CACHE = 4096

# The four patterned fields are checked by ``NativeFormat.normalise`` (with a cache of the names
# seen: a stream repeats the same few), not by msgspec, whose check runs Python's re on every
# value; ``json_schema`` adds the patterns (``SCHEMA_PATTERNS``) to the published schema.
StreamName = str
PlatformName = str
EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
UserId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=256,
        description=(
            "The platform's id of the user or buyer (counted, never shown): "
            "not a name, a phone number or an email."
        ),
    ),
]
Label = Annotated[str, msgspec.Meta(max_length=64)]
Amount = Annotated[
    str | Annotated[int, msgspec.Meta(ge=0, le=MAX_AMOUNT)],
    msgspec.Meta(description="Major units: an integer or a plain decimal string such as '12.50'."),
]
Timestamp = Annotated[dt.datetime, msgspec.Meta(tz=True, description="RFC 3339 with offset.")]


class ItemWire(msgspec.Struct, frozen=True):
    sku: str
    qty: Annotated[int, msgspec.Meta(ge=1, le=10_000)]
    grams: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0,
                le=1_000_000,
                description="Weight of one unit; absent: the stream's catalog's, else unknown.",
            ),
        ]
        | None
    ) = None
    price: Amount | None = None


class CommentWire(msgspec.Struct, frozen=True, tag_field="kind", tag="comment"):
    id: EventId
    ts: Timestamp
    platform: PlatformName
    stream: StreamName | None = None
    user: UserId | None = None
    text: Annotated[str, msgspec.Meta(max_length=4096)] = ""
    author_role: Annotated[
        AuthorRole | None,
        msgspec.Meta(description="Who wrote it: host, moderator or viewer (the default)."),
    ] = None


class OrderWire(msgspec.Struct, frozen=True, tag_field="kind", tag="order"):
    id: EventId
    status: Literal["created", "cancelled"]
    ts: Timestamp
    platform: PlatformName
    stream: StreamName | None = None
    buyer: UserId | None = None
    country: Label | None = None
    region: Label | None = None
    currency: str | None = None
    amount: Amount | None = None
    items: Annotated[list[ItemWire], msgspec.Meta(max_length=100)] = []


class ViewersWire(msgspec.Struct, frozen=True, tag_field="kind", tag="viewers"):
    id: EventId
    ts: Timestamp
    platform: PlatformName
    count: Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)]
    stream: StreamName | None = None


Wire = CommentWire | OrderWire | ViewersWire

SCHEMA_PATTERNS: dict[str, str] = {
    "stream": STREAM_PATTERN,
    "platform": PLATFORM_PATTERN,
    "sku": SKU_PATTERN,
    "currency": CURRENCY_PATTERN,
}
"""Field -> the pattern its value must match, wherever the field appears in a wire event."""

# Checked in full ("$" in Python's re also matches before a final "\n"; in the JSON Schema and
# the docs it is the end of the text).
_STREAM = re.compile(STREAM_PATTERN)
_PLATFORM = re.compile(PLATFORM_PATTERN)
_SKU = re.compile(SKU_PATTERN)
_CURRENCY = re.compile(CURRENCY_PATTERN)
_PATH = re.compile(r"at `\$(?:\[\d+\])?\.?(?P<path>[^`]*)`")


class NativeFormat(Adapter):
    """Decoder for native frames, configured once per source. Each event names its platform and
    (unless the source gives a default) its stream."""

    def __init__(self, options: FormatOptions) -> None:
        super().__init__(options)
        self._one = msgspec.json.Decoder(Wire)
        self._array = msgspec.json.Decoder(list[Wire])
        self._many = msgspec.json.Decoder(list[msgspec.Raw])
        self._regions: dict[tuple[str, str], str] = {}
        self._valid: dict[str, set[str]] = {field: set() for field in SCHEMA_PATTERNS}
        """Values of each patterned field already found valid (at most ``VALID_CACHE`` each)."""

    def _matches(self, field: str, value: str, pattern: re.Pattern[str]) -> bool:
        known = self._valid[field]
        if value in known:
            return True
        if not pattern.fullmatch(value):
            return False
        if len(known) >= VALID_CACHE:
            known.clear()
        known.add(value)
        return True

    def _region(self, country: str, region: str) -> str:
        """Normalised region, remembered: a stream repeats the same few spellings."""
        key = (country, region)
        found = self._regions.get(key)
        if found is None:
            if len(self._regions) >= REGION_CACHE:
                self._regions.clear()
            found = self._regions[key] = self.options.regions.normalise(country, region)
        return found

    def decode(self, frame: bytes | str) -> list[Decoded]:
        """Never raises: whatever the frame, every part of it becomes an event or a rejection."""
        raw = as_bytes(frame)
        return self.guarded(raw, lambda: self._decode(raw))

    def _decode(self, raw: bytes) -> list[Decoded]:
        if raw.lstrip()[:1] != b"[":
            return [self._decode_one(raw)]
        fast = self._decode_array(raw)
        if fast is not None:
            return fast
        try:
            parts = self._many.decode(raw)
        except msgspec.DecodeError as exc:
            return [self.invalid(exc, raw)]
        if len(parts) > self.options.max_events_per_frame:
            detail = f"{len(parts)} events in one frame"
            return [self.reject(Reason.TOO_MANY_EVENTS, detail, raw)]
        return [self._decode_one(bytes(part)) for part in parts]

    def _decode_array(self, raw: bytes) -> list[Decoded] | None:
        """An array frame whose every event is valid, in one pass; None if any part is not
        (then each part is decoded on its own, so that a rejection keeps its own bytes)."""
        try:
            wires = self._array.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return None
        if len(wires) > self.options.max_events_per_frame:
            return None
        decoded = [self.normalise(wire, b"") for wire in wires]
        if any(isinstance(item, Rejection) for item in decoded):
            return None
        return decoded

    def _decode_one(self, raw: bytes) -> Decoded:
        try:
            wire = self._one.decode(raw)
        except UnicodeDecodeError as exc:
            return self.reject(Reason.INVALID_UTF8, str(exc), raw)
        except msgspec.ValidationError as exc:
            stream, kind = _peek(raw)
            if str(exc).startswith("Expected `object`"):
                return self.reject(Reason.NOT_AN_OBJECT, str(exc), raw, kind, stream)
            return self.invalid(exc, raw, kind, stream)
        except msgspec.DecodeError as exc:
            return self.invalid(exc, raw)
        return self.normalise(wire, raw)

    def normalise(self, wire: Wire, raw: bytes) -> Decoded:
        """Turn a schema-valid wire event into a normalised event, or reject it."""
        kind = wire.__struct_config__.tag
        assert isinstance(kind, str)
        if wire.stream is not None and not self._matches("stream", wire.stream, _STREAM):
            return self.reject(Reason.INVALID_VALUE, "invalid stream name", raw, kind)
        if not self._matches("platform", wire.platform, _PLATFORM):
            return self.reject(
                Reason.INVALID_VALUE, "invalid platform name", raw, kind, wire.stream
            )
        stream = wire.stream or self.options.default_stream
        if stream is None:
            return self.reject(Reason.MISSING_STREAM, "no stream and no default", raw, kind)
        allowed = self.options.allowed_streams
        if allowed is not None and stream not in allowed:
            return self.reject(Reason.STREAM_NOT_ALLOWED, stream, raw, kind, stream)
        platform = self.label(wire.platform)
        ts_ms = self.timestamp(wire.ts, raw, kind, stream)
        if isinstance(ts_ms, Rejection):
            return ts_ms
        match wire:
            case CommentWire():
                role = wire.author_role or AuthorRole.VIEWER
                text = wire.text[:TEXT_CHARS]
                return Comment(
                    stream, platform, wire.id, ts_ms, wire.user, author_role=role, text=text
                )
            case ViewersWire():
                return Viewers(stream, platform, wire.id, ts_ms, wire.count)
            case OrderWire(status="cancelled"):
                return Order(stream, platform, wire.id, ts_ms, cancelled=True)
            case OrderWire():
                return self._order(wire, stream, platform, ts_ms, raw)

    def _order(
        self, wire: OrderWire, stream: str, platform: str, ts_ms: int, raw: bytes
    ) -> Decoded:
        def reject(reason: Reason, detail: str) -> Rejection:
            return self.reject(reason, detail, raw, "order", stream)

        if not wire.items:
            return reject(Reason.MISSING_FIELD, "a created order needs at least one item")
        if not all(self._matches("sku", item.sku, _SKU) for item in wire.items):
            return reject(Reason.INVALID_VALUE, "invalid sku")
        currency = wire.currency
        if currency is None:
            return reject(Reason.MISSING_FIELD, "a created order needs a currency")
        if not self._matches("currency", currency, _CURRENCY):
            return reject(Reason.INVALID_CURRENCY, "invalid currency code")
        if wire.amount is None and not all(item.price is not None for item in wire.items):
            return reject(Reason.MISSING_FIELD, "no amount and not every item has a price")

        def minor_units() -> int:
            if wire.amount is not None:
                return to_minor(wire.amount, currency)
            return sum(
                item.qty * to_minor(item.price, currency)
                for item in wire.items
                if item.price is not None
            )

        amount = self.amount(minor_units, raw, stream)
        if isinstance(amount, Rejection):
            return amount
        items = _items(wire.items)
        country = normalise_country(wire.country)
        region = self._region(country, wire.region) if wire.region else UNKNOWN
        return Order(
            stream,
            platform,
            wire.id,
            ts_ms,
            cancelled=False,
            buyer=wire.buyer,
            country=country,
            region=region,
            currency=currency,
            amount_minor=amount,
            grams=sum(item.grams for item in items if item.grams is not None),
            items=items,
        )


def _items(wires: list[ItemWire]) -> tuple[LineItem, ...]:
    """Line items; one without ``grams`` has an unknown weight (None), not 0 g."""
    return tuple(
        LineItem(item.sku.upper(), None if item.grams is None else item.qty * item.grams, item.qty)
        for item in wires
    )


def valid_stream(name: str) -> bool:
    """Whether ``name`` may be a stream (and so part of a Redis key and a label)."""
    return _STREAM.fullmatch(name) is not None


def _peek(raw: bytes) -> tuple[str | None, str]:
    """Best-effort stream and kind of an invalid event, to file its dead letter where it belongs."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, UNKNOWN_KIND
    if not isinstance(obj, dict):
        return None, UNKNOWN_KIND
    stream, kind = obj.get("stream"), obj.get("kind")
    if not (isinstance(stream, str) and re.fullmatch(STREAM_PATTERN, stream)):
        stream = None
    if kind not in ("comment", "order", "viewers"):
        kind = UNKNOWN_KIND
    return stream, str(kind)


def events_only(decoded: Iterable[Decoded]) -> list[Event]:
    """The events of a decoded frame, without its rejections."""
    return [item for item in decoded if not isinstance(item, Rejection)]


def json_schema() -> dict[str, object]:
    """The JSON Schema of one native event (a frame may also hold an array of them)."""
    _, components = msgspec.json.schema_components([Wire], ref_template="#/$defs/{name}")
    for component in components.values():
        for field, spec in component.get("properties", {}).items():
            if field in SCHEMA_PATTERNS:
                for branch in spec.get("anyOf", [spec]):
                    if branch.get("type") == "string":
                        branch["pattern"] = SCHEMA_PATTERNS[field]
    schema: dict[str, object] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/livestream-ingester/schema/native-event.json",
        "title": "livestream-ingester native event",
        "description": (
            "One event per websocket text frame, or a JSON array of such events. "
            "Unknown fields are ignored. A created order needs items and a currency."
        ),
        "oneOf": [
            {"$ref": f"#/$defs/{name}"} for name in ("CommentWire", "OrderWire", "ViewersWire")
        ],
        "$defs": components,
    }
    order = components["OrderWire"]
    order["if"] = {"properties": {"status": {"const": "created"}}}
    order["then"] = {"required": ["items", "currency"], "properties": {"items": {"minItems": 1}}}
    return schema


if __name__ == "__main__":
    sys.stdout.buffer.write(orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2) + b"\n")
