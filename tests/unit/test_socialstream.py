"""The Social Stream Ninja adapter (ingest.socialstream): relay messages to events, dedup ids."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ingest.adapter import FormatOptions
from ingest.model import Comment, Reason, Rejection, Viewers
from ingest.socialstream import (
    NOT_CHAT,
    OTHER_EVENT,
    RESTART_JUMP,
    SocialStreamFormat,
    plain_text,
)

STREAM = "lucngan-2025"
NOW = 1_750_000_000.0
OPTIONS = FormatOptions(
    default_stream=STREAM,
    platforms=frozenset({"tiktok", "youtube", "facebook"}),
    max_frame_bytes=4096,
    clock=lambda: NOW,
)


class Relay:
    """An adapter, and what it reported as ignored."""

    def __init__(self) -> None:
        self.ignored: list[str] = []
        self.fmt = SocialStreamFormat(OPTIONS, self.ignored.append)

    def decode(self, message: dict[str, Any] | bytes) -> list[Any]:
        raw = message if isinstance(message, bytes) else orjson.dumps(message)
        return self.fmt.decode(raw)

    def comment(self, message: dict[str, Any]) -> Comment:
        (item,) = self.decode(message)
        assert isinstance(item, Comment), item
        return item


def line(**changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "chatname": "Lan HN",
        "chatmessage": "Chốt VT01 2kg",
        "chatimg": "https://example.invalid/lan.png",
        "type": "tiktok",
        "userid": "lan_hn",
        "hasDonation": "",
        "event": False,
        "id": 41_000,
    }
    message.update(changes)
    return message


def test_a_chat_line_is_a_comment() -> None:
    comment = Relay().comment(line())
    assert (comment.stream, comment.platform, comment.user, comment.ts_ms) == (
        STREAM,
        "tiktok",
        "tiktok:lan_hn",
        1_750_000_000_000,
    )
    assert comment.id.startswith("ssn:")
    assert comment.id.endswith(":1")


def test_the_user_is_the_user_id_else_the_name_and_platforms_are_bounded() -> None:
    relay = Relay()
    assert relay.comment(line(userid=None)).user == "tiktok:Lan HN"
    assert relay.comment(line(userid=12345)).user == "tiktok:12345"
    other = relay.comment(line(type="kick"))
    assert (other.platform, other.user) == ("other", "other:lan_hn")


def test_a_repeated_line_is_a_new_comment_and_numbered() -> None:
    relay = Relay()
    ids = [relay.comment(line(id=41_000 + n)).id for n in range(3)]
    assert len(set(ids)) == 3
    assert [i.rsplit(":", 1)[1] for i in ids] == ["1", "2", "3"]


def test_identities_do_not_depend_on_the_relay_id_or_markup() -> None:
    one, two = Relay(), Relay()  # two replicas
    a = one.comment(line(id=5, chatmessage='VT01 <img src="e.png" alt=":lychee:"> 2kg'))
    b = two.comment(line(id=90_000, chatmessage="VT01 :lychee: 2kg", textonly=True))
    assert a.identity == b.identity
    assert one.comment(line(userid="other")).identity != a.identity
    assert one.comment(line(type="youtube")).identity != a.identity


def test_a_restarted_relay_sends_its_lines_again_under_the_same_identities() -> None:
    relay = Relay()
    before = [relay.comment(line(id=41_000 + n, chatmessage=f"VT0{n % 2}")).id for n in range(4)]
    # The counter starts again (here below the last id): a new relay run.
    after = [relay.comment(line(id=7 + n, chatmessage=f"VT0{n % 2}")).id for n in range(4)]
    assert after == before


def test_a_relay_counter_that_leaps_ahead_is_a_restart_too() -> None:
    relay = Relay()
    first = relay.comment(line(id=100)).id
    assert relay.comment(line(id=100 + RESTART_JUMP)).id != first  # still the same run
    assert relay.comment(line(id=100 + 2 * RESTART_JUMP + 1)).id == first  # restarted higher


def test_a_new_connection_is_a_new_run() -> None:
    relay = Relay()
    first = relay.comment(line()).id
    relay.fmt.new_connection()
    assert relay.comment(line(id=41_001)).id == first
    assert relay.comment(line(id=41_002)).id != first


def test_the_platform_message_id_wins_when_the_relay_passes_it() -> None:
    relay = Relay()
    a = relay.comment(line(meta={"messageId": "yt-abc"}))
    b = relay.comment(line(meta={"messageId": "yt-abc"}, chatmessage="edited"))
    assert a.id == b.id == "ssn:tiktok:yt-abc"
    assert relay.comment(line(meta=17)).id.endswith(":1")  # meta of another shape: rule 2


def test_viewer_counts() -> None:
    relay = Relay()
    aggregate = relay.decode({"event": "viewer_updates", "meta": {"tiktok": 812, "kick": 5}})
    assert aggregate == [
        Viewers(STREAM, "tiktok", "ssn:v:tiktok:1750000000000", 1_750_000_000_000, 812),
        Viewers(STREAM, "other", "ssn:v:other:1750000000000", 1_750_000_000_000, 5),
    ]
    single = relay.decode({"event": "viewer_update", "type": "youtube", "meta": 95})
    assert [(v.platform, v.count) for v in single] == [("youtube", 95)]
    for bad in ({"tiktok": -1}, {"tiktok": "many"}, None):
        (rejection,) = relay.decode({"event": "viewer_updates", "meta": bad})
        assert isinstance(rejection, Rejection)
        assert rejection.kind == "viewers"


def test_what_is_not_chat_is_ignored_and_reported() -> None:
    relay = Relay()
    assert relay.decode(line(event="new_follower")) == []
    assert relay.decode(line(event=True)) == []
    assert relay.decode({"callback": {"get": "q-1", "result": True}}) == []
    assert relay.decode({"action": "clearOverlay"}) == []
    assert relay.ignored == [OTHER_EVENT, OTHER_EVENT, NOT_CHAT, NOT_CHAT]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", Reason.MALFORMED_JSON),
        (b"[1]", Reason.NOT_AN_OBJECT),
        (b'"text"', Reason.NOT_AN_OBJECT),
        (orjson.dumps(line(chatname=5)), Reason.INVALID_TYPE),
        (orjson.dumps(line(chatmessage=None)), Reason.INVALID_TYPE),
        (orjson.dumps(line(chatname="", userid="")), Reason.MISSING_FIELD),
        (orjson.dumps(line(chatmessage="x" * 5000)), Reason.OVERSIZE),
        (b'{"chatname": "\xff"}', Reason.INVALID_UTF8),
    ],
)
def test_bad_input_is_rejected_with_a_reason(raw: bytes, reason: Reason) -> None:
    (rejection,) = Relay().decode(raw)
    assert isinstance(rejection, Rejection)
    assert (rejection.reason, rejection.stream, rejection.raw) == (reason, STREAM, raw)


def test_plain_text() -> None:
    assert plain_text("<b>VT01</b>&nbsp;&amp; <i>2kg</i>") == "VT01 & 2kg"
    assert plain_text('hi <img src="x" alt="Kappa"><img src="y">!') == "hi Kappa !"
    assert plain_text("a < b") == "a < b"
    assert plain_text("<unclosed") == "<unclosed"  # not a tag after all: kept as text
