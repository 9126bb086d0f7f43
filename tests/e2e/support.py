"""End-to-end helpers: a replaying feed server, ingester processes, scraping /metrics, and a
known sale whose totals must come out exact."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.platforms import EventSubServer
from tests.servers import free_port
from tests.waiting import UNIT, until, until_sync
from workers.demo.sale import Expected, Sale, frames, lychee_sale

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclasses.dataclass
class Cursor:
    position: int = 0
    cut_done: bool = False
    connections: int = 0


class ReplayFeed:
    """Sends the same frames to every client (``?client=<id>``), each at its own position.

    A client is cut once after ``cut_after`` frames (close code 1012); any reconnect first re-sends
    the last ``replay`` frames before its position, as a source that replays on reconnect does.
    ``pause`` seconds between frames keep a run long enough to interrupt.
    """

    def __init__(
        self, frames: Sequence[bytes], *, cut_after: int | None, replay: int, pause: float = 0
    ) -> None:
        self.frames = list(frames)
        self.cut_after = cut_after
        self.replay = replay
        self.pause = pause
        self.cursors: dict[str, Cursor] = {}
        self.port = free_port()

    def url(self, client: str) -> str:
        return f"ws://127.0.0.1:{self.port}/feed?client={client}"

    def position(self, client: str) -> int:
        cursor = self.cursors.get(client)
        return cursor.position if cursor is not None else 0

    def finished(self, client: str) -> bool:
        return self.position(client) >= len(self.frames)

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        client = parse_qs(urlparse(ws.request.path).query)["client"][0]
        cursor = self.cursors.setdefault(client, Cursor())
        cursor.connections += 1
        start = max(0, cursor.position - self.replay) if cursor.connections > 1 else 0
        with contextlib.suppress(ConnectionClosed):
            for index in range(start, len(self.frames)):
                if self.cut_after is not None and index == self.cut_after and not cursor.cut_done:
                    cursor.cut_done = True
                    await ws.close(1012, "restart")
                    return
                await ws.send(self.frames[index].decode())
                cursor.position = max(cursor.position, index + 1)
                if self.pause:
                    await asyncio.sleep(self.pause)
                elif index % 64 == 0:
                    await asyncio.sleep(0)
            await ws.wait_closed()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[ReplayFeed]:
        async with serve(self._handle, "127.0.0.1", self.port):
            yield self


def write_config(
    path: Path,
    *,
    redis_url: str,
    http_port: int,
    sources: str,
    cluster: bool = False,
    buffer_events: int = 50_000,
    story: str = "",
) -> Path:
    path.write_text(
        f"""
[redis]
url = "{redis_url}"
cluster = {str(cluster).lower()}

[http]
listen = "127.0.0.1:{http_port}"
# These tests scrape right after a commit; the freshness window (tested on its own, in
# test_scrape_flood.py) would answer them with a read from before it.
scrape_freshness_seconds = 0.001

[batch]
max_delay_ms = 2
buffer_events = {buffer_events}

[log]
rejection_interval_seconds = 0

{sources}
{story}
""",
        encoding="utf-8",
    )
    return path


def client_source(
    name: str,
    url: str,
    stream: str | None = None,
    fmt: str = "native",
    *,
    backoff: tuple[float, float] = (0.05, 0.5),
    transport: str = "websockets",
) -> str:
    default = f'stream = "{stream}"' if stream else ""
    return f"""
[[sources]]
name = "{name}"
type = "websocket-client"
format = "{fmt}"
url = "{url}"
transport = "{transport}"
{default}
backoff_initial = {backoff[0]}
backoff_max = {backoff[1]}
"""


TOKEN_ENV = "LIVESTREAM_TEST_TWITCH_TOKEN"
REFRESH_TOKEN_ENV = "LIVESTREAM_TEST_TWITCH_REFRESH_TOKEN"
CLIENT_SECRET_ENV = "LIVESTREAM_TEST_TWITCH_CLIENT_SECRET"


@dataclasses.dataclass(frozen=True)
class Refreshing:
    """A Twitch source in refresh mode: where its rotated refresh token goes, and the OAuth
    server (``server``'s unless given)."""

    file: Path
    oauth_url: str | None = None
    backoff: tuple[float, float] = (0.05, 0.5)


def eventsub_source(
    server: EventSubServer, stream: str, refreshing: Refreshing | None = None
) -> str:
    """A Twitch EventSub source reading ``server``; its token in ``TOKEN_ENV``, or (refresh
    mode) its refresh token and client secret in ``REFRESH_TOKEN_ENV`` and ``CLIENT_SECRET_ENV``
    (see :func:`twitch_environment`). The keepalive margin is wide (1.5 s over the test
    server's 1 s keepalives): tests that count reconnects must not see one because the test
    process, which also runs the server, was slow for half a second under coverage."""
    token = f'token_env = "{TOKEN_ENV}"'
    backoff = (0.05, 0.5)
    if refreshing is not None:
        backoff = refreshing.backoff
        token = (
            f'refresh_token_env = "{REFRESH_TOKEN_ENV}"\n'
            f'refresh_token_file = "{refreshing.file}"\n'
            f'oauth_url = "{refreshing.oauth_url or server.oauth_url}"'
        )
        if server.oauth.client_secret is not None:
            token += f'\nclient_secret_env = "{CLIENT_SECRET_ENV}"'
    return (
        client_source("twitch", server.url, stream, "twitch-eventsub", backoff=backoff)
        + f"""
[sources.twitch]
client_id = "{server.client_id}"
{token}
broadcaster_user_id = "{server.broadcaster}"
user_id = "2000"
helix_url = "{server.helix_url}"
keepalive_margin_seconds = {1.5 * UNIT}
"""
    )


SECRET = "shpss_test_secret_0123456789abcdef"
SECRET_ENV = "LIVESTREAM_TEST_SHOPIFY_SECRET"


def webhook_source(port: int, stream: str) -> str:
    """A Shopify webhook endpoint on ``port``; its secret ``SECRET`` in ``SECRET_ENV``."""
    return f"""
[[sources]]
name = "shop"
type = "http-server"
format = "shopify"
listen = "127.0.0.1:{port}"
path = "/webhooks/shopify"
secret_env = "{SECRET_ENV}"
stream = "{stream}"
max_body_bytes = 65536
commit_timeout_seconds = {1.5 * UNIT}
"""


PUSH_TOKEN = "push-token-0123456789abcdef"
PUSH_TOKEN_ENV = "LIVESTREAM_TEST_PUSH_TOKEN"


def push_and_shop_sources(
    push: int,
    hook: int,
    stream: str,
    *,
    shop_stream: str | None = None,
    reuse_port: bool = False,
) -> str:
    """Two internet-facing listeners: a native push server on ``push`` (token ``PUSH_TOKEN`` in
    ``PUSH_TOKEN_ENV``) named "push", and a Shopify webhook on ``hook`` (secret ``SECRET`` in
    ``SECRET_ENV``) named "shop", on ``stream`` (the webhook on ``shop_stream`` if given); both
    with ``reuse_port`` as given."""
    reuse = str(reuse_port).lower()
    return f"""
[[sources]]
name = "push"
type = "websocket-server"
listen = "127.0.0.1:{push}"
path = "/ingest"
token_env = "{PUSH_TOKEN_ENV}"
stream = "{stream}"
reuse_port = {reuse}

[[sources]]
name = "shop"
type = "http-server"
format = "shopify"
listen = "127.0.0.1:{hook}"
path = "/webhooks/shopify"
secret_env = "{SECRET_ENV}"
stream = "{shop_stream or stream}"
reuse_port = {reuse}
"""


def twitch_environment(server: EventSubServer) -> dict[str, str]:
    """The secrets an :func:`eventsub_source` of ``server`` reads, in either mode."""
    env = {TOKEN_ENV: server.token, REFRESH_TOKEN_ENV: server.oauth.initial_refresh_token}
    if server.oauth.client_secret is not None:
        env[CLIENT_SECRET_ENV] = server.oauth.client_secret
    return env


def feed_ingester(
    folder: Path,
    name: str,
    redis_url: str,
    feed_url: str,
    transport: str = "websockets",
    **options: Any,
) -> IngesterProcess:
    """An ingester (not started) reading one websocket feed through ``transport``, configured
    in ``folder/<name>.toml``; ``options`` go to :func:`write_config`."""
    port = free_port()
    config = write_config(
        folder / f"{name}.toml",
        redis_url=redis_url,
        http_port=port,
        sources=client_source("feed", feed_url, transport=transport),
        **options,
    )
    return IngesterProcess(config, port)


class IngesterProcess:
    """``livestream-ingester run`` as a user runs it, in a subprocess."""

    def __init__(
        self,
        config: Path,
        http_port: int,
        env: dict[str, str] | None = None,
        *,
        scraper: Scraper | None = None,
    ) -> None:
        """``scraper``: how to reach ``/metrics`` (its TLS and credentials), if not plain."""
        self.config = config
        self.http_port = http_port
        self.scraper = scraper or Scraper()
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = config.with_suffix(f".{http_port}.log")

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "workers", "run", "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        until_sync(self._ready, 30, f"ingester on port {self.http_port} to serve /metrics")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"ingester exited early:\n{self.log.read_text()}")
        try:
            return bool(self.scraper.scrape(self.http_port))
        except OSError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10 * UNIT)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.terminate()
        code = self.process.wait(30 * UNIT)
        self.process = None
        return code

    def __enter__(self) -> IngesterProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10 * UNIT)


@dataclasses.dataclass(frozen=True)
class Scraper:
    """How a test reaches an ingester's HTTP endpoint: plain, or HTTPS trusting ``tls`` and
    sending ``authorization``."""

    tls: ssl.SSLContext | None = None
    authorization: str | None = None

    def text(self, port: int, path: str = "/metrics") -> str:
        scheme = "https" if self.tls is not None else "http"
        request = urllib.request.Request(f"{scheme}://127.0.0.1:{port}{path}")
        if self.authorization is not None:
            request.add_header("Authorization", self.authorization)
        # Longer than the ingester's own wait for Redis (5 s), as Prometheus' 10 s default is.
        with urllib.request.urlopen(request, timeout=10 * UNIT, context=self.tls) as reply:
            return str(reply.read().decode())

    def scrape(self, port: int) -> Samples:
        return parse_samples(self.text(port))


def scrape_text(port: int, path: str = "/metrics") -> str:
    return Scraper().text(port, path)


def scrape(port: int) -> Samples:
    return parse_samples(scrape_text(port))


def parse_samples(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def select(samples: Samples, name: str, **match: str) -> dict[tuple[str, ...], float]:
    """Samples of one metric whose labels include ``match``, keyed by their other label values."""
    result = {}
    for (sample_name, labels), value in samples.items():
        label_map = dict(labels)
        if sample_name == name and all(label_map.get(k) == v for k, v in match.items()):
            rest = tuple(v for k, v in labels if k not in match)
            result[rest] = value
    return result


def expected_samples(stream: str, expected: Expected) -> dict[str, dict[tuple[str, ...], float]]:
    """The metrics contract's values for ``stream``, from a sale's ground truth.

    Label order follows the exposition's sorted label names (e.g. country before platform).
    """
    decimals = {"VND": 0, "JPY": 0, "USD": 2, "AUD": 2}

    def by_country(values: dict[tuple[str, str], int]) -> dict[tuple[str, ...], float]:
        return {(country, platform): float(v) for (platform, country), v in values.items()}

    return {
        "livestream_orders_total": by_country(expected.orders),
        "livestream_sold_grams_total": by_country(expected.grams),
        "livestream_cancelled_orders_total": by_country(expected.cancelled_orders),
        "livestream_cancelled_grams_total": by_country(expected.cancelled_grams),
        "livestream_order_value_total": {
            (currency, platform): v / 10 ** decimals[currency]
            for (platform, currency), v in expected.value_minor.items()
        },
        "livestream_comments_total": {(p,): float(v) for p, v in expected.comments.items()},
        "livestream_sku_sold_grams_total": {(s,): float(v) for s, v in expected.sku_grams.items()},
        "livestream_region_orders_total": {
            (country, region): float(v) for (country, region), v in expected.region_orders.items()
        },
        "livestream_viewers": {(p,): float(v) for p, v in expected.viewers.items()},
    }


def business(samples: Samples, stream: str) -> dict[str, dict[tuple[str, ...], float]]:
    names = expected_samples(stream, _EMPTY).keys()
    return {name: select(samples, name, stream=stream) for name in names}


_EMPTY = Expected({}, {}, {}, {}, {}, {}, {}, {}, 0, 0, {})


async def kill_and_restart(
    process: IngesterProcess, feed: ReplayFeed, client: str, fractions: Sequence[float]
) -> None:
    """SIGKILL ``process`` and start it again once ``client`` has been sent each fraction of the
    feed; every kill must land mid-run."""
    for fraction in fractions:
        await until(
            lambda f=fraction: feed.position(client) >= f * len(feed.frames),
            60,
            f"{fraction:.0%} of the feed",
        )
        process.kill()
        assert not feed.finished(client), "the kill must land mid-run"
        process.start()


def small_sale(stream: str) -> Sale:
    """A short sale with at least 30% duplicate deliveries and cancellations delivered before
    their orders."""
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


async def exact(port: int, sale: Sale, within: float = 60) -> None:
    try:
        await until(lambda: not mismatch(port, sale), within, "exact totals")
    except AssertionError:
        pytest.fail(f"totals differ: {mismatch(port, sale)}")
