"""How ``top`` and the demo show a stream's totals: per-minute rates over a sliding window, the
figures an operator reads (weights exact to the gram, money in major units) and one stream's table.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Mapping

from rich.table import Table

from ingest.money import exponent
from workers import keys
from workers.store import StreamTotals

TOP_N = 5
"""Countries and SKUs a stream's table lists."""
RATE_WINDOW = 10.0
"""Seconds of history behind the demo's per-minute rates."""


class Rates:
    """Per-minute rates of growing totals over a sliding window, with an injectable clock."""

    def __init__(self, window: float = RATE_WINDOW, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self.clock = clock
        self._samples: collections.deque[tuple[float, dict[str, int]]] = collections.deque()

    def add(self, values: dict[str, int]) -> dict[str, float]:
        now = self.clock()
        self._samples.append((now, values))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        then, old = self._samples[0]
        span = now - then
        if span <= 0:
            return dict.fromkeys(values, 0.0)
        return {k: (v - old.get(k, 0)) * 60 / span for k, v in values.items()}


def summary(totals: StreamTotals) -> dict[str, int]:
    return {
        "grams": totals.total(keys.GRAMS),
        "orders": totals.total(keys.ORDERS),
        "comments": totals.total(keys.COMMENTS),
        "cancelled": totals.total(keys.CANCELLED),
        "comment_orders": totals.total(keys.COMMENT_ORDERS),
    }


def top_countries(totals: StreamTotals, n: int) -> list[tuple[str, int]]:
    """The ``n`` countries with the most grams ordered, with their grams."""
    by_country: collections.Counter[str] = collections.Counter()
    for (_, country), grams in totals.by(keys.GRAMS).items():
        by_country[country] += grams
    return _largest(by_country, n)


def top_skus(totals: StreamTotals, n: int) -> list[tuple[str, int]]:
    """The ``n`` SKUs with the most grams ordered, with their grams."""
    by_sku = collections.Counter(
        {sku: grams for (sku,), grams in totals.by(keys.SKU_GRAMS).items()}
    )
    return _largest(by_sku, n)


def _largest(counts: Mapping[str, int], n: int) -> list[tuple[str, int]]:
    """The ``n`` largest, ties by name: not by the order Redis keeps a hash's fields in, which
    depends on the order they were first written."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]


def revenue(totals: StreamTotals) -> dict[str, int]:
    """Order value per currency, in minor units, over every platform; sorted by currency."""
    merged: collections.Counter[str] = collections.Counter()
    for (_, currency), minor in totals.by(keys.VALUE).items():
        merged[currency] += minor
    return dict(sorted(merged.items()))


def money(minor: int, currency: str) -> str:
    """``minor`` units as major units, exactly: 1250 USD -> ``12.50``, 240000 VND -> ``240,000``."""
    digits = exponent(currency)
    if digits == 0:
        return f"{minor:,}"
    whole, fraction = divmod(minor, 10**digits)
    return f"{whole:,}.{fraction:0{digits}d}"


def kilograms(grams: int) -> str:
    """Exact to the gram: 7250 -> ``7.250``, 54012345678 -> ``54,012,345.678``."""
    if grams < 0:  # stock sold beyond what there was
        return f"-{kilograms(-grams)}"
    return f"{grams // 1000:,}.{grams % 1000:03d}"


def viewers(totals: StreamTotals) -> str:
    return ", ".join(f"{p} {n:,}" for p, n in sorted(totals.viewers.items())) or "-"


def comment_orders(totals: StreamTotals) -> str:
    """Comment orders ("chốt đơn"): counted, withdrawn, with a phone number, to look at."""
    return (
        f"{totals.total(keys.COMMENT_ORDERS):,}, withdrawn "
        f"{totals.total(keys.COMMENT_WITHDRAWALS):,}, with phone "
        f"{totals.total(keys.COMMENT_WITH_PHONE):,}, changed "
        f"{totals.total(keys.COMMENT_CHANGES):,}, ambiguous "
        f"{totals.total(keys.COMMENT_AMBIGUOUS):,}, unknown codes "
        f"{totals.total(keys.COMMENT_UNKNOWN_CODES):,}"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What a stream means to sell: its target and each SKU's stock at the start (grams)."""

    target_grams: int | None = None
    stock_grams: dict[str, int] = dataclasses.field(default_factory=dict)


def progress(totals: StreamTotals, plan: Plan) -> str:
    """Net grams sold (sold − cancelled) as a share of the target."""
    if not plan.target_grams:
        return "-"
    net = totals.total(keys.GRAMS) - totals.total(keys.CANCELLED_GRAMS)
    return f"{net / plan.target_grams:.1%} of {kilograms(plan.target_grams)} kg"


def stock_left(totals: StreamTotals, plan: Plan) -> list[tuple[str, int]]:
    """Each SKU's stock left in grams (stock − sold + cancelled), fewest first."""
    sold = {sku: grams for (sku,), grams in totals.by(keys.SKU_GRAMS).items()}
    back = {sku: grams for (sku,), grams in totals.by(keys.CANCELLED_SKU_GRAMS).items()}
    left = {
        sku: stock - sold.get(sku, 0) + back.get(sku, 0) for sku, stock in plan.stock_grams.items()
    }
    return sorted(left.items(), key=lambda pair: (pair[1], pair[0]))


def stream_table(
    totals: StreamTotals,
    values: dict[str, int],
    rates: dict[str, float],
    title: str,
    plan: Plan | None = None,
) -> Table:
    """One stream's figures as a table (``top``'s and the demo's live view); with ``plan``,
    the target progress and the stock left."""
    table = Table(title=title, show_header=False, min_width=60)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("sold", f"{kilograms(values['grams'])} kg  ({values['grams'] / 1e6:,.3f} t)")
    table.add_row("orders", f"{values['orders']:,}  ({rates['orders']:,.1f}/min)")
    table.add_row("kg per minute", f"{rates['grams'] / 1000:,.1f}")
    table.add_row("comments", f"{values['comments']:,}  ({rates['comments']:,.1f}/min)")
    table.add_row("cancelled", f"{values['cancelled']:,}")
    table.add_row("comment orders", comment_orders(totals))
    if plan is not None:
        table.add_row("target", progress(totals, plan))
        for rank, (sku, grams) in enumerate(stock_left(totals, plan)):
            table.add_row("stock left" if rank == 0 else "", f"{sku} {kilograms(grams)} kg")
    for currency, minor in revenue(totals).items():
        table.add_row(f"revenue {currency}", money(minor, currency))
    for rank, (country, grams) in enumerate(top_countries(totals, TOP_N)):
        table.add_row("top countries" if rank == 0 else "", f"{country} {kilograms(grams)} kg")
    for rank, (sku, grams) in enumerate(top_skus(totals, TOP_N)):
        table.add_row("top SKUs" if rank == 0 else "", f"{sku} {kilograms(grams)} kg")
    table.add_row("unique buyers", f"{totals.unique_buyers:,}")
    table.add_row("unique commenters", f"{totals.unique_commenters:,}")
    table.add_row("viewers", viewers(totals))
    return table
