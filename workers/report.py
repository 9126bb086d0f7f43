"""The report of a stream's session: what the timeline, the totals, the session and the feed
gaps in Redis tell about a sale, as JSON (for tools), Markdown, or a self-contained HTML page
(workers/report_html.py).

Per-minute figures and the headline come from the session's minutes of the timeline, so they
are the session's own; the tables (SKUs, countries, provinces, cancellations by country) and the
unique buyers come from the stream's totals, which cover its whole life: the report says so.
Grams and money stay integers here; display units are made by the renderers.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from ingest.money import MoneyError
from workers import keys
from workers.display import kilograms, money
from workers.feeds import Gap, read_gaps
from workers.sessions import Session, Sessions
from workers.store import Store, StoreSettings, StreamTotals
from workers.timeline import Minute, read_timeline, sum_minutes

FORMATS = ("html", "json", "md")
TABLE_ROWS = 50
"""Rows a table lists at most (the rest are summed in one "others" row)."""


class ReportError(Exception):
    """No report can be made (no such stream or session)."""


@dataclasses.dataclass(slots=True)
class Report:
    stream: str
    session: Session
    generated_at: float
    minutes: list[Minute]
    """The session's minutes that saw anything, in time order."""
    gaps: list[Gap]
    totals: StreamTotals
    sessions: int
    """How many sessions the stream has had."""
    utc_offset: int = 0
    """Minutes east of UTC of the times shown (the JSON keeps epoch times)."""

    @property
    def first_minute(self) -> int:
        if self.session.first_minute is not None:
            return self.session.first_minute
        return self.minutes[0].minute if self.minutes else self.session.start // 60

    @property
    def last_minute(self) -> int:
        if self.session.last_minute is not None:
            return self.session.last_minute
        return self.minutes[-1].minute if self.minutes else self.first_minute

    def headline(self) -> dict[str, Any]:
        s = sum_minutes(self.minutes)
        net_value = {
            currency: minor - s.cancelled_value.get(currency, 0)
            for currency, minor in sorted(s.value.items())
        }
        return {
            "grams_gross": s.grams,
            "grams_net": s.grams - s.cancelled_grams,
            "orders": s.orders,
            "cancelled_orders": s.cancelled,
            "cancelled_grams": s.cancelled_grams,
            "revenue_net_minor": net_value,
            "revenue_gross_minor": dict(sorted(s.value.items())),
            "comments": s.comments,
            "comment_orders": s.comment_orders,
            "comment_withdrawals": s.comment_withdrawals,
            "unique_buyers_stream": self.totals.unique_buyers,
            "peak_viewers": max((m.peak_viewers for m in self.minutes), default=0),
        }

    def skus(self) -> list[dict[str, Any]]:
        gross = self.totals.by(keys.SKU_GRAMS)
        cancelled = self.totals.by(keys.CANCELLED_SKU_GRAMS)
        rows = [
            {
                "sku": sku,
                "grams": grams,
                "cancelled_grams": cancelled.get((sku,), 0),
                "net_grams": grams - cancelled.get((sku,), 0),
            }
            for (sku,), grams in gross.items()
        ]
        return sorted(rows, key=lambda r: (-r["net_grams"], r["sku"]))

    def countries(self) -> list[dict[str, Any]]:
        orders: Counter[str] = Counter()
        grams: Counter[str] = Counter()
        cancelled: Counter[str] = Counter()
        cancelled_grams: Counter[str] = Counter()
        for (_, country), n in self.totals.by(keys.ORDERS).items():
            orders[country] += n
        for (_, country), g in self.totals.by(keys.GRAMS).items():
            grams[country] += g
        for (_, country), n in self.totals.by(keys.CANCELLED).items():
            cancelled[country] += n
        for (_, country), g in self.totals.by(keys.CANCELLED_GRAMS).items():
            cancelled_grams[country] += g
        rows = [
            {
                "country": c,
                "orders": orders[c],
                "grams": grams[c],
                "cancelled_orders": cancelled[c],
                "cancelled_grams": cancelled_grams[c],
                "net_grams": grams[c] - cancelled_grams[c],
            }
            for c in set(orders) | set(cancelled)
        ]
        return sorted(rows, key=lambda r: (-r["net_grams"], r["country"]))

    def provinces(self) -> list[dict[str, Any]]:
        rows = [
            {"province": region, "orders": n}
            for (country, region), n in self.totals.by(keys.REGION_ORDERS).items()
            if country == "VN"
        ]
        return sorted(rows, key=lambda r: (-r["orders"], r["province"]))

    def cancellations(self) -> list[dict[str, Any]]:
        """By platform: cancelled orders, grams and value (the stream's whole life)."""
        by: dict[str, dict[str, Any]] = {}
        for (platform, _), n in self.totals.by(keys.CANCELLED).items():
            row = by.setdefault(platform, {"platform": platform, "orders": 0, "grams": 0})
            row["orders"] += n
        for (platform, _), g in self.totals.by(keys.CANCELLED_GRAMS).items():
            row = by.setdefault(platform, {"platform": platform, "orders": 0, "grams": 0})
            row["grams"] += g
        values: dict[str, dict[str, int]] = {}
        for (platform, currency), minor in self.totals.by(keys.CANCELLED_VALUE).items():
            values.setdefault(platform, {})[currency] = minor
        for platform, row in by.items():
            row["value_minor"] = dict(sorted(values.get(platform, {}).items()))
        return sorted(by.values(), key=lambda r: (-r["grams"], r["platform"]))

    def as_json(self) -> dict[str, Any]:
        """Every figure of the report; grams and money as integers (minor units)."""
        session = dataclasses.asdict(self.session)
        return {
            "stream": self.stream,
            "generated_at": round(self.generated_at, 3),
            "session": session,
            "sessions": self.sessions,
            "utc_offset_minutes": self.utc_offset,
            "first_minute": self.first_minute,
            "last_minute": self.last_minute,
            "headline": self.headline(),
            "minutes": [
                {
                    "minute": m.minute,
                    "orders": m.orders,
                    "grams": m.grams,
                    "value_minor": m.value,
                    "cancelled_orders": m.cancelled,
                    "cancelled_grams": m.cancelled_grams,
                    "cancelled_value_minor": m.cancelled_value,
                    "comments": m.comments,
                    "comment_orders": m.comment_orders,
                    "comment_withdrawals": m.comment_withdrawals,
                    "viewers": m.viewers,
                }
                for m in self.minutes
            ],
            "gaps": [dataclasses.asdict(g) for g in self.gaps],
            "tables_cover": "stream",
            "skus": self.skus(),
            "countries": self.countries(),
            "provinces": self.provinces(),
            "cancellations": self.cancellations(),
        }


async def build(
    redis: Redis | RedisCluster,
    stream: str,
    session_n: int | None = None,
    *,
    idle_seconds: int = 30 * 60,
    clock: Callable[[], float] = time.time,
    utc_offset: int = 0,
) -> Report:
    """Read the report of ``stream``'s session ``session_n`` (default: the latest)."""
    sessions = Sessions(redis, idle_seconds, clock)
    every = await sessions.all(stream)
    if not every:
        raise ReportError(f"stream {stream!r} has no session in Redis")
    if session_n is None:
        session = every[-1]
    else:
        found = [s for s in every if s.n == session_n]
        if not found:
            numbers = ", ".join(str(s.n) for s in every)
            raise ReportError(f"stream {stream!r} has no session {session_n} (it has {numbers})")
        session = found[0]
    first = session.first_minute if session.first_minute is not None else session.start // 60
    last = session.last_minute if session.last_minute is not None else first
    minutes = await read_timeline(redis, stream, first, last)
    (totals,) = await Store(redis, StoreSettings()).totals([stream])
    # Gaps over the session's time and its events' (the same for a live sale; a replayed one's
    # events are older than its session).
    end = session.end if session.end is not None else clock()
    gaps = await read_gaps(
        redis,
        stream,
        min(session.start, first * 60),
        max(end, (last + 1) * 60),
        clock=clock,
        open_end=session.open,
    )
    return Report(stream, session, clock(), minutes, gaps, totals, len(every), utc_offset)


# -- Markdown -------------------------------------------------------------------------------------


def money_text(minor: int, currency: str) -> str:
    try:
        return f"{money(minor, currency)} {currency}"
    except MoneyError:
        return f"{minor} {currency} (minor units)"


def tonnes(grams: int) -> str:
    return f"{grams / 1e6:,.3f} t"


def zone(offset: int) -> str:
    """``UTC`` or ``UTC+07:00`` for ``offset`` minutes east of UTC."""
    if offset == 0:
        return "UTC"
    hours, minutes = divmod(abs(offset), 60)
    return f"UTC{'+' if offset > 0 else '-'}{hours:02d}:{minutes:02d}"


def parse_offset(text: str) -> int:
    """``+07:00``, ``-05:30``, ``7`` or ``0`` -> minutes east of UTC (ValueError otherwise)."""
    match = re.fullmatch(r"([+-]?)(\d{1,2})(?::(\d{2}))?", text.strip())
    if match is None:
        raise ValueError(f"not a UTC offset: {text[:20]!r} (e.g. +07:00)")
    sign = -1 if match[1] == "-" else 1
    minutes = int(match[2]) * 60 + int(match[3] or 0)
    if minutes > 14 * 60 or int(match[3] or 0) >= 60:
        raise ValueError(f"not a UTC offset: {text[:20]!r} (e.g. +07:00)")
    return sign * minutes


def local(seconds: float, offset: int) -> time.struct_time:
    return time.gmtime(seconds + offset * 60)


def clock_text(seconds: float, offset: int = 0) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S ", local(seconds, offset)) + zone(offset)


def minute_text(minute: int, offset: int = 0) -> str:
    return time.strftime("%Y-%m-%d %H:%M ", local(minute * 60, offset)) + zone(offset)


def duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


ENDINGS = {
    "ended": "ended by command",
    "idle": "ended after the idle time",
    "replaced": "ended by the next session",
}


def session_line(report: Report) -> str:
    s = report.session
    how = ENDINGS.get(s.how, s.how)
    off = report.utc_offset
    state = "open" if s.open else f"{how} {clock_text(s.end or s.start, off)}"
    return (
        f"Session {s.n} of {report.sessions}: started {clock_text(s.start, off)}, {state}, "
        f"ran {duration(s.seconds(report.generated_at))}. Events from "
        f"{minute_text(report.first_minute, off)} to {minute_text(report.last_minute, off)}."
    )


def _cell(text: object) -> str:
    """A table cell: no "|" or line break ends it, no HTML a renderer would run."""
    return (
        str(text)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "\\|")
        .replace("\n", " ")
    )


def _md_table(title: str, headers: list[str], rows: list[list[str]]) -> list[str]:
    """A section of the stream's whole-life tables: a heading, then the cells as given."""
    lines = ["", f"## {title} (whole stream)", "", f"| {' | '.join(headers)} |"]
    lines.append("|" + "---|" * len(headers))
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return lines


def markdown(report: Report) -> str:
    h = report.headline()
    lines = [
        f"# {_cell(report.stream)}: the sale's story",
        "",
        session_line(report),
        "",
        "| figure | value |",
        "|---|---|",
        f"| sold, net of cancellations | {tonnes(h['grams_net'])} |",
        f"| sold, gross | {tonnes(h['grams_gross'])} |",
        f"| orders | {h['orders']:,} ({h['cancelled_orders']:,} cancelled) |",
    ]
    for currency, minor in h["revenue_net_minor"].items():
        lines.append(f"| revenue net, {_cell(currency)} | {money_text(minor, currency)} |")
    lines += [
        f"| unique buyers (whole stream) | {h['unique_buyers_stream']:,} |",
        f"| peak viewers | {h['peak_viewers']:,} |",
        f"| comments | {h['comments']:,} |",
    ]
    if h["comment_orders"] or h["comment_withdrawals"]:  # a stream with a catalog
        orders, withdrawn = h["comment_orders"], h["comment_withdrawals"]
        lines.append(f"| comment orders | {orders:,} ({withdrawn:,} withdrawn) |")
    lines += ["", "## Feed gaps", ""]
    if report.gaps:
        lines += ["| source | from | to | state |", "|---|---|---|---|"]
        for g in report.gaps:
            lines.append(
                f"| {_cell(g.source)} | {clock_text(g.start, report.utc_offset)} | "
                f"{clock_text(g.end, report.utc_offset)} | {g.state} |"
            )
    else:
        lines.append("None recorded: every source had a replica receiving throughout.")
    lines += _md_table(
        "SKUs",
        ["SKU", "net kg", "cancelled kg"],
        [
            [_cell(r["sku"]), kilograms(r["net_grams"]), kilograms(r["cancelled_grams"])]
            for r in report.skus()[:TABLE_ROWS]
        ],
    )
    lines += _md_table(
        "Countries",
        ["country", "orders", "net kg"],
        [
            [_cell(r["country"]), f"{r['orders']:,}", kilograms(r["net_grams"])]
            for r in report.countries()[:TABLE_ROWS]
        ],
    )
    lines += _md_table(
        "Vietnamese provinces",
        ["province", "orders"],
        [[_cell(r["province"]), f"{r['orders']:,}"] for r in report.provinces()[:TABLE_ROWS]],
    )
    lines += _md_table(
        "Cancellations",
        ["platform", "orders", "kg", "value"],
        [
            [
                _cell(r["platform"]),
                f"{r['orders']:,}",
                kilograms(r["grams"]),
                ", ".join(money_text(m, c) for c, m in r["value_minor"].items()) or "-",
            ]
            for r in report.cancellations()
        ],
    )
    return "\n".join(lines) + "\n"
