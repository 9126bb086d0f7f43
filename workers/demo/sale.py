"""A synthetic Luc Ngan lychee livestream sale: native events, deliveries and ground truth.

Pure and deterministic: everything comes from one seeded ``random.Random``; no I/O, no clock.
Scenario time is seconds since ``start``. Deliveries model an at-least-once transport: every
event arrives at least once, some arrive again, a few arrive late or out of order.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Generic, TypeVar

import orjson

from ingest.catalog import Catalog
from ingest.comment_orders import CommentParser
from workers.catalogs import comment_intents

__all__ = [
    "CURRENCY_DECIMALS",
    "DEFAULT_START",
    "PLATFORMS",
    "REGIONS",
    "Delivery",
    "Expected",
    "Sale",
    "comment_order_totals",
    "expected_from",
    "frames",
    "lychee_sale",
]

Event = dict[str, object]
T = TypeVar("T")

VN_TZ = timezone(timedelta(hours=7), "ICT")
DEFAULT_START = datetime(2025, 6, 14, 8, 0, tzinfo=VN_TZ)

PLATFORMS = ("tiktok", "facebook", "shopee", "youtube", "twitch", "lazada", "zalo", "shopify")
CURRENCY_DECIMALS = {"VND": 0, "JPY": 0, "USD": 2, "AUD": 2}
UNKNOWN_REGION = "unknown"


def _nfc(text: str) -> str:
    """``text`` in Unicode NFC."""
    return unicodedata.normalize("NFC", text)


class _Table(Generic[T]):
    """Values with cumulative weights, for fast weighted draws."""

    def __init__(self, pairs: Sequence[tuple[T, float]]) -> None:
        self.values = [value for value, _ in pairs]
        self.cum = list(itertools.accumulate(weight for _, weight in pairs))

    def pick(self, rng: random.Random) -> T:
        """One weighted draw."""
        return self.values[bisect.bisect_right(self.cum, rng.random() * self.cum[-1])]


# Region -> weight; Hanoi and Ho Chi Minh City dominate.
_REGION_WEIGHTS = (
    ("Hà Nội", 30),
    ("Hồ Chí Minh", 27),
    ("Hải Phòng", 6),
    ("Bắc Ninh", 6),
    ("Đà Nẵng", 5),
    ("Quảng Ninh", 4),
    ("Thái Nguyên", 4),
    ("Đồng Nai", 3),
    ("Cần Thơ", 3),
    ("Nghệ An", 3),
    ("Thanh Hóa", 3),
    ("Huế", 2),
    ("Khánh Hòa", 2),
    ("Lâm Đồng", 2),
)
REGIONS = tuple(_nfc(name) for name, _ in _REGION_WEIGHTS)
_REGIONS = _Table([(_nfc(name), weight) for name, weight in _REGION_WEIGHTS])

_COUNTRY_CURRENCY = {"VN": "VND", "US": "USD", "AU": "AUD", "JP": "JPY"}
_FOREIGN = _Table([("US", 45), ("AU", 35), ("JP", 20)])
_FOREIGN_SHARE = 0.10


@dataclass(frozen=True)
class _Sku:
    code: str
    grams: int
    price_minor: dict[str, int]


_SKUS = {
    sku.code: sku
    for sku in (
        _Sku("VT01", 1_000, {"VND": 120_000, "USD": 990, "AUD": 1_490, "JPY": 1_480}),
        _Sku("VT02", 2_000, {"VND": 230_000, "USD": 1_850, "AUD": 2_790, "JPY": 2_780}),
        _Sku("VT05", 5_000, {"VND": 550_000, "USD": 4_200, "AUD": 6_300, "JPY": 6_300}),
        _Sku("VTQ", 3_000, {"VND": 450_000, "USD": 3_490, "AUD": 5_250, "JPY": 5_200}),
        _Sku("VTS10", 10_000, {"VND": 980_000}),
        _Sku("VTS20", 20_000, {"VND": 1_900_000}),
    )
}
_WHOLESALE = frozenset({"VTS10", "VTS20"})
_VN_SKUS = _Table(
    [("VT01", 46), ("VT02", 30), ("VT05", 12), ("VTQ", 10), ("VTS10", 1.6), ("VTS20", 1.0)]
)
_FOREIGN_SKUS = _Table([("VT01", 25), ("VT02", 30), ("VT05", 20), ("VTQ", 25)])
_RETAIL_QTY = _Table([(1, 70), (2, 22), (3, 8)])
_WHOLESALE_QTY = _Table([(1, 60), (2, 25), (3, 10), (5, 5)])
_LINES = _Table([(1, 72), (2, 21), (3, 7)])

_VN_ORDER_PLATFORMS = _Table(
    [("tiktok", 34), ("shopee", 26), ("facebook", 15), ("zalo", 10), ("lazada", 9), ("youtube", 6)]
)
_FOREIGN_ORDER_PLATFORMS = _Table([("shopify", 60), ("tiktok", 20), ("facebook", 20)])
_COMMENT_PLATFORMS = _Table(
    [("tiktok", 46), ("facebook", 24), ("youtube", 13), ("shopee", 12), ("twitch", 5)]
)
# Platform -> typical concurrent viewers at the plateau.
_AUDIENCE = {"tiktok": 12_000, "facebook": 5_200, "shopee": 3_600, "youtube": 2_400, "twitch": 350}

_VN_TEXTS = tuple(
    _nfc(text)
    for text in (
        "chốt {sku} {n} thùng",
        "chốt {sku} {n} hộp",
        "chốt {sku} {n} hộp sđt {phone}",
        "{sku} x{n} {phone}",
        "lấy {sku} {n} hộp nha shop, {phone}",
        "hủy {sku} nha shop",
        "hủy đơn giúp em",
        "chốt VT03 {n} hộp",
        "{sku} {kg}kg",
        "em lấy {sku} {n} hộp nhé",
        "còn {sku} không shop?",
        "giá sỉ {crate} bao nhiêu ạ?",
        "shop ơi ship {region} mấy ngày?",
        "xin phí ship ra {region}",
        "đặt {n} hộp quà VTQ biếu sếp",
        "ngon quá",
        "ngon quá shop ơi",
        "vải năm nay ngọt lắm",
        "vải thiều Lục Ngạn chính gốc không ạ?",
        "quả to, cùi dày 👍",
        "đã nhận hàng, tươi lắm",
        "ra đơn giúp em với",
        "chị ơi em chốt rồi nhé",
        "hàng có sẵn không ạ?",
        "+1",
        "❤️❤️❤️",
    )
)
_EN_TEXTS = (
    "ship to {city}?",
    "how long does shipping to {city} take?",
    "looks so fresh!",
    "price for {sku} in {currency}?",
    "ordered {n} boxes of {sku}",
    "love from {city} ❤️",
    "is the 5kg box still available?",
    "first time trying lychee, so excited",
    "do you have gift boxes?",
    "amazing 😍",
)
_CITIES = ("Sydney", "Melbourne", "Brisbane", "Tokyo", "Osaka", "California", "Seattle", "Texas")


@dataclass(frozen=True)
class Delivery:
    """One transport delivery of an event, ``at`` scenario seconds after the start."""

    at: float
    event: Event


@dataclass(frozen=True)
class Expected:
    """Ground-truth totals over the unique events of a sale."""

    orders: dict[tuple[str, str], int]
    grams: dict[tuple[str, str], int]
    value_minor: dict[tuple[str, str], int]
    cancelled_orders: dict[tuple[str, str], int]
    cancelled_grams: dict[tuple[str, str], int]
    sku_grams: dict[str, int]
    comments: dict[str, int]
    region_orders: dict[tuple[str, str], int]
    unique_buyers: int
    unique_commenters: int
    viewers: dict[str, int]


@dataclass(frozen=True)
class Sale:
    """A generated sale: unique events in time order, their deliveries, and the expected totals."""

    stream: str
    events: tuple[Event, ...]
    deliveries: tuple[Delivery, ...]
    expected: Expected


@dataclass
class _Order:
    country: str
    platform: str
    items: list[tuple[str, int]]
    grams: int


# -- money and time -------------------------------------------------------------------------------


def _major(minor: int, currency: str) -> str:
    """Integer minor units as a decimal string with exactly the currency's decimals."""
    digits = CURRENCY_DECIMALS[currency]
    if digits == 0:
        return str(minor)
    whole, frac = divmod(minor, 10**digits)
    return f"{whole}.{frac:0{digits}d}"


def _minor(amount: str, currency: str) -> int:
    """Parse a decimal string in major units into integer minor units."""
    digits = CURRENCY_DECIMALS[currency]
    whole, _, frac = amount.partition(".")
    if len(frac) > digits:
        raise ValueError(f"{amount!r} has more decimals than {currency}")
    return int(whole + frac.ljust(digits, "0"))


class _Clock:
    """Formats scenario seconds as the timestamps each event kind carries."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("start must be timezone-aware")
        self.start = start

    def local_ms(self, ms: int) -> str:
        """Local time with milliseconds, as comment events carry it."""
        return (self.start + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")

    def local_s(self, seconds: int) -> str:
        """Local time to the second, as order events carry it."""
        return (self.start + timedelta(seconds=seconds)).isoformat(timespec="seconds")

    def utc_s(self, seconds: int) -> str:
        """UTC with a ``Z`` suffix, as viewer events carry it."""
        moment = (self.start + timedelta(seconds=seconds)).astimezone(UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- shape of the show ----------------------------------------------------------------------------

# Flash-sale moments: (fraction of the show, relative height, width as a fraction).
_PEAKS = ((0.12, 2.0, 0.020), (0.33, 3.5, 0.025), (0.55, 2.5, 0.020), (0.78, 4.0, 0.030))
_GRID = 2_880


def _ramp(x: float) -> float:
    """Audience warm-up over the first tenth of the show and wind-down over the last."""
    warm = min(1.0, 0.15 + x / 0.10)
    cool = 1.0 - 0.55 * max(0.0, (x - 0.88) / 0.12)
    return warm * cool


def _buying(x: float) -> float:
    """Relative order rate at fraction ``x`` of the show: a base rate plus flash-sale peaks."""
    peaks = sum(h * math.exp(-0.5 * ((x - c) / w) ** 2) for c, h, w in _PEAKS)
    return 0.6 * _ramp(x) + peaks


def _audience(x: float) -> float:
    """Relative audience: builds up ahead of each peak, lingers a little after it."""
    peaks = sum(0.12 * h * math.exp(-0.5 * ((x - c + w) / (2.5 * w)) ** 2) for c, h, w in _PEAKS)
    return _ramp(x) * (0.75 + peaks)


def _sampler(rate: Iterable[float], seconds: float) -> tuple[list[float], float]:
    """Cumulative rate over equal bins spanning ``seconds``, and the bin width."""
    cum = list(itertools.accumulate(rate))
    return cum, seconds / len(cum)


def _times(rng: random.Random, n: int, cum: list[float], step: float) -> list[float]:
    """``n`` sorted scenario times drawn from a piecewise-constant rate."""
    top = cum[-1]
    return sorted(
        (bisect.bisect_right(cum, rng.random() * top) + rng.random()) * step for _ in range(n)
    )


def _user(rng: random.Random, base: int, pool: int, skew: float) -> str:
    """A user id from a pool where low indices (regulars) are drawn more often."""
    return f"u-{base + int(pool * rng.random() ** skew)}"


# -- generation -----------------------------------------------------------------------------------


def _draft_order(rng: random.Random) -> _Order:
    """Country, platform and 1-3 distinct line items of one order."""
    foreign = rng.random() < _FOREIGN_SHARE
    country = _FOREIGN.pick(rng) if foreign else "VN"
    platforms = _FOREIGN_ORDER_PLATFORMS if foreign else _VN_ORDER_PLATFORMS
    skus = _FOREIGN_SKUS if foreign else _VN_SKUS
    lines = _LINES.pick(rng)
    chosen: list[str] = []
    while len(chosen) < lines:
        code = skus.pick(rng)
        if code not in chosen:
            chosen.append(code)
    items = [
        (code, (_WHOLESALE_QTY if code in _WHOLESALE else _RETAIL_QTY).pick(rng)) for code in chosen
    ]
    grams = sum(_SKUS[code].grams * qty for code, qty in items)
    return _Order(country, platforms.pick(rng), items, grams)


def _order_events(
    rng: random.Random,
    stream: str,
    seconds: float,
    target_grams: int,
    clock: _Clock,
    *,
    unweighed_share: float = 0.0,
) -> tuple[list[tuple[float, Event]], list[tuple[float, Event]]]:
    """Created orders until ``target_grams`` is reached, and about 2% cancellations; a line
    item leaves out its grams with probability ``unweighed_share`` (the catalog knows them)."""
    drafts: list[_Order] = []
    total = 0
    while total < target_grams:
        drafts.append(_draft_order(rng))
        total += drafts[-1].grams
    cum, step = _sampler((_buying((i + 0.5) / _GRID) for i in range(_GRID)), seconds)
    times = _times(rng, len(drafts), cum, step)
    vn_pool = max(20, int(len(drafts) * 0.6))
    abroad_pool = max(5, int(len(drafts) * 0.08))
    created: list[tuple[float, Event]] = []
    for n, (draft, t) in enumerate(zip(drafts, times, strict=True)):
        second = int(t)
        currency = _COUNTRY_CURRENCY[draft.country]
        if draft.country == "VN":
            buyer = _user(rng, 1, vn_pool, 1.35)
        else:
            buyer = _user(rng, 900_001, abroad_pool, 1.2)
        items: list[dict[str, object]] = []
        amount = 0
        for code, qty in draft.items:
            sku = _SKUS[code]
            price = sku.price_minor[currency]
            amount += price * qty
            item: dict[str, object] = {"sku": code, "qty": qty, "grams": sku.grams}
            if unweighed_share and rng.random() < unweighed_share:
                del item["grams"]
            items.append(item | {"price": _major(price, currency)})
        event: Event = {
            "kind": "order",
            "id": f"ord-{100_001 + n}",
            "status": "created",
            "stream": stream,
            "platform": draft.platform,
            "ts": clock.local_s(second),
            "buyer": buyer,
            "country": draft.country,
        }
        if draft.country == "VN":
            event["region"] = _REGIONS.pick(rng)
        event |= {"currency": currency, "amount": _major(amount, currency), "items": items}
        created.append((float(second), event))
    return created, _cancellations(rng, stream, seconds, created, clock)


def _cancellations(
    rng: random.Random,
    stream: str,
    seconds: float,
    created: list[tuple[float, Event]],
    clock: _Clock,
) -> list[tuple[float, Event]]:
    """Cancel about 2% of the orders created at least two seconds before the end."""
    candidates = [i for i, (t, _) in enumerate(created) if seconds - t >= 2]
    count = min(len(candidates), max(1, round(len(created) * 0.02)))
    picked = sorted(rng.sample(candidates, count))
    cancelled: list[tuple[float, Event]] = []
    for i in picked:
        t, order = created[i]
        room = min(2_400.0, seconds - t)
        later = max(1, int(rng.uniform(0.05, 1.0) * room))
        event: Event = {
            "kind": "order",
            "id": order["id"],
            "status": "cancelled",
            "stream": stream,
            "platform": order["platform"],
            "ts": clock.local_s(int(t) + later),
        }
        cancelled.append((t + later, event))
    return cancelled


def _comment_text(rng: random.Random, english: bool) -> str:
    """A chat line in Vietnamese or English."""
    template = rng.choice(_EN_TEXTS if english else _VN_TEXTS)
    sku = rng.choice(("VT01", "VT02", "VT05", "VTQ"))
    return template.format(
        sku=sku,
        n=rng.choice((1, 1, 2, 2, 3, 5)),
        kg=rng.choice((1, 2, 2, 3, 5, 10)),
        crate=rng.choice(("VTS10", "VTS20")),
        region=_REGIONS.pick(rng),
        city=rng.choice(_CITIES),
        currency=rng.choice(("USD", "AUD", "JPY")),
        phone=_phone(rng),
    )


def _phone(rng: random.Random) -> str:
    """A made-up Vietnamese mobile number as buyers write it: ``09x xxx xxxx``, dotted or not."""
    digits = f"0{rng.choice('35789')}{rng.randrange(10**8):08d}"
    sep = rng.choice(("", " ", "."))
    return f"{digits[:4]}{sep}{digits[4:7]}{sep}{digits[7:]}"


def _comment_events(
    rng: random.Random, stream: str, seconds: float, count: int, clock: _Clock
) -> list[tuple[float, Event]]:
    """Chat comments, busiest around the flash sales, from a pool of repeat commenters."""
    grid = ((i + 0.5) / _GRID for i in range(_GRID))
    rate = (0.5 * _audience(x) + 0.5 * _buying(x) for x in grid)
    cum, step = _sampler(rate, seconds)
    watchers = max(30, int(count * 0.3))
    out: list[tuple[float, Event]] = []
    for t in _times(rng, count, cum, step):
        ms = int(t * 1000)
        english = rng.random() < 0.14
        user = (
            _user(rng, 900_001, max(10, watchers // 8), 1.3)
            if english
            else _user(rng, 1, watchers, 1.6)
        )
        event: Event = {
            "kind": "comment",
            "id": "",
            "stream": stream,
            "platform": _COMMENT_PLATFORMS.pick(rng),
            "ts": clock.local_ms(ms),
            "user": user,
            "text": _comment_text(rng, english),
        }
        out.append((ms / 1000, event))
    return out


def _viewer_events(
    rng: random.Random, stream: str, seconds: float, clock: _Clock
) -> list[tuple[float, Event]]:
    """Per-platform concurrent-viewer updates every few seconds, following the audience curve."""
    out: list[tuple[float, Event]] = []
    for platform, scale in _AUDIENCE.items():
        t = rng.uniform(0.0, 3.0)
        noise = 0.0
        while t < seconds:
            second = int(t)
            noise = 0.92 * noise + rng.gauss(0.0, 0.015)
            count = max(0, round(scale * _audience(second / seconds) * (1.0 + noise)))
            event: Event = {
                "kind": "viewers",
                "id": "",
                "stream": stream,
                "platform": platform,
                "ts": clock.utc_s(second),
                "count": count,
            }
            out.append((float(second), event))
            t = second + rng.uniform(3.0, 7.0)
    return out


def _deliveries(
    rng: random.Random,
    timed: list[tuple[float, Event]],
    early_cancels: dict[str, float],
    duplicate_share: float,
) -> list[Delivery]:
    """At-least-once deliveries: latency, a few stragglers, early cancellations, redeliveries."""
    first: list[float] = []
    cancel_at: dict[str, float] = {}
    for t, event in timed:
        if rng.random() < 0.005:
            at = t + rng.uniform(5.0, 45.0)
        else:
            at = t + min(3.0, rng.expovariate(2.5))
        if event["kind"] == "order" and event["status"] == "cancelled":
            cancel_at[str(event["id"])] = at
        first.append(at)
    # The creation of an early-cancelled order is held back until after its cancellation.
    for i, (_, event) in enumerate(timed):
        oid = str(event["id"])
        if event["kind"] == "order" and event["status"] == "created" and oid in early_cancels:
            first[i] = cancel_at[oid] + early_cancels[oid]
    keyed: list[tuple[float, int, int, Event]] = [
        (at, i, 0, event) for i, (at, (_, event)) in enumerate(zip(first, timed, strict=True))
    ]
    n = len(timed)
    redeliveries = round(n * duplicate_share / (1.0 - duplicate_share)) if n else 0
    for k in range(redeliveries):
        i = rng.randrange(n)
        mode = rng.random()
        if mode < 0.35:
            at = first[i]
        elif mode < 0.88:
            at = first[i] + rng.uniform(0.5, 20.0)
        else:
            at = first[i] + rng.uniform(20.0, 180.0)
        keyed.append((at, i, 1 + k, timed[i][1]))
    keyed.sort(key=lambda row: (row[0], row[1], row[2]))
    return [Delivery(round(at, 3), event) for at, _, _, event in keyed]


def lychee_sale(
    *,
    seed: int = 2025,
    stream: str = "lucngan-2025",
    hours: float = 6.0,
    target_grams: int = 54_000_000,
    start: datetime = DEFAULT_START,
    duplicate_share: float = 0.15,
    unweighed_share: float = 0.0,
) -> Sale:
    """Generate a Luc Ngan lychee livestream sale, deterministic for a given seed. With
    ``unweighed_share``, that share of order lines comes without grams: counted exactly only
    by an ingester with the demo's catalog (``catalog.csv`` beside this module)."""
    if hours <= 0 or target_grams <= 0:
        raise ValueError("hours and target_grams must be positive")
    if not 0.0 <= duplicate_share < 1.0:
        raise ValueError("duplicate_share must be in [0, 1)")
    if not 0.0 <= unweighed_share <= 1.0:
        raise ValueError("unweighed_share must be in [0, 1]")
    rng = random.Random(seed)
    clock = _Clock(start)
    seconds = hours * 3600.0
    created, cancelled = _order_events(
        rng, stream, seconds, target_grams, clock, unweighed_share=unweighed_share
    )
    comments = _comment_events(rng, stream, seconds, round(len(created) * 3.3), clock)
    viewers = _viewer_events(rng, stream, seconds, clock)

    # A few cancellations follow their creation within seconds and overtake it in transit.
    created_at = {str(event["id"]): t for t, event in created}
    early: dict[str, float] = {}
    if cancelled:
        chosen = rng.sample(range(len(cancelled)), max(1, len(cancelled) // 12))
        for i in sorted(chosen):
            t, event = cancelled[i]
            oid = str(event["id"])
            quick = min(created_at[oid] + rng.randint(3, 20), max(t, created_at[oid] + 1))
            event["ts"] = clock.local_s(int(quick))
            cancelled[i] = (quick, event)
            early[oid] = rng.uniform(1.0, 8.0)

    rank = {"order": 0, "comment": 1, "viewers": 2}
    timed = sorted(
        created + cancelled + comments + viewers,
        key=lambda pair: (pair[0], rank[str(pair[1]["kind"])]),
    )
    numbers = Counter[str]()
    for _, event in timed:
        kind = str(event["kind"])
        if kind != "order":
            numbers[kind] += 1
            event["id"] = f"{'c' if kind == 'comment' else 'v'}-{numbers[kind]}"
    events = tuple(event for _, event in timed)
    deliveries = _deliveries(rng, timed, early, duplicate_share)
    return Sale(stream, events, tuple(deliveries), expected_from(events))


# -- ground truth ---------------------------------------------------------------------------------


def expected_from(events: Iterable[Event]) -> Expected:
    """Totals over unique events; created orders count even when later cancelled."""
    tally = _Tally()
    cancellations: list[Event] = []
    for event in events:
        kind = str(event["kind"])
        if kind == "comment":
            tally.comment(event)
        elif kind == "viewers":
            tally.viewers(event)
        elif event["status"] == "cancelled":
            cancellations.append(event)
        else:
            tally.created(event)
    for event in cancellations:
        tally.cancelled(event)
    return tally.expected()


@dataclass
class _Tally:
    """The running totals of :func:`expected_from`."""

    orders: Counter[tuple[str, str]] = field(default_factory=Counter)
    grams: Counter[tuple[str, str]] = field(default_factory=Counter)
    value: Counter[tuple[str, str]] = field(default_factory=Counter)
    cancelled_orders: Counter[tuple[str, str]] = field(default_factory=Counter)
    cancelled_grams: Counter[tuple[str, str]] = field(default_factory=Counter)
    sku_grams: Counter[str] = field(default_factory=Counter)
    comments: Counter[str] = field(default_factory=Counter)
    regions: Counter[tuple[str, str]] = field(default_factory=Counter)
    buyers: set[str] = field(default_factory=set)
    commenters: set[str] = field(default_factory=set)
    latest: dict[str, tuple[datetime, int]] = field(default_factory=dict)
    creations: dict[tuple[str, str], Event] = field(default_factory=dict)

    def comment(self, event: Event) -> None:
        self.comments[str(event["platform"])] += 1
        self.commenters.add(str(event["user"]))

    def viewers(self, event: Event) -> None:
        platform = str(event["platform"])
        when = datetime.fromisoformat(str(event["ts"]))
        count = event["count"]
        assert isinstance(count, int)
        if platform not in self.latest or when > self.latest[platform][0]:
            self.latest[platform] = (when, count)

    def created(self, event: Event) -> None:
        self.creations[(str(event["stream"]), str(event["id"]))] = event
        platform = str(event["platform"])
        key = (platform, str(event["country"]))
        self.orders[key] += 1
        self.grams[key] += _order_grams(event, self.sku_grams)
        currency = str(event["currency"])
        self.value[(platform, currency)] += _minor(str(event["amount"]), currency)
        self.regions[(key[1], str(event.get("region", UNKNOWN_REGION)))] += 1
        self.buyers.add(str(event["buyer"]))

    def cancelled(self, event: Event) -> None:
        creation = self.creations[(str(event["stream"]), str(event["id"]))]
        key = (str(creation["platform"]), str(creation["country"]))
        self.cancelled_orders[key] += 1
        self.cancelled_grams[key] += _order_grams(creation, None)

    def expected(self) -> Expected:
        return Expected(
            orders=dict(self.orders),
            grams=dict(self.grams),
            value_minor=dict(self.value),
            cancelled_orders=dict(self.cancelled_orders),
            cancelled_grams=dict(self.cancelled_grams),
            sku_grams=dict(self.sku_grams),
            comments=dict(self.comments),
            region_orders=dict(self.regions),
            unique_buyers=len(self.buyers),
            unique_commenters=len(self.commenters),
            viewers={platform: count for platform, (_, count) in self.latest.items()},
        )


def _order_grams(order: Event, per_sku: Counter[str] | None) -> int:
    """Order weight; also adds each line's weight to ``per_sku`` when given."""
    items = order["items"]
    assert isinstance(items, list)
    total = 0
    for item in items:
        grams = item.get("grams", _SKUS[str(item["sku"])].grams)  # else the catalog's
        weight = int(item["qty"]) * int(grams)
        total += weight
        if per_sku is not None:
            per_sku[str(item["sku"])] += weight
    return total


# -- comment orders -------------------------------------------------------------------------------


def comment_order_totals(deliveries: Iterable[Delivery], catalog: Catalog) -> dict[str, int]:
    """The comment-order counters (fields of the stream's totals, as the store keeps them) a
    sale must give with ``catalog``: each comment as the parser reads it, counted by the rules
    of issue 14 in the order comments are first delivered (the order an ingester commits them)."""
    parser = CommentParser(catalog)
    counts: Counter[str] = Counter()
    held: dict[tuple[str, str], dict[str, int]] = {}
    seen: set[str] = set()
    for delivery in deliveries:
        event = delivery.event
        if event["kind"] != "comment" or str(event["id"]) in seen:
            continue
        seen.add(str(event["id"]))
        platform = str(event["platform"])
        reading = comment_intents(parser.parse(str(event.get("text", ""))), catalog)
        items = held.setdefault((platform, str(event["user"])), {})
        for kind, sku, quantity, grams in reading.intents:
            _count_intent(counts, items, platform, (kind, sku, quantity, grams), reading.has_phone)
    return dict(counts)


def _count_intent(
    counts: Counter[str],
    items: dict[str, int],
    platform: str,
    intent: tuple[str, str, int, str],
    phone: bool,
) -> None:
    """One intent of a buyer whose counted, not withdrawn orders are ``items`` (SKU -> quantity)."""
    kind, sku, quantity, grams = intent
    if kind == "w" and not sku:  # "hủy đơn": their only order, else ambiguous
        if len(items) != 1:
            counts["comment_ambiguous"] += 1
            return
        (sku,) = items
    if kind == "o":
        if sku not in items:
            counts[f"comment_orders|{platform}|{sku}"] += 1
            counts[f"comment_order_grams|{sku}"] += int(grams)
            if phone:
                counts[f"comment_with_phone|{platform}"] += 1
        elif items[sku] != quantity:
            counts[f"comment_changes|{platform}"] += 1
        items[sku] = quantity
    elif kind == "w" and sku in items:
        del items[sku]
        counts[f"comment_withdrawals|{platform}|{sku}"] += 1
    elif kind == "a":
        counts["comment_ambiguous"] += 1
    elif kind == "u":
        counts[f"comment_unknown_codes|{platform}"] += 1


# -- wire encoding --------------------------------------------------------------------------------


def frames(deliveries: Iterable[Delivery], *, batch: int = 1) -> list[bytes]:
    """Encode deliveries as frame payloads: one object each, or JSON arrays of up to ``batch``."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    if batch == 1:
        return [orjson.dumps(delivery.event) for delivery in deliveries]
    out: list[bytes] = []
    pending = list(deliveries)
    for lo in range(0, len(pending), batch):
        out.append(orjson.dumps([delivery.event for delivery in pending[lo : lo + batch]]))
    return out
