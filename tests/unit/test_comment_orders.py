"""Tests for the comment-order parser (ingest.comment_orders): one test per counting rule, the
words that only look like orders or withdrawals, phone numbers, and a property: it never raises
and never lets a phone number out."""

from __future__ import annotations

import dataclasses
import re
import unicodedata

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.comment_orders import (
    MAX_CHARS,
    MAX_GRAMS,
    MAX_TOKENS,
    MAX_UNITS,
    Ambiguous,
    AmbiguousReason,
    CommentParser,
    Intent,
    OrderIntent,
    ParsedComment,
    ProductLike,
    Withdrawal,
    fold,
    parse_comment,
)


@dataclasses.dataclass(frozen=True)
class Product:
    sku: str
    aliases: tuple[str, ...] = ()
    unit_grams: int | None = None


class StructProduct(msgspec.Struct, frozen=True):
    """The protocol is structural: a msgspec Struct with the same fields satisfies it too."""

    sku: str
    aliases: tuple[str, ...] = ()
    unit_grams: int | None = None


CATALOG: tuple[ProductLike, ...] = (
    Product("VT01", ("vải 1kg", "hộp 1 ký"), 1000),
    Product("VT02", ("vải 2kg", "hộp 2 ký"), 2000),
    Product("VT05", ("vải 5kg", "thùng 5 ký", "thùng to"), 5000),
    Product("VK", ("vải cân", "vải lẻ")),
    StructProduct("MO01", ("mật ong",), 500),
)
PARSER = CommentParser(CATALOG)


def intents(text: str | bytes) -> tuple[Intent, ...]:
    return PARSER.parse(text).intents


def order(sku: str, quantity: int) -> tuple[Intent, ...]:
    return (OrderIntent(sku, quantity),)


# --- counting rules (issue 14) -----------------------------------------------------------------


@pytest.mark.parametrize("text", ["VT05", "vt05", "vt 05", "vt5", "VT-05", "VT05 0912345678"])
def test_a_bare_code_is_an_order_of_one(text: str) -> None:
    assert intents(text) == order("VT05", 1)


@pytest.mark.parametrize("text", ["vải 5kg", "vai 5kg", "thùng 5 ký", "thung 5 ky", "thùng to"])
def test_a_bare_alias_is_an_order_of_one_with_or_without_diacritics(text: str) -> None:
    assert intents(text) == order("VT05", 1)


@pytest.mark.parametrize(
    ("text", "units"), [("VT01 2kg", 2), ("vt01 3 ký", 3), ("VT02 4kg", 2), ("VT05 10kg", 2)]
)
def test_a_whole_number_of_units_in_kilograms_is_that_many_units(text: str, units: int) -> None:
    assert intents(text) == order(text[:4].upper(), units)


@pytest.mark.parametrize("text", ["VT02 5kg", "vt05 7kg", "vt01 1,5kg", "VT01 500g"])
def test_kilograms_that_are_not_whole_units_are_ambiguous_not_an_order(text: str) -> None:
    assert intents(text) == (Ambiguous(AmbiguousReason.NOT_WHOLE_UNITS, text[:4].upper()),)


@pytest.mark.parametrize(
    ("text", "grams"),
    [
        ("VK 1,5kg", 1500),
        ("vk 1.5 kg", 1500),
        ("VK 500g", 500),
        ("vk 700gr", 700),
        ("VK x2", 2000),
        ("VK 2 ký", 2000),
        ("VK", 1000),
        ("vải cân nửa ký", 500),
        ("vải cân 1 ký rưỡi", 1500),
        ("3 ký vải lẻ", 3000),
    ],
)
def test_a_product_sold_by_the_kilogram_is_ordered_in_grams(text: str, grams: int) -> None:
    assert intents(text) == order("VK", grams)


def test_boxes_of_a_product_sold_by_the_kilogram_are_ambiguous() -> None:
    assert intents("VK 2 thùng") == (Ambiguous(AmbiguousReason.CONTAINER_FOR_WEIGHED, "VK"),)


@pytest.mark.parametrize(
    ("text", "units"),
    [
        ("VT05 x2", 2),
        ("vt05 x 3", 3),
        ("VT05*4", 4),
        ("vt05 ×5", 5),
        ("2 x VT05", 2),
        ("vt05 sl 3", 3),
        ("vt05 sl: 3", 3),
        ("VT05 số lượng 2", 2),
        ("vt05 so luong 2", 2),
        ("VT05 2 thùng", 2),
        ("2 thùng VT05", 2),
        ("chốt VT05 x2", 2),
        ("chốt 2 vt05", 2),
        ("lấy 1 vt05", 1),
        ("cho em 2 thùng vt05", 2),
        ("VT05 2", 2),
        ("vt05: 2", 2),
        ("chốt hai thùng vt05", 2),
        ("VT05 two boxes", 2),
        ("VT05 three please", 3),
        ("2 thùng 5 ký", 2),
        ("vải 5kg x2", 2),
    ],
)
def test_quantities(text: str, units: int) -> None:
    assert intents(text) == order("VT05", units)


def test_the_kilograms_of_an_alias_are_its_name_not_a_quantity() -> None:
    assert intents("vải 5kg") == order("VT05", 1)
    assert intents("VT05 5kg") == order("VT05", 1)
    assert intents("VT05 x2 10kg") == order("VT05", 2)


def test_two_different_quantities_for_one_product_are_ambiguous() -> None:
    conflict = (Ambiguous(AmbiguousReason.CONFLICTING_QUANTITIES, "VT05"),)
    assert intents("VT05 x2 3 thùng") == conflict
    assert intents("vt05 x2 x3") == conflict
    assert intents("vt05 x2, vt05 x3") == conflict


def test_a_repeated_code_is_one_order() -> None:
    assert intents("VT05 VT05 VT05") == order("VT05", 1)
    assert intents("vt05 x2 vt05 x2") == order("VT05", 2)


def test_several_products_in_one_comment() -> None:
    assert intents("VT01 x2 VT05 x1") == (OrderIntent("VT01", 2), OrderIntent("VT05", 1))
    assert intents("vt05 và 1 hũ mật ong") == (OrderIntent("VT05", 1), OrderIntent("MO01", 1))
    assert intents("vt02, vải cân 1kg") == (OrderIntent("VT02", 1), OrderIntent("VK", 1000))


def test_one_of_each_is_ambiguous() -> None:
    assert intents("mỗi loại 1") == (Ambiguous(AmbiguousReason.ONE_OF_EACH),)
    assert intents("vt01 vt02 moi loai 2") == (Ambiguous(AmbiguousReason.ONE_OF_EACH),)


def test_an_unknown_code_is_ambiguous_without_a_sku() -> None:
    assert intents("VT07 x2") == (Ambiguous(AmbiguousReason.UNKNOWN_CODE),)
    assert intents("VT07 bao nhiêu") == ()


@pytest.mark.parametrize(
    ("text", "sku"),
    [
        ("VT05 x0", "VT05"),
        ("VK 0kg", "VK"),
        (f"VT05 x{MAX_UNITS + 1}", "VT05"),
        (f"VK {MAX_GRAMS // 1000 + 1}kg", "VK"),
    ],
)
def test_zero_and_absurd_quantities_are_out_of_range(text: str, sku: str) -> None:
    assert intents(text) == (Ambiguous(AmbiguousReason.OUT_OF_RANGE, sku),)


def test_the_largest_quantities_are_orders() -> None:
    assert intents(f"VT05 x{MAX_UNITS}") == order("VT05", MAX_UNITS)
    assert intents(f"VK {MAX_GRAMS // 1000}kg") == order("VK", MAX_GRAMS)


# --- withdrawals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "hủy VT05",
        "huỷ vt05",
        "huy vt05",
        "bỏ vt05",
        "bo vt05 nha",
        "cancel VT05",
        "vt05 em hủy nhé",
    ],
)
def test_withdrawal_of_a_product(text: str) -> None:
    assert intents(text) == (Withdrawal("VT05"),)


@pytest.mark.parametrize(
    "text", ["hủy đơn", "huy don", "Huỷ đơn giúp em", "hủy", "cancel order", "không lấy nữa"]
)
def test_a_withdrawal_naming_no_product_is_any(text: str) -> None:
    assert intents(text) == (Withdrawal(None),)


def test_withdraw_one_and_order_another() -> None:
    assert intents("hủy vt05 lấy vt02") == (Withdrawal("VT05"), OrderIntent("VT02", 1))


@pytest.mark.parametrize("text", ["bớt 1 hộp", "bớt 1 thùng vt05", "hủy 1 thùng vt05 thôi"])
def test_a_partial_withdrawal_is_ambiguous(text: str) -> None:
    (intent,) = intents(text)
    assert isinstance(intent, Ambiguous)
    assert intent.reason is AmbiguousReason.PARTIAL_WITHDRAWAL


def test_a_swap_is_ambiguous() -> None:
    assert {i.reason for i in intents("đổi vt05 sang vt02") if isinstance(i, Ambiguous)} == {
        AmbiguousReason.CHANGE
    }


@pytest.mark.parametrize(
    "text",
    [
        "bỏ thêm đá",
        "bỏ lỡ",
        "bỏ lỡ vt05 tiếc quá",
        "đừng hủy",
        "đừng hủy đơn vt05 nha",
        "ko huy nha",
        "bơ ngon không shop",
        "hủy được không shop",
        "hôm qua em hủy đơn rồi",
    ],
)
def test_words_that_only_look_like_withdrawals(text: str) -> None:
    assert intents(text) == ()


# --- not intents -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # questions: price, stock, shipping
        "VT10 x2 bao nhiêu tiền ship về Huế?",
        "VT05 x2 bao nhiêu tiền ship về Huế?",
        "còn VT05 không shop",
        "con vt05 ko",
        "vt05?",
        "giá vt02 sao shop",
        "lấy vt05 được không",
        "is VT05 still available?",
        # conditionals and futures
        "nếu còn thì lấy",
        "nếu còn VT05 thì em lấy 2 thùng",
        "để mai",
        "để mai em lấy VT05",
        "mai chốt vt05",
        "tomorrow VT05 x2",
        # negations
        "không lấy vt05",
        "ko lay vt05",
        "don't want VT05",
        # past orders and payments
        "hôm qua đặt VT05 rồi",
        "đã chốt VT05 x2",
        "ck rồi nha shop vt05",
        # reminders, other people
        "shop nhớ gửi vt05 cho em nha",
        "@Lan vt05 ngon nè",
        "chị ấy lấy vt05 kìa",
        "mẹ em bảo lấy vt05",
        # chit-chat, and a phone number alone
        "ship Hà Nội được không",
        "vải ngon quá",
        "2 ngày nữa có hàng không",
        "thùng to quá trời",
        "0912345678",
        "x2",
        "chốt đơn",
    ],
)
def test_not_intents(text: str) -> None:
    assert intents(text) == ()


def test_an_order_beside_a_question_in_another_clause_counts() -> None:
    assert intents("chốt vt05 x2, ship Huế mất mấy ngày?") == order("VT05", 2)
    assert intents("VT05 nha chị, vải nhìn ngon quá") == order("VT05", 1)


def test_a_quantity_in_its_own_line_goes_to_the_only_product() -> None:
    assert intents("Tên: Mai\nSĐT: 0865 444 555\nĐơn: VT01 x3") == order("VT01", 3)
    assert intents("VT02\n2 hộp") == order("VT02", 2)
    assert intents("VT02 - 0388999111 - Hoàng Mai") == order("VT02", 1)


# --- phone numbers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "0912345678",
        "0912 345 678",
        "0987.654.321",
        "0356-789-012",
        "(0912) 345 678",
        "+84912345678",
        "+84 912 345 678",
        "84912345678",
        "sdt: 0599 123 456",
        "vt05 84 912 345 678",
    ],
)
def test_a_vietnamese_mobile_is_found(text: str) -> None:
    assert PARSER.parse(text).has_phone


@pytest.mark.parametrize(
    "text",
    [
        "024 3826 1234",  # Hà Nội landline
        "028.3822.1111",  # Hồ Chí Minh City landline
        "0212345678",  # 02: not a mobile prefix
        "0123456789",
        "091234567",  # nine digits
        "09123456789",  # eleven
        "+1 415 555 0100",
        "+66 81 234 5678",
        "09xx xxx xxx",
        "vt0912345678",
    ],
)
def test_landlines_foreign_and_malformed_numbers_are_not_mobiles(text: str) -> None:
    assert not PARSER.parse(text).has_phone


def test_no_digit_of_a_number_is_read_as_a_quantity() -> None:
    assert intents("VT05 024 3826 1234") == order("VT05", 1)
    assert intents("vt05 0912 345") == order("VT05", 1)
    assert intents("VT05 09123456789") == order("VT05", 1)
    assert PARSER.parse("chot vt05 x2 sdt 0912345678") == ParsedComment(order("VT05", 2), True)


# --- text handling -----------------------------------------------------------------------------


def test_fold() -> None:
    assert fold("Hủy ĐƠN") == "huy don"
    assert fold("Đặt VẢI thiều") == "dat vai thieu"


def test_decomposed_and_bytes_input_read_like_composed_text() -> None:
    text = "chốt thùng 5 ký x2 0912 345 678"
    expected = PARSER.parse(text)
    assert expected == ParsedComment(order("VT05", 2), True)
    assert PARSER.parse(unicodedata.normalize("NFD", text)) == expected
    assert PARSER.parse(text.encode()) == expected
    assert PARSER.parse("ＶＴ０５ ｘ２").intents == order("VT05", 2)  # full-width


def test_only_the_start_of_a_long_comment_is_read() -> None:
    assert intents("VT05 " + "a" * (MAX_CHARS * 10)) == order("VT05", 1)
    assert intents("a" * MAX_CHARS + " VT05") == ()
    assert intents("🥰 " * (MAX_TOKENS - 2) + "VT05") == order("VT05", 1)  # vt, 05
    assert intents("🥰 " * MAX_TOKENS + "VT05") == ()


def test_parse_comment_compiles_the_products_it_is_given() -> None:
    assert parse_comment("vt05", CATALOG).intents == order("VT05", 1)
    assert parse_comment("vt05", []).intents == ()


# --- properties --------------------------------------------------------------------------------

WORDS = st.sampled_from(
    ["VT05", "vt 05", "x2", "2", "thùng", "hủy", "bỏ", "kg", "1,5", "không", "?", ",", "\n",
     "chốt", "lấy", "sl", "vải cân", "mỗi loại", "0912 345 678", "+84", "🥰", "đơn", "nửa"]
)  # fmt: skip


TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)


@settings(max_examples=300, deadline=None)
@given(st.one_of(TEXT, st.lists(WORDS, max_size=20).map(" ".join)))
def test_never_raises_and_gives_bounded_intents(text: str) -> None:
    parsed = PARSER._parse(text)  # not parse(), which would hide an exception
    assert isinstance(parsed, ParsedComment)
    for intent in parsed.intents:
        if isinstance(intent, OrderIntent):
            limit = MAX_GRAMS if intent.sku == "VK" else MAX_UNITS
            assert 0 < intent.quantity <= limit
        if isinstance(intent, Ambiguous):
            assert intent.reason in set(AmbiguousReason)
    assert PARSER.parse(text.encode()) == parsed


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_parsed_without_raising(raw: bytes) -> None:
    assert isinstance(PARSER._parse(raw), ParsedComment)


def test_invalid_utf8_and_lone_surrogates_are_read_around() -> None:
    assert intents(b"\xff\xfe VT05 x2") == order("VT05", 2)
    assert intents("\ud800 VT05 x2") == order("VT05", 2)


@settings(max_examples=200, deadline=None)
@given(
    st.from_regex(r"0[35789][0-9]{8}", fullmatch=True),
    st.sampled_from(["VT05 ", "chốt vt02 x2 sdt ", "hủy đơn ", ""]),
)
def test_a_phone_number_never_leaves_the_parser(number: str, prefix: str) -> None:
    parsed = PARSER.parse(prefix + number)
    assert parsed.has_phone
    assert number not in repr(parsed)
    assert not any(len(run) >= 7 for run in re.findall(r"\d+", repr(parsed)))
