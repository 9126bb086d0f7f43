"""End to end: a real Prometheus (Debian package) with the shipped config and rules scrapes two
ingester replicas fed a small sale. Every query of every dashboard panel returns data, every rule
evaluates cleanly and every recording rule produces series, and the dashboards count each
order once although both replicas expose it. No Grafana: its variables are substituted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import random
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.certs import Certificates
from tests.e2e.support import (
    SECRET,
    SECRET_ENV,
    IngesterProcess,
    Refreshing,
    ReplayFeed,
    client_source,
    eventsub_source,
    scrape,
    select,
    twitch_environment,
    webhook_source,
    write_config,
)
from tests.e2e.test_facebook import TOKEN_ENV as FACEBOOK_TOKEN_ENV
from tests.e2e.test_facebook import facebook_source
from tests.e2e.test_youtube import environment as youtube_environment
from tests.e2e.test_youtube import youtube_source
from tests.facebook_api import FacebookApi
from tests.platforms import EventSubServer, Shop
from tests.servers import RedisServer, free_port
from tests.stack import (
    JOB,
    PROMETHEUS_CONFIG,
    RULES,
    load_yaml,
    recordings,
    rules,
    substitute,
    targets,
    tool,
)
from tests.waiting import UNIT, until
from tests.youtube_api import YouTubeApi
from workers.demo.sale import frames, lychee_sale

RATE_INTERVAL = "10s"
"""``$__rate_interval`` for 1 s scrapes (Grafana would pick at least 4 scrape intervals)."""

BAD_EVERY = 100
"""One rejected input every this many frames, so the rejection panels have data."""


class Prometheus:
    """``prometheus`` on a free loopback port, storage in a temp dir, the shipped rules.

    The shipped prometheus.yml is used with its targets replaced, rules evaluated every second
    and targets scraped every ``scrape_interval`` seconds (each target at its own offset within
    the interval: Prometheus spreads them by a hash of the target).
    """

    def __init__(
        self, directory: Path, scrape_targets: Sequence[str], scrape_interval: int = 1
    ) -> None:
        config = load_yaml(PROMETHEUS_CONFIG)
        config["global"] = {"scrape_interval": f"{scrape_interval}s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(RULES)]
        (job,) = config["scrape_configs"]
        assert job["job_name"] == JOB
        job["scrape_timeout"] = "1s"
        job["static_configs"] = [{"targets": list(scrape_targets)}]
        self.config = directory / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.data = directory / "prometheus-data"
        self.log = directory / "prometheus.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @contextlib.contextmanager
    def running(self) -> Iterator[Prometheus]:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.data}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            yield self
        finally:
            self.process.terminate()
            try:
                self.process.wait(10 * UNIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10 * UNIT)

    def alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log.read_text()[-3000:]}")


async def get(http: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with http.get(url, params=params) as reply:
        body = await reply.read()
    payload = orjson.loads(body)
    assert payload["status"] == "success", payload
    return payload["data"]


async def query(http: aiohttp.ClientSession, prometheus: Prometheus, expr: str) -> list[float]:
    """Values of an instant query (vector or scalar)."""
    data = await get(http, f"{prometheus.url}/api/v1/query", query=expr)
    if data["resultType"] == "scalar":
        return [float(data["result"][1])]
    return [float(sample["value"][1]) for sample in data["result"]]


def with_bad_inputs(good: list[bytes], stream: str) -> list[bytes]:
    """``good`` with an invalid input (for this stream, so it is dead-lettered there) inserted
    every ``BAD_EVERY`` frames: unknown kinds and timestamps without an offset."""
    bad = [
        {"kind": "like", "id": "b", "stream": stream, "platform": "tiktok", "ts": "2025-06-14Z"},
        {
            "kind": "comment",
            "id": "b",
            "stream": stream,
            "platform": "tiktok",
            "ts": "2025-06-14T09:05:07",
            "user": "u-1",
            "text": "no offset",
        },
    ]
    out: list[bytes] = []
    for index, frame in enumerate(good):
        if index % BAD_EVERY == BAD_EVERY // 2:
            out.append(orjson.dumps(bad[(index // BAD_EVERY) % len(bad)]))
        out.append(frame)
    return out


class Checks:
    """The queries under test, run against one Prometheus with one HTTP session."""

    def __init__(self, http: aiohttp.ClientSession, prometheus: Prometheus, stream: str) -> None:
        self.http = http
        self.prometheus = prometheus
        self.stream = stream
        self.variables = {
            "stream": stream,
            "instance": ".*",
            "__rate_interval": RATE_INTERVAL,
            "__range": "1m",
            "__interval": "1s",
        }

    async def query(self, expr: str) -> list[float]:
        return await query(self.http, self.prometheus, expr)

    async def ready(self) -> None:
        async def answers() -> bool:
            self.prometheus.alive()
            with contextlib.suppress(aiohttp.ClientError):
                async with self.http.get(f"{self.prometheus.url}/-/ready") as reply:
                    return reply.status == 200
            return False

        await until(answers, 20, "prometheus to be ready")

    async def series(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        """``expr`` evaluated every second from ``start`` to ``end`` (a range query)."""
        data = await get(
            self.http,
            f"{self.prometheus.url}/api/v1/query_range",
            query=expr,
            start=f"{start:.3f}",
            end=f"{end:.3f}",
            step="1",
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    def panel(self, title: str) -> str:
        (expr,) = [t.expr for t in targets() if t.panel == title]
        return substitute(expr, self.variables)

    async def every_query_answers(self) -> None:
        """Every panel query and recording rule returns finite data, and every rule evaluates
        without error (no many-to-many matches, no clashing labels)."""
        queries = {
            f"{t.dashboard} / {t.panel}: {t.expr}": substitute(t.expr, self.variables)
            for t in targets()
        }
        for rule in recordings():
            record = f'{rule["record"]}{{stream="{self.stream}"}}'
            queries[record] = record
        missing: list[str] = []

        async def answered() -> bool:
            self.prometheus.alive()
            missing.clear()
            for name, expr in queries.items():
                if not any(math.isfinite(v) for v in await self.query(expr)):
                    missing.append(name)
            return not missing

        try:
            await until(answered, 30, "every query to return data")
        except AssertionError:
            pytest.fail("no data for:\n  " + "\n  ".join(missing))
        groups = (await get(self.http, f"{self.prometheus.url}/api/v1/rules"))["groups"]
        evaluated = [rule for group in groups for rule in group["rules"]]
        assert len(evaluated) == len(rules())
        assert [(r["name"], r.get("lastError")) for r in evaluated if r["health"] != "ok"] == []

    async def counted_once(self, orders: int, grams: int) -> None:
        """Both replicas expose every order; rules and panels count each once."""
        want = {
            f'stream:livestream_orders_total:sum{{stream="{self.stream}"}}': [float(orders)],
            f'stream:livestream_sold_grams_total:sum{{stream="{self.stream}"}}': [float(grams)],
            f'sum(livestream_orders_total{{stream="{self.stream}"}})': [2.0 * orders],
        }

        async def counted() -> bool:
            return {expr: await self.query(expr) for expr in want} == want

        await until(counted, 30, "the totals to equal the sale's on both replicas")
        assert await self.query(f'count(up{{job="{JOB}"}} == 1)') == [2.0]
        assert await self.query(self.panel("Orders")) == [float(orders)]
        assert await self.query(self.panel("Sold (kg)")) == [grams / 1000]
        assert await self.query(self.panel("Sold (t)")) == [grams / 1e6]
        assert sum(await self.query(self.panel("Orders by country"))) == orders


SALE_CATALOG = """\
sku,name,unit_grams,stock_grams
VT01,Vải thiều hộp 1 kg,1000,400000
VT02,Vải thiều hộp 2 kg,2000,400000
VT05,Vải thiều thùng 5 kg,5000,400000
VTQ,Vải thiều quà 3 kg,3000,400000
VTS10,Sỉ 10 kg,10000,
VTS20,Sỉ 20 kg,20000,
"""


def catalog_tables(folder: Path, stream: str) -> str:
    """The demo sale's SKUs as the stream's catalog, and a target, so that the catalog panels
    and rules have series."""
    path = folder / "catalog.csv"
    path.write_text(SALE_CATALOG, encoding="utf-8")
    return f'\n[streams.{stream}]\ncatalog = "{path}"\ntarget_grams = 2000000\n'


@pytest.mark.asyncio
async def test_every_dashboard_query_and_rule_against_a_real_prometheus(
    tmp_path: Path, redis_url: str, stream: str
) -> None:
    sale = lychee_sale(seed=1, stream=stream, hours=0.2, target_grams=1_000_000)
    data = with_bad_inputs(frames(sale.deliveries), stream)
    feed = ReplayFeed(data, cut_after=len(data) // 2, replay=50, pause=0.005)
    ports = [free_port(), free_port()]
    hooks = [free_port(), free_port()]
    prometheus = Prometheus(tmp_path, [f"127.0.0.1:{port}" for port in ports])
    twitch = EventSubServer()
    youtube, facebook = YouTubeApi(), FacebookApi(retry_ms=50)
    # Besides the sale's feed, each replica has the platform sources, so that their panels
    # have series: EventSub (revocations at 0; its token refreshed, failures at 0), a
    # Shopify endpoint (ignored, refused) on TLS (certificate panels), a YouTube chat (paid
    # comments, API errors and quota at 0) and a Facebook live video that ends (source ended).
    certificates = Certificates(tmp_path)
    replicas = [
        IngesterProcess(
            write_config(
                tmp_path / f"replica-{n}.toml",
                redis_url=redis_url,
                http_port=port,
                sources=client_source("feed", feed.url(f"replica-{n}"))
                + eventsub_source(twitch, stream, Refreshing(tmp_path / f"refresh-{n}"))
                + youtube_source(youtube, stream)
                + facebook_source(facebook, stream)
                + webhook_source(hook, stream)
                + f"tls = {certificates.toml()}\n"
                + catalog_tables(tmp_path, stream),
            ),
            port,
            env={
                **twitch_environment(twitch),
                **youtube_environment(youtube),
                FACEBOOK_TOKEN_ENV: next(iter(facebook.valid_tokens)),
                SECRET_ENV: SECRET,
            },
        )
        for n, (port, hook) in enumerate(zip(ports, hooks, strict=True))
    ]
    async with (
        feed.serving(),
        twitch.serving(),
        youtube.serving(),
        facebook.serving(),
        aiohttp.ClientSession() as http,
    ):
        with prometheus.running():
            checks = Checks(http, prometheus, stream)

            async def ready() -> bool:
                prometheus.alive()
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{prometheus.url}/-/ready") as reply:
                        return reply.status == 200
                return False

            await until(ready, 20, "prometheus to be ready")
            with replicas[0], replicas[1]:
                youtube.text("chốt VT01")
                youtube.super_chat(20_000 * 1_000_000, "VND")
                await facebook.comment()
                facebook.end()
                for hook in hooks:
                    shop = Shop(
                        f"https://127.0.0.1:{hook}/webhooks/shopify",
                        SECRET,
                        tls=certificates.client(),
                    )
                    body = b'{"id": 1}'
                    assert await shop.deliver(http, "orders/paid", body, event_id="e1") == 200
                    forged = await shop.deliver(
                        http, "orders/create", body, event_id="e2", hmac_header="AAAA"
                    )
                    assert forged == 401
                    # A malformed request: the "Bad requests" panel has a series too.
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", hook, ssl=certificates.client()
                    )
                    try:
                        writer.write(
                            b"POST /webhooks/shopify HTTP/1.1\r\nHost: x\r\nX-Broken\r\n\r\n"
                        )
                        async with asyncio.timeout(10 * UNIT):
                            assert (await reader.readline()).split()[1] == b"400"
                    finally:
                        writer.close()
                        with contextlib.suppress(OSError):
                            await writer.wait_closed()
                await checks.every_query_answers()
                assert not feed.finished("replica-0"), "the checks must run while the sale flows"
                await until(
                    lambda: feed.finished("replica-0") and feed.finished("replica-1"),
                    60,
                    "both replicas to receive the whole sale",
                )
                await checks.counted_once(
                    sum(sale.expected.orders.values()), sum(sale.expected.grams.values())
                )


class BurstFeed:
    """Orders of one stream, one platform and one country, sent in bursts of random size to every
    connected client at the same moments (as a flash sale does): the counter every replica
    exposes jumps between scrapes, which is what makes each replica's ``rate()`` noisy."""

    def __init__(self, stream: str, bursts: int, seed: int, initial: int = 500) -> None:
        rng = random.Random(seed)
        self.stream = stream
        self.initial = initial
        """Orders sent before the bursts (the sale so far): with a counter that is already well
        above one window's increase, ``rate()`` extrapolates to the window's edges instead of
        stopping where the counter would reach zero, as it does for a counter that starts."""
        self.sizes = [rng.randint(2, 16) for _ in range(bursts)]
        self.port = free_port()
        self.clients: set[ServerConnection] = set()
        self.sent = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/feed"

    @property
    def total(self) -> int:
        return self.initial + sum(self.sizes)

    def order(self, number: int) -> str:
        return orjson.dumps(
            {
                "kind": "order",
                "id": f"burst-{number}",
                "status": "created",
                "stream": self.stream,
                "platform": "tiktok",
                "ts": datetime.datetime.now(datetime.UTC).isoformat(),
                "buyer": f"u-{number}",
                "country": "VN",
                "region": "Hà Nội",
                "currency": "VND",
                "amount": "120000",
                "items": [{"sku": "VT01", "qty": 1, "grams": 1000, "price": "120000"}],
            }
        ).decode()

    async def _handle(self, ws: ServerConnection) -> None:
        self.clients.add(ws)
        try:
            for number in range(self.sent):  # a late or reconnecting client gets what it missed
                await ws.send(self.order(number))
            await ws.wait_closed()
        finally:
            self.clients.discard(ws)

    async def send(self, count: int) -> None:
        frames = [self.order(self.sent + n) for n in range(count)]
        self.sent += count
        for ws in list(self.clients):
            with contextlib.suppress(ConnectionClosed):
                for frame in frames:
                    await ws.send(frame)

    async def run(self, clock: Callable[[], Awaitable[None]]) -> None:
        """Send every burst, each after ``clock()`` returns (a wait of one period)."""
        for size in self.sizes:
            await clock()
            await self.send(size)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[BurstFeed]:
        async with serve(self._handle, "127.0.0.1", self.port):
            yield self


SCRAPE_SECONDS = 10
"""Scrape interval of the rates test: coarse, like the shipped 15 s, so that each replica's rate
is a noisy estimate (the largest of three overstated the orders by 4-7% here)."""


class ReplicaSets:
    """Replicas of the ingester by set name, each set on its own Redis and reading its own feed."""

    def __init__(self, tmp_path: Path, sets: dict[str, tuple[str, BurstFeed, int]]) -> None:
        self.feeds = {name: feed for name, (_, feed, _) in sets.items()}
        self.replicas: dict[str, list[IngesterProcess]] = {}
        for name, (url, feed, count) in sets.items():
            ports = [free_port() for _ in range(count)]
            self.replicas[name] = [
                IngesterProcess(
                    write_config(
                        tmp_path / f"{name}-{n}.toml",
                        redis_url=url,
                        http_port=port,
                        sources=client_source(name, feed.url),
                    ),
                    port,
                )
                for n, port in enumerate(ports)
            ]

    @property
    def targets(self) -> list[str]:
        return [f"127.0.0.1:{r.http_port}" for rs in self.replicas.values() for r in rs]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ReplicaSets]:
        async with contextlib.AsyncExitStack() as stack:
            for feed in self.feeds.values():
                await stack.enter_async_context(feed.serving())
            for replicas in self.replicas.values():
                for replica in replicas:
                    stack.enter_context(replica)
            connected = [len(rs) for rs in self.replicas.values()]
            await until(
                lambda: [len(f.clients) for f in self.feeds.values()] == connected,
                20,
                "every replica to connect to its feed",
            )
            yield self

    async def exposing(self, totals: dict[str, int]) -> None:
        """Wait until every replica of each set exposes that set's total (read directly)."""

        def exposed() -> bool:
            return all(
                sum(
                    select(
                        scrape(r.http_port),
                        "livestream_orders_total",
                        stream=self.feeds[name].stream,
                    ).values()
                )
                == total
                for name, total in totals.items()
                for r in self.replicas[name]
            )

        await until(exposed, 20, f"every replica to expose {totals}")

    async def scraped_with(self, checks: Checks, totals: dict[str, int]) -> None:
        """Wait until Prometheus has scraped every replica of each set with that set's total."""

        async def scraped() -> bool:
            checks.prometheus.alive()
            for name, total in totals.items():
                stream = self.feeds[name].stream
                got = await checks.query(f'livestream_orders_total{{stream="{stream}"}} == {total}')
                if len(got) != len(self.replicas[name]):
                    return False
            return True

        await until(scraped, 6 * SCRAPE_SECONDS, f"every replica to be scraped with {totals}")


async def full_windows(checks: Checks, series: int) -> None:
    """Wait until the rule's 1-minute window holds a full minute of samples of every series, as
    in a Prometheus that has been running: a window with a single sample or two extrapolates its
    increase over the whole minute, which overstates the rates of the first minute."""

    async def full() -> bool:
        checks.prometheus.alive()
        samples = 'count_over_time(livestream_orders_total{stream=~"rates-.*"}[1m])'
        expr = f"{samples} >= {60 // SCRAPE_SECONDS}"
        return len(await checks.query(expr)) == series

    await until(full, 90, "a full minute of samples of every replica")


async def integrated_rates(checks: Checks, sets: ReplicaSets, start: float) -> dict[str, float]:
    """Per set, the orders per minute of the recording rule integrated from ``start`` until the
    rates have fallen back to 0 (1 s evaluations: the sum of the values over 60)."""

    async def settled() -> bool:
        rates = await checks.query(
            'stream:livestream_orders_per_minute:rate1m{stream=~"rates-.*"} > 0'
        )
        return rates == []

    await until(settled, 90, "the per-minute rates to fall back to 0")
    end = time.time()
    integrals = {}
    for name, feed in sets.feeds.items():
        expr = f'stream:livestream_orders_per_minute:rate1m{{stream="{feed.stream}"}}'
        (row,) = await checks.series(expr, start, end)
        integrals[name] = sum(float(value) for _, value in row["values"]) / 60
    return integrals


async def alerts_after_killing(
    checks: Checks, killed: list[IngesterProcess]
) -> tuple[dict[str, set[str]], list[dict[str, str]]]:
    """Kill ``killed``; once LivestreamIngesterDown is pending for each of them and the rules
    have been evaluated 5 more times: the severities of the pending and firing alerts by
    name, and every other alert that went pending or fired since the kill."""
    prometheus = checks.prometheus
    killed_at = time.time()
    for replica in killed:
        replica.kill()
    down = {f"127.0.0.1:{r.http_port}" for r in killed}

    async def alerts() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (await get(checks.http, f"{prometheus.url}/api/v1/alerts"))[
            "alerts"
        ]
        return found

    async def noticed() -> bool:
        return {
            a["labels"]["instance"]
            for a in await alerts()
            if a["labels"]["alertname"] == "LivestreamIngesterDown"
        } == down

    await until(noticed, 6 * SCRAPE_SECONDS, "LivestreamIngesterDown for the killed replicas")
    noticed_at = time.time()

    async def evaluated_since() -> bool:
        groups = (await get(checks.http, f"{prometheus.url}/api/v1/rules"))["groups"]
        stamps = [datetime.datetime.fromisoformat(g["lastEvaluation"]) for g in groups]
        return min(stamp.timestamp() for stamp in stamps) > noticed_at + 5

    await until(evaluated_since, 30, "five more rule evaluations")
    severities: dict[str, set[str]] = {}
    for alert in await alerts():
        labels = alert["labels"]
        severities.setdefault(labels["alertname"], set()).add(labels["severity"])
    others = await checks.series(
        'ALERTS{alertname!~"LivestreamIngesterDown|LivestreamWatchdog"}', killed_at, time.time()
    )
    return severities, [row["metric"] for row in others]


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.timeout(300)
async def test_per_minute_rates_add_up_with_offset_scrapes_and_a_replica_kill_alerts_nothing(
    tmp_path: Path, redis_url: str
) -> None:
    """One Prometheus scrapes, every 10 s and each target at its own offset, one replica ("solo",
    on its own Redis) and three ("trio"), each set fed bursts of orders. For each set, the
    per-minute order rate integrated over the run equals the orders counted, within 2%. Then two
    of the three are killed: LivestreamIngesterDown goes pending, as a warning, and nothing else
    (no LivestreamDuplicateRatioHigh, no LivestreamIngestersAllDown)."""
    other = RedisServer()
    other.start()
    try:
        solo = BurstFeed("rates-solo", bursts=12, seed=11)
        trio = BurstFeed("rates-trio", bursts=12, seed=12)
        sets = ReplicaSets(tmp_path, {"solo": (other.url, solo, 1), "trio": (redis_url, trio, 3)})
        prometheus = Prometheus(tmp_path, sets.targets, scrape_interval=SCRAPE_SECONDS)
        async with aiohttp.ClientSession() as http, sets.running():
            # The sale so far, counted before Prometheus starts: its first samples are the
            # totals so far, and only what follows is an increase it can see.
            for feed in sets.feeds.values():
                await feed.send(feed.initial)
            await sets.exposing({"solo": solo.initial, "trio": trio.initial})
            with prometheus.running():
                checks = Checks(http, prometheus, "")
                await checks.ready()
                await sets.scraped_with(checks, {"solo": solo.initial, "trio": trio.initial})
                await full_windows(checks, len(sets.targets))
                start = time.time()

                async def period() -> None:
                    await asyncio.sleep(2.0)  # the sale's pace, not a synchronisation

                await asyncio.gather(solo.run(period), trio.run(period))
                await sets.scraped_with(checks, {"solo": solo.total, "trio": trio.total})
                integrals = await integrated_rates(checks, sets, start)
                # Scraped at different moments: the latest scrapes of the four differ.
                moments = await checks.query(f'timestamp(up{{job="{JOB}"}})')
                assert len(set(moments)) == len(sets.targets), moments
                errors = {
                    name: integrals[name] / (feed.total - feed.initial) - 1  # new since then
                    for name, feed in sets.feeds.items()
                }
                print(f"per-minute rates integrated: {integrals}; relative errors: {errors}")
                assert {name: abs(e) <= 0.02 for name, e in errors.items()} == {
                    "solo": True,
                    "trio": True,
                }, errors

                assert trio.total > 100  # enough new events for the duplicate-ratio gate
                severities, others = await alerts_after_killing(checks, sets.replicas["trio"][1:])
                assert severities.get("LivestreamIngesterDown") == {"warning"}
                assert others == []
    finally:
        other.close()
