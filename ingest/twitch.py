"""Twitch EventSub over WebSocket: every frame parsed into what the session must do with it.

Pure: a frame in, one :data:`Message` out. The session rules (subscribe after the welcome,
the keepalive deadline, the reconnect hand-over) live in ``ingest.sources.eventsub``.

Every frame is ``{"metadata": {...}, "payload": {...}}``; ``metadata.message_type`` says which
of welcome, keepalive, notification, reconnect or revocation it is. Delivery is at least once:
a resend keeps ``metadata.message_id``, and duplicates with a *different* delivery id have been
reported too (twitchdev/issues#918). So a chat line's dedup identity is its own
``event.message_id``, and the delivery id is an alias: either seen before makes it a duplicate.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Annotated, Final

import msgspec

from ingest.adapter import FormatOptions, PlatformAdapter, as_bytes
from ingest.model import Comment, Decoded, Reason, Rejection

CHAT_MESSAGE: Final = "channel.chat.message"
REVOCATION_STATUSES: Final = frozenset({"user_removed", "authorization_revoked", "version_removed"})
DELIVERY_NAMESPACE: Final = "twitch-delivery\x1f"

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class _Metadata(msgspec.Struct, frozen=True):
    message_id: Id
    message_type: str
    message_timestamp: dt.datetime
    subscription_type: str | None = None


class _Session(msgspec.Struct, frozen=True):
    id: Id
    keepalive_timeout_seconds: Annotated[int, msgspec.Meta(ge=1, le=3600)] | None = None
    reconnect_url: str | None = None


class _Subscription(msgspec.Struct, frozen=True):
    id: Id
    status: str
    type: str


class _Payload(msgspec.Struct, frozen=True):
    session: _Session | None = None
    subscription: _Subscription | None = None
    event: msgspec.Raw = msgspec.Raw()
    """Empty when absent (msgspec has no optional Raw)."""


class _Envelope(msgspec.Struct, frozen=True):
    metadata: _Metadata
    payload: _Payload


class _Text(msgspec.Struct, frozen=True):
    text: Annotated[str, msgspec.Meta(max_length=4096)] = ""


class _ChatMessage(msgspec.Struct, frozen=True):
    broadcaster_user_id: Id
    chatter_user_id: Id
    message_id: Id
    message: _Text


@dataclasses.dataclass(frozen=True, slots=True)
class Welcome:
    session_id: str
    keepalive_seconds: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class Keepalive:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Reconnect:
    url: str


@dataclasses.dataclass(frozen=True, slots=True)
class Revocation:
    subscription_id: str
    type: str
    status: str
    """One of :data:`REVOCATION_STATUSES`, or "other" (a bounded label)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Notification:
    subscription_type: str
    items: list[Decoded]
    """The events of a subscription type we count; empty for other types."""


@dataclasses.dataclass(frozen=True, slots=True)
class Invalid:
    """A frame that is not a usable EventSub message: its rejection(s)."""

    items: list[Decoded]


Message = Welcome | Keepalive | Reconnect | Revocation | Notification | Invalid


class EventSubFormat(PlatformAdapter):
    """Parses EventSub frames of one source. ``broadcaster_user_id``, when set, is the only
    channel whose chat is counted: another channel's notification is rejected."""

    def __init__(self, options: FormatOptions, broadcaster_user_id: str | None = None) -> None:
        super().__init__(options, "twitch")
        self.broadcaster_user_id = broadcaster_user_id
        self._envelope = msgspec.json.Decoder(_Envelope)
        self._chat = msgspec.json.Decoder(_ChatMessage)

    def decode(self, frame: bytes | str) -> list[Decoded]:
        """The events of a frame (the Format protocol); control messages have none."""
        message = self.parse(frame)
        return message.items if isinstance(message, Notification | Invalid) else []

    def parse(self, frame: bytes | str) -> Message:
        raw = as_bytes(frame)
        found: list[Message] = []

        def run() -> list[Decoded]:
            found.append(self._parse(raw))
            return []

        rejected = self.guarded(raw, run)
        return found[0] if found else Invalid(rejected)

    def _parse(self, raw: bytes) -> Message:
        try:
            envelope = self._envelope.decode(raw)
        except msgspec.DecodeError as exc:
            return Invalid([self.invalid(exc, raw)])
        metadata, payload = envelope.metadata, envelope.payload
        kind = metadata.message_type
        if kind == "session_keepalive":
            return Keepalive()
        if kind in ("session_welcome", "session_reconnect"):
            if payload.session is None:
                return self._invalid(Reason.MISSING_FIELD, "no payload.session", raw)
            if kind == "session_welcome":
                return Welcome(payload.session.id, payload.session.keepalive_timeout_seconds)
            url = payload.session.reconnect_url
            if not url or not url.startswith(("wss://", "ws://")):
                return self._invalid(Reason.INVALID_VALUE, "no usable reconnect_url", raw)
            return Reconnect(url)
        if kind in ("notification", "revocation"):
            if payload.subscription is None:
                return self._invalid(Reason.MISSING_FIELD, "no payload.subscription", raw)
            if kind == "notification":
                return self._notification(metadata, payload.subscription, payload.event, raw)
            sub = payload.subscription
            status = sub.status if sub.status in REVOCATION_STATUSES else "other"
            return Revocation(sub.id, sub.type, status)
        return self._invalid(Reason.UNKNOWN_KIND, "unknown message_type", raw)

    def _invalid(self, reason: Reason, detail: str, raw: bytes) -> Invalid:
        return Invalid([self.reject(reason, detail, raw)])

    def _notification(
        self,
        metadata: _Metadata,
        subscription: _Subscription,
        event: msgspec.Raw,
        raw: bytes,
    ) -> Message:
        kind = subscription.type
        if kind != CHAT_MESSAGE:
            return Notification(kind, [])
        if not len(event):
            return self._invalid(Reason.MISSING_FIELD, "no payload.event", raw)
        try:
            chat = self._chat.decode(event)
        except msgspec.DecodeError as exc:
            return Invalid([self.invalid(exc, raw, "comment")])
        if self.broadcaster_user_id is not None and (
            chat.broadcaster_user_id != self.broadcaster_user_id
        ):
            detail = f"chat of broadcaster {chat.broadcaster_user_id[:32]}"
            return Invalid([self.reject(Reason.STREAM_NOT_ALLOWED, detail, raw, "comment")])
        ts_ms = self.timestamp(metadata.message_timestamp, raw, "comment")
        if isinstance(ts_ms, Rejection):
            return Invalid([ts_ms])
        comment = Comment(
            self.stream,
            self.platform,
            f"twitch:{chat.message_id}",
            ts_ms,
            chat.chatter_user_id,
            aliases=(DELIVERY_NAMESPACE + metadata.message_id,),
        )
        return Notification(kind, [comment])
