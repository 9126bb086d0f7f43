"""Comment orders ("chốt đơn"): what a buyer's comment asks for, read from its text.

Pure: a comment's text (``str`` or UTF-8 ``bytes``) and the products of its stream in, a
:class:`ParsedComment` out: a tuple of intents (:class:`OrderIntent`, :class:`Withdrawal`,
:class:`Ambiguous`) and whether the comment carried a valid Vietnamese mobile number (a boolean
only: the number itself never leaves this module). :meth:`CommentParser.parse` never raises.

Built for precision over recall: a comment that might be a question, a condition, a negation, a
past order, a reminder, chit-chat or about someone else yields no intent, because an operator who
calls a buyer who did not order costs more than a missed order. The rules, in order:

1. Text is normalised (NFKC, case-folded) and cut to :data:`MAX_CHARS`; phone numbers are found
   and masked, then every other long run of digits (landlines, foreign numbers), so no digit of a
   number is read as a quantity.
2. Words are compared without diacritics (NFD, combining marks stripped, đ → d); a few words
   whose diacritics change their meaning (bỏ "drop" and bơ "butter", đã "already" and dạ "yes")
   are also checked as written.
3. Product mentions: every SKU and alias, as tokens, with numbers compared by value, so ``VT05``,
   ``vt 05``, ``vt5`` and ``VT-05`` are one code and ``thùng 5 ký`` matches ``thung 5kg``.
4. The comment is cut into clauses (punctuation, line breaks, a closing particle such as "nhé");
   a clause that asks, negates, or chats yields nothing; a comment that speaks of the past, the
   future, a condition or another person yields nothing at all.
5. Quantities (``x2``, ``sl 3``, ``2 thùng``, ``1,5kg``, ``500g``, ``lấy 2``, number words) go
   to the product next to them; the counting rules of issue 14 turn them into intents.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Final, Protocol

from ingest.model import TEXT_CHARS

MAX_CHARS: Final = TEXT_CHARS
"""Only the start of a longer comment is read: an order is short, and every rule is linear."""
MAX_TOKENS: Final = 64
"""Words and signs read from one comment (an emoji is one; the longest labelled comment has 16):
bounds the work one comment can cause."""
MAX_UNITS: Final = 10_000
"""Largest quantity of units in one order, as in the native order format (``qty``)."""
MAX_GRAMS: Final = 1_000_000
"""Largest weight of one order of a product sold by the kilogram: a tonne."""


class ProductLike(Protocol):
    """What the parser needs of a product; the catalog's ``Product`` satisfies it."""

    @property
    def sku(self) -> str: ...

    @property
    def aliases(self) -> tuple[str, ...]: ...

    @property
    def unit_grams(self) -> int | None:
        """Grams of one unit, or None for a product sold by the kilogram."""


class AmbiguousReason(enum.StrEnum):
    """Why a comment that looks like an order is not one. A closed set: it may be a label."""

    NOT_WHOLE_UNITS = "not_whole_units"
    """A weight that is not a whole number of units (``VT02 5kg`` for a 2 kg box), or a
    fraction of a unit."""
    CONTAINER_FOR_WEIGHED = "container_for_weighed"
    """Boxes or bags of a product sold by the kilogram (``VK 2 thùng``)."""
    CONFLICTING_QUANTITIES = "conflicting_quantities"
    ONE_OF_EACH = "one_of_each"
    PARTIAL_WITHDRAWAL = "partial_withdrawal"
    CHANGE = "change"
    """A swap (``đổi VT05 sang VT02``)."""
    UNKNOWN_CODE = "unknown_code"
    """A code shaped like the catalog's (``VT07``) that names no product."""
    OUT_OF_RANGE = "out_of_range"
    """Zero, or more than :data:`MAX_UNITS` units or :data:`MAX_GRAMS` grams."""


@dataclasses.dataclass(frozen=True, slots=True)
class OrderIntent:
    sku: str
    quantity: int
    """Units for a product sold by the unit; grams for a product sold by the kilogram."""


@dataclasses.dataclass(frozen=True, slots=True)
class Withdrawal:
    sku: str | None
    """The product withdrawn; None for a withdrawal naming none (``hủy đơn``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Ambiguous:
    reason: AmbiguousReason
    sku: str | None = None


Intent = OrderIntent | Withdrawal | Ambiguous


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedComment:
    intents: tuple[Intent, ...] = ()
    has_phone: bool = False
    """Whether the comment carried a valid Vietnamese mobile number."""


NOTHING: Final = ParsedComment()

# --- text --------------------------------------------------------------------------------------

# A mobile: 0 + 9 digits, or 84 / +84 + 9 digits; one or two separators (space, dot, dash,
# parenthesis) allowed between digits; not glued to a word (the 05 of "vt05 84 912 ..." starts
# no number). Which prefixes are mobile is checked on the digits.
_PHONE = re.compile(r"(?<![\w+])(?:\+\s?84|84|0)(?:[\s.\-()]{0,2}\d){9}(?!\d)")
_MOBILE_DIGITS = re.compile(r"(?:84|0)[35789]\d{8}")
# Any other run of 7 or more digits with separators: never a quantity.
_LONG_NUMBER = re.compile(r"(?<![\w+])\+?\d(?:[\s.\-()]{0,2}\d){6,}(?!\d)")
_TOKEN = re.compile(r"\d+(?:[.,]\d+)?|(?:[^\W\d_]|[\u0300-\u036f])+|\n|[^\w\s]")
_MASK = " \u260e "  # a token of its own that is neither a word nor a number


@functools.lru_cache(maxsize=8192)
def fold(text: str) -> str:
    """Case-folded, without diacritics: ``Hủy ĐƠN`` → ``huy don``."""
    decomposed = unicodedata.normalize("NFD", text.casefold())
    stripped = "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")
    return stripped.replace("đ", "d")


def _as_text(text: str | bytes) -> str:
    if isinstance(text, bytes | bytearray):
        text = bytes(text[: MAX_CHARS * 4]).decode("utf-8", "replace")
    text = text[:MAX_CHARS].encode("utf-8", "replace").decode("utf-8")
    return unicodedata.normalize("NFKC", text).casefold()


def mask_numbers(text: str) -> tuple[str, bool]:
    """The text with phone numbers and other long digit runs masked, and whether a valid
    Vietnamese mobile was among them."""
    found = False

    def phone(match: re.Match[str]) -> str:
        nonlocal found
        digits = re.sub(r"\D", "", match.group())
        if _MOBILE_DIGITS.fullmatch(digits) and len(digits) in (10, 11):
            found = True
        return _MASK

    text = _PHONE.sub(phone, text)
    return _LONG_NUMBER.sub(_MASK, text), found


@dataclasses.dataclass(frozen=True, slots=True)
class Tok:
    orig: str
    """As written (NFKC, case-folded), diacritics kept."""
    word: str
    """Folded; weight units after a number normalised to ``kg`` / ``g``."""
    number: Decimal | None = None

    @property
    def marked(self) -> bool:
        """Written with diacritics."""
        return self.orig != self.word


_KG = frozenset({"kg", "kgs", "ky", "ki", "kilo", "kilos", "kilogram", "kilograms", "can"})
_GRAM = frozenset({"g", "gr", "gam", "gram", "grams"})


def tokenise(text: str) -> list[Tok]:
    """Words (diacritics kept), numbers (``1,5`` is one) and signs; at most :data:`MAX_TOKENS`."""
    tokens: list[Tok] = []
    for match in _TOKEN.finditer(text):
        if len(tokens) >= MAX_TOKENS:
            break
        raw = match.group()
        if raw[0].isdigit():
            tokens.append(Tok(raw, raw, _decimal(raw)))
            continue
        word = fold(raw)
        if tokens and tokens[-1].number is not None:
            word = "kg" if word in _KG else "g" if word in _GRAM else word
        tokens.append(Tok(raw, word))
    return tokens


def _decimal(raw: str) -> Decimal | None:
    try:
        return Decimal(raw.replace(",", "."))
    except InvalidOperation:  # pragma: no cover - the token pattern only yields digits
        return None


# --- words -------------------------------------------------------------------------------------
# Folded words. Where a word's diacritics change its meaning, _WRITTEN lists the spellings
# (besides the bare, unmarked one) under which it is that word: "bỏ" (drop) but not "bơ"
# (butter), "bò" (beef) or "bộ" (a set); "đã" (already) but not "dạ" (yes).

_WRITTEN: Final[dict[str, frozenset[str]]] = {
    "a": frozenset({"ạ"}),
    "ba": frozenset(),
    "bo": frozenset({"bỏ"}),
    "bot": frozenset({"bớt"}),
    "can": frozenset(),
    "cho": frozenset(),
    "chua": frozenset({"chưa"}),
    "cua": frozenset({"của"}),
    "da": frozenset({"đã"}),
    "dat": frozenset({"đặt"}),
    "dau": frozenset({"đâu"}),
    "de": frozenset({"để"}),
    "doi": frozenset({"đổi"}),
    "dung": frozenset({"đừng"}),
    "gi": frozenset({"gì"}),
    "ha": frozenset({"hả", "hở"}),
    "hay": frozenset(),  # "or"; not "hãy" (do!)
    "hong": frozenset({"hông"}),
    "huy": frozenset({"hủy", "huỷ"}),
    "la": frozenset({"là"}),
    "may": frozenset({"mấy"}),
    "nao": frozenset({"nào"}),
    "nho": frozenset({"nhớ"}),
    "nua": frozenset({"nữa"}),
    "qua": frozenset({"quá", "qua"}),
    "that": frozenset({"thật"}),
    "re": frozenset({"rẻ"}),
    "roi": frozenset({"rồi"}),
    "sau": frozenset(),
    "se": frozenset({"sẽ"}),
    "tinh": frozenset({"tính"}),
    "vua": frozenset({"vừa"}),
    # Chit-chat, questions, reminders: only the word meant, not its look-alikes (Thủ Đức is a
    # place, not "thử"; "làm" is "do", not "lắm"; "tiện" is "handy", not "tiền").
    "bang": frozenset({"bằng"}),
    "boc": frozenset({"bóc"}),
    "cha": frozenset({"chả"}),
    "chac": frozenset({"chắc"}),
    "chang": frozenset({"chẳng"}),
    "dep": frozenset({"đẹp"}),
    "dinh": frozenset({"định"}),
    "ghe": frozenset({"ghê"}),
    "gia": frozenset({"giá"}),
    "het": frozenset({"hết"}),
    "hon": frozenset({"hơn"}),
    "khac": frozenset({"khác"}),
    "khi": frozenset(),
    "kia": frozenset({"kìa"}),
    "lam": frozenset({"lắm"}),
    "len": frozenset({"lên"}),
    "lim": frozenset({"lịm"}),
    "neu": frozenset({"nếu"}),
    "ngot": frozenset({"ngọt"}),
    "nhac": frozenset({"nhắc"}),
    "nhieu": frozenset({"nhiêu"}),
    "quay": frozenset(),
    "quen": frozenset({"quên"}),
    "thom": frozenset({"thơm"}),
    "thu": frozenset({"thử"}),
    "tien": frozenset({"tiền"}),
}
_ONLY_WRITTEN: Final[dict[str, frozenset[str]]] = {
    # Words that count only as written with their marks: the bare spelling means too much else.
    "dat-expensive": frozenset({"đắt"}),
    "cho-wait": frozenset({"chờ"}),
    "doi-wait": frozenset({"đợi"}),
    "toi-evening": frozenset({"tối"}),
    "ai": frozenset({"ai"}),
    "bao-say": frozenset({"bảo"}),
    "noi-say": frozenset({"nói"}),
    "them-crave": frozenset({"thèm"}),
    "a-question": frozenset({"à"}),
}


def _is(tok: Tok, word: str) -> bool:
    """Whether ``tok`` is ``word`` (folded), taking the marks of :data:`_WRITTEN` into account."""
    if tok.word != word:
        return False
    written = _WRITTEN.get(word)
    return written is None or not tok.marked or tok.orig in written


def _written(tok: Tok, key: str) -> bool:
    return tok.orig in _ONLY_WRITTEN[key]


class _Phrases:
    """Folded words and phrases, indexed by their first word: one pass over a comment's tokens
    finds any of them."""

    def __init__(self, *texts: str) -> None:
        self._by_first: dict[str, list[tuple[str, ...]]] = {}
        for text in texts:
            phrase = tuple(text.split())
            self._by_first.setdefault(phrase[0], []).append(phrase)

    def at(self, tokens: Sequence[Tok], i: int) -> bool:
        return any(_at(tokens, i, phrase) for phrase in self._by_first.get(tokens[i].word, ()))

    def found(self, tokens: Sequence[Tok]) -> bool:
        by_first = self._by_first
        return any(tok.word in by_first and self.at(tokens, i) for i, tok in enumerate(tokens))


_QUESTION = _Phrases(
    "bao nhieu", "bn", "nhieu", "bao lau", "bao gio", "khi nao", "luc nao", "o dau", "dau",
    "the nao", "ntn", "gia", "may", "gi", "nao", "la", "hay", "sao", "how", "what", "when",
    "where", "why", "which", "price", "much", "available", "stock", "cost", "is", "are", "do",
    "does", "can", "could", "co ship", "freeship", "free ship", "bao tien", "bnhieu", "bao nhiu",
    "nhiu", "tien",
)  # fmt: skip
_QUESTION_FINAL = frozenset(
    {"khong", "ko", "k", "kh", "hong", "hok", "hem", "khum", "chua", "ha", "nhi", "vay", "the"}
)
_POLITE = frozenset(
    {"a", "shop", "sop", "chi", "c", "em", "e", "anh", "oi", "ad", "admin", "ban", "nha", "nhe"}
)
_NEGATION = _Phrases(
    "khong", "ko", "kh", "hong", "hok", "khum", "chua", "dung", "chang", "cha", "no", "not",
    "never", "dont", "don ' t", "don ’ t", "can ' t", "can ’ t", "won ' t", "won ’ t",
)  # fmt: skip
_PAST = _Phrases(
    "roi", "vua", "hqua", "already", "ordered", "paid", "bought", "yesterday", "hom qua",
    "hom truoc", "hom kia", "luc nay", "hoi nay", "lan truoc", "tuan truoc", "bua truoc",
    "dot truoc", "live truoc", "nam ngoai", "thang truoc",
)  # fmt: skip
_FUTURE = _Phrases(
    "neu", "if", "de", "se", "dinh", "tinh", "chac", "khi", "tomorrow", "later", "maybe", "next",
    "co le", "lat nua", "ti nua", "ty nua", "chut nua", "tuan sau", "lan sau", "dot sau",
    "hom sau", "thang sau", "sau nay", "cuoi thang", "hom khac", "suy nghi", "quay lai",
    "ngay mai", "sang mai",
)  # fmt: skip
_OTHERS = _Phrases(
    "chi ay", "anh ay", "ban ay", "em ay", "co ay", "ban kia", "chi kia", "anh kia", "nguoi ta",
    "ng ta", "moi nguoi", "mn", "my friend",
)  # fmt: skip
_REMINDER = _Phrases("nhac", "nho", "quen", "remind", "cua")
_CHAT = _Phrases(
    "ngon", "ngot", "qua", "lam", "dep", "xinh", "thom", "het", "hon", "tiec", "thu", "xem",
    "quay", "len", "boc", "sale", "giam gia", "re", "khac", "thich", "bang", "that", "ghe", "lim",
    "kia",
)  # fmt: skip
_ONE_OF_EACH = _Phrases("moi loai", "moi thu", "moi cai", "moi mau", "each")

_ORDER_VERBS = frozenset(
    {"chot", "lay", "dat", "mua", "order", "take", "want", "xin", "giu", "cho", "book", "buy"}
)
_WITHDRAW_VERBS = frozenset({"huy", "bo", "cancel", "xoa"})
_WITHDRAW_OBJECTS = frozenset(
    {"don", "order", "my", "het", "luon", "nha", "nhe", "a", "di", "giup", "gium", "dum", "cho",
     "em", "e", "shop", "please", "pls", "vs", "ho"}
)  # fmt: skip
_PRONOUNS = frozenset(
    {"em", "e", "minh", "mk", "mik", "m", "toi", "i", "to", "chau", "anh", "chi", "c", "cho",
     "giup", "gium", "dum", "them", "me", "'", "ll", "d", "ban"}
)  # fmt: skip
_CONNECTORS = frozenset({"va", "voi", "+", "&", "and", "them", "plus"})
_CONTAINERS = frozenset(
    {"thung", "th", "hop", "hu", "tui", "goi", "cai", "box", "boxes", "set", "sets", "phan",
     "suat", "chai", "lo", "bich", "pcs", "pack", "packs", "bag", "bags", "jar", "jars", "bo"}
)  # fmt: skip
_MARKERS = frozenset({"x", "×", "*", "sl", "qty", "soluong"})
_BARE_AFTER = frozenset(
    {"a", "nha", "nhe", "nhen", "shop", "chi", "c", "em", "e", "anh", "please", "pls", "thanks",
     "luon", "oi", "ib", "ship", "cod"}
)  # fmt: skip
_SKIPPABLE = frozenset({":", "=", "-", "("})
_BOUNDARIES = frozenset({",", ";", ".", "!", "?", "\n", "…"})
_CLOSING = frozenset({"nha", "nhe", "nhen", "nghen", "oi"})
_VI_NUMBERS: Final[dict[str, int]] = {
    "một": 1, "mot": 1, "hai": 2, "ba": 3, "bốn": 4, "bon": 4, "tư": 4, "năm": 5, "nam": 5,
    "sáu": 6, "bảy": 7, "bẩy": 7, "tám": 8, "tam": 8, "chín": 9, "chin": 9, "mười": 10,
    "muoi": 10,
}  # fmt: skip
_EN_NUMBERS: Final[dict[str, int]] = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10,
}  # fmt: skip


def _at(tokens: Sequence[Tok], i: int, phrase: tuple[str, ...]) -> bool:
    if i + len(phrase) > len(tokens):
        return False
    return all(_is(tokens[i + k], word) for k, word in enumerate(phrase))


# --- products ----------------------------------------------------------------------------------

Key = str | Decimal
"""A token as a pattern sees it: its folded word, or its number (so 05 == 5)."""


def _key(tok: Tok) -> Key:
    return tok.word if tok.number is None else tok.number


@dataclasses.dataclass(frozen=True, slots=True)
class Mention:
    """A product named in the comment; ``sku`` None for a code the catalog does not know."""

    sku: str | None


Element = Tok | Mention


@dataclasses.dataclass(frozen=True, slots=True)
class _Pattern:
    keys: tuple[Key, ...]
    sku: str


def _patterns(products: Iterable[ProductLike]) -> tuple[list[_Pattern], frozenset[str]]:
    """Token patterns of every SKU and alias, longest first, and the letter prefixes of codes
    (``vt`` of ``VT05``) that make an unknown code recognisable."""
    patterns: dict[tuple[Key, ...], str] = {}
    prefixes: set[str] = set()
    for product in products:
        for name in (product.sku, *product.aliases):
            tokens = tokenise(unicodedata.normalize("NFKC", name).casefold())
            keys = tuple(_key(tok) for tok in tokens if tok.word not in ("-", "."))
            if keys:
                patterns.setdefault(keys, product.sku)
            if len(keys) == 2 and isinstance(keys[0], str) and isinstance(keys[1], Decimal):
                prefixes.add(keys[0])
    ordered = sorted(patterns.items(), key=lambda item: -len(item[0]))
    return [_Pattern(keys, sku) for keys, sku in ordered], frozenset(prefixes)


def _match(tokens: Sequence[Tok], i: int, keys: tuple[Key, ...]) -> int:
    """Tokens of ``tokens[i:]`` that ``keys`` matches (a dash or dot may stand between a code's
    letters and its number), or 0."""
    j = i
    for k, key in enumerate(keys):
        if (
            k > 0
            and isinstance(key, Decimal)
            and j < len(tokens)
            and tokens[j].word in ("-", ".")
            and tokens[j - 1].number is None
        ):
            j += 1
        if j >= len(tokens) or _key(tokens[j]) != key:
            return 0
        j += 1
    return j - i


def _unknown_code(tokens: Sequence[Tok], i: int, prefixes: frozenset[str]) -> int:
    if tokens[i].word not in prefixes or i + 1 >= len(tokens):
        return 0
    number = tokens[i + 1]
    if number.number is None or not number.orig.isdigit() or len(number.orig) > 3:
        return 0
    return 2


@dataclasses.dataclass(frozen=True, slots=True)
class Quantity:
    kind: str
    """``count`` (x2, sl 2, lấy 2), ``container`` (2 thùng), ``grams`` (2kg, 500g), ``bare``
    (a lone number next to a product)."""
    value: Decimal


# --- clauses -----------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Clause:
    elements: list[Element]
    asks: bool = False
    """Ended by a question mark."""

    @property
    def tokens(self) -> list[Tok]:
        return [el for el in self.elements if isinstance(el, Tok)]


def _clauses(elements: Sequence[Element]) -> list[_Clause]:
    """Cut at punctuation and line breaks, and after a closing particle ("nhé", "ơi", "ạ")
    that more words follow."""
    clauses = [_Clause([])]
    for i, el in enumerate(elements):
        if isinstance(el, Tok) and el.word in _BOUNDARIES:
            clauses[-1].asks = clauses[-1].asks or el.word == "?"
            clauses.append(_Clause([]))
            continue
        clauses[-1].elements.append(el)
        closing = isinstance(el, Tok) and (el.word in _CLOSING or el.orig == "ạ")
        following = elements[i + 1] if i + 1 < len(elements) else None
        ends = following is None or (isinstance(following, Tok) and following.word in _BOUNDARIES)
        if closing and not ends:
            clauses.append(_Clause([]))
    return [clause for clause in clauses if clause.elements]


def _asks(clause: _Clause) -> bool:
    tokens = clause.tokens
    if clause.asks or _QUESTION.found(tokens):
        return True
    words = [tok for tok in tokens if tok.word.isalnum()]
    while words and (words[-1].word in _POLITE and not _written(words[-1], "a-question")):
        words.pop()
    if not words:
        return False
    last = words[-1]
    return _written(last, "a-question") or any(_is(last, word) for word in _QUESTION_FINAL)


def _negated(tokens: Sequence[Tok]) -> bool:
    for i, tok in enumerate(tokens):
        if tok.word == "k" and i > 0 and tokens[i - 1].number is not None:
            continue  # 350k: thousands
        if tok.word == "k" or _NEGATION.at(tokens, i):
            return True
    return False


def _stops_taking(tokens: Sequence[Tok]) -> bool:
    """``không lấy nữa``: a negated order verb and "nữa" (no more) withdraw."""
    for i, tok in enumerate(tokens):
        if tok.word in ("khong", "ko", "k", "kh") or _is(tok, "hong"):
            after = tokens[i + 1 : i + 3]
            verb = any(t.word in _ORDER_VERBS and _is(t, t.word) for t in after)
            if verb and any(_is(t, "nua") for t in tokens[i + 1 :]):
                return True
    return False


def _chats(tokens: Sequence[Tok]) -> bool:
    """Small talk, a reminder, or a word about a product rather than an order of it."""
    if _CHAT.found(tokens) or _REMINDER.found(tokens) or _tomorrow(tokens):
        return True
    return any(_written(tok, key) for tok in tokens for key in ("dat-expensive", "them-crave"))


def _tomorrow(tokens: Sequence[Tok]) -> bool:
    """``mai`` (tomorrow) opening a clause or before a pronoun or verb; not the district of
    Hoàng Mai or a buyer called Mai."""
    for i, tok in enumerate(tokens):
        if tok.word == "mai" and not tok.marked:
            following = tokens[i + 1].word if i + 1 < len(tokens) else ""
            if i == 0 or following in _PRONOUNS or following in _ORDER_VERBS:
                return True
    return False


_BLOCKING_SPELLINGS = frozenset().union(
    *(
        _ONLY_WRITTEN[key]
        for key in ("cho-wait", "doi-wait", "toi-evening", "ai", "bao-say", "noi-say")
    )
)


def _comment_blocked(tokens: Sequence[Tok]) -> bool:
    """The past, the future, a condition, another person: nothing in the comment counts."""
    if _PAST.found(tokens) or _OTHERS.found(tokens):
        return True
    if _FUTURE.found(tokens):
        return True
    for i, tok in enumerate(tokens):
        if tok.word == "@" and i + 1 < len(tokens):
            return True
        if tok.orig in _BLOCKING_SPELLINGS:
            return True
        if tok.word == "da" and (tok.orig == "đã" or _plain_da_before_verb(tokens, i)):
            return True
    return False


def _plain_da_before_verb(tokens: Sequence[Tok], i: int) -> bool:
    """Unmarked ``da`` is "dạ" (yes) or "đã" (already): already, if a verb follows at once."""
    following = tokens[i + 1] if i + 1 < len(tokens) else None
    verbs = _ORDER_VERBS | {"ck", "chuyen", "thanh", "nhan", "huy", "ib"}
    return not tokens[i].marked and following is not None and following.word in verbs


# --- quantities --------------------------------------------------------------------------------


def _tok(elements: Sequence[Element], i: int) -> Tok | None:
    if 0 <= i < len(elements):
        el = elements[i]
        return el if isinstance(el, Tok) else None
    return None


def _number(tok: Tok) -> tuple[Decimal, str] | None:
    """The value of a number token and how it was written: ``digits``, ``vi`` or ``en``."""
    if tok.number is not None:
        return tok.number, "digits"
    if tok.orig in _VI_NUMBERS:
        return Decimal(_VI_NUMBERS[tok.orig]), "vi"
    if tok.word in _EN_NUMBERS:
        return Decimal(_EN_NUMBERS[tok.word]), "en"
    return None


def _quantity_at(elements: Sequence[Element], i: int) -> Quantity | None:
    tok = _tok(elements, i)
    if tok is None:
        return None
    following = _tok(elements, i + 1)
    if tok.orig in ("nửa", "nua") and following is not None and following.word in _KG:
        return Quantity("grams", Decimal(500))
    found = _number(tok)
    if found is None:
        return None
    value, written = found
    if following is not None and following.word in _KG:
        half = _tok(elements, i + 2)
        extra = 500 if half is not None and half.word == "ruoi" else 0
        return Quantity("grams", value * 1000 + extra)
    if following is not None and following.word in _GRAM:
        return Quantity("grams", value)
    container = following is not None and following.word in _CONTAINERS
    if container and following is not None and (following.word != "bo" or following.orig == "bộ"):
        return Quantity("container", value)
    if _counted(elements, i) or _times_before(elements, i):
        return Quantity("count", value)
    return _bare(tok, value, written, elements[i + 1] if i + 1 < len(elements) else None)


def _times_before(elements: Sequence[Element], i: int) -> bool:
    """``2 x VT01``."""
    times = _tok(elements, i + 1)
    following = elements[i + 2] if i + 2 < len(elements) else None
    return times is not None and times.word in ("x", "×", "*") and isinstance(following, Mention)


def _counted(elements: Sequence[Element], i: int) -> bool:
    """After x, sl, số lượng, or an order verb (``lấy 2``, ``cho em 2``)."""
    before = _tok(elements, i - 1)
    if before is not None and before.word in (":", "="):
        before = _tok(elements, i - 2)  # sl: 3
    if before is not None and before.word in _MARKERS:
        return True
    if before is not None and before.word == "luong":
        two = _tok(elements, i - 2)
        return two is not None and two.word == "so"
    for back in range(1, 4):
        tok = _tok(elements, i - back)
        if tok is None:
            return False
        if tok.word in _ORDER_VERBS and _is(tok, tok.word):
            return True
        if tok.word not in _PRONOUNS:
            return False
    return False


def _bare(tok: Tok, value: Decimal, written: str, following: Element | None) -> Quantity | None:
    """A lone small number (``VT05 2``), kept only if a product stands right next to it."""
    if written == "vi":
        return None
    if written == "digits" and not (tok.orig.isdigit() and len(tok.orig) <= 3):
        return None
    if written == "digits" and tok.orig.startswith("0"):
        return None
    if following is None or isinstance(following, Mention):
        return Quantity("bare", value)
    if following.word in _BARE_AFTER or not (following.word.isalnum() or following.word == "%"):
        return Quantity("bare", value)
    return None


# --- one clause --------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Named:
    """A product mention, what the clause does with it, and its quantities."""

    mention: Mention
    mode: str
    quantities: list[Quantity] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class _Found:
    named: list[_Named] = dataclasses.field(default_factory=list)
    loose: list[Quantity] = dataclasses.field(default_factory=list)
    modes: set[str] = dataclasses.field(default_factory=set)
    """Modes set by a verb in the clause, with or without a product after it."""
    one_of_each: bool = False


def _verb_mode(elements: Sequence[Element], i: int) -> str | None:
    tok = _tok(elements, i)
    if tok is None:
        return None
    if any(_is(tok, verb) for verb in _WITHDRAW_VERBS) and _withdraws(elements, i):
        return "withdraw"
    if _is(tok, "bot") or (tok.word == "giam" and (_tok(elements, i + 1) or tok).word == "con"):
        return "partial"
    if _is(tok, "doi"):
        return "change"
    before = _tok(elements, i - 1)
    after_withdraw = before is not None and before.word in _WITHDRAW_VERBS
    if tok.word in _ORDER_VERBS - {"cho"} and _is(tok, tok.word) and not after_withdraw:
        return "order"
    return None


def _withdraws(elements: Sequence[Element], i: int) -> bool:
    """A withdrawal verb names what it withdraws: a product, the order, a quantity, or nothing
    (``bỏ VT05``, ``hủy đơn``, ``hủy``), not ``bỏ thêm đá`` or ``bỏ lỡ``."""
    following = elements[i + 1] if i + 1 < len(elements) else None
    if following is None or isinstance(following, Mention):
        return True
    return following.number is not None or following.word in _WITHDRAW_OBJECTS


def _analyse(clause: _Clause) -> _Found:
    found = _Found()
    elements = clause.elements
    mode = "withdraw" if _stops_taking(clause.tokens) else "order"
    if mode == "withdraw":
        found.modes.add(mode)
    if _ONE_OF_EACH.found(clause.tokens):
        found.one_of_each = True
    positions: list[int] = []
    for i, el in enumerate(elements):
        if isinstance(el, Mention):
            found.named.append(_Named(el, mode))
            positions.append(i)
            continue
        verb = _verb_mode(elements, i)
        if verb is not None:
            mode = verb
            found.modes.add(verb)
    if found.modes == {"withdraw"} and all(named.mode == "order" for named in found.named):
        for named in found.named:  # "VT05 em hủy nhé": the verb after what it withdraws
            named.mode = "withdraw"
    _assign(elements, positions, found)
    return found


def _assign(elements: Sequence[Element], positions: list[int], found: _Found) -> None:
    """Each quantity goes to the product before it, unless a connector or a verb stands
    between them ("VT05 và 1 hũ mật ong"); a lone number only to a product right next to it."""
    nxt = 0
    for p in range(len(elements)):
        while nxt < len(positions) and positions[nxt] <= p:
            nxt += 1
        quantity = _quantity_at(elements, p)
        if quantity is None:
            continue
        prev = nxt - 1 if nxt > 0 else None
        following = nxt if nxt < len(positions) else None
        target = _target(
            elements, positions, p, prev=prev, nxt=following, bare=quantity.kind == "bare"
        )
        if target is not None:
            found.named[target].quantities.append(quantity)
        elif quantity.kind != "bare" and not positions:
            found.loose.append(quantity)


def _target(
    elements: Sequence[Element],
    positions: list[int],
    p: int,
    *,
    prev: int | None,
    nxt: int | None,
    bare: bool,
) -> int | None:
    if bare:
        gap = elements[positions[prev] + 1 : p] if prev is not None else [Mention(None)]
        if all(isinstance(el, Tok) and el.word in _SKIPPABLE for el in gap):
            return prev
        return nxt if nxt is not None and positions[nxt] == p + 1 else None
    if prev is not None:
        gap_at = range(positions[prev] + 1, p)
        if not any(_separates(elements, k) for k in gap_at):
            return prev
    return nxt if nxt is not None else prev


def _separates(elements: Sequence[Element], k: int) -> bool:
    tok = _tok(elements, k)
    return tok is not None and (tok.word in _CONNECTORS or _verb_mode(elements, k) is not None)


# --- intents -----------------------------------------------------------------------------------


def _whole(value: Decimal) -> int | None:
    return int(value) if value == value.to_integral_value() else None


def _order(product: ProductLike, quantities: Sequence[Quantity]) -> Intent:
    """The counting rules: a bare product is one (one kilogram if sold by the kilogram); a
    weight of a product sold by the unit must be a whole number of units."""
    sku = product.sku
    counts = {q.value for q in quantities if q.kind != "grams"}
    weights = {q.value for q in quantities if q.kind == "grams"}
    if len(counts) > 1 or len(weights) > 1:
        return Ambiguous(AmbiguousReason.CONFLICTING_QUANTITIES, sku)
    count = next(iter(counts), None)
    weight = next(iter(weights), None)
    unit = product.unit_grams
    if unit is None:
        if any(q.kind == "container" for q in quantities):
            return Ambiguous(AmbiguousReason.CONTAINER_FOR_WEIGHED, sku)
        grams = [v for v in (weight, None if count is None else count * 1000) if v is not None]
        if len(set(grams)) > 1:
            return Ambiguous(AmbiguousReason.CONFLICTING_QUANTITIES, sku)
        total = _whole(grams[0]) if grams else 1000
        return _bounded(sku, total, MAX_GRAMS)
    units = None if count is None else _whole(count)
    if weight is not None:
        whole = _whole(weight / unit) if unit > 0 else None
        if whole is None:
            return Ambiguous(AmbiguousReason.NOT_WHOLE_UNITS, sku)
        if units is not None and weight != unit and whole != units:
            return Ambiguous(AmbiguousReason.CONFLICTING_QUANTITIES, sku)
        units = units if units is not None else whole
    elif count is not None and units is None:
        return Ambiguous(AmbiguousReason.NOT_WHOLE_UNITS, sku)
    return _bounded(sku, 1 if units is None else units, MAX_UNITS)


def _bounded(sku: str, quantity: int | None, most: int) -> Intent:
    if quantity is None:
        return Ambiguous(AmbiguousReason.NOT_WHOLE_UNITS, sku)
    if not 0 < quantity <= most:
        return Ambiguous(AmbiguousReason.OUT_OF_RANGE, sku)
    return OrderIntent(sku, quantity)


def _intent(named: _Named, products: dict[str, ProductLike]) -> Intent:
    sku = named.mention.sku
    if sku is None:
        return Ambiguous(AmbiguousReason.UNKNOWN_CODE)
    if named.mode == "withdraw":
        if named.quantities:
            return Ambiguous(AmbiguousReason.PARTIAL_WITHDRAWAL, sku)
        return Withdrawal(sku)
    if named.mode == "partial":
        return Ambiguous(AmbiguousReason.PARTIAL_WITHDRAWAL, sku)
    if named.mode == "change":
        return Ambiguous(AmbiguousReason.CHANGE, sku)
    return _order(products[sku], named.quantities)


def _settle(intents: Iterable[Intent]) -> tuple[Intent, ...]:
    """Repeats collapse (``VT05 VT05``); two quantities of one product are ambiguous."""
    settled: list[Intent] = []
    for intent in intents:
        if intent in settled:
            continue
        clash = [
            other
            for other in settled
            if isinstance(other, OrderIntent)
            and isinstance(intent, OrderIntent)
            and other.sku == intent.sku
        ]
        if clash:
            settled[settled.index(clash[0])] = Ambiguous(
                AmbiguousReason.CONFLICTING_QUANTITIES, intent.sku
            )
            continue
        settled.append(intent)
    return tuple(dict.fromkeys(settled))


# --- the parser --------------------------------------------------------------------------------


class CommentParser:
    """The intents of comments about one catalog. Build one per catalog (version): it compiles
    every SKU and alias once; :meth:`parse` is then pure and never raises."""

    def __init__(self, products: Iterable[ProductLike]) -> None:
        self._products = {product.sku: product for product in products}
        patterns, self._prefixes = _patterns(self._products.values())
        self._by_first: dict[Key, list[_Pattern]] = {}
        for pattern in patterns:
            self._by_first.setdefault(pattern.keys[0], []).append(pattern)

    def parse(self, text: str | bytes) -> ParsedComment:
        try:
            return self._parse(text)
        except Exception:  # a bug must cost one comment, never the source that reads them
            return NOTHING

    def _parse(self, text: str | bytes) -> ParsedComment:
        masked, has_phone = mask_numbers(_as_text(text))
        tokens = tokenise(masked)
        if _comment_blocked(tokens):
            return ParsedComment((), has_phone)
        clauses = _clauses(self._elements(tokens))
        found = [_analyse(clause) for clause in clauses if not _blocked(clause)]
        return ParsedComment(self._intents(found), has_phone)

    def _elements(self, tokens: Sequence[Tok]) -> list[Element]:
        elements: list[Element] = []
        i = 0
        while i < len(tokens):
            size, sku = self._mention_at(tokens, i)
            if size:
                elements.append(Mention(sku))
                i += size
            else:
                elements.append(tokens[i])
                i += 1
        return elements

    def _mention_at(self, tokens: Sequence[Tok], i: int) -> tuple[int, str | None]:
        for pattern in self._by_first.get(_key(tokens[i]), ()):
            size = _match(tokens, i, pattern.keys)
            if size:
                return size, pattern.sku
        return _unknown_code(tokens, i, self._prefixes), None

    def _intents(self, found: Sequence[_Found]) -> tuple[Intent, ...]:
        if any(item.one_of_each for item in found):
            return (Ambiguous(AmbiguousReason.ONE_OF_EACH),)
        named = [n for item in found for n in item.named]
        skus = {n.mention.sku for n in named}
        loose = [q for item in found if not item.named for q in item.loose]
        if len(skus) == 1 and loose and not any(n.quantities for n in named):
            named[0].quantities.extend(loose)
        intents = [_intent(n, self._products) for n in named]
        for item in found:
            intents.extend(_verbs_alone(item, named))
        return _settle(intents)


def _verbs_alone(item: _Found, named: Sequence[_Named]) -> list[Intent]:
    """A withdrawal or a partial one that names no product (``hủy đơn``, ``bớt 1 hộp``)."""
    if item.named:
        return []
    if "partial" in item.modes or ("withdraw" in item.modes and item.loose):
        return [Ambiguous(AmbiguousReason.PARTIAL_WITHDRAWAL)]
    if "withdraw" in item.modes and not any(n.mode == "withdraw" for n in named):
        return [Withdrawal(None)]
    return []


def _blocked(clause: _Clause) -> bool:
    tokens = clause.tokens
    if _stops_taking(tokens):
        return _asks(clause)
    return _asks(clause) or _negated(tokens) or _chats(tokens)


def parse_comment(text: str | bytes, products: Iterable[ProductLike]) -> ParsedComment:
    """One comment against ``products`` (compiles them: keep a :class:`CommentParser` for
    many comments)."""
    return CommentParser(products).parse(text)
