"""Faults during a sale: Redis down for ten seconds, a replica killed again and again, SIGTERM
under load, and memory over a long run. Totals stay exact; nothing read is lost."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.workload import Workload
from tests.e2e.support import (
    IngesterProcess,
    ReplayFeed,
    client_source,
    exact,
    feed_ingester,
    kill_and_restart,
    sale_frames,
    scrape,
    select,
    small_sale,
    write_config,
)
from tests.servers import RedisServer, free_port
from tests.waiting import UNIT, until
from workers.demo.sale import lychee_sale

OUTAGE = 10.0


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    """A Redis that keeps its data across a restart (AOF, fsync always)."""
    server = RedisServer(None, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    yield server
    server.close()


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5 * UNIT) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def gauge(port: int, name: str, **labels: str) -> float:
    return select(scrape(port), name, **labels)[()]


TRANSPORTS = pytest.mark.parametrize("transport", ["websockets", "picows"])
"""The websocket client source's libraries (``transport``): each is held to the same faults."""


@pytest.mark.asyncio
@TRANSPORTS
async def test_redis_down_for_ten_seconds_then_back_counts_exactly(
    tmp_path: Path, durable_redis: RedisServer, stream: str, transport: str
) -> None:
    sale = lychee_sale(seed=21, stream=stream, hours=1.0, target_grams=8_000_000)
    data = sale_frames(sale)
    feed = ReplayFeed(data, cut_after=None, replay=0)
    port = free_port()
    config = write_config(
        tmp_path / "outage.toml",
        redis_url=durable_redis.url,
        http_port=port,
        sources=client_source("feed", feed.url("o"), transport=transport),
        buffer_events=300,
    )
    async with feed.serving():
        with IngesterProcess(config, port):
            await until(lambda: feed.position("o") > len(data) // 10, 30, "a tenth of the feed")
            assert readyz(port) == 200
            durable_redis.stop()
            await until(lambda: readyz(port) == 503, 10, "/readyz to report Redis down")
            await until(
                lambda: gauge(port, "livestream_ingest_buffered_events") >= 300,
                20,
                "the buffer to fill",
            )
            # Backpressure: with the buffer full the source stops reading (what the sockets
            # hold meanwhile is the kernel's business: loopback buffers can take the whole feed).
            end = time.monotonic() + OUTAGE * UNIT
            last_read = []
            while time.monotonic() < end:
                assert gauge(port, "livestream_ingest_redis_up") == 0
                assert gauge(port, "livestream_ingest_buffered_events") <= 300 + 7
                last_read.append(
                    gauge(port, "livestream_ingest_last_event_timestamp_seconds", source="feed")
                )
                await asyncio.sleep(0.5)  # the outage lasts OUTAGE seconds; check it throughout
            assert last_read[-1] == last_read[len(last_read) // 4], "reading must stop"
            durable_redis.start()
            await until(lambda: readyz(port) == 200, 20, "/readyz to recover")
            await until(lambda: feed.finished("o"), 60, "the whole feed")
            await exact(port, sale)
            assert gauge(port, "livestream_ingest_redis_up") == 1
            errors = select(scrape(port), "livestream_ingest_commit_errors_total")
            assert sum(errors.values()) >= 1


@pytest.mark.asyncio
@TRANSPORTS
async def test_one_of_two_replicas_killed_again_and_again_keeps_totals_exact(
    tmp_path: Path, redis_url: str, stream: str, transport: str
) -> None:
    sale = small_sale(stream)
    data = sale_frames(sale)
    feed = ReplayFeed(data, cut_after=None, replay=300, pause=0.0006)
    replicas = [
        feed_ingester(tmp_path, f"r{n}", redis_url, feed.url(f"r{n}"), transport) for n in range(2)
    ]
    steady, victim = replicas
    async with feed.serving():
        with steady, victim:
            await kill_and_restart(victim, feed, "r1", (0.2, 0.45, 0.7))
            await until(lambda: feed.finished("r0") and feed.finished("r1"), 60, "both done")
            await exact(steady.http_port, sale)
            await exact(victim.http_port, sale)
    assert feed.cursors["r1"].connections == 4


@pytest.mark.asyncio
@TRANSPORTS
async def test_sigterm_under_load_commits_everything_it_read(
    tmp_path: Path, redis_url: str, transport: str
) -> None:
    frames = list(Workload(seed=3, prefix="term").frames(60_000))
    feed = ReplayFeed(frames, cut_after=None, replay=0)
    process = feed_ingester(tmp_path, "term", redis_url, feed.url("t"), transport)
    async with feed.serving():
        with process:
            # Frames sent run ahead of frames read by what the socket buffers hold (a few
            # thousand): wait well past the 20,000 read that the assertion below needs.
            await until(lambda: feed.position("t") > 26_000, 30, "load")
            started = time.monotonic()
            assert process.terminate() == 0
            assert time.monotonic() - started < 10 * UNIT
        assert not feed.finished("t"), "SIGTERM must land mid-run"
    log = process.log.read_text()
    flushed = re.search(r'"stopping: buffer flushed" submitted=(\d+) committed=(\d+)', log)
    assert flushed, log[-2000:]
    submitted, committed = map(int, flushed.groups())
    assert submitted > 20_000
    assert committed == submitted


@pytest.mark.slow
@pytest.mark.asyncio
async def test_process_memory_stays_flat_over_a_long_run(tmp_path: Path, redis_url: str) -> None:
    """Scaled down for CI (300k events); the benchmark measures 5 million."""
    total = 300_000
    feed = ReplayFeed(list(Workload(seed=4, prefix="soak").frames(total)), cut_after=None, replay=0)
    process = feed_ingester(tmp_path, "soak", redis_url, feed.url("s"))
    port = process.http_port
    handled = "livestream_ingest_events_total"
    async with feed.serving():
        with process:
            assert process.process is not None
            status = Path(f"/proc/{process.process.pid}/status")

            def rss() -> int:
                line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS"))
                return int(line.split()[1])

            await until(
                lambda: sum(select(scrape(port), handled).values()) >= total // 3, 60, "a third"
            )
            early = rss()
            await until(lambda: sum(select(scrape(port), handled).values()) >= total, 120, "all")
            late = rss()
    assert late < early * 1.10, (early, late)
