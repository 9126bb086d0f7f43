"""The report of a demo sale as a user gets it (the CLI) and sees it (a real Chromium with the
network cut): the same figures in HTML, JSON and Markdown, feed gaps marked, nothing fetched,
no console error, readable at desktop and phone widths. Screenshots are test artifacts
(``LIVESTREAM_TEST_ARTIFACTS``, else the test's temporary folder)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from ingest.adapter import FormatOptions
from ingest.model import Rejection
from ingest.native import NativeFormat
from tests.browser import offline_page
from tests.servers import RedisServer
from tests.waiting import UNIT
from workers.demo.sale import PLATFORMS, Sale, frames, lychee_sale
from workers.feeds import FeedRecorder
from workers.store import Store, StoreSettings

HOURS = 6
OUTAGE = (2 * 3600, 2 * 3600 + 360)
"""Seconds into the sale when the feed was down for every replica: the one gap."""
KILLED = (3600, 3600 + 1800)
"""When one of the two replicas was dead: no gap, the other received."""


def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("LIVESTREAM_TEST_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def commit_sale(redis: Redis, sale: Sale) -> None:
    """Every delivery (duplicates included) through the native format and the store."""
    fmt = NativeFormat(
        FormatOptions(
            default_stream=sale.stream,
            max_frame_bytes=4 << 20,
            platforms=frozenset(PLATFORMS),
        )
    )
    events = []
    for frame in frames(sale.deliveries, batch=50):
        events += [e for e in fmt.decode(frame) if not isinstance(e, Rejection)]
    store = Store(redis, StoreSettings())
    for start in range(0, len(events), 1000):
        await store.commit(events[start : start + 1000])


async def record_feed(redis: Redis, start: int) -> None:
    """Two replicas read the sale's feed: one is killed for half an hour (no gap: the other
    receives), then the feed is down for both for six minutes (the gap)."""
    clocks = [Clock(start), Clock(start)]
    replicas = [
        FeedRecorder(redis, 60, 30 * 86_400, clock=c, replica=f"r{n}") for n, c in enumerate(clocks)
    ]
    for r in replicas:
        r.connected("feed", True)
    disconnected = [False, False]
    for t in range(start, start + HOURS * 3600, 5):
        down = OUTAGE[0] <= t - start < OUTAGE[1]
        for n, (r, c) in enumerate(zip(replicas, clocks, strict=True)):
            c.now = t
            if n == 1 and KILLED[0] <= t - start < KILLED[1]:
                continue  # dead: no hooks, no ticks
            if down and not disconnected[n]:
                r.connected("feed", False)
                r.reconnecting("feed")
            elif not down and disconnected[n]:
                r.connected("feed", True)
            disconnected[n] = down
            if not down:
                r.received("feed")
            await r.tick()


def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "workers", *args],
        capture_output=True,
        timeout=120 * UNIT,
        check=False,
    )


def check_json_and_markdown(where: list[str], sale: Sale, start: int) -> None:
    """The JSON report carries the sale's figures and the one gap; Markdown its tables."""
    data = orjson.loads(cli("report", *where, "--format", "json").stdout)
    assert (data["session"]["n"], data["session"]["how"]) == (1, "ended")
    want = sale.expected
    headline = data["headline"]
    assert headline["grams_gross"] == sum(want.grams.values())
    assert headline["grams_net"] == sum(want.grams.values()) - sum(want.cancelled_grams.values())
    assert headline["orders"] == sum(want.orders.values())
    assert abs(headline["unique_buyers_stream"] - want.unique_buyers) <= 0.02 * want.unique_buyers
    # (a HyperLogLog: 0.81% standard error)
    net: dict[str, int] = {}
    for (_, currency), minor in want.value_minor.items():
        net[currency] = net.get(currency, 0) + minor
    assert headline["revenue_gross_minor"] == net  # every order's value, once
    assert sum(m["grams"] for m in data["minutes"]) == headline["grams_gross"]
    (gap,) = data["gaps"]  # the outage; not the kill, which the other replica covered
    assert gap["source"] == "feed"
    assert gap["state"] in ("disconnected", "reconnecting")
    assert abs(gap["start"] - (start + OUTAGE[0])) <= 5
    assert abs(gap["end"] - (start + OUTAGE[1])) <= 5
    assert {r["province"] for r in data["provinces"]} >= {"Hà Nội", "Bắc Ninh"}
    markdown = cli("report", *where, "--format", "md").stdout.decode()
    assert "| sold, gross | 54.000 t |" in markdown
    assert "## Vietnamese provinces (whole stream)" in markdown


@pytest.mark.asyncio
async def test_report_of_a_demo_sale_in_a_browser_without_network(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    start = (int(time.time()) // 60 - (HOURS + 1) * 60) * 60
    stream = "lucngan-report"
    sale = lychee_sale(
        seed=2025, stream=stream, hours=HOURS, start=datetime.fromtimestamp(start, UTC)
    )
    async with Redis.from_url(own_redis.url) as redis:
        await commit_sale(redis, sale)
        await record_feed(redis, start)
    where = ["--redis-url", own_redis.url, "--stream", stream]
    ended = cli("session", "end", *where)  # the sale is over
    assert ended.stdout.decode() == f"{stream}: session 1 ended\n", ended.stderr
    assert cli("session", "end", *where).stdout.decode() == f"{stream}: none open\n"
    page_file = tmp_path / "report.html"
    result = cli("report", *where, "--out", str(page_file), "--utc-offset", "+07:00")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == str(page_file)
    assert "<h2>Over time (UTC+07:00)</h2>" in page_file.read_text(encoding="utf-8")
    refused = cli("report", *where, "--utc-offset", "7 hours")
    assert (refused.returncode, refused.stderr) == (
        1,
        b"report: not a UTC offset: '7 hours' (e.g. +07:00)\n",
    )
    check_json_and_markdown(where, sale, start)

    out = artifacts(tmp_path)
    url = page_file.resolve().as_uri()
    async with offline_page() as page:
        for width, name in ((1280, "desktop"), (390, "phone")):
            await page.open(url, width)
            shown = "svg.wide" if width > 600 else "svg.narrow"
            visible = await page.evaluate(
                f"[...document.querySelectorAll('{shown}')]"
                ".filter(e => e.getBoundingClientRect().width > 0).length"
            )
            assert visible == 3, name
            # nothing wider than the screen: no sideways scrolling of the page on a phone
            assert await page.evaluate(
                "document.documentElement.scrollWidth <= window.innerWidth"
            ), name
            # nor any table wider than its box (it would hide its last column behind a scroll)
            clipped = await page.evaluate(
                "[...document.querySelectorAll('.scroll')]"
                ".filter(e => e.scrollWidth > e.clientWidth + 1).length"
            )
            assert clipped == 0, name
            gap_bands = await page.evaluate(
                f"document.querySelectorAll('{shown} rect[fill=\"#d6336c\"]').length"
            )
            assert gap_bands == 3, name  # the gap, marked on each chart's time axis
            await page.screenshot(out / f"report-{name}.png", width)
        assert page.requests == [url, url], page.requests  # the page itself, twice; nothing else
        assert page.errors == []
    for name in ("desktop", "phone"):
        assert (out / f"report-{name}.png").stat().st_size > 10_000
