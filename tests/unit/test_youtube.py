"""The YouTube Live chat adapter, fed bytes: pages, paid comments, errors, chat lookup, and when
the quota resets."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest

from ingest.adapter import FormatOptions
from ingest.model import Comment, PaidComment, Reason, Rejection
from ingest.sources.youtube import quota_reset
from ingest.youtube import Invalid, LiveChatFormat, Page, api_error, chat_lookup

OPTIONS = FormatOptions(default_stream="live-1", platforms=frozenset({"youtube"}))
WHEN = "2026-12-03T11:00:00.123456+00:00"


def fmt() -> LiveChatFormat:
    return LiveChatFormat(OPTIONS)


def item(mid: str, kind: str = "textMessageEvent", **snippet: Any) -> dict[str, Any]:
    return {
        "kind": "youtube#liveChatMessage",
        "id": mid,
        "snippet": {"type": kind, "authorChannelId": "UC-a", "publishedAt": WHEN, **snippet},
    }


def page(*items: dict[str, Any], **fields: Any) -> bytes:
    body = {"items": list(items), "nextPageToken": "next", "pollingIntervalMillis": 2500}
    return orjson.dumps({**body, **fields})


def parsed(body: bytes) -> Page:
    answer = fmt().parse(body)
    assert isinstance(answer, Page)
    return answer


def test_text_messages_are_comments_and_the_page_says_how_to_go_on() -> None:
    answer = parsed(page(item("m1"), item("m2", authorChannelId="UC-b")))
    assert answer.next_page_token == "next"
    assert answer.polling_ms == 2500
    assert not answer.ended
    assert answer.items == [
        Comment("live-1", "youtube", "youtube:m1", 1796295600123, "UC-a"),
        Comment("live-1", "youtube", "youtube:m2", 1796295600123, "UC-b"),
    ]


def test_super_chats_and_stickers_are_paid_comments_in_exact_micros() -> None:
    chat = item(
        "m1",
        "superChatEvent",
        superChatDetails={"amountMicros": "20000000000", "currency": "VND", "tier": 2},
    )
    sticker = item(
        "m2", "superStickerEvent", superStickerDetails={"amountMicros": 4990000, "currency": "EUR"}
    )
    first, second = parsed(page(chat, sticker)).items
    assert isinstance(first, PaidComment)
    assert (first.currency, first.amount_micros) == ("VND", 20_000_000_000)
    assert isinstance(second, PaidComment)
    assert (second.currency, second.amount_micros) == ("EUR", 4_990_000)
    assert isinstance(first, Comment)  # a paid comment is a comment too


@pytest.mark.parametrize(
    ("details", "reason"),
    [
        ({"amountMicros": "1.5", "currency": "USD"}, Reason.INVALID_AMOUNT),
        ({"amountMicros": "-1", "currency": "USD"}, Reason.INVALID_AMOUNT),
        ({"amountMicros": "0", "currency": "USD"}, Reason.INVALID_AMOUNT),
        ({"amountMicros": 1.5, "currency": "USD"}, Reason.INVALID_TYPE),
        ({"amountMicros": "1000001", "currency": "usd"}, Reason.INVALID_CURRENCY),
        ({"amountMicros": "1000001", "currency": "XYZ"}, Reason.INVALID_CURRENCY),
        ({"amountMicros": str(10**18 + 1), "currency": "USD"}, Reason.OUT_OF_RANGE),
        (None, Reason.MISSING_FIELD),
    ],
)
def test_a_bad_paid_message_is_rejected_and_the_rest_of_its_page_counts(
    details: dict[str, Any] | None, reason: Reason
) -> None:
    bad = item("bad", "superChatEvent", **({"superChatDetails": details} if details else {}))
    answer = parsed(page(item("m1"), bad, item("m2")))
    rejected = [i for i in answer.items if isinstance(i, Rejection)]
    assert [r.reason for r in rejected] == [reason]
    assert rejected[0].stream == "live-1"
    assert [i.id for i in answer.items if isinstance(i, Comment)] == ["youtube:m1", "youtube:m2"]


def test_other_message_types_are_taken_not_counted() -> None:
    kinds = ["newSponsorEvent", "messageDeletedEvent", "pollEvent", "tombstone", "userBannedEvent"]
    answer = parsed(page(*(item(f"m{n}", kind) for n, kind in enumerate(kinds))))
    assert answer.items == []
    assert answer.ignored == len(kinds)


def test_the_end_of_the_chat_is_read_from_offline_at_or_a_chat_ended_event() -> None:
    assert parsed(page(item("m1"), offlineAt=WHEN)).ended
    answer = parsed(page(item("m1"), item("m2", "chatEndedEvent")))
    assert answer.ended
    assert len(answer.items) == 1


def test_a_body_that_is_not_a_page_is_rejected_and_keeps_nothing_unparsed() -> None:
    answer = fmt().parse(b'{"items": [ broken')
    assert isinstance(answer, Invalid)
    (rejection,) = answer.items
    assert isinstance(rejection, Rejection)
    assert rejection.reason is Reason.MALFORMED_JSON
    assert rejection.raw == b""
    wrong = fmt().parse(b'{"items": 5}')
    assert isinstance(wrong, Invalid)
    assert isinstance(wrong.items[0], Rejection)
    assert wrong.items[0].reason is Reason.INVALID_TYPE


def test_dead_letters_keep_no_display_name_and_mask_phone_numbers() -> None:
    bad = item("bad", "superChatEvent", displayMessage="call 0912345678")
    bad["authorDetails"] = {"displayName": "Nguyễn Văn A", "channelId": "UC-a"}
    (rejection,) = parsed(page(bad)).items
    assert isinstance(rejection, Rejection)
    assert b"Nguy" not in rejection.raw
    assert b"authorDetails" not in rejection.raw
    assert b"0912345678" not in rejection.raw
    assert b"superChatEvent" in rejection.raw


@pytest.mark.parametrize(
    ("status", "reason", "kind"),
    [
        (403, "quotaExceeded", "quota"),
        (403, "rateLimitExceeded", "rate_limited"),
        (403, "liveChatEnded", "chat_ended"),
        (403, "liveChatDisabled", "chat_disabled"),
        (404, "liveChatNotFound", "chat_not_found"),
        (403, "forbidden", "forbidden"),
        (401, "authError", "unauthorized"),
        (401, "", "unauthorized"),
        (429, "", "rate_limited"),
        (503, "backendError", "server"),
        (418, "teapot", "other"),
    ],
)
def test_api_errors_map_to_a_bounded_kind(status: int, reason: str, kind: str) -> None:
    errors = [{"domain": "youtube.liveChat", "reason": reason}] if reason else []
    body = orjson.dumps({"error": {"code": status, "message": "m", "errors": errors}})
    error = api_error(status, body)
    assert (error.status, error.kind) == (status, kind)
    # Without a readable body, the status alone decides.
    by_status = api_error(status, b"<html>not json</html>")
    assert by_status.kind == {401: "unauthorized", 403: "forbidden", 404: "chat_not_found"}.get(
        status, "rate_limited" if status == 429 else "server" if status >= 500 else "other"
    )


def test_the_live_chat_id_comes_from_the_videos_live_streaming_details() -> None:
    def videos(details: dict[str, Any] | None) -> bytes:
        video: dict[str, Any] = {"id": "v1"}
        if details is not None:
            video["liveStreamingDetails"] = details
        return orjson.dumps({"items": [video]})

    assert chat_lookup(videos({"activeLiveChatId": "chat-1"}), "v1").chat_id == "chat-1"
    assert chat_lookup(videos({"actualEndTime": WHEN}), "v1").why == "ended"
    assert chat_lookup(videos({"scheduledStartTime": WHEN}), "v1").why == "not_live"
    assert chat_lookup(videos(None), "v1").why == "not_live"
    assert chat_lookup(orjson.dumps({"items": []}), "v1").why == "not_found"
    assert chat_lookup(b"nope", "v1").why == "malformed"


@pytest.mark.parametrize(
    ("now", "reset"),
    [
        # Pacific standard time (UTC-8): midnight PST is 08:00 UTC.
        ("2026-12-03T07:59:59+00:00", "2026-12-03T08:00:00+00:00"),
        ("2026-12-03T08:00:00+00:00", "2026-12-04T08:00:00+00:00"),
        # Daylight time (UTC-7): 07:00 UTC.
        ("2026-07-01T12:00:00+00:00", "2026-07-02T07:00:00+00:00"),
        # The night the clocks go back (1 Nov 2026): the next midnight is PST already.
        ("2026-11-01T06:30:00+00:00", "2026-11-01T07:00:00+00:00"),
        ("2026-11-01T07:30:00+00:00", "2026-11-02T08:00:00+00:00"),
    ],
)
def test_the_quota_resets_at_midnight_pacific_time(now: str, reset: str) -> None:
    at = dt.datetime.fromisoformat(now).timestamp()
    assert quota_reset(at) == dt.datetime.fromisoformat(reset).timestamp()


def test_a_streamed_array_is_cut_into_its_objects_however_it_arrives() -> None:
    from ingest.youtube import ArraySplitter

    pages = [
        {"items": [], "nextPageToken": "a"},
        {"items": [{"id": "m1", "snippet": {"displayMessage": 'br}ace" [x] \\"q'}}]},
        {"nextPageToken": "c", "nested": [[{}], {"k": ["}"]}]},
    ]
    body = b"[" + b",\n".join(orjson.dumps(p) for p in pages) + b"]\n"
    for size in (1, 2, 7, len(body)):
        splitter = ArraySplitter(1 << 20)
        found: list[bytes] = []
        for start in range(0, len(body), size):
            found += splitter.feed(body[start : start + size])
        assert [orjson.loads(f) for f in found] == pages
        assert splitter.closed


@pytest.mark.parametrize(
    "body", [b'{"items": []}', b"[1, 2]", b"[{}] {}", b'[{"a": "' + b"x" * 100]
)
def test_a_streamed_body_that_is_not_an_array_of_objects_is_refused(body: bytes) -> None:
    from ingest.youtube import ArraySplitter, StreamError

    with pytest.raises(StreamError):
        ArraySplitter(64).feed(body)
