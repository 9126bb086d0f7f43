"""Prometheus metrics: per-process health, and business totals read from Redis at scrape time.

Business totals are never accumulated in the process: :func:`business_families` turns what Redis
holds into metric families, so every replica exposes the same values and a restart resets nothing.
Aggregate them across replicas with ``max``, never ``sum``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import cast

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

from ingest.money import to_major
from workers import keys
from workers.store import StreamTotals

# "_created" series double the exposition for nothing a dashboard here uses.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client

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
        self.token_refreshes = Counter(
            "livestream_ingest_token_refreshes",
            "Access tokens a source got with its refresh token (Twitch), by source.",
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

    def add_source(self, name: str) -> None:
        """Make a source's series exist (at zero) before its first event."""
        self.connected.labels(name).set(0)
        self.reconnects.labels(name)


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


def _empty_families() -> tuple[list[CounterMetricFamily], list[GaugeMetricFamily]]:
    """The contract's families, empty, in exposition order: orders, grams, value, cancelled,
    cancelled grams, SKU grams, comments, regions; then unique commenters, buyers, viewers."""
    counter = _counter
    orders = counter("livestream_orders", "Orders created.", ["stream", "platform", "country"])
    grams = counter("livestream_sold_grams", "Grams ordered.", ["stream", "platform", "country"])
    value = counter(
        "livestream_order_value",
        "Value of orders created, in major units of the currency.",
        ["stream", "platform", "currency"],
    )
    cancelled = counter(
        "livestream_cancelled_orders", "Orders cancelled.", ["stream", "platform", "country"]
    )
    cancelled_grams = counter(
        "livestream_cancelled_grams",
        "Grams of cancelled orders.",
        ["stream", "platform", "country"],
    )
    sku = counter("livestream_sku_sold_grams", "Grams ordered per SKU.", ["stream", "sku"])
    comments = counter("livestream_comments", "Chat comments.", ["stream", "platform"])
    regions = counter(
        "livestream_region_orders", "Orders by region.", ["stream", "country", "region"]
    )
    commenters = GaugeMetricFamily(
        "livestream_unique_commenters", "Distinct commenters (HyperLogLog).", labels=["stream"]
    )
    buyers = GaugeMetricFamily(
        "livestream_unique_buyers", "Distinct buyers (HyperLogLog).", labels=["stream"]
    )
    viewers = GaugeMetricFamily(
        "livestream_viewers", "Latest viewer count by event time.", labels=["stream", "platform"]
    )
    counters = [orders, grams, value, cancelled, cancelled_grams, sku, comments, regions]
    return counters, [commenters, buyers, viewers]


_PLAIN_FIELDS = (
    keys.ORDERS,
    keys.GRAMS,
    None,  # value: minor units, rendered in major units of its currency
    keys.CANCELLED,
    keys.CANCELLED_GRAMS,
    keys.SKU_GRAMS,
    keys.COMMENTS,
    keys.REGION_ORDERS,
)
"""The totals field of each counter family of ``_empty_families``, in its order."""


def business_families(totals: Sequence[StreamTotals]) -> Iterator[Metric]:
    """The metrics contract, from a snapshot of every stream's totals."""
    counters, (commenters, buyers, viewers) = _empty_families()
    value = counters[_PLAIN_FIELDS.index(None)]
    plain = [(f, field) for f, field in zip(counters, _PLAIN_FIELDS, strict=True) if field]
    for stream in totals:
        for family, field in plain:
            for labels, number in sorted(stream.by(field).items()):
                family.add_metric([stream.stream, *labels], number)
        for (platform, currency), minor in sorted(stream.by(keys.VALUE).items()):
            value.add_metric([stream.stream, platform, currency], to_major(minor, currency))
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
_COUNTER_FIELDS = (
    keys.ORDERS,
    keys.GRAMS,
    keys.VALUE,
    keys.CANCELLED,
    keys.CANCELLED_GRAMS,
    keys.SKU_GRAMS,
    keys.COMMENTS,
    keys.REGION_ORDERS,
)
"""The counter families of :func:`business_families`, in its order (``_HEADERS`` too)."""


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
    labelled = {  # label names of each family's samples, after the stream, sorted as written
        keys.ORDERS: ("platform", "country"),
        keys.GRAMS: ("platform", "country"),
        keys.VALUE: ("platform", "currency"),
        keys.CANCELLED: ("platform", "country"),
        keys.CANCELLED_GRAMS: ("platform", "country"),
        keys.SKU_GRAMS: ("sku",),
        keys.COMMENTS: ("platform",),
        keys.REGION_ORDERS: ("country", "region"),
    }
    streams = [(stream, f'stream="{_label_value(stream.stream)}"') for stream in totals]
    grouped = [_by_metric(stream.counters) for stream in totals]
    out: list[str] = []
    for header, field in zip(_HEADERS, _COUNTER_FIELDS, strict=False):
        out.append(header)
        name = header.split("\n", 2)[1].split(" ")[2]
        names = ("stream", *labelled[field])
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
                value = to_major(number, labels[1]) if field == keys.VALUE else number
                out.append(f"{name}{{{before}{stream_label}{after}}} {_number(value)}\n")
    gauges = _HEADERS[len(_COUNTER_FIELDS) :]
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
        metric, _, rest = field.partition(keys.SEP)
        grouped.setdefault(metric, []).append((tuple(rest.split(keys.SEP)), value))
    for items in grouped.values():
        items.sort()
    return grouped


def exposition(health: HealthMetrics, totals: Sequence[StreamTotals] | None) -> bytes:
    """The text exposition: business families (if Redis answered) and health metrics."""
    parts = [generate_latest(health.registry)]
    if totals is not None:
        parts.insert(0, business_exposition(totals))
    return b"".join(parts)
