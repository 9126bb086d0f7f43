"""Typed events, as every wire format produces them and the committer consumes them.

Events are already normalised: label values are bounded (platform, country, region and sku are
validated or mapped to ``other``/``unknown``), money is integer minor units, weight integer
grams. A frame that cannot become an event becomes a :class:`Rejection` with a bounded
:class:`Reason`.
"""

from __future__ import annotations

import enum
from typing import ClassVar, Final

import msgspec


class Reason(enum.StrEnum):
    """Why an input was rejected. A closed set: it is a metric label."""

    MALFORMED_JSON = "malformed_json"
    INVALID_UTF8 = "invalid_utf8"
    OVERSIZE = "oversize"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_KIND = "unknown_kind"
    MISSING_FIELD = "missing_field"
    INVALID_TYPE = "invalid_type"
    INVALID_VALUE = "invalid_value"
    OUT_OF_RANGE = "out_of_range"
    INVALID_TIMESTAMP = "invalid_timestamp"
    INVALID_CURRENCY = "invalid_currency"
    INVALID_AMOUNT = "invalid_amount"
    MISSING_STREAM = "missing_stream"
    STREAM_NOT_ALLOWED = "stream_not_allowed"
    TOO_MANY_EVENTS = "too_many_events"
    TOPIC_MISMATCH = "topic_mismatch"
    """A body that is not what its (unsigned) topic says: a Shopify create under cancelled."""
    STALE_DELIVERY = "stale_delivery"
    """A webhook delivery triggered longer ago than the source takes (a replay past dedup)."""
    INVALID_TRIGGER_TIME = "invalid_trigger_time"
    """A webhook delivery without a readable trigger time, where its age is checked."""


class Kind(enum.StrEnum):
    COMMENT = "comment"
    ORDER = "order"
    VIEWERS = "viewers"


UNKNOWN_KIND: Final = "unknown"


class AuthorRole(enum.StrEnum):
    """Who wrote a comment, where the event says so. Comments of the host or a moderator
    (announcing a product code, say) are not a buyer's order."""

    HOST = "host"
    MODERATOR = "moderator"
    VIEWER = "viewer"


TEXT_CHARS: Final = 1000
"""Characters of a comment's text kept: what the comment-order parser reads
(``ingest.comment_orders.MAX_CHARS``)."""


class Comment(msgspec.Struct, frozen=True, gc=False):
    stream: str
    platform: str
    id: str
    ts_ms: int
    user: str | None
    aliases: tuple[str, ...] = ()
    """More identities of the same event (see :attr:`identities`)."""
    author_role: AuthorRole = AuthorRole.VIEWER
    """As the event gives it; a viewer when it does not."""
    text: str = ""
    """What the comment says, its first :data:`TEXT_CHARS` characters, where the format carries
    it. In-process only: the committer reads comment orders from it and sends Redis only what
    it found (never the text, which may hold a phone number)."""

    kind: ClassVar[Kind] = Kind.COMMENT

    @property
    def identity(self) -> str:
        return f"c\x1f{self.id}"


class PaidComment(Comment, frozen=True, gc=False):
    """A comment that came with money (a YouTube Super Chat or Super Sticker): a comment, and
    counted on its own as a paid comment with its amount, never as an order. The amount is
    integer micros of ``currency`` (``amountMicros``), exact for any currency."""

    currency: str = ""
    amount_micros: int = 0


class LineItem(msgspec.Struct, frozen=True, gc=False):
    sku: str
    grams: int | None
    """Weight of the line: quantity × unit grams; None when the feed gave none (the stream's
    catalog may know it; else the item is counted as unweighed, never as 0 g)."""
    quantity: int = 1


class Order(msgspec.Struct, frozen=True, gc=False):
    """An order event. A cancellation carries only its identity; the committer knows the rest."""

    stream: str
    platform: str
    id: str
    ts_ms: int
    cancelled: bool
    buyer: str | None = None
    country: str = "unknown"
    region: str = "unknown"
    currency: str = ""
    amount_minor: int = 0
    grams: int = 0
    """Sum of the items' known grams."""
    items: tuple[LineItem, ...] = ()
    aliases: tuple[str, ...] = ()

    kind: ClassVar[Kind] = Kind.ORDER

    @property
    def identity(self) -> str:
        return f"{'x' if self.cancelled else 'o'}\x1f{self.id}"


class Viewers(msgspec.Struct, frozen=True, gc=False):
    stream: str
    platform: str
    id: str
    ts_ms: int
    count: int
    aliases: tuple[str, ...] = ()

    kind: ClassVar[Kind] = Kind.VIEWERS

    @property
    def identity(self) -> str:
        return f"v\x1f{self.id}"


Event = Comment | Order | Viewers
"""Every event has an ``identity``, its dedup key within its stream and the identity namespace of
the source that read it (the committer adds that: an event cannot name it). Formats whose
platform names one event by more than one id (a delivery id and an event id, say) also give
``aliases``: full identities in a namespace of their own. An event is a duplicate if any of its
identities was seen; an event that counts marks them all."""


RAW_BYTES: Final = 8192
"""Raw input a rejection keeps: enough to see what was wrong in its dead letter. Cut when the
rejection is made, so a large frame is not held whole while it waits for Redis."""
DETAIL_CHARS: Final = 500


class Rejection(msgspec.Struct, frozen=True):
    """An input that is not counted: why, where, and the raw bytes for the dead-letter stream
    (the first :data:`RAW_BYTES` of them)."""

    reason: Reason
    detail: str
    raw: bytes
    stream: str | None = None
    kind: str = UNKNOWN_KIND

    def __post_init__(self) -> None:
        if len(self.raw) > RAW_BYTES:
            msgspec.structs.force_setattr(self, "raw", bytes(self.raw[:RAW_BYTES]))
        if len(self.detail) > DETAIL_CHARS:
            msgspec.structs.force_setattr(self, "detail", self.detail[:DETAIL_CHARS])


Decoded = Event | Rejection
