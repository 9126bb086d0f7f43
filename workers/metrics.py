"""Prometheus metrics: per-process health, and business totals read from Redis at scrape time.

Business totals are never accumulated in the process: :func:`business_families` turns what Redis
holds into metric families, so every replica exposes the same values and a restart resets nothing.
Aggregate them across replicas with ``max``, never ``sum``.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString

from ingest.catalog import Catalog
from ingest.money import to_major
from workers import keys
from workers.store import StreamTotals

if TYPE_CHECKING:
    from workers.catalogs import Loaded

# "_created" series double the exposition for nothing a dashboard here uses.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """Observe each of ``values`` in ``histogram`` (an unlabelled one or a labelled child): the
    same series as ``observe`` per value, with one increment per bucket and one of the sum
    (a batch's lags: a thousand ``observe`` calls cost more than its commit's records).
    Relies on prometheus_client's per-bucket counts (``_upper_bounds``, ``_buckets``,
    ``_sum``); without them it observes one by one."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    ordered = sorted(values)
    below = 0
    for bound, bucket in zip(bounds, buckets, strict=True):
        upto = bisect.bisect_right(ordered, bound)  # values <= bound, as observe() places them
        if upto > below:
            bucket.inc(upto - below)
            below = upto
    total.inc(sum(ordered))


LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class HealthMetrics:
    """The process's own health, in a registry of its own (one per ingester instance)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._sources(self.registry)
        self._commits(self.registry)
        self._redis(self.registry)
        self._listeners(self.registry)
        self._tls(self.registry)
        self._catalogs(self.registry)

    def _sources(self, r: CollectorRegistry) -> None:
        """What the sources take in, and whether they are connected."""
        self.events = Counter(
            "livestream_ingest_events",
            "Events handled, by source, kind and outcome (accepted, duplicate, rejected).",
            ["source", "kind", "outcome"],
            registry=r,
        )
        self.rejections = Counter(
            "livestream_ingest_rejections",
            "Inputs rejected and dead-lettered, by source and reason.",
            ["source", "reason"],
            registry=r,
        )
        self.connected = Gauge(
            "livestream_ingest_source_connected",
            "1 while the source has a live connection (or is listening), else 0.",
            ["source"],
            registry=r,
        )
        self.reconnects = Counter(
            "livestream_ingest_source_reconnects",
            "Reconnection attempts, by source.",
            ["source"],
            registry=r,
        )
        self.last_event = Gauge(
            "livestream_ingest_last_event_timestamp_seconds",
            "Unix time at which the source last delivered an input.",
            ["source"],
            registry=r,
        )
        self.lag = Histogram(
            "livestream_ingest_event_lag_seconds",
            "Time from an accepted event's own timestamp to its commit in Redis.",
            ["source"],
            buckets=LAG_BUCKETS,
            registry=r,
        )

    def _commits(self, r: CollectorRegistry) -> None:
        """The committer: commits, batches, errors and the buffer."""
        self.commit_duration = Histogram(
            "livestream_ingest_commit_duration_seconds",
            "Duration of one Redis commit round trip (all streams of a batch).",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "livestream_ingest_commit_batch_events",
            "Events (and dead letters) per Redis commit.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.commit_errors = Counter(
            "livestream_ingest_commit_errors",
            "Failed Redis commits (each is retried), by error type.",
            ["error"],
            registry=r,
        )
        self.buffered = Gauge(
            "livestream_ingest_buffered_events",
            "Events read but not yet committed.",
            registry=r,
        )
        self.buffered_bytes = Gauge(
            "livestream_ingest_buffered_bytes",
            "Memory the uncommitted events hold (estimate: see [batch] buffer_bytes).",
            registry=r,
        )

    def _redis(self, r: CollectorRegistry) -> None:
        """Redis as this process sees it."""
        self.redis_up = Gauge(
            "livestream_ingest_redis_up",
            "1 if the last Redis commit or read succeeded, else 0.",
            registry=r,
        )
        self.redis_eviction_safe = Gauge(
            "livestream_ingest_redis_eviction_safe",
            "1 if every Redis primary has maxmemory-policy noeviction, 0 if one may evict the "
            "dedup sets (redeliveries would count again); absent until first read.",
            registry=r,
        )
        self.redis_memory_used = Gauge(
            "livestream_ingest_redis_memory_used_bytes",
            "Memory used by each Redis primary (INFO memory used_memory), read periodically.",
            ["node"],
            registry=r,
        )
        self.redis_memory_max = Gauge(
            "livestream_ingest_redis_memory_max_bytes",
            "maxmemory of each Redis primary (0: no limit), read periodically.",
            ["node"],
            registry=r,
        )
        self.scrape_errors = Counter(
            "livestream_ingest_totals_read_errors",
            "Scrapes that could not read business totals from Redis.",
            registry=r,
        )

    def _listeners(self, r: CollectorRegistry) -> None:
        """Inputs taken but not counted, and requests the listeners refused."""
        self.ignored = Counter(
            "livestream_ingest_ignored",
            "Inputs taken but not events we count (another webhook topic, another EventSub "
            "type, a relay message that is not chat), by source and what.",
            ["source", "what"],
            registry=r,
        )
        self.unauthorized = Counter(
            "livestream_ingest_unauthorized_requests",
            "Requests refused (401) by a listener for a missing or wrong signature, token or "
            "password (source: a source's name, http for /metrics); not kept.",
            ["source"],
            registry=r,
        )
        self.bad_requests = Counter(
            "livestream_ingest_bad_requests",
            "Requests a listener refused as a client's mistake (a body cut off mid-way, ...), "
            "by listener and reason.",
            ["listener", "reason"],
            registry=r,
        )
        self.connections_refused = Counter(
            "livestream_ingest_connections_refused",
            "Connections a listener closed at once, by listener and scope: it had "
            "max_connections open (listener), or the client max_connections_per_client (client).",
            ["listener", "scope"],
            registry=r,
        )
        self.rate_limited = Counter(
            "livestream_ingest_rate_limited_requests",
            "Requests (websocket handshakes) a listener answered 429, by listener and scope: "
            "over the listener's rate (listener) or the client address's (client).",
            ["listener", "scope"],
            registry=r,
        )
        self.webhook_unavailable = Counter(
            "livestream_ingest_webhook_unavailable",
            "Webhook deliveries answered 503 (not committed within commit_timeout_seconds): "
            "the platform delivers them again.",
            ["source"],
            registry=r,
        )
        self._credentials(r)
        self.revocations = Counter(
            "livestream_ingest_eventsub_revocations",
            "Twitch EventSub subscriptions revoked, by source, subscription type and status.",
            ["source", "type", "status"],
            registry=r,
        )
        self._youtube(r)
        self.token_refreshes = Counter(
            "livestream_ingest_token_refreshes",
            "Access tokens a source got with its refresh token (Twitch, YouTube), by source.",
            ["source"],
            registry=r,
        )
        self.token_refresh_failures = Counter(
            "livestream_ingest_token_refresh_failures",
            "Failed token refreshes, by source and reason (invalid: the refresh token was "
            "refused; network, http, malformed).",
            ["source", "reason"],
            registry=r,
        )
        self.facebook_errors = Counter(
            "livestream_ingest_facebook_api_errors",
            "Error answers of the Facebook Graph API to a facebook-live source, by source and "
            "reason (token_expired, token_invalid, permission, rate_limited, not_found, server, "
            "other).",
            ["source", "reason"],
            registry=r,
        )

    def _youtube(self, r: CollectorRegistry) -> None:
        """The YouTube Data API as a polling source sees it."""
        self.api_errors = Counter(
            "livestream_ingest_api_errors",
            "Error answers of a polled platform API (YouTube), by source and kind (quota, "
            "rate_limited, unauthorized, forbidden, chat_ended, chat_disabled, chat_not_found, "
            "bad_request, server, other).",
            ["source", "kind"],
            registry=r,
        )
        self.quota_exhausted = Gauge(
            "livestream_ingest_api_quota_exhausted",
            "1 while a source waits for its API quota to reset (YouTube: midnight Pacific), "
            "reading nothing; else 0.",
            ["source"],
            registry=r,
        )
        self.source_ended = Gauge(
            "livestream_ingest_source_ended",
            "1 once a source stopped for good, by reason (YouTube: chat_ended, chat_disabled, "
            "chat_not_found, video_not_found; Facebook: video_ended); absent while it runs.",
            ["source", "reason"],
            registry=r,
        )

    def _credentials(self, r: CollectorRegistry) -> None:
        """Who authenticated with what, and the secrets files read while running."""
        self.push_connections = Counter(
            "livestream_ingest_push_connections",
            "Connections accepted by a websocket-server source, by producer (a tokens file's "
            "names; env for token_env).",
            ["source", "producer"],
            registry=r,
        )
        self.revoked_connections = Counter(
            "livestream_ingest_revoked_connections",
            "Open connections closed (1008) because their token was removed from the tokens file.",
            ["source"],
            registry=r,
        )
        self.secrets_reloads = Counter(
            "livestream_ingest_secrets_reloads",
            "Reads of a secrets file while running, by source and outcome (ok, error: the "
            "previous secrets are kept).",
            ["source", "outcome"],
            registry=r,
        )
        self.secrets_file_valid = Gauge(
            "livestream_ingest_secrets_file_valid",
            "0 while the last read of a source's secrets file was refused (the previous "
            "secrets are in use), else 1.",
            ["source"],
            registry=r,
        )
        self.webhook_signatures = Counter(
            "livestream_ingest_webhook_signatures",
            "Webhook deliveries verified, by the secret that signed them (current, previous).",
            ["source", "secret"],
            registry=r,
        )
        self.webhook_forbidden = Counter(
            "livestream_ingest_webhook_forbidden",
            "Signed webhook deliveries refused (403) for a shop domain not in shop_domains.",
            ["source"],
            registry=r,
        )

    def _tls(self, r: CollectorRegistry) -> None:
        """The certificates the TLS listeners serve."""
        self.tls_expiry = Gauge(
            "livestream_ingest_tls_certificate_expiry_timestamp_seconds",
            "Unix time at which the certificate a listener serves expires (its notAfter).",
            ["listener"],
            registry=r,
        )
        self.tls_loads = Counter(
            "livestream_ingest_tls_certificate_loads",
            "Certificates a listener loaded: one at start, one per successful reload (SIGHUP "
            "or a change of its files).",
            ["listener"],
            registry=r,
        )
        self.tls_reload_failures = Counter(
            "livestream_ingest_tls_reload_failures",
            "Reloads of a listener's certificate that failed (unreadable, not PEM, the key "
            "does not match): the previous certificate is still served.",
            ["listener"],
            registry=r,
        )

    def _catalogs(self, r: CollectorRegistry) -> None:
        """The streams' catalogs: which version is loaded since when, and refused reloads."""
        self.catalog_reload_failures = Counter(
            "livestream_catalog_reload_failures",
            "Catalog reloads refused (the file did not validate or could not be read): the "
            "loaded catalog stays.",
            ["stream"],
            registry=r,
        )
        self.catalog_loaded = Gauge(
            "livestream_catalog_loaded_timestamp_seconds",
            "Unix time at which the stream's catalog in use was loaded.",
            ["stream"],
            registry=r,
        )
        self.catalog_info = Gauge(
            "livestream_catalog_info",
            "1 for the catalog version in use (the first 12 hex digits of its file's SHA-256).",
            ["stream", "version"],
            registry=r,
        )
        self.catalog_products = Gauge(
            "livestream_catalog_products",
            "Products in the stream's catalog in use.",
            ["stream"],
            registry=r,
        )

    def catalog_loaded_now(self, stream: str, loaded: Loaded, before: Loaded | None) -> None:
        """Called by :class:`workers.catalogs.Catalogs` after each load."""
        if before is not None and before.catalog.digest != loaded.catalog.digest:
            self.catalog_info.remove(stream, before.catalog.digest)
        self.catalog_info.labels(stream, loaded.catalog.digest).set(1)
        self.catalog_loaded.labels(stream).set(loaded.at)
        self.catalog_products.labels(stream).set(len(loaded.catalog))
        self.catalog_reload_failures.labels(stream)

    def catalog_failed(self, stream: str) -> None:
        self.catalog_reload_failures.labels(stream).inc()

    def add_source(self, name: str) -> None:
        """Make a source's series exist (at zero) before its first event."""
        self.connected.labels(name).set(0)
        self.reconnects.labels(name)


@dataclasses.dataclass(frozen=True, slots=True)
class _Family:
    field: str
    """The metric's field name inside li:{s}:totals."""
    name: str
    doc: str
    labels: tuple[str, ...]
    """After ``stream``, as the field holds them."""
    money: bool = False
    """Minor units, rendered in major units of the currency (the last label)."""
    micros: bool = False
    """Millionths of the currency's major unit (YouTube's ``amountMicros``), rendered in major
    units."""

    def value(self, number: int, labels: tuple[str, ...]) -> float:
        """The sample of a field's integer, in the unit the metric is exposed in."""
        if self.micros:
            return number / 1_000_000
        return to_major(number, labels[-1]) if self.money else number


_COUNTERS = (
    _Family(keys.ORDERS, "livestream_orders", "Orders created.", ("platform", "country")),
    _Family(keys.GRAMS, "livestream_sold_grams", "Grams ordered.", ("platform", "country")),
    _Family(
        keys.VALUE,
        "livestream_order_value",
        "Value of orders created, in major units of the currency.",
        ("platform", "currency"),
        money=True,
    ),
    _Family(
        keys.CANCELLED, "livestream_cancelled_orders", "Orders cancelled.", ("platform", "country")
    ),
    _Family(
        keys.CANCELLED_GRAMS,
        "livestream_cancelled_grams",
        "Grams of cancelled orders.",
        ("platform", "country"),
    ),
    _Family(
        keys.CANCELLED_VALUE,
        "livestream_cancelled_value",
        "Value of cancelled orders, in major units of the currency (orders whose state was "
        "written before this counter existed cancel without a value).",
        ("platform", "currency"),
        money=True,
    ),
    _Family(keys.SKU_GRAMS, "livestream_sku_sold_grams", "Grams ordered per SKU.", ("sku",)),
    _Family(
        keys.CANCELLED_SKU_GRAMS,
        "livestream_sku_cancelled_grams",
        "Grams of cancelled orders per SKU.",
        ("sku",),
    ),
    _Family(
        keys.UNWEIGHED,
        "livestream_unweighed_items",
        "Order line items of unknown weight (none in the feed, none in the catalog): their "
        "grams are in no total.",
        ("platform", "sku"),
    ),
    _Family(keys.COMMENTS, "livestream_comments", "Chat comments.", ("platform",)),
    _Family(
        keys.PAID_COMMENTS,
        "livestream_paid_comments",
        "Paid comments (YouTube Super Chat and Super Sticker); also counted as comments, never "
        "as orders.",
        ("platform", "currency"),
    ),
    _Family(
        keys.PAID_VALUE_MICROS,
        "livestream_paid_comment_value",
        "Value of paid comments, in major units of the currency (exact in Redis as micros).",
        ("platform", "currency"),
        micros=True,
    ),
    _Family(
        keys.REGION_ORDERS, "livestream_region_orders", "Orders by region.", ("country", "region")
    ),
    # Comment orders ("chốt đơn")
    _Family(
        keys.COMMENT_ORDERS,
        "livestream_comment_orders",
        "Comment orders: a buyer's first order of a SKU (again after a withdrawal).",
        ("platform", "sku"),
    ),
    _Family(
        keys.COMMENT_ORDER_GRAMS,
        "livestream_comment_order_grams",
        "Grams of comment orders (units × the catalog's unit grams).",
        ("sku",),
    ),
    _Family(
        keys.COMMENT_WITHDRAWALS,
        "livestream_comment_order_withdrawals",
        "Withdrawals of counted comment orders (net = orders − withdrawals).",
        ("platform", "sku"),
    ),
    _Family(
        keys.COMMENT_WITH_PHONE,
        "livestream_comment_orders_with_phone",
        "Comment orders whose own comment carried a Vietnamese mobile number.",
        ("platform",),
    ),
    _Family(
        keys.COMMENT_CHANGES,
        "livestream_comment_order_changes",
        "Comment orders written again with another quantity (the order counters stay).",
        ("platform",),
    ),
    _Family(
        keys.COMMENT_AMBIGUOUS,
        "livestream_comment_ambiguous",
        "Comments that look like an order but are not one the team can take as written.",
        (),
    ),
    _Family(
        keys.COMMENT_UNKNOWN_CODES,
        "livestream_comment_unknown_codes",
        "Comment orders of a code no product of the catalog has.",
        ("platform",),
    ),
)
"""The counter families of the metrics contract, in exposition order."""


def _empty_families() -> tuple[list[CounterMetricFamily], list[GaugeMetricFamily]]:
    """The contract's families, empty, in exposition order: the counters of ``_COUNTERS``;
    then unique commenters, buyers, viewers."""
    counters = [CounterMetricFamily(f.name, f.doc, labels=["stream", *f.labels]) for f in _COUNTERS]
    commenters = GaugeMetricFamily(
        "livestream_unique_commenters", "Distinct commenters (HyperLogLog).", labels=["stream"]
    )
    buyers = GaugeMetricFamily(
        "livestream_unique_buyers", "Distinct buyers (HyperLogLog).", labels=["stream"]
    )
    viewers = GaugeMetricFamily(
        "livestream_viewers", "Latest viewer count by event time.", labels=["stream", "platform"]
    )
    return counters, [commenters, buyers, viewers]


def business_families(totals: Sequence[StreamTotals]) -> Iterator[Metric]:
    """The metrics contract, from a snapshot of every stream's totals."""
    counters, (commenters, buyers, viewers) = _empty_families()
    for stream in totals:
        for family, spec in zip(counters, _COUNTERS, strict=True):
            for labels, number in sorted(stream.by(spec.field).items()):
                value = spec.value(number, labels)
                family.add_metric([stream.stream, *labels], value)
        commenters.add_metric([stream.stream], stream.unique_commenters)
        buyers.add_metric([stream.stream], stream.unique_buyers)
        for platform, count in sorted(stream.viewers.items()):
            viewers.add_metric([stream.stream, platform], count)
    yield from counters
    yield from (commenters, buyers, viewers)


class _Families:
    """A registry-like view of ready metric families, for ``generate_latest``."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> list[Metric]:
        return self._families


def _header_blocks() -> list[str]:
    """Each business family's "# HELP" and "# TYPE" lines, as ``generate_latest`` writes them."""
    text = generate_latest(_Families(business_families([]))).decode()
    lines = text.splitlines(keepends=True)
    return ["".join(lines[i : i + 2]) for i in range(0, len(lines), 2)]


_HEADERS = _header_blocks()


_go_float = cast(Callable[[float], str], floatToGoString)


def _number(value: float) -> str:
    """A sample value as ``generate_latest`` writes it (``1.0``, ``1.2e+06``, ...)."""
    if type(value) is int and -(10**15) < value < 10**6:  # the common case, quickly
        return f"{value}.0"
    return _go_float(value)


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def business_exposition(totals: Sequence[StreamTotals]) -> bytes:
    """The text of ``generate_latest`` over :func:`business_families`, byte for byte, written
    straight from the totals: several times faster, as a scrape of many streams renders tens
    of thousands of samples (a unit test holds the two equal)."""
    streams = [(stream, f'stream="{_label_value(stream.stream)}"') for stream in totals]
    grouped = [_by_metric(stream.counters) for stream in totals]
    out: list[str] = []
    for header, spec in zip(_HEADERS, _COUNTERS, strict=False):
        out.append(header)
        name = header.split("\n", 2)[1].split(" ")[2]
        field = spec.field
        names = ("stream", *spec.labels)
        order = sorted(range(len(names)), key=names.__getitem__)
        stream_at = order.index(0)
        around: dict[tuple[str, ...], tuple[str, str]] = {}  # the other labels, before and after
        for (_, stream_label), groups in zip(streams, grouped, strict=True):
            for labels, number in groups.get(field, ()):
                if labels not in around:
                    parts = [f'{names[i]}="{_label_value(labels[i - 1])}",' for i in order if i]
                    before, after = "".join(parts[:stream_at]), "".join(parts[stream_at:])
                    around[labels] = (before, "," + after[:-1] if after else "")
                before, after = around[labels]
                value = spec.value(number, labels)
                out.append(f"{name}{{{before}{stream_label}{after}}} {_number(value)}\n")
    gauges = _HEADERS[len(_COUNTERS) :]
    for header, attribute in zip(gauges[:2], ("unique_commenters", "unique_buyers"), strict=True):
        out.append(header)
        name = header.split("\n", 2)[1].split(" ")[2]
        for stream, stream_label in streams:
            value = getattr(stream, attribute)
            out.append(f"{name}{{{stream_label}}} {_number(value)}\n")
    out.append(gauges[2])
    name = gauges[2].split("\n", 2)[1].split(" ")[2]
    for stream, stream_label in streams:
        for platform, count in sorted(stream.viewers.items()):
            platform_label = f'platform="{_label_value(platform)}"'
            out.append(f"{name}{{{platform_label},{stream_label}}} {_number(count)}\n")
    return "".join(out).encode()


def _by_metric(counters: dict[str, int]) -> dict[str, list[tuple[tuple[str, ...], int]]]:
    """A stream's counter fields grouped by metric, each sorted by its label values."""
    grouped: dict[str, list[tuple[tuple[str, ...], int]]] = {}
    for field, value in counters.items():
        metric, sep, rest = field.partition(keys.SEP)
        labels = tuple(rest.split(keys.SEP)) if sep else ()
        grouped.setdefault(metric, []).append((labels, value))
    for items in grouped.values():
        items.sort()
    return grouped


def catalog_families(
    catalogs: Mapping[str, Catalog],
    targets: Mapping[str, int],
    shares: Mapping[str, float],
    totals: Sequence[StreamTotals],
) -> Iterator[Metric]:
    """What the catalogs (and ``[streams]`` tables) say, with the stock left from the totals:
    stock at start − grams sold + grams cancelled, per SKU with a stock."""
    info = GaugeMetricFamily(
        "livestream_sku_info",
        "1 per SKU of the stream's catalog, with its name.",
        labels=["stream", "sku", "name"],
    )
    stock = GaugeMetricFamily(
        "livestream_sku_stock_grams",
        "Stock at the start of the sale (catalog).",
        labels=["stream", "sku"],
    )
    left = GaugeMetricFamily(
        "livestream_sku_stock_left_grams",
        "Stock left: stock at start − grams sold + grams cancelled (below 0: oversold).",
        labels=["stream", "sku"],
    )
    target = GaugeMetricFamily(
        "livestream_target_grams", "What the sale means to sell.", labels=["stream"]
    )
    share = GaugeMetricFamily(
        "livestream_low_stock_share",
        "A SKU with less than this share of its stock left is low (LivestreamSkuLowStock).",
        labels=["stream"],
    )
    by_stream = {stream.stream: stream for stream in totals}
    for name, catalog in sorted(catalogs.items()):
        found = by_stream.get(name)
        sold = found.by(keys.SKU_GRAMS) if found else {}
        cancelled = found.by(keys.CANCELLED_SKU_GRAMS) if found else {}
        for product in catalog:
            info.add_metric([name, product.sku, product.name], 1)
            if product.stock_grams is not None:
                key = (product.sku,)
                stock.add_metric([name, product.sku], product.stock_grams)
                rest = product.stock_grams - sold.get(key, 0) + cancelled.get(key, 0)
                left.add_metric([name, product.sku], rest)
        share.add_metric([name], shares.get(name, 0.0))
    for name, grams in sorted(targets.items()):
        target.add_metric([name], grams)
    yield from (info, stock, left, target, share)


def catalog_exposition(
    catalogs: Mapping[str, Catalog],
    targets: Mapping[str, int],
    shares: Mapping[str, float],
    totals: Sequence[StreamTotals],
) -> bytes:
    return generate_latest(_Families(catalog_families(catalogs, targets, shares, totals)))


def exposition(health: HealthMetrics, totals: Sequence[StreamTotals] | None) -> bytes:
    """The text exposition: business families (if Redis answered) and health metrics."""
    parts = [generate_latest(health.registry)]
    if totals is not None:
        parts.insert(0, business_exposition(totals))
    return b"".join(parts)
