"""The sale's story end to end: the timeline stays exact while a replica is SIGKILLed mid-stream."""

from __future__ import annotations

from pathlib import Path

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
from tests.waiting import until
from workers.demo.sale import DEFAULT_START
from workers.timeline import read_timeline, sum_minutes


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
