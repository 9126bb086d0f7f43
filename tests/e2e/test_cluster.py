"""End to end on a real three-primary Redis Cluster: several streams, each in its own slot,
counted exactly while one stream's slot migrates to another node key by key."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from tests.clusters import Cluster
from tests.e2e.support import ReplayFeed, feed_ingester
from tests.e2e.test_exactness import exact
from tests.waiting import until
from workers.demo.sale import Sale, frames, lychee_sale


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    servers = Cluster()
    try:
        servers.start()
        yield servers
    finally:
        servers.close()


def slot(stream: str) -> int:
    return int(key_slot(f"{{{stream}}}".encode()))


def streams_on_every_node(cluster: Cluster, prefix: str) -> list[str]:
    """One stream name per primary: the keys of each live on a different node."""
    chosen: dict[int, str] = {}
    n = 0
    while len(chosen) < cluster.primaries:
        name = f"{prefix}-{n}"
        chosen.setdefault(cluster.owner(slot(name)), name)
        n += 1
    return [chosen[node] for node in sorted(chosen)]


def merged(sales: list[Sale]) -> list[bytes]:
    """Every sale's deliveries in time order, as one feed."""
    streams = [[(d.at, n, d) for d in sale.deliveries] for n, sale in enumerate(sales)]
    return frames([d for _, _, d in heapq.merge(*streams, key=lambda t: (t[0], t[1]))])


@pytest.mark.asyncio
async def test_exact_totals_across_streams_while_a_slot_migrates(
    tmp_path: Path, cluster: Cluster, stream: str
) -> None:
    names = streams_on_every_node(cluster, stream)
    sales = [
        lychee_sale(seed=n, stream=name, hours=0.15, target_grams=600_000, duplicate_share=0.3)
        for n, name in enumerate(names)
    ]
    data = merged(sales)
    feed = ReplayFeed(data, cut_after=len(data) // 2, replay=100, pause=0.001)
    process = feed_ingester(tmp_path, "cluster", cluster.url, feed.url("c"), cluster=True)
    moving = names[0]
    source = cluster.owner(slot(moving))
    target = (source + 1) % len(cluster.nodes)
    async with feed.serving():
        with process:
            await until(lambda: feed.position("c") > len(data) // 5, 30, "a fifth of the feed")
            moved = await asyncio.to_thread(
                cluster.migrate, slot(moving), target, 5, 0.005, ":seen:"
            )
            assert moved > 0
            assert cluster.owner(slot(moving)) == target
            assert not feed.finished("c"), "the migration must overlap the run"
            await until(lambda: feed.finished("c"), 60, "the whole feed")
            for sale in sales:
                await exact(process.http_port, sale)


@pytest.mark.asyncio
async def test_exact_totals_through_a_failover(tmp_path: Path, stream: str) -> None:
    """A replica of a stream's primary is promoted mid-run (CLUSTER FAILOVER): the new primary
    has no script cache, the client is redirected and reloads the script; totals stay exact."""
    servers = Cluster(replicas=1)
    try:
        servers.start()
        names = streams_on_every_node(servers, stream)
        sales = [
            lychee_sale(seed=n, stream=name, hours=0.1, target_grams=400_000)
            for n, name in enumerate(names)
        ]
        data = merged(sales)
        feed = ReplayFeed(data, cut_after=None, replay=0, pause=0.003)
        process = feed_ingester(tmp_path, "failover", servers.url, feed.url("f"), cluster=True)
        async with feed.serving():
            with process:
                await until(lambda: feed.position("f") > len(data) // 8, 30, "an eighth")
                old = servers.owner(slot(names[0]))
                new = await asyncio.to_thread(servers.failover, slot(names[0]))
                assert new != old
                assert not feed.finished("f"), "the failover must overlap the run"
                await until(lambda: feed.finished("f"), 60, "the whole feed")
                for sale in sales:
                    await exact(process.http_port, sale)
    finally:
        servers.close()
