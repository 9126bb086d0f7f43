"""The Server-Sent Events parser (ingest.sse), rule by rule of the HTML living standard."""

from __future__ import annotations

import pytest

from ingest.sse import SseError, SseEvent, SseParser


def parse(*chunks: bytes) -> list[SseEvent]:
    parser = SseParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


def test_one_event_per_blank_line() -> None:
    assert parse(b"data: a\n\ndata: b\n\n") == [SseEvent("a"), SseEvent("b")]


def test_multi_line_data_is_joined_with_lf_and_the_last_lf_removed() -> None:
    assert parse(b'data: {\ndata:  "x": 1\ndata: }\n\n') == [SseEvent('{\n "x": 1\n}')]


def test_only_one_leading_space_is_removed_and_a_colonless_line_is_an_empty_field() -> None:
    assert parse(b"data:  two\n\n") == [SseEvent(" two")]
    assert parse(b"data\n\n") == [SseEvent("")]  # data with an empty value still dispatches
    assert parse(b"data:no-space\n\n") == [SseEvent("no-space")]


@pytest.mark.parametrize("end", [b"\n", b"\r", b"\r\n"])
def test_cr_lf_and_crlf_end_lines(end: bytes) -> None:
    body = b"data: a" + end + b"data: b" + end + end + b"data: c" + end + end
    assert parse(body) == [SseEvent("a\nb"), SseEvent("c")]


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    # A CR last in a chunk and an LF first in the next: one line end, not an empty line.
    assert parse(b"data: a\r", b"\ndata: b\r\n\r\n") == [SseEvent("a\nb")]
    # A CR last in a chunk and something else next: the CR alone ended the line.
    assert parse(b"data: a\r", b"\r") == [SseEvent("a")]


def test_any_split_of_the_bytes_gives_the_same_events() -> None:
    body = "\ufeff: hi\r\nid: 7\r\nevent: x\r\ndata: é\r\n\r\ndata: y\n\n".encode()
    whole = parse(body)
    assert whole == [SseEvent("é", "x", "7"), SseEvent("y", "message", "7")]
    for cut in range(len(body)):
        assert parse(body[:cut], body[cut:]) == whole, cut
    assert parse(*(body[i : i + 1] for i in range(len(body)))) == whole


def test_comments_are_ignored() -> None:
    assert parse(b": keep-alive\n\n:\n\ndata: a\n: between\n\n") == [SseEvent("a")]


def test_a_leading_bom_is_skipped_once_and_only_at_the_start() -> None:
    assert parse(b"\xef\xbb\xbfdata: a\n\n") == [SseEvent("a")]
    assert parse(b"\xef\xbb", b"\xbfdata: a\n\n") == [SseEvent("a")]
    # A second BOM is part of the line: the field is "\ufeffdata", unknown, ignored.
    assert parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n") == []


def test_event_type_resets_after_each_dispatch() -> None:
    assert parse(b"event: ping\ndata: 1\n\ndata: 2\n\n") == [
        SseEvent("1", "ping"),
        SseEvent("2"),
    ]


def test_id_persists_and_an_id_with_nul_is_ignored() -> None:
    parser = SseParser()
    assert parser.feed(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\x00\ndata: c\n\n") == [
        SseEvent("a", last_event_id="1"),
        SseEvent("b", last_event_id="1"),
        SseEvent("c", last_event_id="1"),
    ]
    # An id on an event without data still sets the last event id (no event dispatched).
    assert parser.feed(b"id: 9\n\n") == []
    assert parser.last_event_id == "9"
    assert parser.feed(b"id\ndata: d\n\n") == [SseEvent("d", last_event_id="")]


def test_last_event_id_carries_over_to_a_new_connection() -> None:
    parser = SseParser(last_event_id="41")
    assert parser.feed(b"data: a\n\n") == [SseEvent("a", last_event_id="41")]


def test_retry_takes_only_ascii_digits() -> None:
    parser = SseParser()
    parser.feed(b"retry: 2500\n\n")
    assert parser.retry == 2500
    parser.feed(b"retry: 1.5\nretry: -1\nretry:\nretry: \xd9\xa3\n\n")  # Arabic-Indic 3
    assert parser.retry == 2500


def test_unknown_fields_are_ignored() -> None:
    assert parse(b"foo: bar\ndata: a\nDATA: b\n\n") == [SseEvent("a")]


def test_an_event_without_its_blank_line_is_not_dispatched() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\n\ndata: cut off") == [SseEvent("a")]
    assert parser.feed(b"\n") == []  # the stream ends here: the half event is discarded


def test_invalid_utf8_becomes_replacement_characters() -> None:
    assert parse(b"data: a\xffb\n\n") == [SseEvent("a\ufffdb")]


def test_lines_and_events_are_bounded() -> None:
    parser = SseParser(max_event_bytes=64)
    with pytest.raises(SseError, match="line too long"):
        parser.feed(b"data: " + b"x" * 100)
    parser = SseParser(max_event_bytes=64)
    with pytest.raises(SseError, match="event too large"):
        parser.feed(b"data: 0123456789\n" * 10)
