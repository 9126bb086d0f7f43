"""The demo's terminal summary: a live rich table on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Self

from rich.console import Console
from rich.live import Live
from rich.table import Table

from workers.demo.sale import Sale
from workers.display import Plan, Rates, progress, stream_table, summary, top_countries
from workers.store import StreamTotals


class View:
    """Renders a stream's totals; use as a context manager around the refresh loop."""

    interval = 1.0

    def __init__(self, sale: Sale, *, plain: bool, plan: Plan | None = None) -> None:
        self.sale = sale
        self.plan = plan
        self.plain = plain
        self.rates = Rates()
        self.console = Console()
        self._live: Live | None = None
        self._done = False
        self._last_plain = 0.0

    def __enter__(self) -> Self:
        if not self.plain:
            self._live = Live(console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)

    def announce(self, redis_url: str, metrics_url: str) -> None:
        print(
            f"demo: stream {self.sale.stream}, Redis {redis_url}, metrics {metrics_url} "
            "(Ctrl-C to stop)",
            flush=True,
        )

    def finished(self) -> None:
        if not self._done:
            self._done = True
            print("demo: the whole sale is counted; totals equal the expected ones", flush=True)

    def update(self, totals: StreamTotals, sent: int, total: int) -> None:
        values = summary(totals)
        rates = self.rates.add(values)
        if self._live is not None:
            self._live.update(self._table(totals, values, rates, sent, total))
        elif time.monotonic() - self._last_plain >= 2 * self.interval:
            self._last_plain = time.monotonic()
            top = ", ".join(f"{c} {g / 1000:,.0f} kg" for c, g in top_countries(totals, 3))
            print(
                f"sent {sent}/{total}  sold {values['grams'] / 1e6:,.3f} t  "
                f"orders {values['orders']} ({rates['orders']:,.0f}/min)  "
                f"kg/min {rates['grams'] / 1000:,.0f}  "
                f"comments {values['comments']} ({rates['comments']:,.0f}/min)  "
                f"comment orders {values['comment_orders']}  "
                f"target {progress(totals, self.plan or Plan())}  top: {top}",
                file=sys.stdout,
                flush=True,
            )

    def _table(
        self,
        totals: StreamTotals,
        values: dict[str, int],
        rates: dict[str, float],
        sent: int,
        total: int,
    ) -> Table:
        title = f"Live sale {totals.stream}: {sent:,} / {total:,} deliveries sent"
        return stream_table(totals, values, rates, title, self.plan)
