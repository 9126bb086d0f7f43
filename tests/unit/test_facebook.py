"""The Facebook Live comments parser (ingest.facebook): SSE data, polling pages, error answers."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ingest.adapter import FormatOptions
from ingest.facebook import FacebookLiveFormat, GraphError, classify_error, created_ms
from ingest.model import Comment, Reason, Rejection

STREAM = "lucngan-2025"
NOW = 1_750_000_000.0
OPTIONS = FormatOptions(
    default_stream=STREAM,
    platforms=frozenset({"facebook"}),
    max_frame_bytes=8192,
    max_events_per_frame=5,
    clock=lambda: NOW,
)
FMT = FacebookLiveFormat(OPTIONS)

# The shape of the Live Video API's sample comment (ids and text ours).
COMMENT: dict[str, Any] = {
    "created_time": "2025-06-15T02:05:07+0000",
    "from": {"name": "Nguyễn Thị Lan", "id": "552524095105158"},
    "message": "chốt 2 hộp, gọi 0912 345 678",
    "id": "911936075671494_911936769004758",
}


def comment(**changes: Any) -> dict[str, Any]:
    return {**COMMENT, **changes}


def test_a_comment_becomes_a_comment_event_under_its_graph_id() -> None:
    [event] = FMT.decode(orjson.dumps(COMMENT))
    assert event == Comment(
        STREAM,
        "facebook",
        "facebook:911936075671494_911936769004758",
        1_749_953_107_000,
        "552524095105158",
    )


def test_an_array_of_comments_as_the_sse_sample_shows() -> None:
    events = FMT.decode(orjson.dumps([comment(id="1_1"), comment(id="1_2")]))
    assert [e.id for e in events if isinstance(e, Comment)] == ["facebook:1_1", "facebook:1_2"]
    [too_many] = FMT.decode(orjson.dumps([comment(id=f"1_{n}") for n in range(6)]))
    assert isinstance(too_many, Rejection)
    assert too_many.reason is Reason.TOO_MANY_EVENTS


def test_only_the_fields_we_ask_for_are_needed() -> None:
    [event] = FMT.decode(b'{"id": "5_6", "created_time": "2025-06-15T02:05:07+0700"}')
    assert isinstance(event, Comment)
    assert event.user is None  # no `from` (a token that may not see the commenter)
    assert event.ts_ms == 1_749_953_107_000 - 7 * 3600 * 1000
    [undated] = FMT.decode(b'{"id": "5_7"}')
    assert isinstance(undated, Comment)
    assert undated.ts_ms == NOW * 1000


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", Reason.MALFORMED_JSON),
        (b'{"created_time": "2025-06-15T02:05:07+0000"}', Reason.MISSING_FIELD),
        (b'{"id": ""}', Reason.OUT_OF_RANGE),
        (b'{"id": 5}', Reason.INVALID_TYPE),
        (b'{"id": "1_2", "created_time": "yesterday"}', Reason.INVALID_TIMESTAMP),
        (b'{"id": "1_2", "created_time": "2025-06-15T02:05:07"}', Reason.INVALID_TIMESTAMP),
        (b'{"id": "1_2", "created_time": "2099-01-01T00:00:00+0000"}', Reason.OUT_OF_RANGE),
        (b'"a string"', Reason.INVALID_TYPE),
        (b"[1]", Reason.INVALID_TYPE),
        (b"x" * 9000, Reason.OVERSIZE),
    ],
)
def test_bad_input_is_a_rejection_never_an_exception(body: bytes, reason: Reason) -> None:
    [rejected] = FMT.decode(body)
    assert isinstance(rejected, Rejection)
    assert rejected.reason is reason
    assert rejected.stream == STREAM


def test_a_dead_letter_keeps_no_name_message_or_phone_number() -> None:
    bad = comment(created_time="not a time")
    [rejected] = FMT.decode(orjson.dumps(bad))
    assert isinstance(rejected, Rejection)
    kept = orjson.loads(rejected.raw)
    assert kept["id"] == bad["id"]
    assert kept["from"] == {"id": "552524095105158"}
    text = rejected.raw.decode() + rejected.detail
    for secret in ("Nguyễn", "Lan", "chốt", "0912", "345 678"):
        assert secret not in text
    page = {"data": [bad], "paging": {"cursors": {"after": "QVFI"}}}
    [from_page] = FMT.page(orjson.dumps(page)).items
    assert isinstance(from_page, Rejection)
    assert "Lan" not in from_page.raw.decode()
    assert orjson.loads(from_page.raw)["id"] == bad["id"]  # the comment's own letter
    # A page that is not one keeps its comments' ids and its cursors only.
    broken = {"data": [bad], "paging": {"cursors": {"after": "QVFI"}, "next": 5}}
    [whole] = FMT.page(orjson.dumps(broken)).items
    assert isinstance(whole, Rejection)
    assert whole.reason is Reason.INVALID_TYPE
    kept = orjson.loads(whole.raw)
    assert kept["data"] == [
        {"id": bad["id"], "created_time": "not a time", "from": {"id": "552524095105158"}}
    ]
    assert kept["paging"] == {"cursors": {"after": "QVFI"}}
    assert "Lan" not in whole.raw.decode()
    assert "0912" not in whole.raw.decode()


def test_a_polling_page_gives_its_comments_cursor_and_whether_more_follow() -> None:
    body = {
        "data": [comment(id="1_1"), {"id": "1_2"}, {"id": 3}],
        "paging": {
            "cursors": {"before": "QVFIb", "after": "QVFIa"},
            "next": "https://graph.facebook.com/v26.0/1/comments?after=QVFIa",
        },
    }
    page = FMT.page(orjson.dumps(body))
    assert [type(item) for item in page.items] == [Comment, Comment, Rejection]
    assert (page.after, page.more) == ("QVFIa", True)
    last = FMT.page(orjson.dumps({"data": [], "paging": {"cursors": {"after": "Z"}}}))
    assert (last.items, last.after, last.more) == ([], "Z", False)
    empty = FMT.page(b'{"data": []}')
    assert (empty.items, empty.after, empty.more) == ([], None, False)
    [bad] = FMT.page(b'{"paging": {}}').items
    assert isinstance(bad, Rejection)
    assert bad.reason is Reason.MISSING_FIELD
    [many] = FMT.page(orjson.dumps({"data": [{"id": str(n)} for n in range(6)]})).items
    assert isinstance(many, Rejection)
    assert many.reason is Reason.TOO_MANY_EVENTS


def error(code: int, subcode: int | None = None) -> bytes:
    body: dict[str, Any] = {"message": "m", "type": "OAuthException", "code": code}
    if subcode is not None:
        body["error_subcode"] = subcode
    return orjson.dumps({"error": {**body, "fbtrace_id": "EJplcsCHuLu"}})


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, error(190, 463), GraphError("token_expired", 190, 463)),
        (400, error(190, 460), GraphError("token_invalid", 190, 460)),
        (400, error(190, 467), GraphError("token_invalid", 190, 467)),
        (400, error(190), GraphError("token_invalid", 190)),
        (400, error(102), GraphError("token_invalid", 102)),
        (403, error(10), GraphError("permission", 10)),
        (403, error(200), GraphError("permission", 200)),
        (403, error(299), GraphError("permission", 299)),
        (400, error(4), GraphError("rate_limited", 4)),
        (400, error(17), GraphError("rate_limited", 17)),
        (400, error(32), GraphError("rate_limited", 32)),
        (400, error(613), GraphError("rate_limited", 613)),
        (400, error(100, 33), GraphError("not_found", 100, 33)),
        (404, error(100), GraphError("not_found", 100)),
        (400, error(100), GraphError("other", 100)),
        (500, error(2), GraphError("server", 2)),
        (502, b"<html>bad gateway</html>", GraphError("server")),
        (429, b"", GraphError("rate_limited")),
        (400, b'{"error": "text"}', GraphError("other")),
    ],
)
def test_graph_errors_are_sorted_into_bounded_reasons(
    status: int, body: bytes, expected: GraphError
) -> None:
    assert classify_error(status, body) == expected


def test_created_time_forms() -> None:
    assert created_ms("2018-08-30T18:47:02+0000") == 1_535_654_822_000
    assert created_ms("2018-08-30T18:47:02+00:00") == 1_535_654_822_000
    assert created_ms("2018-08-30T18:47:02Z") == 1_535_654_822_000
    assert created_ms("2018-08-30 18:47:02") is None
