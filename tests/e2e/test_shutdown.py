"""SIGTERM: stop reading, commit what was read, close the connection cleanly, exit 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.support import ReplayFeed, feed_ingester
from tests.waiting import until
from workers.demo.sale import frames, lychee_sale


@pytest.mark.asyncio
async def test_sigterm_flushes_and_exits_cleanly(
    tmp_path: Path, redis_url: str, stream: str
) -> None:
    sale = lychee_sale(seed=3, stream=stream, hours=0.1, target_grams=500_000)
    data = frames(sale.deliveries)
    feed = ReplayFeed(data, cut_after=None, replay=0, pause=0.001)
    async with feed.serving():
        process = feed_ingester(tmp_path, "term", redis_url, feed.url("t"))
        with process:
            await until(lambda: feed.position("t") > len(data) // 4, 30, "a quarter of the feed")
            assert process.terminate() == 0
        assert not feed.finished("t"), "SIGTERM must land mid-run"
        log = process.log.read_text()
        assert "stopping: no more reading" in log
        assert "stopping: buffer flushed" in log
        assert "Traceback" not in log
