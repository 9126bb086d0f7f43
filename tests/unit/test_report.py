"""The report's rendering, pure: no Redis. Hostile labels are escaped, nothing is fetched, the
figures are exact, long sessions are drawn in coarser steps."""

from __future__ import annotations

import re

import orjson
import pytest

from workers.feeds import Gap
from workers.report import Report, clock_text, markdown, parse_offset, zone
from workers.report_html import MAX_BARS, _series, html, nice_max, render
from workers.sessions import Session
from workers.store import StreamTotals
from workers.timeline import Minute

T0 = 29_000_000  # epoch minutes
HOSTILE = '<script>alert(1)</script>"&x'


def report(minutes: int = 30) -> Report:
    counters = {
        "orders|tiktok|VN": 3,
        "grams|tiktok|VN": 7000,
        "cancelled|tiktok|VN": 1,
        "cancelled_grams|tiktok|VN": 2000,
        f"sku_grams|{HOSTILE}": 7000,
        f"cancelled_sku_grams|{HOSTILE}": 2000,
        f"region|VN|{HOSTILE}": 3,
        "value|tiktok|VND": 300_000,
        "cancelled_value|tiktok|VND": 100_000,
    }
    totals = StreamTotals("s1", counters, {"tiktok": 10}, 5, 3)
    timeline = [
        Minute(T0, orders=2, grams=5000, value={"VND": 200_000}, comments=4, viewers={"tiktok": 9}),
        Minute(
            T0 + minutes - 1,
            orders=1,
            grams=2000,
            value={"VND": 100_000},
            cancelled=1,
            cancelled_grams=2000,
            cancelled_value={"VND": 100_000},
            viewers={"tiktok": 12, "shopee": 3},
        ),
    ]
    session = Session(1, T0 * 60, T0 * 60 + minutes * 60, "ended", T0, T0 + minutes - 1)
    gaps = [Gap(HOSTILE, T0 * 60 + 120, T0 * 60 + 300, "disconnected")]
    return Report("s1", session, T0 * 60 + 4000, timeline, gaps, totals, 1)


def test_headline_is_exact_and_net_of_cancellations() -> None:
    h = report().headline()
    assert h["grams_gross"] == 7000
    assert h["grams_net"] == 5000
    assert h["revenue_net_minor"] == {"VND": 200_000}
    assert h["peak_viewers"] == 15
    assert h["unique_buyers_stream"] == 3


def test_html_escapes_every_feed_label_and_fetches_nothing() -> None:
    page = html(report())
    assert "<script" not in page
    assert page.count("&lt;script&gt;") >= 3  # SKU, province, gap source
    assert not re.search(r"""(src|href)\s*=|@import|url\(""", page)
    assert page.count("<svg") == 6  # three charts, wide and narrow


def test_markdown_and_json_carry_the_same_figures() -> None:
    text = markdown(report())
    assert "| sold, net of cancellations | 0.005 t |" in text
    assert "<script" not in text  # no HTML a Markdown renderer would run
    assert '| &lt;script&gt;alert(1)&lt;/script&gt;"&amp;x | 3 |' in text
    data = orjson.loads(render(report(), "json"))
    assert data["headline"]["grams_net"] == 5000
    assert data["gaps"][0]["state"] == "disconnected"
    assert [m["minute"] for m in data["minutes"]] == [T0, T0 + 29]


def test_a_long_session_is_drawn_in_coarser_steps() -> None:
    s = _series(report(minutes=3 * MAX_BARS))
    assert s.step == 3
    assert len(s.grams) == MAX_BARS
    assert sum(s.grams) == 7000
    assert s.cumulative_net[-1] == 5000
    assert s.viewers[-1] == 15  # a count holds until the next one
    assert s.viewers[1] == 9


def test_axis_tops_are_round() -> None:
    assert [nice_max(v) for v in (0, 0.7, 53, 280, 760, 31_175)] == [
        1.0,
        0.8,
        60.0,
        300.0,
        800.0,
        40_000.0,
    ]


def test_utc_offsets() -> None:
    assert [parse_offset(t) for t in ("+07:00", "-05:30", "7", "0", "+14:00")] == [
        420,
        -330,
        420,
        0,
        840,
    ]
    for bad in ("7h", "+15:00", "+07:60", ""):
        with pytest.raises(ValueError, match="not a UTC offset"):
            parse_offset(bad)
    assert [zone(0), zone(420), zone(-330)] == ["UTC", "UTC+07:00", "UTC-05:30"]
    assert clock_text(0, 420) == "1970-01-01 07:00:00 UTC+07:00"


def test_the_time_axis_is_in_the_readers_time_zone() -> None:
    r = report()
    r.utc_offset = 420
    page = html(r)
    assert "<h2>Over time (UTC+07:00)</h2>" in page
    local_hour = (T0 // 60 + 7) % 24
    assert f">{local_hour:02d}:" in page


def test_comment_orders_are_shown_where_the_stream_counted_some() -> None:
    plain = report()
    assert "comment orders" not in html(plain)  # a stream without a catalog: nothing to say
    assert "comment orders" not in markdown(plain)
    with_orders = report()
    with_orders.minutes[0].comment_orders = 3
    with_orders.minutes[1].comment_withdrawals = 1
    assert with_orders.headline()["comment_orders"] == 3
    page = html(with_orders)
    assert "3 comment orders, 1 withdrawn" in page
    assert "></i>comment orders</span>" in page  # a line of the orders chart, in its legend
    assert "| comment orders | 3 (1 withdrawn) |" in markdown(with_orders)
    data = orjson.loads(render(with_orders, "json"))
    assert [m["comment_orders"] for m in data["minutes"]] == [3, 0]
