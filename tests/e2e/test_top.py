"""``livestream-ingester top`` as an operator runs it, against totals committed to a real Redis."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from redis.asyncio import Redis
from rich.console import Console

from ingest.adapter import FormatOptions
from ingest.catalog import Catalog, Product
from ingest.comment_orders import parse_comment
from ingest.model import Event, Rejection
from ingest.native import NativeFormat
from tests.clusters import Cluster, streams_on_every_node
from tests.e2e.support import feed_ingester
from tests.servers import RedisServer, free_port
from tests.waiting import UNIT
from workers.catalogs import comment_intents
from workers.config import DEFAULT_PLATFORMS
from workers.metrics import HealthMetrics, exposition
from workers.runtime import redis_client
from workers.store import CommentReading, Store, StoreSettings
from workers.top import Reader, plain, rich_view

TS = "2025-06-14T09:05:08+07:00"
VN = {"country": "VN", "currency": "VND"}


def order(
    stream: str, oid: str, *, country: str, currency: str, amount: str, items: object
) -> bytes:
    return orjson.dumps(
        {
            "kind": "order",
            "id": oid,
            "status": "created",
            "stream": stream,
            "platform": "shopee",
            "ts": TS,
            "buyer": f"b-{oid}",
            "country": country,
            "currency": currency,
            "amount": amount,
            "items": items,
        }
    )


def known_events(stream: str) -> list[Event]:
    """Three orders of 7.250 kg in all (one later cancelled), two comments, a viewer count."""
    lines = [
        order(
            stream,
            "o1",
            **VN,
            amount="240000",
            items=[{"sku": "VT01", "qty": 2, "grams": 1000}],
        ),
        order(
            stream,
            "o2",
            country="US",
            currency="USD",
            amount="12.50",
            items=[{"sku": "VT05", "qty": 1, "grams": 1250}],
        ),
        order(
            stream,
            "o3",
            **VN,
            amount="450000",
            items=[
                {"sku": "VTQ", "qty": 1, "grams": 3000},
                {"sku": "VT01", "qty": 1, "grams": 1000},
            ],
        ),
        orjson.dumps(
            {"kind": "order", "id": "o3", "status": "cancelled", "stream": stream}
            | {"platform": "shopee", "ts": TS}
        ),
        *(
            orjson.dumps(
                {"kind": "comment", "id": f"c{n}", "stream": stream, "platform": "tiktok"}
                | {"ts": TS, "user": f"u{n}", "text": "chốt VT01"}
            )
            for n in (1, 2)
        ),
        orjson.dumps(
            {"kind": "viewers", "id": "v1", "stream": stream, "platform": "tiktok"}
            | {"ts": TS, "count": 1234}
        ),
    ]
    fmt = NativeFormat(FormatOptions(platforms=frozenset(DEFAULT_PLATFORMS)))
    events: list[Event] = []
    for line in lines:
        (decoded,) = fmt.decode(line)
        assert not isinstance(decoded, Rejection), decoded
        events.append(decoded)
    return events


def write_config(path: Path, redis_url: str) -> Path:
    path.write_text(f'[redis]\nurl = "{redis_url}"\n', encoding="utf-8")
    return path


def run_top(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers", "top", "--once", "--plain", "--interval", "0.1", *args],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.mark.asyncio
async def test_top_shows_the_exact_totals_of_a_stream(
    redis: Redis, redis_url: str, stream: str
) -> None:
    store = Store(redis, StoreSettings())
    events = known_events(stream)
    await store.commit(events)
    await store.commit(events)  # redelivered: counted once

    result = run_top("--redis-url", redis_url, "--stream", stream)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"stream {stream}  sold 7.250 kg (0.007 t)  orders 3 ")
    assert "  comments 2 (" in lines[0]
    assert re.search(r"  cancelled 1  session 1 live 0:00:\d\d$", lines[0]), lines[0]
    assert lines[1] == "  revenue: USD 12.50; VND 690,000"
    assert lines[2] == "  top countries: VN 6.000 kg, US 1.250 kg"
    assert lines[3] == "  top SKUs: VT01 3.000 kg, VTQ 3.000 kg, VT05 1.250 kg"
    assert lines[4] == "  unique buyers 3, unique commenters 2, viewers: tiktok 1,234"
    assert lines[5] == (  # this store has no catalog: no comment orders
        "  comment orders: 0, withdrawn 0, with phone 0, changed 0, ambiguous 0, unknown codes 0"
    )
    assert len(lines) == 6


async def serve_metrics(text: bytes) -> tuple[web.AppRunner, int]:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=text, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


@pytest.mark.asyncio
async def test_top_reads_redis_from_the_config_and_health_from_each_ingester(
    redis: Redis, redis_url: str, stream: str, tmp_path: Path
) -> None:
    catalog = Catalog((Product("VT01", "Vải thiều hộp 1 kg", (), 1000),))

    def read(stream: str, text: str) -> CommentReading:
        return comment_intents(parse_comment(text, catalog), catalog)

    await Store(redis, StoreSettings(), read_comment=read).commit(known_events(stream))
    health = HealthMetrics()
    health.add_source("relay")
    health.connected.labels("relay").set(1)
    health.events.labels("relay", "order", "accepted").inc(3)
    health.events.labels("relay", "order", "duplicate").inc(2)
    health.reconnects.labels("relay").inc()
    health.redis_up.set(1)
    plan = (  # what an ingester with the stream's catalog and target also exposes
        f"# TYPE livestream_target_grams gauge\n"
        f'livestream_target_grams{{stream="{stream}"}} 10000.0\n'
        f"# TYPE livestream_sku_stock_grams gauge\n"
        f'livestream_sku_stock_grams{{sku="VT01",stream="{stream}"}} 10000.0\n'
    )
    runner, port = await serve_metrics(exposition(health, None) + plan.encode())
    config = str(write_config(tmp_path / "top.toml", redis_url))
    try:
        unreachable = f"127.0.0.1:{free_port()}"
        result = await asyncio.to_thread(
            run_top,
            *("-c", config, "--stream", stream),
            *("--metrics", f"127.0.0.1:{port}", "--metrics", unreachable),
        )
    finally:
        await runner.cleanup()

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"stream {stream}  sold 7.250 kg")
    assert lines[5] == (  # two buyers commented "chốt VT01"
        "  comment orders: 2, withdrawn 0, with phone 0, changed 0, ambiguous 0, unknown codes 0"
    )
    # Net 7.250 − 4.000 kg cancelled of the 10 kg target; VT01: 10 − 3 sold + 1 cancelled.
    assert lines[6] == "  target: 32.5% of 10.000 kg; stock left: VT01 8.000 kg"
    assert lines[7] == f"ingester http://127.0.0.1:{port}/metrics: redis up, 0 buffered"
    assert lines[8] == (
        "  source relay: connected, no input yet, 3 accepted, 2 duplicate, 0 rejected, 1 reconnects"
    )
    assert lines[9].startswith(f"ingester http://{unreachable}/metrics: UNREACHABLE (")


def test_top_says_when_redis_does_not_answer() -> None:
    result = run_top("--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 1
    assert result.stdout.startswith("Redis: ConnectionError at redis://127.0.0.1:")
    assert "Traceback" not in result.stderr


def test_top_needs_only_redis_from_a_config_whose_secrets_are_unset(
    redis_url: str, stream: str, tmp_path: Path
) -> None:
    asyncio.run(commit_known(redis_url, stream))
    config = write_config(tmp_path / "ingester.toml", redis_url)
    with config.open("a", encoding="utf-8") as file:
        file.write(
            '\n[[sources]]\nname = "push"\ntype = "websocket-server"\n'
            'token_env = "LIVESTREAM_TEST_TOP_UNSET_TOKEN"\n'
        )
    assert "LIVESTREAM_TEST_TOP_UNSET_TOKEN" not in os.environ

    result = run_top("-c", str(config), "--stream", stream)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"stream {stream}  sold 7.250 kg")


async def commit_known(url: str, stream: str) -> None:
    client = Redis.from_url(url)
    try:
        await Store(client, StoreSettings()).commit(known_events(stream))
    finally:
        await client.aclose()


def test_top_honours_redis_cluster(tmp_path: Path, stream: str) -> None:

    servers = Cluster()
    try:
        servers.start()
        names = streams_on_every_node(servers, stream)

        async def commit() -> None:
            client = redis_client(servers.url, 5.0, cluster=True)
            try:
                store = Store(client, StoreSettings())
                for name in names:
                    await store.commit(known_events(name))
            finally:
                await client.aclose()

        asyncio.run(commit())
        config = write_config(tmp_path / "cluster.toml", servers.url)
        config.write_text(config.read_text() + "cluster = true\n", encoding="utf-8")
        result = run_top("-c", str(config))
    finally:
        servers.close()

    assert result.returncode == 0, result.stdout + result.stderr
    shown = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("stream ")]
    assert sorted(shown) == sorted(names)


@pytest.mark.asyncio
async def test_top_keeps_the_last_figures_marked_stale_while_redis_is_down(stream: str) -> None:
    now = [1000.0]
    server = RedisServer()
    try:
        server.start()
        await commit_known(server.url, stream)
        async with Reader(server.url, stream, [], clock=lambda: now[0]) as reader:
            fresh = await reader.read()
            assert fresh.error is None
            assert fresh.stale_for is None
            server.stop()
            now[0] += 12.5
            down = await reader.read()
    finally:
        server.close()

    assert down.error is not None
    assert down.error.startswith("Redis: ")
    assert down.streams == fresh.streams
    assert down.stale_for == 12.5
    lines = plain(down).splitlines()
    assert lines[0] == (
        f"{down.error} at {server.url}: showing the last figures read, 12.5 s ago (STALE)"
    )
    assert lines[1].startswith(f"stream {stream}  sold 7.250 kg")
    assert lines[1].endswith("  [STALE]")
    text = render(rich_view(down))
    assert "STALE" in text
    assert "7.250 kg" in text


def render(view: object) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(view)
    return console.export_text()


@pytest.mark.asyncio
async def test_top_shows_each_ingesters_redis_state_and_backlog(
    tmp_path: Path, stream: str
) -> None:
    server = RedisServer()
    try:
        server.start()
        await commit_known(server.url, stream)
        process = feed_ingester(tmp_path, "watched", server.url, f"ws://127.0.0.1:{free_port()}/")
        with process:
            metrics = ("--metrics", f"127.0.0.1:{process.http_port}")
            url = f"http://127.0.0.1:{process.http_port}/metrics"
            up = await asyncio.to_thread(run_top, "--redis-url", server.url, *metrics)
            rich = await asyncio.to_thread(run_rich_top, "--redis-url", server.url, *metrics)
            server.stop()
            down = await asyncio.to_thread(run_top, "--redis-url", server.url, *metrics)
    finally:
        server.close()

    assert f"ingester {url}: redis up, 0 buffered" in up.stdout.splitlines()
    assert "  source feed: DISCONNECTED, no input yet" in up.stdout
    assert "redis up, 0 buffered" in rich.stdout, rich.stdout
    assert f"ingester {url}: REDIS DOWN, 0 buffered" in down.stdout.splitlines()


def run_rich_top(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers", "top", "--once", "--interval", "0.1", *args],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
