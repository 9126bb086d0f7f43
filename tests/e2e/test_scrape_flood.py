"""End to end: a flood of concurrent /metrics scrapes shares Redis reads, on connections of its own.

Many streams are written straight into a private Redis in the layout of ``workers/keys.py``;
``livestream-ingester run`` (no sources) is then scraped by many clients at once. Redis' own
command statistics count the reads: one read of every stream's totals is two HGETALLs per stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from tests.e2e.support import IngesterProcess, write_config
from tests.servers import RedisServer, free_port
from tests.waiting import UNIT
from workers import keys
from workers.keys import StreamKeys
from workers.runtime import SCRAPE_CLIENT_NAME

STREAMS = 1000
SCRAPES = 50
FRESHNESS = 1.0
MAX_CONNECTIONS = 2


def fill(url: str, streams: int) -> list[str]:
    """``streams`` streams with a few totals each, as the commit script leaves them."""
    names = [f"flood-{n:05d}" for n in range(streams)]
    with SyncRedis.from_url(url) as redis, redis.pipeline(transaction=False) as pipe:
        pipe.sadd(keys.STREAMS, *names)
        for n, name in enumerate(names):
            k = StreamKeys(name)
            pipe.hset(
                k.totals,
                mapping={
                    f"{keys.COMMENTS}|tiktok": n + 1,
                    f"{keys.ORDERS}|tiktok|VN": 2,
                    f"{keys.GRAMS}|tiktok|VN": 3000,
                },
            )
            pipe.hset(k.viewers, mapping={"tiktok": 100})
            pipe.pfadd(k.commenters, "a", "b")
        pipe.execute()
    return names


async def hgetall_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


@pytest.fixture
def server(own_redis: RedisServer) -> RedisServer:
    """A private Redis: its command statistics count only this test's ingester."""
    return own_redis


@pytest_asyncio.fixture
async def admin(server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(server.url)
    yield client
    await client.aclose()


@pytest.fixture
def names(server: RedisServer) -> list[str]:
    """Filled before the ingester starts: its first scrape (a readiness check) reads them."""
    return fill(server.url, STREAMS)


@pytest.fixture
def ingester(tmp_path: Path, server: RedisServer, names: list[str]) -> Iterator[IngesterProcess]:
    port = free_port()
    config = write_config(tmp_path / "flood.toml", redis_url=server.url, http_port=port, sources="")
    text = config.read_text(encoding="utf-8").replace(
        "scrape_freshness_seconds = 0.001\n",
        f"scrape_freshness_seconds = {FRESHNESS}\n"
        f"scrape_max_connections = {MAX_CONNECTIONS}\n"
        # The flood, not the connection caps, is tested (one address opens them all).
        f"max_connections = {2 * SCRAPES}\nmax_connections_per_client = {2 * SCRAPES}\n",
    )
    config.write_text(text + "\n[labels]\nmax_streams = 100000\n", encoding="utf-8")
    with IngesterProcess(config, port) as process:
        yield process


async def flood(port: int, scrapes: int) -> list[bytes]:
    timeout = aiohttp.ClientTimeout(total=60 * UNIT)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one() -> bytes:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as reply:
                assert reply.status == 200
                return await reply.read()

        return list(await asyncio.gather(*(one() for _ in range(scrapes))))


@pytest.mark.asyncio
async def test_concurrent_scrapes_share_one_read_per_freshness_window(
    admin: Redis, ingester: IngesterProcess, names: list[str]
) -> None:
    await admin.config_resetstat()
    start = time.monotonic()
    bodies = await flood(ingester.http_port, SCRAPES)
    elapsed = time.monotonic() - start
    last = f'livestream_comments_total{{platform="tiktok",stream="{names[-1]}"}} {STREAMS}.0'
    for body in bodies:  # every scrape still answers with every stream's totals
        assert last.encode() in body
    reads = await hgetall_calls(admin) / (2 * STREAMS)
    # Reads start at least FRESHNESS apart, whatever the machine's speed: this bound is exact,
    # not a timing guess. Without sharing, every scrape reads (here: 50).
    assert reads <= 1 + elapsed / FRESHNESS, (reads, elapsed)
    assert reads < SCRAPES / 2


@pytest.mark.asyncio
async def test_scrapes_use_their_own_bounded_named_connections(
    admin: Redis, ingester: IngesterProcess
) -> None:
    await flood(ingester.http_port, SCRAPES)
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            async with session.get(f"http://127.0.0.1:{ingester.http_port}/readyz") as reply:
                assert reply.status == 200
    clients = await admin.client_list()
    scrape_clients = [c for c in clients if c["name"] == SCRAPE_CLIENT_NAME]
    assert 1 <= len(scrape_clients) <= MAX_CONNECTIONS, clients
