"""Comment orders as the commit script receives them, built without servers: what a comment's
record carries (and what it never carries), the catalog's grams, the host's comments, the
buyer's digest; the text in the buffer's accounting and out of a refused event's dead letter."""

from __future__ import annotations

from pathlib import Path

import msgspec

from ingest.catalog import Catalog, Product
from ingest.comment_orders import (
    Ambiguous,
    AmbiguousReason,
    OrderIntent,
    ParsedComment,
    Withdrawal,
    parse_comment,
)
from ingest.model import AuthorRole, Comment
from workers.catalogs import CatalogFile, Catalogs, comment_intents
from workers.committer import EVENT_BYTES, _anonymous, held_bytes
from workers.store import CommentReading, _records, buyer_digest, comment_orders

CATALOG = Catalog(
    (
        Product("VT05", "Vải thiều thùng 5 kg", ("thùng 5 ký",), 5000),
        Product("VK", "Vải cân ký", (), None),
    )
)
TS = 1_750_000_000_000


def reading(stream: str, text: str) -> CommentReading | None:
    return comment_intents(parse_comment(text, CATALOG), CATALOG)


def no_catalog(stream: str, text: str) -> CommentReading | None:
    return None


def said(text: str, user: str | None = "Lan", role: AuthorRole = AuthorRole.VIEWER) -> Comment:
    return Comment("s", "tiktok", "c1", TS, user, author_role=role, text=text)


def test_intents_carry_the_catalogs_grams_and_unknown_codes_apart() -> None:
    parsed = ParsedComment(
        (
            OrderIntent("VT05", 3),
            OrderIntent("VK", 1500),  # per kg: the quantity is grams
            OrderIntent("GONE", 1),  # not in this catalog (any more): not an order
            Withdrawal("VT05"),
            Withdrawal(None),
            Ambiguous(AmbiguousReason.UNKNOWN_CODE),
            Ambiguous(AmbiguousReason.NOT_WHOLE_UNITS, "VT05"),
        ),
        has_phone=True,
    )
    assert comment_intents(parsed, CATALOG) == CommentReading(
        (
            ("o", "VT05", 3, "15000"),
            ("o", "VK", 1500, "1500"),
            ("a", "", 0, "0"),
            ("w", "VT05", 0, "0"),
            ("w", "", 0, "0"),
            ("u", "", 0, "0"),
            ("a", "", 0, "0"),
        ),
        True,
    )


def test_a_comment_record_carries_intents_a_digest_and_a_phone_flag_never_the_text() -> None:
    comment = said("chốt VT05 x2 sđt 0912.345.678")
    (record,) = _records([comment], [""], read=reading)
    assert record[:5] == ("c", *record[1:3], "tiktok", "Lan")
    assert record[5] == [buyer_digest("tiktok", "Lan"), 1, [["o", "VT05", 2, "10000"]]]
    packed = msgspec.msgpack.encode(record)
    assert b"345.678" not in packed
    assert "chốt".encode() not in packed


def test_comments_that_order_nothing_have_an_empty_part() -> None:
    cases = [
        (said("VT05 x2", role=AuthorRole.HOST), reading),
        (said("VT05 x2", role=AuthorRole.MODERATOR), reading),
        (said(""), reading),
        (said("vải ngon quá"), reading),
        (said("VT05 x2"), no_catalog),
    ]
    for comment, read in cases:
        assert comment_orders(comment, read) == [], comment


def test_a_comment_without_a_user_is_nobodys_order_each_intent_ambiguous() -> None:
    found = comment_orders(said("VT05 x1, VK 2kg", user=None), reading)
    assert found[2] == [["a", "", 0, "0"], ["a", "", 0, "0"]]


def test_the_buyer_digest_is_stable_per_platform_and_user_and_hides_both() -> None:
    lan = buyer_digest("tiktok", "Nguyễn Thị Lan")
    assert lan == buyer_digest("tiktok", "Nguyễn Thị Lan")
    assert lan != buyer_digest("facebook", "Nguyễn Thị Lan")
    assert lan != buyer_digest("tiktok", "Nguyễn Thị Lan ")
    assert len(lan) == 24
    assert "Lan" not in lan


def test_the_text_counts_in_the_buffer_and_leaves_a_refused_events_dead_letter() -> None:
    comment = said("VT05 x2 0912345678" * 10)
    assert held_bytes([comment]) == EVENT_BYTES + 4 * len(comment.text)
    assert held_bytes([said("")]) == EVENT_BYTES
    kept = msgspec.json.encode(_anonymous(comment))
    assert b"0912345678" not in kept
    assert b"Lan" not in kept


def test_catalogs_read_comments_with_the_streams_loaded_catalog(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text("sku,name,unit_grams\nVT05,Vải,5000\n")
    catalogs = Catalogs([CatalogFile("s", path, 200)])
    catalogs.load()
    assert catalogs.read_comment("s", "VT05 x2") == CommentReading(
        (("o", "VT05", 2, "10000"),), False
    )
    assert catalogs.read_comment("other", "VT05 x2") is None
    path.write_text("sku,name,unit_grams\nVT05,Vải,2000\nVT09,Khác,1000\n")
    catalogs.reload()  # the reloaded catalog's products and weights
    assert catalogs.read_comment("s", "VT09; VT05 x2") == CommentReading(
        (("o", "VT09", 1, "1000"), ("o", "VT05", 2, "4000")), False
    )
