"""End to end: the CLI as a user runs it, real Redis, real websockets, totals scraped over HTTP.

A known sale (ground truth computed by the generator) is delivered with over 30% duplicate
deliveries, cancellations before their orders, a forced disconnect with replay, to two ingester
processes at once; and again to one ingester that is SIGKILLed and restarted mid-run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.support import (
    IngesterProcess,
    ReplayFeed,
    business,
    client_source,
    expected_samples,
    feed_ingester,
    scrape,
    select,
    write_config,
)
from tests.servers import free_port
from tests.waiting import until
from workers.demo.sale import Sale, frames, lychee_sale


def small_sale(stream: str) -> Sale:
    sale = lychee_sale(
        seed=11, stream=stream, hours=0.3, target_grams=1_500_000, duplicate_share=0.35
    )
    unique_ids = {id(delivery.event) for delivery in sale.deliveries}
    assert len(unique_ids) == len(sale.events)
    assert 1 - len(sale.events) / len(sale.deliveries) >= 0.30, "needs >= 30% duplicates"
    seen_created: set[object] = set()
    early_cancels = 0
    for delivery in sale.deliveries:
        event = delivery.event
        if event["kind"] == "order" and event["status"] == "created":
            seen_created.add(event["id"])
        elif event["kind"] == "order" and event["id"] not in seen_created:
            early_cancels += 1
    assert early_cancels > 0, "needs cancellations delivered before their orders"
    return sale


def sale_frames(sale: Sale) -> list[bytes]:
    """Single events for the first half, JSON arrays of up to 7 events after."""
    half = len(sale.deliveries) // 2
    return frames(sale.deliveries[:half]) + frames(sale.deliveries[half:], batch=7)


def mismatch(port: int, sale: Sale) -> dict[str, object]:
    """Metric -> (counted, expected) where they differ; empty when exact."""
    want = expected_samples(sale.stream, sale.expected)
    got = business(scrape(port), sale.stream)
    return {name: (got[name], want[name]) for name in want if got[name] != want[name]}


def unique_counts(port: int, stream: str) -> tuple[float, float]:
    samples = scrape(port)
    (buyers,) = select(samples, "livestream_unique_buyers", stream=stream).values()
    (commenters,) = select(samples, "livestream_unique_commenters", stream=stream).values()
    return buyers, commenters


async def exact(port: int, sale: Sale, within: float = 60) -> None:
    try:
        await until(lambda: not mismatch(port, sale), within, "exact totals")
    except AssertionError:
        pytest.fail(f"totals differ: {mismatch(port, sale)}")


@pytest.mark.asyncio
async def test_two_replicas_with_duplicates_and_replay_count_exactly(
    tmp_path: Path, redis_url: str, stream: str
) -> None:
    sale = small_sale(stream)
    data = sale_frames(sale)
    feed = ReplayFeed(data, cut_after=len(data) // 3, replay=150)
    ports = free_port(), free_port()
    async with feed.serving():
        processes = [
            IngesterProcess(
                write_config(
                    tmp_path / f"replica-{n}.toml",
                    redis_url=redis_url,
                    http_port=port,
                    sources=client_source(f"feed-{n}", feed.url(f"replica-{n}")),
                ),
                port,
            )
            for n, port in enumerate(ports)
        ]
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
            for fraction in (0.25, 0.6):
                await until(
                    lambda f=fraction: feed.position("k") >= f * len(data),
                    60,
                    f"{fraction:.0%} of the feed",
                )
                process.kill()
                assert not feed.finished("k"), "the kill must land mid-run"
                process.start()
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
    ports = free_port(), free_port()
    async with feeds[0].serving(), feeds[1].serving():
        processes = [
            IngesterProcess(
                write_config(
                    tmp_path / f"part-{n}.toml",
                    redis_url=redis_url,
                    http_port=port,
                    sources=client_source(f"part-{n}", feeds[n].url("p")),
                ),
                port,
            )
            for n, port in enumerate(ports)
        ]
        with processes[0], processes[1]:
            await until(lambda: all(f.finished("p") for f in feeds), 60, "both feeds")
            for port in ports:
                for sale in sales:
                    await exact(port, sale)
            for n, port in enumerate(ports):  # each read only its own partition
                handled = select(scrape(port), "livestream_ingest_events_total")
                assert sum(handled.values()) == len(sales[n].deliveries)
