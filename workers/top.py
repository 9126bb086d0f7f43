"""``livestream-ingester top``: a live terminal view for an operator without Grafana.

Per stream, the totals read from Redis (the same ``Store.totals`` the metrics use): weight sold,
orders, comments and their per-minute rates, revenue per currency, top countries and SKUs,
unique buyers and commenters, viewers. Source health is per ingester process, so it is read
from each ingester's ``/metrics`` given with ``--metrics``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from workers import config as config_module
from workers.display import (
    TOP_N,
    Plan,
    Rates,
    comment_orders,
    kilograms,
    money,
    progress,
    revenue,
    stock_left,
    stream_table,
    summary,
    top_countries,
    top_skus,
    viewers,
)
from workers.report import duration
from workers.sessions import Session, Sessions
from workers.store import Store, StoreSettings, StreamTotals

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
TOP_RATE_WINDOW = 60.0
"""Seconds of history behind the per-minute rates."""
HTTP_TIMEOUT = 3.0
REDIS_TIMEOUT = 5.0


@dataclasses.dataclass(frozen=True)
class SourceStatus:
    """One source of an ingester as its /metrics tells it."""

    source: str
    connected: bool
    since_last_input: float | None
    """Seconds since the source last delivered anything; None if it never has."""
    outcomes: dict[str, float]
    reconnects: float


@dataclasses.dataclass(frozen=True)
class ProcessHealth:
    """One ingester's health as its /metrics tells it, or why it could not be read."""

    url: str
    error: str | None = None
    redis_up: bool | None = None
    buffered: float | None = None
    sources: tuple[SourceStatus, ...] = ()
    plans: dict[str, Plan] = dataclasses.field(default_factory=dict)
    """Stream -> its target and stock at the start, as the ingester's catalogs give them."""


def parse_health(url: str, text: str, now: float) -> ProcessHealth:
    """Source and Redis health from an ingester's exposition (pure; ``now`` in Unix seconds)."""
    connected: dict[str, bool] = {}
    last: dict[str, float] = {}
    reconnects: dict[str, float] = defaultdict(float)
    outcomes: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    redis_up: bool | None = None
    buffered: float | None = None
    targets: dict[str, int] = {}
    stock: dict[str, dict[str, int]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "livestream_ingest_source_connected":
                connected[labels["source"]] = value == 1
            elif name == "livestream_ingest_last_event_timestamp_seconds":
                last[labels["source"]] = value
            elif name == "livestream_ingest_source_reconnects_total":
                reconnects[labels["source"]] += value
            elif name == "livestream_ingest_events_total":
                outcomes[labels["source"]][labels["outcome"]] += value
            elif name == "livestream_ingest_redis_up":
                redis_up = value == 1
            elif name == "livestream_ingest_buffered_events":
                buffered = value
            elif name == "livestream_target_grams":
                targets[labels["stream"]] = int(value)
            elif name == "livestream_sku_stock_grams":
                stock[labels["stream"]][labels["sku"]] = int(value)
    sources = tuple(
        SourceStatus(
            source=source,
            connected=connected.get(source, False),
            since_last_input=max(0.0, now - last[source]) if source in last else None,
            outcomes=dict(outcomes[source]),
            reconnects=reconnects[source],
        )
        for source in sorted(set(connected) | set(last) | set(outcomes))
    )
    plans = {
        stream: Plan(targets.get(stream), dict(stock.get(stream, {})))
        for stream in set(targets) | set(stock)
    }
    return ProcessHealth(url, redis_up=redis_up, buffered=buffered, sources=sources, plans=plans)


def metrics_url(value: str) -> str:
    """``host:port`` or a URL; a URL without a path gets ``/metrics``."""
    url = value if "://" in value else f"http://{value}"
    scheme, _, rest = url.partition("://")
    return url if "/" in rest else f"{scheme}://{rest}/metrics"


async def fetch_health(http: aiohttp.ClientSession, url: str) -> ProcessHealth:
    try:
        async with http.get(url) as reply:
            if reply.status != 200:
                return ProcessHealth(url, error=f"HTTP {reply.status}")
            text = await reply.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return ProcessHealth(url, error=type(exc).__name__)
    try:
        return parse_health(url, text, time.time())
    except ValueError as exc:
        return ProcessHealth(url, error=f"not a Prometheus exposition ({exc})")


@dataclasses.dataclass(frozen=True)
class StreamView:
    totals: StreamTotals
    values: dict[str, int]
    rates: dict[str, float]
    session: Session | None = None
    """Its current session (only for the first ``SESSION_STREAMS`` streams)."""
    plan: Plan | None = None
    """The stream's target and stock, if an ingester read for health has its catalog."""


SESSION_STREAMS = 50
"""Streams whose session clock a refresh reads (one small read each)."""


def session_clock(session: Session | None, now: float) -> str:
    """``session 2 live 1:02:03`` or ``session 2 idle since 12:00:00 UTC``; "" if none."""
    if session is None:
        return ""
    if session.open:
        return f"session {session.n} live {duration(session.seconds(now))}"
    return f"session {session.n} ended ({session.how}) after {duration(session.seconds(now))}"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    redis_url: str
    streams: tuple[StreamView, ...]
    health: tuple[ProcessHealth, ...]
    error: str | None = None
    stale_for: float | None = None
    """While Redis does not answer: seconds since ``streams`` (the last figures read) were read."""


class Reader:
    """Reads snapshots: totals from Redis with per-minute rates, health from /metrics URLs.

    While Redis does not answer, a snapshot keeps the last figures read, with their age."""

    def __init__(
        self,
        redis_url: str,
        stream: str | None,
        metrics: Sequence[str],
        clock: Callable[[], float] = time.monotonic,
        cluster: bool = False,
        *,
        idle_seconds: int = 30 * 60,
    ) -> None:
        self.redis_url = redis_url
        self.stream = stream
        self.metrics = [metrics_url(url) for url in metrics]
        self.clock = clock
        self.redis: Redis | RedisCluster = (
            RedisCluster.from_url(
                redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
            )
            if cluster
            else Redis.from_url(
                redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
            )
        )
        self.store = Store(self.redis, StoreSettings())
        self.sessions = Sessions(self.redis, idle_seconds)
        self._rates: dict[str, Rates] = {}
        self._http: aiohttp.ClientSession | None = None
        self._last: tuple[StreamView, ...] = ()
        self._last_read: float | None = None

    async def __aenter__(self) -> Reader:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()
        await self.redis.aclose()

    async def read(self) -> Snapshot:
        assert self._http is not None, "use Reader as an async context manager"
        http = self._http
        health = await asyncio.gather(*(fetch_health(http, url) for url in self.metrics))
        try:
            totals = await self.store.totals([self.stream] if self.stream else None)
        except (RedisError, RedisClusterException, OSError) as exc:
            error = f"Redis: {type(exc).__name__}"
            stale = None if self._last_read is None else self.clock() - self._last_read
            return Snapshot(self.redis_url, self._last, tuple(health), error, stale)
        views = []
        for n, stream in enumerate(totals):
            values = summary(stream)
            rates = self._rates.setdefault(
                stream.stream, Rates(window=TOP_RATE_WINDOW, clock=self.clock)
            )
            session = None
            if n < SESSION_STREAMS:
                with contextlib.suppress(RedisError, RedisClusterException, OSError):
                    session = await self.sessions.current(stream.stream)
            plan = next((h.plans[stream.stream] for h in health if stream.stream in h.plans), None)
            views.append(StreamView(stream, values, rates.add(values), session, plan))
        self._last, self._last_read = tuple(views), self.clock()
        return Snapshot(self.redis_url, self._last, tuple(health))


# -- rendering ------------------------------------------------------------------------------------


def _weights(pairs: list[tuple[str, int]]) -> str:
    return ", ".join(f"{name} {kilograms(grams)} kg" for name, grams in pairs) or "-"


def _revenue(totals: StreamTotals) -> str:
    return "; ".join(f"{c} {money(m, c)}" for c, m in revenue(totals).items()) or "-"


def _since(seconds: float | None) -> str:
    if seconds is None:
        return "no input yet"
    return f"last input {seconds:,.1f} s ago"


def _source_line(source: SourceStatus) -> str:
    counts = ", ".join(
        f"{source.outcomes.get(outcome, 0):,.0f} {outcome}"
        for outcome in ("accepted", "duplicate", "rejected")
    )
    state = "connected" if source.connected else "DISCONNECTED"
    return (
        f"  source {source.source}: {state}, {_since(source.since_last_input)}, {counts}, "
        f"{source.reconnects:,.0f} reconnects"
    )


def _process_line(process: ProcessHealth) -> str:
    if process.error is not None:
        return f"ingester {process.url}: UNREACHABLE ({process.error})"
    redis = {True: "redis up", False: "REDIS DOWN", None: "redis ?"}[process.redis_up]
    buffered = "?" if process.buffered is None else f"{process.buffered:,.0f}"
    return f"ingester {process.url}: {redis}, {buffered} buffered"


def _stale(snapshot: Snapshot) -> str:
    if snapshot.stale_for is None:
        return ""
    return f": showing the last figures read, {snapshot.stale_for:,.1f} s ago (STALE)"


def plain(snapshot: Snapshot) -> str:
    """The snapshot as text lines: one block per stream, then one per ingester."""
    lines = []
    stale = snapshot.error is not None and snapshot.stale_for is not None
    if snapshot.error:
        lines.append(f"{snapshot.error} at {snapshot.redis_url}{_stale(snapshot)}")
    elif not snapshot.streams:
        lines.append(f"no streams in Redis at {snapshot.redis_url}")
    for view in snapshot.streams:
        totals, values, rates = view.totals, view.values, view.rates
        lines += [
            f"stream {totals.stream}  sold {kilograms(values['grams'])} kg "
            f"({values['grams'] / 1e6:,.3f} t)  orders {values['orders']:,} "
            f"({rates['orders']:,.1f}/min)  kg/min {rates['grams'] / 1000:,.1f}  "
            f"comments {values['comments']:,} ({rates['comments']:,.1f}/min)  "
            f"cancelled {values['cancelled']:,}"
            + (f"  {session_clock(view.session, time.time())}" if view.session else "")
            + ("  [STALE]" if stale else ""),
            f"  revenue: {_revenue(totals)}",
            f"  top countries: {_weights(top_countries(totals, TOP_N))}",
            f"  top SKUs: {_weights(top_skus(totals, TOP_N))}",
            f"  unique buyers {totals.unique_buyers:,}, unique commenters "
            f"{totals.unique_commenters:,}, viewers: {viewers(totals)}",
            f"  comment orders: {comment_orders(totals)}",
        ]
        if view.plan is not None:
            lines.append(
                f"  target: {progress(totals, view.plan)}; stock left: "
                f"{_weights(stock_left(totals, view.plan))}"
            )
    for process in snapshot.health:
        lines.append(_process_line(process))
        lines += [_source_line(source) for source in process.sources]
    return "\n".join(lines)


def _health_table(health: Sequence[ProcessHealth]) -> Table:
    table = Table(title="sources")
    for column in ("ingester", "source", "state", "last input", "accepted", "dup", "rejected"):
        table.add_column(column)
    for process in health:  # a row for the process itself: its Redis state and backlog
        table.add_row(process.url, "", _process_line(process).split(": ", 1)[1])
        for source in process.sources:
            since = source.since_last_input
            table.add_row(
                process.url,
                source.source,
                "connected" if source.connected else "[red]DISCONNECTED[/red]",
                "-" if since is None else f"{since:,.1f} s ago",
                *(
                    f"{source.outcomes.get(o, 0):,.0f}"
                    for o in ("accepted", "duplicate", "rejected")
                ),
            )
    return table


def rich_view(snapshot: Snapshot) -> Group:
    mark = " [STALE]" if snapshot.error is not None and snapshot.stale_for is not None else ""
    now = time.time()
    parts: list[Table | str] = [
        stream_table(
            view.totals,
            view.values,
            view.rates,
            f"stream {view.totals.stream}{mark}"
            + (f"  {session_clock(view.session, now)}" if view.session else ""),
            view.plan,
        )
        for view in snapshot.streams
    ]
    if snapshot.error or not snapshot.streams:
        parts.insert(0, plain(dataclasses.replace(snapshot, health=())))
    if snapshot.health:
        parts.append(_health_table(snapshot.health))
    return Group(*parts)


# -- the command ----------------------------------------------------------------------------------


def redis_target(args: argparse.Namespace) -> tuple[str, bool]:
    """Where to read and whether it is a cluster: ``--redis-url``, else the config's ``[redis]``
    (``-c``, environment applied; nothing else of the file is needed), else REDIS_URL."""
    if args.redis_url:
        return str(args.redis_url), False
    if args.config:
        redis = config_module.load_redis(args.config)
        return redis.url, redis.cluster
    return os.environ.get("REDIS_URL", DEFAULT_REDIS), False


async def top(args: argparse.Namespace, stop: asyncio.Event) -> int:
    try:
        url, cluster = redis_target(args)
    except config_module.ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    async with Reader(url, args.stream, args.metrics, cluster=cluster) as reader:
        if args.once:
            # Two readings an interval apart, so the rates mean something.
            await reader.read()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(args.interval):
                    await stop.wait()
            snapshot = await reader.read()
            if args.plain:
                print(plain(snapshot), flush=True)
            else:
                Console().print(rich_view(snapshot))
            return 1 if snapshot.error else 0
        await _refresh(reader, args.interval, args.plain or not sys.stdout.isatty(), stop)
    return 0


async def _refresh(reader: Reader, interval: float, as_text: bool, stop: asyncio.Event) -> None:
    live = None if as_text else Live(refresh_per_second=4, transient=False)
    with live if live is not None else contextlib.nullcontext():
        while not stop.is_set():
            snapshot = await reader.read()
            if live is not None:
                live.update(rich_view(snapshot))
            else:
                print(plain(snapshot) + "\n", flush=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await stop.wait()
