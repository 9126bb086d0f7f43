"""The Twitch EventSub parser (ingest.twitch): frames in, session messages and events out."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from ingest.adapter import FormatOptions
from ingest.model import Comment, Reason, Rejection
from ingest.twitch import (
    DELIVERY_NAMESPACE,
    EventSubFormat,
    Invalid,
    Keepalive,
    Message,
    Notification,
    Reconnect,
    Revocation,
    Welcome,
)

STREAM = "lucngan-2025"
NOW = 1_750_000_000.0
OPTIONS = FormatOptions(
    default_stream=STREAM, platforms=frozenset({"twitch"}), max_frame_bytes=4096, clock=lambda: NOW
)

# The reference's example notification (ids invented), as Twitch documents the shape.
CHAT: dict[str, Any] = {
    "metadata": {
        "message_id": "9e8d7c6b-2222-4b3c-9d4e-5f6a7b8c9d0e",
        "message_type": "notification",
        "message_timestamp": "2025-06-14T02:05:07.000000001Z",
        "subscription_type": "channel.chat.message",
        "subscription_version": "1",
    },
    "payload": {
        "subscription": {
            "id": "3f0a1b2c-3333-4c5d-8e6f-7a8b9c0d1e2f",
            "status": "enabled",
            "type": "channel.chat.message",
            "version": "1",
            "condition": {"broadcaster_user_id": "1001", "user_id": "1001"},
            "transport": {"method": "websocket", "session_id": "AgoQtestSESSION01"},
            "created_at": "2025-06-14T02:00:03.5Z",
            "cost": 0,
        },
        "event": {
            "broadcaster_user_id": "1001",
            "broadcaster_user_login": "vaithieu_lucngan",
            "broadcaster_user_name": "VaiThieu_LucNgan",
            "chatter_user_id": "2002",
            "chatter_user_login": "lan_hn",
            "chatter_user_name": "Lan_HN",
            "message_id": "c1d2e3f4-4444-4d5e-9f60-718293a4b5c6",
            "message": {"text": "VT01 2kg", "fragments": []},
            "message_type": "text",
            "badges": [],
            "cheer": None,
            "color": "#1E90FF",
            "reply": None,
            "channel_points_custom_reward_id": None,
        },
    },
}


def frame(message_type: str, payload: dict[str, Any], **metadata: Any) -> bytes:
    meta = {
        "message_id": "m-1",
        "message_type": message_type,
        "message_timestamp": "2025-06-14T02:05:07.123456789Z",
        **metadata,
    }
    return orjson.dumps({"metadata": meta, "payload": payload})


def chat(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(CHAT)
    data["payload"]["event"].update(changes)
    return data


def parse(raw: bytes | dict[str, Any], broadcaster: str | None = "1001") -> Message:
    fmt = EventSubFormat(OPTIONS, broadcaster)
    return fmt.parse(raw if isinstance(raw, bytes) else orjson.dumps(raw))


def rejected(raw: bytes | dict[str, Any], broadcaster: str | None = "1001") -> Rejection:
    message = parse(raw, broadcaster)
    assert isinstance(message, Invalid), message
    (rejection,) = message.items
    assert isinstance(rejection, Rejection)
    assert rejection.stream == STREAM
    return rejection


def test_a_chat_notification_is_a_comment_with_both_ids() -> None:
    message = parse(CHAT)
    assert isinstance(message, Notification)
    assert message.subscription_type == "channel.chat.message"
    assert message.items == [
        Comment(
            STREAM,
            "twitch",
            "twitch:c1d2e3f4-4444-4d5e-9f60-718293a4b5c6",
            1_749_866_707_000,  # nanoseconds dropped, to the millisecond
            "2002",
            aliases=(DELIVERY_NAMESPACE + "9e8d7c6b-2222-4b3c-9d4e-5f6a7b8c9d0e",),
        )
    ]


def test_the_same_line_under_another_delivery_id_has_the_same_identity() -> None:
    first = parse(CHAT)
    again = copy.deepcopy(CHAT)
    again["metadata"]["message_id"] = "another-delivery"
    second = parse(again)
    assert isinstance(first, Notification)
    assert isinstance(second, Notification)
    one, two = first.items[0], second.items[0]
    assert isinstance(one, Comment)
    assert isinstance(two, Comment)
    assert one.identity == two.identity
    assert one.aliases != two.aliases


def test_twitch_is_other_when_not_a_configured_platform() -> None:
    fmt = EventSubFormat(FormatOptions(default_stream=STREAM, clock=lambda: NOW))
    message = fmt.parse(orjson.dumps(CHAT))
    assert isinstance(message, Notification)
    assert [item.platform for item in message.items if isinstance(item, Comment)] == ["other"]


def test_session_messages() -> None:
    welcome = {
        "session": {
            "id": "AgoQ-1",
            "status": "connected",
            "keepalive_timeout_seconds": 30,
            "reconnect_url": None,
            "connected_at": "2025-06-14T02:00:00Z",
        }
    }
    assert parse(frame("session_welcome", welcome)) == Welcome("AgoQ-1", 30)
    assert parse(frame("session_keepalive", {})) == Keepalive()
    moving = copy.deepcopy(welcome)
    moving["session"].update(
        status="reconnecting",
        keepalive_timeout_seconds=None,
        reconnect_url="wss://eventsub.wss.twitch.tv/ws?id=abc",
    )
    assert parse(frame("session_reconnect", moving)) == Reconnect(
        "wss://eventsub.wss.twitch.tv/ws?id=abc"
    )


@pytest.mark.parametrize(
    ("status", "label"),
    [
        ("authorization_revoked", "authorization_revoked"),
        ("user_removed", "user_removed"),
        ("version_removed", "version_removed"),
        ("something_new", "other"),
    ],
)
def test_revocations_have_a_bounded_status(status: str, label: str) -> None:
    subscription = {**CHAT["payload"]["subscription"], "status": status}
    message = parse(frame("revocation", {"subscription": subscription}))
    assert message == Revocation(subscription["id"], "channel.chat.message", label)


def test_other_subscription_types_carry_no_events() -> None:
    subscription = {**CHAT["payload"]["subscription"], "type": "channel.follow"}
    message = parse(frame("notification", {"subscription": subscription, "event": {"a": 1}}))
    assert message == Notification("channel.follow", [])


def test_decode_gives_only_events() -> None:
    fmt = EventSubFormat(OPTIONS)
    assert fmt.decode(frame("session_keepalive", {})) == []
    assert len(fmt.decode(orjson.dumps(CHAT))) == 1
    assert [type(item) for item in fmt.decode(b"{")] == [Rejection]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", Reason.MALFORMED_JSON),
        (b"[]", Reason.INVALID_TYPE),
        (b'{"metadata": {"message_id": "x"}, "payload": {}}', Reason.MISSING_FIELD),
        (frame("session_welcome", {}), Reason.MISSING_FIELD),
        (frame("notification", {}), Reason.MISSING_FIELD),
        (frame("revocation", {}), Reason.MISSING_FIELD),
        (frame("session_reconnect", {"session": {"id": "s"}}), Reason.INVALID_VALUE),
        (
            frame("session_reconnect", {"session": {"id": "s", "reconnect_url": "http://x"}}),
            Reason.INVALID_VALUE,
        ),
        (frame("session_goodbye", {}), Reason.UNKNOWN_KIND),
        (frame("session_keepalive", {}, message_timestamp="yesterday"), Reason.INVALID_TIMESTAMP),
        (b'{"metadata": {"message_id": "\xff"}}', Reason.INVALID_UTF8),
        (b" " * 5000, Reason.OVERSIZE),
    ],
)
def test_unusable_frames_are_rejected_with_a_reason(raw: bytes, reason: Reason) -> None:
    assert rejected(raw).reason == reason


def test_unusable_chat_events_are_rejected() -> None:
    no_event = copy.deepcopy(CHAT)
    del no_event["payload"]["event"]
    assert rejected(no_event).reason == Reason.MISSING_FIELD
    no_chatter = chat()
    del no_chatter["payload"]["event"]["chatter_user_id"]
    assert rejected(no_chatter).reason == Reason.MISSING_FIELD
    assert rejected(chat(message_id="")).reason == Reason.OUT_OF_RANGE
    assert rejected(chat(chatter_user_id=2002)).reason == Reason.INVALID_TYPE
    other_channel = rejected(chat(broadcaster_user_id="999"))
    assert (other_channel.reason, other_channel.kind) == (Reason.STREAM_NOT_ALLOWED, "comment")
    assert isinstance(parse(chat(broadcaster_user_id="999"), broadcaster=None), Notification)
    future = copy.deepcopy(CHAT)
    future["metadata"]["message_timestamp"] = "2025-06-17T02:05:07Z"  # NOW + 2 days
    assert rejected(future).reason == Reason.OUT_OF_RANGE


def test_a_platform_format_needs_a_stream() -> None:
    with pytest.raises(ValueError, match="stream"):
        EventSubFormat(FormatOptions())
