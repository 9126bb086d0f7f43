"""``livestream-ingester demo``: a synthetic lychee sale, through the ordinary websocket source.

The built-in feed server replays the sale (duplicates, a mid-stream disconnect with replay); an
ingester configured from ``demo.toml`` (package data beside this module) consumes it, serves
``/metrics`` and a live view shows the totals it reads back from Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import socket
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import structlog
from redis.exceptions import RedisError

from ingest.catalog import Catalog
from ingest.catalog import load as load_catalog
from ingest.sources.mqtt import Publisher
from workers import config as config_module
from workers.demo.feed import FeedServer
from workers.demo.private_redis import NoRedisServer, RedisServer, ping
from workers.demo.sale import Expected, Sale, comment_order_totals, lychee_sale
from workers.demo.view import View
from workers.display import Plan
from workers.report import ReportError, build
from workers.report_html import render
from workers.runtime import Ingester
from workers.sessions import Sessions
from workers.store import StreamTotals
from workers.story_cli import write_atomically

log = structlog.get_logger("demo")

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
SETTLE_SECONDS = 10.0
# Package data, read with importlib.resources: it ships in the wheel (a path relative to a checkout
# does not exist in site-packages).
DEMO_CONFIG = resources.files("workers.demo") / "demo.toml"
DEMO_CATALOG = resources.files("workers.demo") / "catalog.csv"
"""The demo stream's catalog: its SKUs, weights, stock and the aliases buyers comment."""
UNWEIGHED_SHARE = 0.15
"""Order lines the demo sends without grams: the ingester takes its catalog's."""
TARGET_GRAMS = 54_000_000
NO_REDIS = (
    "No Redis answers at {url} and there is no redis-server on PATH to start one: "
    "install Redis (Debian: apt-get install redis-server) or set REDIS_URL to a running one."
)


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """REDIS_URL (or the default) if it answers, else a private redis-server while we run."""
    url = os.environ.get("REDIS_URL", DEFAULT_REDIS)
    if ping(url):
        yield url
        return
    try:
        server = RedisServer()
    except NoRedisServer:
        raise SystemExit(NO_REDIS.format(url=url)) from None
    server.start()
    log.info("no Redis at REDIS_URL: started a private redis-server", url=server.url)
    try:
        yield server.url
    finally:
        server.close()


def mismatches(
    expected: Expected, totals: StreamTotals, comment_orders: dict[str, int] | None = None
) -> list[str]:
    """Where counted totals differ from the sale's ground truth (HLL counts within 2%), and
    with ``comment_orders`` (``comment_order_totals``) the comment-order counters."""

    def flat(metric: str) -> dict[str, int]:
        return {"|".join(k): v for k, v in totals.by(metric).items()}

    def keyed(values: dict[tuple[str, str], int]) -> dict[str, int]:
        return {"|".join(k): v for k, v in values.items()}

    checks = {
        "orders": (keyed(expected.orders), flat("orders")),
        "grams": (keyed(expected.grams), flat("grams")),
        "value": (keyed(expected.value_minor), flat("value")),
        "cancelled": (keyed(expected.cancelled_orders), flat("cancelled")),
        "cancelled_grams": (keyed(expected.cancelled_grams), flat("cancelled_grams")),
        "sku_grams": (dict(expected.sku_grams), flat("sku_grams")),
        "comments": (dict(expected.comments), flat("comments")),
        "region": (keyed(expected.region_orders), flat("region")),
        "viewers": (dict(expected.viewers), dict(totals.viewers)),
    }
    if comment_orders is not None:
        counted = {f: v for f, v in totals.counters.items() if f.startswith("comment_")}
        checks["comment orders"] = (comment_orders, counted)
    problems = [
        f"{name}: expected {want}, counted {got}"
        for name, (want, got) in checks.items()
        if want != got
    ]
    for name, want, got in (
        ("unique_buyers", expected.unique_buyers, totals.unique_buyers),
        ("unique_commenters", expected.unique_commenters, totals.unique_commenters),
    ):
        if abs(got - want) > 0.02 * want:
            problems.append(f"{name}: expected ~{want}, counted {got}")
    return problems


def demo_config(
    path: Path | Traversable,
    feed_url: str,
    redis: str,
    http: str,
    mqtt: MqttOrders | None,
    *,
    stream: tuple[str, Path] | None = None,
) -> config_module.Config:
    """The demo's ``demo.toml`` (or ``--config``) pointed at this run's feed, Redis and port
    (and broker); with ``stream`` (its name and catalog file), the stream's catalog and
    target."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise config_module.ConfigError(str(path), [str(exc)]) from exc
    data.setdefault("redis", {})["url"] = redis
    data.setdefault("http", {})["listen"] = http
    data["sources"][0]["url"] = feed_url
    if mqtt is not None:
        data["sources"].append(mqtt.source())
    if stream is not None:
        name, catalog = stream
        data.setdefault("streams", {})[name] = {
            "catalog": str(catalog),
            "target_grams": TARGET_GRAMS,
        }
    # The demo already chose the Redis (REDIS_URL or a private one): the variable must not
    # override that choice again.
    environ = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return config_module.parse(data, str(path), environ)


class MqttOrders:
    """The sale's orders, published at QoS 1 to ``livestream/<stream>/orders`` on their
    schedule; the rest of the sale stays on the websocket feed."""

    def __init__(self, url: str, sale: Sale, speed: float) -> None:
        address = urlsplit(url)
        self.url = url
        self.host = address.hostname or "127.0.0.1"
        self.port = address.port or 1883
        self.topic = f"livestream/{sale.stream}/orders"
        orders = [d for d in sale.deliveries if d.event["kind"] == "order"]
        self.publisher = Publisher(
            self.host,
            self.port,
            [(self.topic, orjson.dumps(d.event)) for d in orders],
            at=[d.at / speed for d in orders] if speed else None,
        )
        self.rest = dataclasses.replace(
            sale, deliveries=tuple(d for d in sale.deliveries if d.event["kind"] != "order")
        )
        self.client_id = f"demo-{sale.stream}"

    def reachable(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=2):
                return True
        except OSError:
            return False

    def source(self) -> dict[str, object]:
        return {
            "name": "demo-mqtt",
            "type": "mqtt",
            "url": self.url,
            "client_id": self.client_id,
            "session_expiry": 600,
            "topics": [{"pattern": "livestream/{stream}/orders"}],
        }


class Progress:
    """How much of the sale has been sent, over the websocket feed and MQTT together."""

    def __init__(self, feed: FeedServer, mqtt: MqttOrders | None) -> None:
        self.feed = feed
        self.mqtt = mqtt

    @property
    def sent(self) -> int:
        return self.feed.sent + (self.mqtt.publisher.position if self.mqtt else 0)

    @property
    def total(self) -> int:
        return self.feed.total + (len(self.mqtt.publisher.messages) if self.mqtt else 0)

    @property
    def done(self) -> bool:
        return self.feed.done.is_set() and (self.mqtt is None or self.mqtt.publisher.done)


async def feed_only(listen: str, speed: float, seed: int, stop: asyncio.Event) -> int:
    """Serve sales one after another (a new stream each) until stopped."""
    host, port = config_module.split_listen(listen)
    while not stop.is_set():
        sale = lychee_sale(seed=seed, stream=f"lucngan-{time.strftime('%Y%m%d-%H%M%S')}")
        async with FeedServer(
            sale, host=host, port=port, speed=speed, broadcast=True, retime=True
        ) as feed:
            print(f"demo feed: {sale.stream} at {feed.url}", flush=True)
            done = asyncio.create_task(feed.done.wait())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({done, stopped}, return_when=asyncio.FIRST_COMPLETED)
            for task in (done, stopped):
                task.cancel()
        seed += 1
    return 0


async def demo(args: argparse.Namespace, stop: asyncio.Event) -> int:
    if args.feed_only:
        return await feed_only(args.feed_only, args.speed, args.seed, stop)
    stream = f"lucngan-{time.strftime('%Y%m%d-%H%M%S')}"
    sale = lychee_sale(
        seed=args.seed, stream=stream, target_grams=TARGET_GRAMS, unweighed_share=UNWEIGHED_SHARE
    )
    with resources.as_file(DEMO_CATALOG) as catalog_path:
        return await _demo(args, stop, sale, catalog_path)


def _plan(catalog: Catalog) -> Plan:
    stock = {p.sku: p.stock_grams for p in catalog if p.stock_grams is not None}
    return Plan(TARGET_GRAMS, stock)


async def _demo(args: argparse.Namespace, stop: asyncio.Event, sale: Sale, catalog: Path) -> int:
    products = load_catalog(DEMO_CATALOG.read_bytes(), str(catalog))
    # The comment orders the sale must give, worked out beside the ingester (seconds of CPU).
    comment_orders = asyncio.create_task(
        asyncio.to_thread(comment_order_totals, sale.deliveries, products),
        name="demo.comment-orders",
    )
    try:
        return await _run(args, stop, sale, (catalog, products), comment_orders)
    finally:
        comment_orders.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await comment_orders


async def _run(
    args: argparse.Namespace,
    stop: asyncio.Event,
    sale: Sale,
    catalog: tuple[Path, Catalog],
    comment_orders: asyncio.Task[dict[str, int]],
) -> int:
    stream = sale.stream
    mqtt = MqttOrders(args.mqtt, sale, args.speed) if args.mqtt else None
    if mqtt is not None and not mqtt.reachable():
        print(f"No MQTT broker answers at {args.mqtt}: start one or drop --mqtt.", file=sys.stderr)
        return 1
    with redis_url() as url:
        async with FeedServer(mqtt.rest if mqtt else sale, speed=args.speed, retime=True) as feed:
            path = Path(args.config) if args.config else DEMO_CONFIG
            try:
                config = demo_config(
                    path, feed.url, url, args.http, mqtt, stream=(stream, catalog[0])
                )
            except config_module.ConfigError as exc:
                print(f"invalid configuration: {exc}", file=sys.stderr)
                return 2
            ingester = Ingester(config)
            ingester_stop = asyncio.Event()
            running = asyncio.create_task(ingester.run(ingester_stop), name="demo.ingester")
            publishing: asyncio.Task[None] | None = None
            view = View(sale, plain=args.plain or not sys.stdout.isatty(), plan=_plan(catalog[1]))
            try:
                await ingester.started.wait()
                if mqtt is not None:
                    await _until_receiving(ingester, "demo-mqtt")
                    publishing = asyncio.create_task(mqtt.publisher.run(), name="demo.mqtt")
                host, _ = config_module.split_listen(args.http)
                view.announce(url, f"http://{host}:{ingester.http_port}/metrics")
                progress = Progress(feed, mqtt)
                problems = await _watch(
                    ingester,
                    progress,
                    view,
                    stop,
                    args.exit_when_done,
                    comment_orders=comment_orders,
                )
                await _write_report(ingester, stream, args.report)
            finally:
                if publishing is not None:
                    publishing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await publishing
                ingester_stop.set()
                await running
    if problems:
        print("MISMATCH:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


REPORT_SECONDS = 30.0


def report_path(option: str | None, stream: str) -> Path:
    """Where the demo writes its sale's report: ``option``, else a file named after the stream
    in the system's temporary folder."""
    if option:
        return Path(option)
    return Path(tempfile.gettempdir()) / "livestream-reports" / f"{stream}.html"


async def _write_report(ingester: Ingester, stream: str, option: str | None) -> None:
    """Write the HTML report of the sale and print its path (a failure is told, not fatal)."""
    path = report_path(option, stream)
    idle = ingester.config.story.session_idle_minutes * 60
    try:
        async with asyncio.timeout(REPORT_SECONDS):
            await Sessions(ingester.redis, idle).end(stream)  # the sale is over
            report = await build(
                ingester.redis,
                stream,
                idle_seconds=idle,
                utc_offset=ingester.config.story.report_utc_offset_minutes,
            )
        write_atomically(path, render(report, "html"))
    except (ReportError, RedisError, OSError, TimeoutError) as exc:
        print(f"report not written: {type(exc).__name__}: {exc}", file=sys.stderr)
        return
    print(f"report of the sale: {path}", flush=True)


async def _until_receiving(ingester: Ingester, source: str) -> None:
    """Publish only once the MQTT source has subscribed, so the broker keeps every order."""
    async with asyncio.timeout(30):
        await ingester.health.wait_connected(source)


async def _watch(
    ingester: Ingester,
    progress: Progress,
    view: View,
    stop: asyncio.Event,
    exit_when_done: bool,
    *,
    comment_orders: asyncio.Task[dict[str, int]],
) -> list[str]:
    """Refresh the view until stopped (or, with exit_when_done, until the sale is counted).

    Once the feed has sent everything and nothing is buffered, the totals must equal the sale's
    ground truth; frames still in the socket get ``SETTLE_SECONDS`` to arrive.
    """
    stream = view.sale.stream
    settled_since: float | None = None
    with view:
        while not stop.is_set():
            (totals,) = await ingester.store.totals([stream])
            view.update(totals, progress.sent, progress.total)
            if progress.done and ingester.committer.buffered == 0:
                problems = mismatches(view.sale.expected, totals, await comment_orders)
                if not problems:
                    view.finished()
                    if exit_when_done:
                        return []
                settled_since = settled_since or time.monotonic()
                if (
                    problems
                    and exit_when_done
                    and time.monotonic() - settled_since > SETTLE_SECONDS
                ):
                    return problems
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(view.interval):
                    await stop.wait()
    return []
