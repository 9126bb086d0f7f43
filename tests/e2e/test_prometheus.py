"""End to end: a real Prometheus (Debian package) with the shipped config and rules scrapes two
ingester replicas fed a small sale. Every query of every dashboard panel returns data, every rule
evaluates cleanly and every recording rule produces series, and the dashboards count each
order once although both replicas expose it. No Grafana: its variables are substituted here.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from tests.e2e.support import (
    SECRET,
    SECRET_ENV,
    TOKEN_ENV,
    IngesterProcess,
    ReplayFeed,
    client_source,
    eventsub_source,
    webhook_source,
    write_config,
)
from tests.platforms import EventSubServer, Shop
from tests.servers import free_port
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
from workers.demo.sale import frames, lychee_sale

RATE_INTERVAL = "10s"
"""``$__rate_interval`` for 1 s scrapes (Grafana would pick at least 4 scrape intervals)."""

BAD_EVERY = 100
"""One rejected input every this many frames, so the rejection panels have data."""


class Prometheus:
    """``prometheus`` on a free loopback port, storage in a temp dir, the shipped rules.

    The shipped prometheus.yml is used with its targets replaced and 1 s intervals.
    """

    def __init__(self, directory: Path, scrape_targets: Sequence[str]) -> None:
        config = load_yaml(PROMETHEUS_CONFIG)
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
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
    # Besides the sale's feed, each replica has the platform sources, so that their panels
    # have series: EventSub (revocations, at 0) and a Shopify endpoint (ignored, refused).
    replicas = [
        IngesterProcess(
            write_config(
                tmp_path / f"replica-{n}.toml",
                redis_url=redis_url,
                http_port=port,
                sources=client_source("feed", feed.url(f"replica-{n}"))
                + eventsub_source(twitch, stream)
                + webhook_source(hook, stream),
            ),
            port,
            env={TOKEN_ENV: twitch.token, SECRET_ENV: SECRET},
        )
        for n, (port, hook) in enumerate(zip(ports, hooks, strict=True))
    ]
    async with feed.serving(), twitch.serving(), aiohttp.ClientSession() as http:
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
                for hook in hooks:
                    shop = Shop(f"http://127.0.0.1:{hook}/webhooks/shopify", SECRET)
                    body = b'{"id": 1}'
                    assert await shop.deliver(http, "orders/paid", body, event_id="e1") == 200
                    forged = await shop.deliver(
                        http, "orders/create", body, event_id="e2", hmac_header="AAAA"
                    )
                    assert forged == 401
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
