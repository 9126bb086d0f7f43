"""The ingester's /metrics under a scrape flood, in process, against a real Redis and real HTTP:
scrapes wait for one shared read on connections of their own, and commits never wait for them."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from redis.asyncio import BlockingConnectionPool, Redis

from ingest.model import Comment
from tests.waiting import UNIT, until
from workers import runtime
from workers.config import parse
from workers.runtime import Ingester

SCRAPES = 50


@pytest.mark.asyncio
async def test_commits_go_on_while_a_flood_of_scrapes_waits_for_one_read(
    redis_url: str, redis: Redis, stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing here may time out while the scrape connections are held on purpose.
    monkeypatch.setattr(runtime, "SCRAPE_TIMEOUT", 60 * UNIT)
    config = parse(
        {
            "redis": {"url": redis_url, "socket_timeout": 60 * UNIT},
            # The flood, not the connection caps, is tested (one address opens them all).
            "http": {
                "listen": "127.0.0.1:0",
                "scrape_max_connections": 2,
                "max_connections": 64,
                "max_connections_per_client": 64,
            },
        },
        "test",
        environ={},
    )
    ingester = Ingester(config)
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as group, aiohttp.ClientSession() as session:
        group.create_task(ingester.run(stop), name="test.ingester")
        await ingester.started.wait()
        url = f"http://127.0.0.1:{ingester.http_port}/metrics"

        async def scrape() -> bytes:
            async with session.get(url) as reply:
                assert reply.status == 200
                return await reply.read()

        assert isinstance(ingester.scrape_redis, Redis)
        pool = ingester.scrape_redis.connection_pool
        assert isinstance(pool, BlockingConnectionPool)
        # The scrape path is stuck: both its connections are taken.
        held = [await pool.get_connection() for _ in range(2)]  # type: ignore[no-untyped-call]
        scrapes = [group.create_task(scrape(), name=f"test.scrape[{n}]") for n in range(SCRAPES)]
        await until(lambda: ingester.business.waiting == SCRAPES, message="every scrape waiting")
        assert ingester.business.reads == 1

        done = await ingester.committer.submit(
            "test", [Comment(stream, "tiktok", "c1", 1_750_000_000_000, "u1")]
        )
        async with asyncio.timeout(10 * UNIT):
            await done  # committed while every scrape still waits
        assert ingester.business.waiting == SCRAPES

        for connection in held:
            await pool.release(connection)
        bodies = await asyncio.gather(*scrapes)
        stop.set()
    assert ingester.business.reads == 1
    line = f'livestream_comments_total{{platform="tiktok",stream="{stream}"}} 1.0'.encode()
    assert all(line in body for body in bodies)
