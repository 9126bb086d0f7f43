"""End to end: the CLI as a user runs it, real Redis, real websockets, totals scraped over HTTP.

A known sale (ground truth computed by the generator) is delivered with over 30% duplicate
deliveries, cancellations before their orders, a forced disconnect with replay, to two ingester
processes at once; and again to one ingester that is SIGKILLed and restarted mid-run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.support import (
    ReplayFeed,
    exact,
    feed_ingester,
    kill_and_restart,
    sale_frames,
    scrape,
    select,
    small_sale,
)
from tests.waiting import until


def unique_counts(port: int, stream: str) -> tuple[float, float]:
    samples = scrape(port)
    (buyers,) = select(samples, "livestream_unique_buyers", stream=stream).values()
    (commenters,) = select(samples, "livestream_unique_commenters", stream=stream).values()
    return buyers, commenters


@pytest.mark.asyncio
async def test_two_replicas_with_duplicates_and_replay_count_exactly(
    tmp_path: Path, redis_url: str, stream: str
) -> None:
    sale = small_sale(stream)
    data = sale_frames(sale)
    feed = ReplayFeed(data, cut_after=len(data) // 3, replay=150)
    processes = [
        feed_ingester(tmp_path, f"replica-{n}", redis_url, feed.url(f"replica-{n}"))
        for n in range(2)
    ]
    ports = [process.http_port for process in processes]
    async with feed.serving():
        with processes[0], processes[1]:
            await until(
                lambda: feed.finished("replica-0") and feed.finished("replica-1"),
                60,
                "both replicas to receive the whole feed",
            )
            for port in ports:
                await exact(port, sale)
                buyers, commenters = unique_counts(port, stream)
                assert abs(buyers - sale.expected.unique_buyers) <= 0.02 * buyers
                assert abs(commenters - sale.expected.unique_commenters) <= 0.02 * commenters
            assert all(feed.cursors[f"replica-{n}"].connections == 2 for n in range(2))
            handled = [select(scrape(port), "livestream_ingest_events_total") for port in ports]
            accepted = [sum(v for k, v in h.items() if "accepted" in k) for h in handled]
            duplicates = [sum(v for k, v in h.items() if "duplicate" in k) for h in handled]
            # Each replica read every delivery (and the replay); together they counted each
            # event exactly once.
            assert sum(accepted) == len(sale.events)
            assert all(
                a + d >= len(sale.deliveries) for a, d in zip(accepted, duplicates, strict=True)
            )
            assert all(d > 0 for d in duplicates)


@pytest.mark.asyncio
async def test_sigkill_mid_run_and_restart_never_double_counts(
    tmp_path: Path, redis_url: str, stream: str
) -> None:
    sale = small_sale(stream)
    data = sale_frames(sale)
    feed = ReplayFeed(data, cut_after=None, replay=400, pause=0.0004)
    async with feed.serving():
        process = feed_ingester(tmp_path, "killed", redis_url, feed.url("k"))
        port = process.http_port
        with process:
            await kill_and_restart(process, feed, "k", (0.25, 0.6))
            await until(lambda: feed.finished("k"), 60, "the whole feed")
            await exact(port, sale)
            assert feed.cursors["k"].connections == 3


@pytest.mark.asyncio
async def test_partitioned_sources_are_exact_and_every_process_exposes_every_stream(
    tmp_path: Path, redis_url: str, stream: str
) -> None:
    """Two processes, each reading its own feed: scraping either shows both streams exactly."""
    sales = [small_sale(f"{stream}-{n}") for n in range(2)]
    feeds = [ReplayFeed(sale_frames(sale), cut_after=None, replay=0) for sale in sales]
    processes = [
        feed_ingester(tmp_path, f"part-{n}", redis_url, feeds[n].url("p")) for n in range(2)
    ]
    ports = [process.http_port for process in processes]
    async with feeds[0].serving(), feeds[1].serving():
        with processes[0], processes[1]:
            await until(lambda: all(f.finished("p") for f in feeds), 60, "both feeds")
            for port in ports:
                for sale in sales:
                    await exact(port, sale)
            for n, port in enumerate(ports):  # each read only its own partition
                handled = select(scrape(port), "livestream_ingest_events_total")
                assert sum(handled.values()) == len(sales[n].deliveries)
