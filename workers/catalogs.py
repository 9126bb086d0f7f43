"""The streams' catalogs as the running ingester holds them: loaded at start, reloaded on SIGHUP
and when a file changes (its modification time, size or inode, polled), never replaced by a
catalog that does not validate: a bad reload keeps the loaded one, says why in one log line and
counts it (``livestream_catalog_reload_failures_total{stream}``)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import structlog

from ingest.catalog import MAX_FILE_BYTES, Catalog, CatalogError, load
from ingest.comment_orders import (
    Ambiguous,
    AmbiguousReason,
    CommentParser,
    OrderIntent,
    ParsedComment,
    Withdrawal,
)
from workers.store import CommentIntent, CommentReading

log = structlog.get_logger("catalogs")


@dataclasses.dataclass(frozen=True, slots=True)
class CatalogFile:
    """Where a stream's catalog is, and the limits it must keep."""

    stream: str
    path: Path
    sku_limit: int
    """More products than this are refused: each is a label value of the SKU metrics."""


@dataclasses.dataclass(frozen=True, slots=True)
class Loaded:
    catalog: Catalog
    at: float
    """Unix time of the load."""


Signature = tuple[int, int, int] | None
"""(mtime ns, size, inode) of a file; None if it cannot be read."""


def read(file: CatalogFile) -> Catalog:
    """Read and validate one catalog file; CatalogError with every problem."""
    origin = str(file.path)
    try:
        with file.path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CatalogError(origin, [f"{origin}: cannot read: {exc.strerror}"]) from exc
    catalog = load(data, origin)
    if len(catalog) > file.sku_limit:
        detail = f"{len(catalog)} products, more than [labels] sku_limit ({file.sku_limit})"
        raise CatalogError(origin, [f"{origin}: {detail}"])
    return catalog


def comment_intents(parsed: ParsedComment, catalog: Catalog) -> CommentReading:
    """A parsed comment as the commit script takes it: each order with its grams (units × the
    unit's grams; a per-kg product's quantity is its grams), an unknown code apart from the
    other ambiguous intents."""
    intents: list[CommentIntent] = []
    for intent in parsed.intents:
        match intent:
            case OrderIntent(sku, quantity):
                product = catalog.get(sku)
                if product is None:  # the parser names only the catalog's products
                    intents.append(("a", "", 0, "0"))
                    continue
                unit = product.unit_grams
                grams = quantity if unit is None else quantity * unit
                intents.append(("o", product.sku, quantity, str(grams)))
            case Withdrawal(sku):
                product = catalog.get(sku) if sku is not None else None
                intents.append(("w", product.sku if product else "", 0, "0"))
            case Ambiguous(AmbiguousReason.UNKNOWN_CODE):
                intents.append(("u", "", 0, "0"))
            case Ambiguous():
                intents.append(("a", "", 0, "0"))
    return CommentReading(tuple(intents), parsed.has_phone)


READ_CACHE = 4096
"""Comment texts whose reading each loaded catalog remembers: a live sale's comments repeat
("VT05", "chốt VT05 x2") and parsing one takes a few hundred microseconds."""


def _reader(catalog: Catalog) -> Callable[[str], CommentReading]:
    """Reads comments with ``catalog``'s parser, remembering the last ``READ_CACHE`` texts."""
    parser = CommentParser(catalog)

    @functools.lru_cache(maxsize=READ_CACHE)
    def read(text: str) -> CommentReading:
        return comment_intents(parser.parse(text), catalog)

    return read


def _signature(path: Path) -> Signature:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class Catalogs:
    """Every configured stream's loaded catalog. ``weigh`` is the committer's lookup."""

    def __init__(
        self,
        files: Sequence[CatalogFile],
        *,
        on_loaded: Callable[[str, Loaded, Loaded | None], None] | None = None,
        on_failed: Callable[[str], None] | None = None,
        interval: float = 2.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.files = {file.stream: file for file in files}
        self.interval = interval
        self.clock = clock
        self.sleep = sleep
        self._on_loaded = on_loaded
        self._on_failed = on_failed
        self._loaded: dict[str, Loaded] = {}
        self._by_stream: dict[str, Catalog] = {}
        self._readers: dict[str, Callable[[str], CommentReading]] = {}
        self._seen: dict[str, Signature] = {}
        self.failures = 0
        """Reloads refused since start."""

    def load(self) -> None:
        """The first load: every catalog, or CatalogError with every problem of every file."""
        errors = []
        for stream, file in self.files.items():
            self._seen[stream] = _signature(file.path)
            try:
                self._take(stream, read(file))
            except CatalogError as exc:
                errors += exc.errors
        if errors:
            raise CatalogError("catalogs", errors)

    def _take(self, stream: str, catalog: Catalog) -> None:
        before = self._loaded.get(stream)
        loaded = self._loaded[stream] = Loaded(catalog, self.clock())
        self._by_stream = {s: entry.catalog for s, entry in self._loaded.items()}
        self._readers = {**self._readers, stream: _reader(catalog)}
        if self._on_loaded is not None:
            self._on_loaded(stream, loaded, before)

    def reload(self, streams: Sequence[str] | None = None) -> None:
        """Read the catalogs again (all of them, or ``streams``); a bad one keeps the loaded."""
        for stream in self.files if streams is None else streams:
            file = self.files[stream]
            self._seen[stream] = _signature(file.path)
            try:
                catalog = read(file)
            except CatalogError as exc:
                self.failures += 1
                log.warning(
                    "catalog reload refused, the loaded one stays",
                    stream=stream,
                    file=str(file.path),
                    loaded=self._loaded[stream].catalog.digest if stream in self._loaded else None,
                    errors=len(exc.errors),
                    first=exc.errors[0],
                )
                if self._on_failed is not None:
                    self._on_failed(stream)
                continue
            previous = self._loaded.get(stream)
            self._take(stream, catalog)
            log.info(
                "catalog loaded",
                stream=stream,
                version=catalog.digest,
                previous=previous.catalog.digest if previous else None,
                products=len(catalog),
            )

    def changed(self) -> list[str]:
        """Streams whose file is not the one last read (or tried)."""
        return [s for s, f in self.files.items() if _signature(f.path) != self._seen.get(s)]

    async def watch(self) -> None:
        """Poll the files every ``interval`` seconds; reload the ones that changed."""
        while True:
            await self.sleep(self.interval)
            streams = self.changed()
            if streams:
                self.reload(streams)

    def loaded(self) -> Mapping[str, Loaded]:
        return dict(self._loaded)

    def catalog(self, stream: str) -> Catalog | None:
        return self._by_stream.get(stream)

    def weigh(self, stream: str, sku: str, quantity: int) -> int | None:
        """Grams of ``quantity`` units of ``sku`` in the stream's catalog, or None."""
        catalog = self._by_stream.get(stream)
        if catalog is None:
            return None
        product = catalog.get(sku)
        return None if product is None else product.line_grams(quantity)

    def read_comment(self, stream: str, text: str) -> CommentReading | None:
        """What a comment of ``stream`` orders in its catalog; None if the stream has none.
        Thread-safe (the store reads a batch's comments in a worker thread)."""
        reader = self._readers.get(stream)
        return None if reader is None else reader(text)
