"""The sale's story end to end: the timeline stays exact while a replica is SIGKILLed mid-stream."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from tests.e2e.support import (
    ReplayFeed,
    exact,
    feed_ingester,
    kill_and_restart,
    sale_frames,
    small_sale,
)
from tests.servers import RedisServer
from tests.waiting import UNIT, until
from workers.demo.sale import DEFAULT_START
from workers.feeds import read_gaps
from workers.timeline import read_timeline, sum_minutes

OUTAGE_SECONDS = 4


@pytest.mark.asyncio
async def test_timeline_is_exact_with_a_replica_killed_mid_stream(
    tmp_path: Path, redis_url: str, stream: str
) -> None:
    sale = small_sale(stream)  # 18 minutes from DEFAULT_START, 35% duplicates
    data = sale_frames(sale)
    feed = ReplayFeed(data, cut_after=None, replay=300, pause=0.0006)
    replicas = [feed_ingester(tmp_path, f"r{n}", redis_url, feed.url(f"r{n}")) for n in range(2)]
    steady, victim = replicas
    async with feed.serving():
        with steady, victim:
            await kill_and_restart(victim, feed, "r1", (0.3, 0.6))
            await until(lambda: feed.finished("r0") and feed.finished("r1"), 60, "both done")
            await exact(steady.http_port, sale)
    first = int(DEFAULT_START.timestamp()) // 60
    async with Redis.from_url(redis_url) as redis:
        minutes = await read_timeline(redis, stream, first - 1440, first + 1440)
    assert minutes, "no timeline"
    assert first <= minutes[0].minute
    assert minutes[-1].minute <= first + 19
    total = sum_minutes(minutes)
    want = sale.expected
    assert total.orders == sum(want.orders.values())
    assert total.grams == sum(want.grams.values())
    assert total.cancelled == sum(want.cancelled_orders.values())
    assert total.cancelled_grams == sum(want.cancelled_grams.values())
    assert total.comments == sum(want.comments.values())
    value: dict[str, int] = {}
    for (_, currency), minor in want.value_minor.items():
        value[currency] = value.get(currency, 0) + minor
    assert total.value == value
    assert set(total.viewers) == set(want.viewers)
    for platform, latest in want.viewers.items():  # the peak is at least the last count
        assert total.viewers[platform] >= latest


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10 * UNIT) as reply:
            return int(reply.status), reply.headers.get("Content-Type", ""), reply.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), "", exc.read()


@pytest.mark.asyncio
async def test_feed_gaps_across_an_outage_and_a_replica_kill(
    tmp_path: Path, own_redis: RedisServer, stream: str
) -> None:
    """Two replicas read one feed. One is SIGKILLed and down for a while: no gap, the other
    received. Then the feed goes down for both: one gap. The report over HTTP marks it."""
    sale = small_sale(stream)
    data = sale_frames(sale)
    feed = ReplayFeed(data, cut_after=None, replay=300, pause=0.004)
    # Silence is not what this test is about (the outage is a disconnection, the kill a replica
    # that stops marking): 10 s, so the steady replica, starved of CPU by other tests for
    # a few seconds, is not taken for silent (a second gap).
    story = "\n[story]\nsilent_seconds = 10\n"
    replicas = [
        feed_ingester(tmp_path, f"g{n}", own_redis.url, feed.url(f"g{n}"), story=story)
        for n in range(2)
    ]
    steady, victim = replicas
    began = time.time()
    with steady, victim:
        async with feed.serving():
            await until(lambda: feed.position("g0") > len(data) // 5, 60, "a fifth of the feed")
            victim.kill()
            killed = time.time()
            await until(lambda: time.time() - killed > 3 * UNIT, 10, "three seconds")
            victim.start()
            await until(lambda: feed.position("g0") > len(data) // 2, 60, "half the feed")
            assert not feed.finished("g0"), "the outage must land mid-run"
        down = time.time()  # the feed's server is gone: both replicas lose it
        await until(lambda: time.time() - down > OUTAGE_SECONDS * UNIT, 20, "the outage")
        async with feed.serving():
            up = time.time()
            await until(lambda: feed.finished("g0") and feed.finished("g1"), 60, "both done")
            await exact(steady.http_port, sale)
            finished = time.time()
            async with Redis.from_url(own_redis.url) as redis:
                gaps = await read_gaps(redis, stream, began, finished, open_end=False)
            base = f"http://127.0.0.1:{steady.http_port}/streams"
            status, kind, body = get(f"{base}/{stream}/report?format=json")
            assert status == 200
            assert kind.startswith("application/json")
            report = orjson.loads(body)
            assert report["headline"]["orders"] == sum(sale.expected.orders.values())
            status, kind, body = get(f"{base}/{stream}/report")
            assert status == 200
            assert kind.startswith("text/html")
            assert b"Feed gaps" in body
            assert get(f"{base}/no-such-stream/report")[0] == 404
            assert get(f"{base}/{stream}/report?format=pdf")[0] == 400
            assert get(f"{base}/{stream}/report?session=x")[0] == 400
    (gap,) = gaps  # the outage, not the kill: the other replica received meanwhile
    assert gap.source == "feed"
    assert gap.state in ("disconnected", "reconnecting")
    assert down - 2 * UNIT <= gap.start <= down + 2
    assert up - 1 <= gap.end <= up + 3 * UNIT  # reconnected within its backoff (0.5 s at most)
    assert [(g["start"], g["end"]) for g in report["gaps"]] == [(gap.start, gap.end)]
