"""The report as one self-contained HTML page: inline CSS, SVG charts drawn here, no script and
nothing fetched when it is viewed. Every text from the feeds (SKUs, provinces, sources) is
escaped.

Each chart is drawn twice, wide for desktops and narrow for phones (a media query shows one), so
its text stays legible instead of shrinking with the page.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from html import escape

import orjson

from workers.display import kilograms
from workers.feeds import Gap
from workers.report import (
    TABLE_ROWS,
    Report,
    clock_text,
    local,
    markdown,
    money_text,
    session_line,
    tonnes,
    zone,
)

WIDE, NARROW = 760, 360
HEIGHT = 230
MAX_BARS = 360

CSS = """
:root { color-scheme: light; --ink: #1d2433; --muted: #5b6475; --line: #e3e7ee;
  --card: #f6f8fb; --accent: #1c64c8; --gap: #d6336c; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans",
  sans-serif; color: var(--ink); background: #fff; }
main { max-width: 1100px; margin: 0 auto; padding: 20px 16px 40px; }
h1 { font-size: 1.55rem; margin: 0 0 4px; line-height: 1.2; word-break: break-word; }
h2 { font-size: 1.1rem; margin: 28px 0 10px; }
p.meta { color: var(--muted); margin: 0 0 18px; font-size: .92rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 10px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 10px 14px; min-width: 0; }
.card .label { color: var(--muted); font-size: .8rem; text-transform: uppercase;
  letter-spacing: .04em; }
.card .value { font-size: 1.45rem; font-weight: 650; font-variant-numeric: tabular-nums;
  overflow-wrap: anywhere; }
.card.wide { grid-column: span 2; }
.card .money { font-size: 1.1rem; font-weight: 650; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
.card .sub { color: var(--muted); font-size: .85rem; font-variant-numeric: tabular-nums; }
figure { margin: 0 0 8px; border: 1px solid var(--line); border-radius: 10px;
  padding: 10px 10px 4px; }
figcaption { font-weight: 600; margin: 0 0 4px 4px; }
.legend { color: var(--muted); font-size: .85rem; margin: 0 0 4px 4px; }
.legend span { display: inline-block; margin-right: 14px; white-space: nowrap; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px;
  vertical-align: -1px; margin-right: 5px; }
svg { display: block; width: 100%; height: auto; }
svg text { font: 12px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; fill: #5b6475; }
svg.narrow { display: none; }
@media (max-width: 600px) {
  svg.wide { display: none; }
  svg.narrow { display: block; }
  main { padding: 14px 10px 30px; }
  .card .value { font-size: 1.25rem; }
}
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr));
  gap: 0 24px; }
.grid2 .full { grid-column: 1 / -1; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 6px 10px 6px 0; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: .85rem; }
td.n, th.n { text-align: right; padding-right: 0; padding-left: 10px; white-space: nowrap; }
p.note, p.none { color: var(--muted); font-size: .9rem; }
footer { color: var(--muted); font-size: .85rem; margin-top: 32px; }
@media (max-width: 600px) {  /* after the table rules: narrow tables wrap their headers */
  th.n { white-space: normal; }
  td.n, th.n { padding-left: 8px; }
  th, td { padding-right: 6px; }
}
"""


@dataclasses.dataclass(frozen=True, slots=True)
class _Series:
    first: int
    """First minute of the axis (epoch minutes)."""
    step: int
    """Minutes per point."""
    grams: list[int]
    cumulative_net: list[int]
    orders: list[int]
    comments: list[int]
    comment_orders: list[int]
    viewers: list[int]


def _series(report: Report) -> _Series:
    first, last = report.first_minute, report.last_minute
    span = max(1, last - first + 1)
    step = max(1, math.ceil(span / MAX_BARS))
    n = math.ceil(span / step)
    grams, net, orders, comments, comment_orders, viewers = ([0] * n for _ in range(6))
    peak: list[int | None] = [None] * n
    for m in report.minutes:
        i = (m.minute - first) // step
        if not 0 <= i < n:
            continue
        grams[i] += m.grams
        net[i] += m.grams - m.cancelled_grams
        orders[i] += m.orders
        comments[i] += m.comments
        comment_orders[i] += m.comment_orders
        if m.viewers:
            peak[i] = max(peak[i] or 0, m.peak_viewers)
    cumulative, total = [], 0
    for g in net:
        total += g
        cumulative.append(total)
    last_seen = 0
    for i, p in enumerate(peak):  # a count holds until the next one
        last_seen = p if p is not None else last_seen
        viewers[i] = last_seen
    return _Series(first, step, grams, cumulative, orders, comments, comment_orders, viewers)


def nice_max(value: float) -> float:
    """The smallest round number at least ``value`` whose quarters are round too (1 for 0)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for f in (1, 1.2, 1.6, 2, 2.4, 3, 4, 5, 6, 8, 10):
        if f * power >= value * 0.999999:
            return f * power
    return 10 * power


def _number(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:,.0f}k"
    if value >= 1000:
        return f"{value / 1000:,.1f}k".replace(".0k", "k")
    if value == int(value):
        return f"{int(value)}"
    return f"{value:g}"


def _time_step(span_minutes: int, ticks: int) -> int:
    for step in (1, 2, 5, 10, 15, 20, 30, 60, 120, 180, 360, 720, 1440):
        if span_minutes / step <= ticks:
            return step
    return 1440 * math.ceil(span_minutes / 1440 / ticks)


class _Chart:
    """One SVG: a time axis, a left axis, an optional right axis, gap bands."""

    def __init__(
        self, width: int, series: _Series, gaps: Sequence[Gap], label: str, offset: int
    ) -> None:
        self.width = width
        self.offset = offset
        self.s = series
        self.left, self.right, self.top, self.bottom = 52, 52, 12, 28
        self.plot_w = width - self.left - self.right
        self.plot_h = HEIGHT - self.top - self.bottom
        self.n = len(series.grams)
        self.parts: list[str] = [
            f'<svg class="{"wide" if width == WIDE else "narrow"}" viewBox="0 0 {width} {HEIGHT}"'
            f' role="img" aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        ]
        self._gaps(gaps)

    def x(self, i: float) -> float:
        return self.left + self.plot_w * i / max(1, self.n)

    def y(self, value: float, top: float) -> float:
        return self.top + self.plot_h * (1 - value / top)

    def _gaps(self, gaps: Sequence[Gap]) -> None:
        for g in gaps:
            a = (g.start / 60 - self.s.first) / self.s.step
            b = (g.end / 60 - self.s.first) / self.s.step
            a, b = max(0.0, a), min(float(self.n), b)
            if b <= a:
                continue
            x0, x1 = self.x(a), max(self.x(b), self.x(a) + 2)
            title = escape(f"feed gap: {g.source} {g.state}, {clock_text(g.start, self.offset)}")
            self.parts.append(
                f'<rect x="{x0:.1f}" y="{self.top}" width="{x1 - x0:.1f}" height="{self.plot_h}"'
                f' fill="#d6336c" fill-opacity="0.16"><title>{title}</title></rect>'
            )

    def axes(self, left_top: float, right_top: float | None, right_unit: str = "") -> None:
        p = self.parts
        for k in range(5):
            v = left_top * k / 4
            y = self.y(v, left_top)
            p.append(
                f'<line x1="{self.left}" x2="{self.left + self.plot_w}" y1="{y:.1f}"'
                f' y2="{y:.1f}" stroke="#e3e7ee"/>'
            )
            p.append(
                f'<text x="{self.left - 6}" y="{y + 4:.1f}" text-anchor="end">{_number(v)}</text>'
            )
            if right_top is not None:
                r = right_top * k / 4
                p.append(
                    f'<text x="{self.left + self.plot_w + 6}" y="{y + 4:.1f}">'
                    f"{_number(r)}{right_unit}</text>"
                )
        span = self.n * self.s.step
        ticks = 7 if self.width == WIDE else 3
        step = _time_step(span, ticks)
        first, off = self.s.first, self.offset
        start = -(-(first + off) // step) * step - off  # round times where the reader is
        for minute in range(start, first + span + 1, step):
            i = (minute - first) / self.s.step
            x = self.x(i)
            label = time.strftime("%H:%M", local(minute * 60, off))
            p.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.top + self.plot_h}"'
                f' y2="{self.top + self.plot_h + 4}" stroke="#9aa3b2"/>'
            )
            p.append(f'<text x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="middle">{label}</text>')
        p.append(
            f'<line x1="{self.left}" x2="{self.left + self.plot_w}" y1="{self.top + self.plot_h}"'
            f' y2="{self.top + self.plot_h}" stroke="#9aa3b2"/>'
        )

    def bars(self, values: Sequence[float], top: float, color: str) -> None:
        w = self.plot_w / max(1, self.n)
        gap = 0.18 * w if w > 3 else 0
        for i, v in enumerate(values):
            if v <= 0:
                continue
            y = self.y(v, top)
            self.parts.append(
                f'<rect x="{self.x(i) + gap / 2:.2f}" y="{y:.1f}" width="{max(0.6, w - gap):.2f}"'
                f' height="{self.top + self.plot_h - y:.1f}" fill="{color}"/>'
            )

    def line(self, values: Sequence[float], top: float, color: str, area: bool = False) -> None:
        if not values:
            return
        points = " ".join(
            f"{self.x(i + 0.5):.1f},{self.y(v, top):.1f}" for i, v in enumerate(values)
        )
        if area:
            base = self.top + self.plot_h
            self.parts.append(
                f'<polygon points="{self.x(0.5):.1f},{base} {points}'
                f' {self.x(len(values) - 0.5):.1f},{base}" fill="{color}" fill-opacity="0.14"/>'
            )
        self.parts.append(
            f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"'
            ' stroke-linejoin="round"/>'
        )

    def done(self) -> str:
        return "".join(self.parts) + "</svg>"


BLUE, ORANGE, GREEN, PURPLE, VIEW = "#3b82c4", "#e8590c", "#2b8a3e", "#7048e8", "#1971c2"


def _legend(items: Sequence[tuple[str, str]], gaps: bool) -> str:
    spans = [
        f'<span><i class="swatch" style="background:{c}"></i>{escape(t)}</span>' for c, t in items
    ]
    if gaps:
        spans.append(
            '<span><i class="swatch" style="background:#d6336c;opacity:.35"></i>feed gap</span>'
        )
    return f'<div class="legend">{"".join(spans)}</div>'


def _per(step: int) -> str:
    return "minute" if step == 1 else f"{step} minutes"


def charts(report: Report) -> str:
    s = _series(report)
    gaps = report.gaps
    out = []

    def both(draw: object, title: str, legend: str) -> None:
        assert callable(draw)
        out.append(f"<figure><figcaption>{escape(title)}</figcaption>{legend}")
        out.extend(draw(width) for width in (WIDE, NARROW))
        out.append("</figure>")

    kg_top = nice_max(max(s.grams, default=0) / 1000)
    t_top = nice_max(max(s.cumulative_net, default=0) / 1e6)

    def kg(width: int) -> str:
        c = _Chart(width, s, gaps, "kilograms sold and cumulative tonnes", report.utc_offset)
        c.axes(kg_top, t_top, " t")
        c.bars([g / 1000 for g in s.grams], kg_top, BLUE)
        c.line([g / 1e6 for g in s.cumulative_net], t_top, ORANGE)
        return c.done()

    both(
        kg,
        f"Kilograms sold per {_per(s.step)}, and tonnes so far",
        _legend([(BLUE, "kg (gross)"), (ORANGE, "t cumulative, net (right)")], bool(gaps)),
    )
    oc_top = nice_max(max([*s.orders, *s.comments], default=0))

    def oc(width: int) -> str:
        c = _Chart(width, s, gaps, "orders and comments", report.utc_offset)
        c.axes(oc_top, None)
        c.line(s.comments, oc_top, PURPLE)
        c.line(s.orders, oc_top, GREEN)
        if any(s.comment_orders):
            c.line(s.comment_orders, oc_top, ORANGE)
        return c.done()

    both(
        oc,
        f"Orders and comments per {_per(s.step)}",
        _legend(
            [(GREEN, "orders"), (PURPLE, "comments")]
            + ([(ORANGE, "comment orders")] if any(s.comment_orders) else []),
            bool(gaps),
        ),
    )
    v_top = nice_max(max(s.viewers, default=0))

    def vw(width: int) -> str:
        c = _Chart(width, s, gaps, "viewers", report.utc_offset)
        c.axes(v_top, None)
        c.line(s.viewers, v_top, VIEW, area=True)
        return c.done()

    both(vw, "Viewers (all platforms)", _legend([(VIEW, "peak viewers")], bool(gaps)))
    return "".join(out)


def _card(label: str, value: str, sub: str = "", wide: bool = False) -> str:
    sub_html = f'<div class="sub">{sub}</div>' if sub else ""
    kind = "card wide" if wide else "card"
    return f'<div class="{kind}"><div class="label">{escape(label)}</div>{value}{sub_html}</div>'


def _value(text: str) -> str:
    return f'<div class="value">{text}</div>'


def _table(
    title: str, head: Sequence[str], rows: Sequence[Sequence[str]], numeric: int, full: bool = False
) -> str:
    """``numeric``: columns from this index on are right-aligned numbers; ``full``: the whole
    width of the page's grid."""
    section = '<section class="full">' if full else "<section>"
    if not rows:
        return f'{section}<h2>{escape(title)}</h2><p class="none">None.</p></section>'

    def cells(tag: str, values: Sequence[str]) -> str:
        return "".join(
            f"<{tag}{' class=n' if i >= numeric else ''}>{v}</{tag}>" for i, v in enumerate(values)
        )

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return (
        f'{section}<h2>{escape(title)}</h2><div class="scroll"><table><thead><tr>'
        f"{cells('th', [escape(h) for h in head])}</tr></thead><tbody>{body}</tbody>"
        "</table></div></section>"
    )


def _limited(rows: list[list[str]], extra: int) -> list[list[str]]:
    if extra > 0:
        rows.append([f"… {extra} more in the JSON report"] + [""] * (len(rows[0]) - 1))
    return rows


REPORT_TYPES = {"html": "text/html", "json": "application/json", "md": "text/markdown"}


def render(report: Report, fmt: str) -> bytes:
    """The report in ``fmt`` (one of ``report.FORMATS``), UTF-8."""
    if fmt == "json":
        return orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2) + b"\n"
    if fmt == "md":
        return markdown(report).encode()
    return html(report).encode()


def html(report: Report) -> str:
    h = report.headline()
    revenue = "".join(
        f'<div class="money">{escape(money_text(minor, currency))}</div>'
        for currency, minor in h["revenue_net_minor"].items()
    )
    cards = "".join(
        [
            _card(
                "Sold, net",
                _value(escape(tonnes(h["grams_net"]))),
                f"gross {tonnes(h['grams_gross'])}",
            ),
            _card("Orders", _value(f"{h['orders']:,}"), f"{h['cancelled_orders']:,} cancelled"),
            _card("Revenue, net of cancellations", revenue or _value("–"), wide=True),
            _card("Unique buyers", _value(f"{h['unique_buyers_stream']:,}"), "whole stream"),
            _card("Peak viewers", _value(f"{h['peak_viewers']:,}"), "all platforms"),
            _card(
                "Comments",
                _value(f"{h['comments']:,}"),
                (f"{h['comment_orders']:,} comment orders, {h['comment_withdrawals']:,} withdrawn")
                if h["comment_orders"] or h["comment_withdrawals"]
                else "",
            ),
        ]
    )
    if report.gaps:
        shift = report.utc_offset * 60
        one_day = len({(t + shift) // 86_400 for g in report.gaps for t in (g.start, g.end)})
        fmt = "%H:%M:%S" if one_day == 1 else "%m-%d %H:%M"
        gap_rows = [
            [
                escape(g.source),
                escape(g.state),
                time.strftime(fmt, local(g.start, report.utc_offset)),
                f"{(g.end - g.start) // 60} min {(g.end - g.start) % 60:02d} s"
                + (" so far" if g.ongoing else ""),
            ]
            for g in report.gaps
        ]
        gaps = _table(
            "Feed gaps",
            ["source", "what", f"from ({zone(report.utc_offset)})", "lasted"],
            gap_rows,
            2,
        )
        gaps += (
            '<p class="note">No replica received from the source then: figures of those '
            "minutes may be low until the platform redelivers.</p>"
        )
    else:
        gaps = (
            '<section><h2>Feed gaps</h2><p class="none">None recorded: every source had a '
            "replica receiving throughout.</p></section>"
        )
    skus = report.skus()
    sku_rows = [
        [escape(r["sku"]), kilograms(r["net_grams"]), kilograms(r["cancelled_grams"])]
        for r in skus[:TABLE_ROWS]
    ]
    countries = report.countries()
    country_rows = [
        [escape(r["country"]), f"{r['orders']:,}", kilograms(r["net_grams"])]
        for r in countries[:TABLE_ROWS]
    ]
    provinces = report.provinces()
    province_rows = [[escape(r["province"]), f"{r['orders']:,}"] for r in provinces[:TABLE_ROWS]]
    cancel_rows = [
        [
            escape(r["platform"]),
            f"{r['orders']:,}",
            kilograms(r["grams"]),
            "<br>".join(escape(money_text(m, c)) for c, m in r["value_minor"].items()) or "–",
        ]
        for r in report.cancellations()
    ]
    tables = "".join(
        [
            _table(
                "SKUs",
                ["SKU", "net kg", "cancelled kg"],
                _limited(sku_rows, len(skus) - TABLE_ROWS),
                1,
            ),
            _table(
                "Countries",
                ["country", "orders", "net kg"],
                _limited(country_rows, len(countries) - TABLE_ROWS),
                1,
            ),
            _table(
                "Vietnamese provinces",
                ["province", "orders"],
                _limited(province_rows, len(provinces) - TABLE_ROWS),
                1,
            ),
            _table(
                "Cancellations", ["platform", "orders", "kg", "value"], cancel_rows, 1, full=True
            ),
        ]
    )
    title = f"{report.stream}: the sale's story"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{escape(report.stream)}</h1>"
        f'<p class="meta">{escape(session_line(report))}</p>'
        f'<section class="cards">{cards}</section>'
        f"<h2>Over time ({zone(report.utc_offset)})</h2>{charts(report)}"
        f"{gaps}"
        f'<div class="grid2">{tables}</div>'
        '<p class="note">Headline and charts: this session, from the per-minute timeline. '
        "Tables and unique buyers: the stream's whole life, from its totals.</p>"
        "<footer>livestream-ingester report, generated "
        f"{escape(clock_text(report.generated_at, report.utc_offset))}"
        "</footer></main></body></html>\n"
    )
