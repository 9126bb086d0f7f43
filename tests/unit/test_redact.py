"""What a dead letter keeps of a rejected input: an allow-list of a JSON body's fields, or the
frame with phone numbers and emails masked."""

from __future__ import annotations

import random

import orjson

from ingest import redact
from ingest.model import RAW_BYTES
from ingest.redact import allowed_json, digest, masked, opaque

SPEC = {"id": None, "items": {"sku": None, "qty": None}, "ship": {"country": None}}


def test_only_listed_fields_are_kept_whatever_else_the_body_has() -> None:
    raw = orjson.dumps(
        {
            "id": 7,
            "email": "a@b.vn",
            "new_field_tomorrow": "Nguyễn Văn A",
            "items": [{"sku": "VT01", "qty": 2, "title": "for Lan"}, "stray", 3],
            "ship": {"country": "VN", "name": "Lan", "phone": "0912345678"},
        }
    )
    kept = orjson.loads(allowed_json(raw, SPEC, {"topic": "orders/create"}))
    assert kept == {
        "_redacted": {**digest(raw), "kept": "allow-listed fields"},
        "_delivery": {"topic": "orders/create"},
        "id": 7,
        "items": [{"sku": "VT01", "qty": 2}],
        "ship": {"country": "VN"},
    }


def test_a_listed_scalar_that_is_an_object_or_list_is_dropped() -> None:
    """A field whose shape changed may hold anything: a scalar's place keeps only a scalar."""
    raw = orjson.dumps({"id": {"name": "Lan"}, "items": {"sku": "x", "n": "Lan"}, "ship": ["VN"]})
    kept = orjson.loads(allowed_json(raw, SPEC))
    assert kept == {"_redacted": kept["_redacted"], "items": {"sku": "x"}, "ship": []}


def test_long_strings_are_cut() -> None:
    kept = orjson.loads(allowed_json(orjson.dumps({"id": "x" * 1000}), SPEC))
    assert kept["id"] == "x" * 128


def test_a_body_that_is_not_a_json_object_keeps_its_length_and_hash_only() -> None:
    for raw in (b"name=Lan&phone=0912345678", b"[1, 2]", b"\xff\xfe", b'"0912345678"'):
        assert orjson.loads(allowed_json(raw, SPEC)) == orjson.loads(opaque(raw))
        assert b"0912345678" not in allowed_json(raw, SPEC)
        assert orjson.loads(opaque(raw))["_redacted"]["bytes"] == len(raw)


def test_a_large_body_is_kept_as_json_with_fewer_items() -> None:
    items = [{"sku": f"VT{n:04}", "qty": n + 1} for n in range(2000)]
    raw = orjson.dumps({"id": 1, "items": items})
    found = allowed_json(raw, SPEC)
    assert len(found) <= RAW_BYTES
    kept = orjson.loads(found)
    listed = kept["_redacted"]["listed"]["items"]
    assert kept["items"] == items[:listed]
    assert 0 < listed < 2000
    assert kept["id"] == 1


def test_phone_numbers_and_emails_are_masked_and_the_rest_kept() -> None:
    raw = (
        b'{"text":"VT01 2kg sdt 0912 345 678, +84 987.654.321, zalo 0987-654-321",'
        b'"user":"Lan 0912345678","mail":"lan.ng@example.vn","id":"c-1"}'
    )
    found = masked(raw)
    assert len(found) == len(raw)
    for secret in (b"912", b"345 678", b"987", b"654", b"lan.ng", b"example.vn"):
        assert secret not in found
    assert b'"text":"VT01 2kg sdt #### ### ###, +## ###.###.###' in found
    assert b'"id":"c-1"' in found


def test_counts_and_money_stay_readable_unless_they_look_like_a_phone() -> None:
    raw = b'{"count":1000000001,"amount":"1000000000000001","price":"0912345678","qty":1}'
    assert masked(raw) == (
        b'{"count":1000000001,"amount":"1000000000000001","price":"##########","qty":1}'
    )


def test_a_number_cut_by_the_raw_limit_is_masked_whole_and_other_bytes_kept() -> None:
    raw = b"\xff" + b"x" * (RAW_BYTES - 6) + b"0912345678 tail"
    found = masked(raw)
    assert len(found) == RAW_BYTES
    assert found.startswith(b"\xff")
    assert found.endswith(b"#####")
    for short in (b"VT01 x3, id 12345678", b'"ts":"2025-06-14T09:05:08+07:00"', b"12.345.678"):
        assert masked(short) == short


def test_emails_are_found_as_the_email_pattern_finds_them() -> None:
    # The linear search by "@" (a hostile frame of letters made the pattern's own search
    # quadratic) finds exactly the pattern's matches: random texts over the characters that
    # matter (local-part and domain characters, "@", separators, non-ASCII letters and digits).
    rng = random.Random(17)
    alphabet = "ab_1.+-@ é\u0661x.c@"
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert redact._email_spans(text) == [m.span() for m in redact._EMAIL.finditer(text)], text


def test_an_email_after_a_long_run_of_letters_is_masked() -> None:
    address = "buyer.name+live@shop.example.vn"
    frame = orjson.dumps({"text": "a" * 6000 + " " + address + " " + "b" * 1500 + "@x"})
    kept = masked(frame)
    assert address.encode() not in kept
    assert b"*" * len(address) in kept
    assert kept.count(b"a") >= 6000
