"""The committer against a Redis it controls: batching, acknowledgement futures, backpressure,
and retries through an outage with nothing lost or double counted."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tracemalloc
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from ingest.adapter import FormatOptions
from ingest.catalog import Catalog, Product
from ingest.comment_orders import parse_comment
from ingest.model import Comment, Reason, Rejection
from ingest.native import NativeFormat
from tests.clusters import Cluster
from tests.servers import RedisServer
from tests.waiting import UNIT, until
from workers import keys
from workers.catalogs import comment_intents
from workers.committer import BatchSettings, Committer
from workers.metrics import HealthMetrics
from workers.runtime import redis_client
from workers.store import CommentReading, Store, StoreSettings


def comments(stream: str, start: int, n: int) -> list[Comment]:
    return [
        Comment(stream, "tiktok", f"c{i}", 1_750_000_000_000, f"u{i}")
        for i in range(start, start + n)
    ]


def native_format(stream: str) -> NativeFormat:
    return NativeFormat(FormatOptions(default_stream=stream, max_frame_bytes=4 << 20))


@contextlib.asynccontextmanager
async def committer(
    url: str, settings: BatchSettings
) -> AsyncIterator[tuple[Committer, HealthMetrics]]:
    client = redis_client(url, socket_timeout=1.0)
    health = HealthMetrics()
    c = Committer(Store(client, StoreSettings()), health, settings)
    task = asyncio.create_task(c.run(), name="test.committer")
    try:
        yield c, health
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()


def sample(health: HealthMetrics, name: str, **labels: str) -> float:
    value = health.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.mark.asyncio
async def test_futures_complete_after_commit_and_batches_are_bounded(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with committer(redis_url, BatchSettings(max_events=50, max_delay=0.002)) as (c, health):
        futures = [await c.submit("src", comments(stream, i * 10, 10)) for i in range(30)]
        bad = Rejection(Reason.MALFORMED_JSON, "x", b"{", stream)
        futures.append(await c.submit("src", [bad, *comments(stream, 0, 5)]))  # duplicates
        async with asyncio.timeout(10 * UNIT):
            await asyncio.gather(*futures)
        assert c.buffered == 0

        def comments_counted(outcome: str) -> float:
            events = "livestream_ingest_events_total"
            return sample(health, events, source="src", kind="comment", outcome=outcome)

        assert comments_counted("accepted") == 300
        assert comments_counted("duplicate") == 5
        assert (
            sample(
                health, "livestream_ingest_rejections_total", source="src", reason="malformed_json"
            )
            == 1
        )
        # Whole frames of 10 never exceed 50 events per commit.
        assert sample(health, "livestream_ingest_commit_batch_events_bucket", le="50.0") == sample(
            health, "livestream_ingest_commit_batch_events_count"
        )
        (totals,) = await Store(redis, StoreSettings()).totals([stream])
        assert totals.by("comments") == {("tiktok",): 300}


@pytest.mark.asyncio
async def test_redis_outage_blocks_sources_then_drains_exactly(
    own_redis: RedisServer, stream: str
) -> None:
    settings = BatchSettings(max_events=100, max_delay=0.001, capacity=500)
    async with committer(own_redis.url, settings) as (c, health):
        first = await c.submit("src", comments(stream, 0, 100))
        async with asyncio.timeout(10 * UNIT):
            await first
        own_redis.stop(kill=True)

        submitted = 0

        async def produce() -> None:
            nonlocal submitted
            for start in range(100, 2000, 100):
                await c.submit("src", comments(stream, start, 100))
                submitted += 100

        producer = asyncio.create_task(produce())
        await until(lambda: c.buffered >= settings.capacity, 10, "the buffer to fill")
        await until(
            lambda: (
                sample(health, "livestream_ingest_commit_errors_total", error="ConnectionError")
                >= 2
            ),
            10,
            "retries",
        )
        assert not producer.done(), "a full buffer must make the source wait"
        assert submitted <= settings.capacity
        assert sample(health, "livestream_ingest_redis_up") == 0

        own_redis.start()  # same port, empty: nothing of the first batch survives a kill
        async with asyncio.timeout(30 * UNIT):
            await producer
            await c.flush()
        assert sample(health, "livestream_ingest_redis_up") == 1
        (totals,) = await c.store.totals([stream])
        assert totals.by("comments") == {("tiktok",): 1900}


@pytest.mark.asyncio
async def test_an_unreachable_cluster_is_retried_until_it_is_back(stream: str) -> None:
    """Started while no node answers, redis-py raises RedisClusterException (not a RedisError):
    still a commit to retry, not a reason to stop."""
    cluster = Cluster()
    cluster.start()
    try:
        for node in cluster.nodes:
            node.stop()
        client = redis_client(cluster.url, socket_timeout=1.0, cluster=True)
        health = HealthMetrics()
        c = Committer(Store(client, StoreSettings()), health, BatchSettings())
        task = asyncio.create_task(c.run(), name="test.committer")
        try:
            committed = await c.submit("src", comments(stream, 0, 3))
            errors = "livestream_ingest_commit_errors_total"
            await until(
                lambda: sample(health, errors, error="RedisClusterException") >= 2,
                30,
                "retries while no node answers",
            )
            assert not task.done(), "the committer must keep retrying"
            for node in cluster.nodes:
                node.start()
            async with asyncio.timeout(30 * UNIT):
                await committed
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.aclose()
    finally:
        cluster.close()


@pytest.mark.asyncio
async def test_the_buffer_is_bounded_in_bytes_while_redis_is_down(
    own_redis: RedisServer, stream: str
) -> None:
    """Rejections of 1 MiB frames wait for Redis holding only their dead-letter bound, and the
    byte bound stops the sources long before the event bound would."""
    own_redis.stop(kill=True)
    settings = BatchSettings(max_events=100, capacity=50_000, buffer_bytes=1 << 20)
    big = native_format(stream)
    async with committer(own_redis.url, settings) as (c, health):
        held = 0

        async def produce() -> None:
            nonlocal held
            for n in range(300):
                # 1 MiB of "x " (a run of word characters as long as the dead letter's 8 KiB
                # made redacting each frame's kept bytes take ~0.3 s: ~70 s in all)
                frame = b'{"kind": "comment", "n": %d, "pad": "' % n + b"x " * (1 << 19)
                await c.submit("src", big.decode(frame))
                held += 1

        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            producer = asyncio.create_task(produce())
            await until(lambda: c.buffered_bytes >= settings.buffer_bytes, 10, "a full buffer")
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert not producer.done(), "a buffer full of bytes must make the source wait"
        assert held < 300
        assert c.buffered_bytes < settings.buffer_bytes + 16 * 1024
        assert sample(health, "livestream_ingest_buffered_bytes") == c.buffered_bytes
        print(f"traced growth with the buffer full: {grown} bytes")
        assert grown < 4 * settings.buffer_bytes, f"{grown} bytes held"
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer


@pytest.mark.asyncio
async def test_a_full_buffer_of_put_frames_holds_nothing_the_collector_walks(
    own_redis: RedisServer, stream: str
) -> None:
    """Frames put while Redis is down wait in the buffer untracked by the cyclic collector: a
    buffer of 50,000 frames that it tracked (frame, list, future: 150,000 objects) made every
    full collection walk them, a seventh of the ingester's CPU. Then they commit exactly."""
    own_redis.stop(kill=True)
    frames = 2_000
    async with committer(own_redis.url, BatchSettings(max_events=500)) as (c, health):
        gc.collect()
        before = len(gc.get_objects())
        for i in range(frames):
            await c.put("src", comments(stream, i, 1))
        await until(lambda: c.buffered == frames, 10, "every frame buffered")
        gc.collect()
        grown = len(gc.get_objects()) - before
        assert grown < frames // 10, f"{grown} tracked objects more for {frames} frames"
        own_redis.start()
        async with asyncio.timeout(30 * UNIT):
            await c.flush()
        events = "livestream_ingest_events_total"
        labels = {"source": "src", "kind": "comment", "outcome": "accepted"}
        assert sample(health, events, **labels) == frames


@pytest.mark.asyncio
async def test_one_frame_larger_than_the_byte_bound_still_passes(
    redis_url: str, stream: str
) -> None:
    settings = BatchSettings(buffer_bytes=1024)
    async with committer(redis_url, settings) as (c, _):
        letters = [Rejection(Reason.MALFORMED_JSON, "x", b"{" * 4000, stream) for _ in range(3)]
        async with asyncio.timeout(10 * UNIT):
            await (await c.submit("src", letters))
            await (await c.submit("src", letters))
        assert c.buffered_bytes == 0


@pytest.mark.asyncio
async def test_batches_that_may_decide_comment_orders_commit_in_the_order_taken(
    redis_url: str, stream: str
) -> None:
    """Each buyer orders, withdraws and orders again in consecutive small batches, two in
    flight: were a later batch to commit first, a withdrawal would find no order, and the
    counters would differ from the comments' order."""
    catalog = Catalog((Product("VT05", "Vải thiều thùng 5 kg", (), 5000),))

    def read(stream: str, text: str) -> CommentReading:
        return comment_intents(parse_comment(text, catalog), catalog)

    client = redis_client(redis_url, socket_timeout=5.0)
    store = Store(client, StoreSettings(), read_comment=read)
    c = Committer(store, HealthMetrics(), BatchSettings(max_events=3, max_in_flight=2))
    task = asyncio.create_task(c.run(), name="test.committer")
    buyers = 40
    texts = ["VT05", "hủy VT05", "VT05 x2", "hủy đơn", "VT05 x3"]
    try:
        pending = [
            await c.submit(
                "src",
                [
                    Comment(stream, "tiktok", f"{b}-{n}", 1_750_000_000_000, f"u{b}", text=text)
                    for b in range(buyers)
                ],
            )
            for n, text in enumerate(texts)
        ]
        async with asyncio.timeout(30 * UNIT):
            await asyncio.gather(*pending)
        (totals,) = await store.totals([stream])
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()
    assert totals.by(keys.COMMENT_ORDERS) == {("tiktok", "VT05"): 3 * buyers}
    assert totals.by(keys.COMMENT_WITHDRAWALS) == {("tiktok", "VT05"): 2 * buyers}
    assert totals.by(keys.COMMENT_ORDER_GRAMS) == {("VT05",): (1 + 2 + 3) * 5000 * buyers}
    assert totals.by(keys.COMMENT_CHANGES) == {}
