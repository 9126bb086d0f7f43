"""The running ingester's catalogs (workers.catalogs): first load, reloads that keep the loaded
catalog when the new file is bad, the file watch with an injected sleep, and the catalog series
of the scrape."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from ingest.catalog import CatalogError
from tests.waiting import UNIT, until
from workers import keys
from workers.catalogs import CatalogFile, Catalogs
from workers.metrics import HealthMetrics, catalog_exposition
from workers.store import StreamTotals

GOOD = "sku,name,unit_grams,stock_units\nVT05,Vải 5 kg,5000,100\nVT01,Vải 1 kg,1000,\n"
OTHER = "sku,name,unit_grams,stock_grams\nVT09,Chín,900,9000\n"
BAD = "sku,name,unit_grams\nVT05,,heavy\n"


class Ticks:
    """An injected sleep: each ``tick()`` lets the watch loop run once."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[None] = asyncio.Queue()
        self.slept = 0

    async def sleep(self, seconds: float) -> None:
        self.slept += 1
        await self.queue.get()

    async def tick(self) -> None:
        before = self.slept
        self.queue.put_nowait(None)
        await until(lambda: self.slept > before, within=5, message="the watch to poll")


def catalogs(path: Path, health: HealthMetrics, **kw: object) -> Catalogs:
    return Catalogs(
        [CatalogFile("lucngan", path, sku_limit=200)],
        on_loaded=health.catalog_loaded_now,
        on_failed=health.catalog_failed,
        clock=lambda: 1_750_000_000.0,
        **kw,  # type: ignore[arg-type]
    )


def value(health: HealthMetrics, name: str, **labels: str) -> float | None:
    return health.registry.get_sample_value(name, labels)


def test_the_first_load_refuses_every_bad_file_with_every_error(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text(BAD, encoding="utf-8")
    files = [
        CatalogFile("a", tmp_path / "a.csv", 200),
        CatalogFile("b", tmp_path / "missing.toml", 200),
    ]
    with pytest.raises(CatalogError) as info:
        Catalogs(files).load()
    assert len(info.value.errors) == 3
    assert info.value.errors[2].endswith("missing.toml: cannot read: No such file or directory")


def test_more_products_than_the_sku_limit_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(GOOD, encoding="utf-8")
    with pytest.raises(CatalogError, match=r"2 products, more than \[labels\] sku_limit \(1\)"):
        Catalogs([CatalogFile("s", path, 1)]).load()


def test_a_bad_reload_keeps_the_loaded_catalog_logs_one_line_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(GOOD, encoding="utf-8")
    health = HealthMetrics()
    held = catalogs(path, health)
    held.load()
    first = held.catalog("lucngan")
    assert first is not None
    assert held.weigh("lucngan", "vt05", 3) == 15_000
    assert held.weigh("lucngan", "VT77", 3) is None
    assert held.weigh("another", "VT05", 3) is None
    assert value(health, "livestream_catalog_info", stream="lucngan", version=first.digest) == 1
    path.write_text(BAD, encoding="utf-8")
    with capture_logs() as logs:
        held.reload()
    assert held.catalog("lucngan") is first
    assert value(health, "livestream_catalog_reload_failures_total", stream="lucngan") == 1
    (line,) = logs
    assert line["event"] == "catalog reload refused, the loaded one stays"
    assert line["loaded"] == first.digest
    assert line["errors"] == 2
    path.write_text(OTHER, encoding="utf-8")
    held.reload()
    second = held.catalog("lucngan")
    assert second is not None
    assert [p.sku for p in second] == ["VT09"]
    assert value(health, "livestream_catalog_info", stream="lucngan", version=second.digest) == 1
    assert value(health, "livestream_catalog_info", stream="lucngan", version=first.digest) is None
    assert value(health, "livestream_catalog_products", stream="lucngan") == 1
    assert value(health, "livestream_catalog_loaded_timestamp_seconds", stream="lucngan") == (
        1_750_000_000.0
    )


@pytest.mark.asyncio
async def test_the_watch_reloads_a_changed_file_once_and_a_bad_change_once(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(GOOD, encoding="utf-8")
    health = HealthMetrics()
    ticks = Ticks()
    held = catalogs(path, health, sleep=ticks.sleep, interval=5.0)
    held.load()
    first = held.catalog("lucngan")
    watch = asyncio.create_task(held.watch())
    try:
        await ticks.tick()  # nothing changed: nothing read
        assert held.catalog("lucngan") is first
        path.write_text(OTHER, encoding="utf-8")
        os.utime(path, ns=(1, 1))  # a new modification time even on a coarse clock
        await ticks.tick()
        await until(lambda: held.catalog("lucngan") is not first, within=5 * UNIT)
        second = held.catalog("lucngan")
        path.write_text(BAD, encoding="utf-8")
        await ticks.tick()
        await ticks.tick()  # the same bad file is not read (nor counted) again
        assert held.catalog("lucngan") is second
        assert value(health, "livestream_catalog_reload_failures_total", stream="lucngan") == 1
        path.unlink()
        await ticks.tick()
        await ticks.tick()
        assert value(health, "livestream_catalog_reload_failures_total", stream="lucngan") == 2
    finally:
        watch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watch


def test_catalog_series_stock_left_and_target(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(GOOD, encoding="utf-8")
    held = Catalogs([CatalogFile("lucngan", path, 200)])
    held.load()
    catalog = held.catalog("lucngan")
    assert catalog is not None
    totals = StreamTotals(
        "lucngan",
        {
            f"{keys.SKU_GRAMS}|VT05": 600_000,
            f"{keys.CANCELLED_SKU_GRAMS}|VT05": 100_000,
            f"{keys.SKU_GRAMS}|VT01": 3000,
        },
        {},
        0,
        0,
    )
    text = catalog_exposition(
        {"lucngan": catalog}, {"lucngan": 54_000_000, "no-catalog": 7}, {"lucngan": 0.2}, [totals]
    ).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples == {
        ("livestream_sku_info", (("name", "Vải 5 kg"), ("sku", "VT05"), ("stream", "lucngan"))): 1,
        ("livestream_sku_info", (("name", "Vải 1 kg"), ("sku", "VT01"), ("stream", "lucngan"))): 1,
        ("livestream_sku_stock_grams", (("sku", "VT05"), ("stream", "lucngan"))): 500_000,
        # 500 kg at start, 600 kg sold, 100 kg of it cancelled: none left
        ("livestream_sku_stock_left_grams", (("sku", "VT05"), ("stream", "lucngan"))): 0,
        ("livestream_target_grams", (("stream", "lucngan"),)): 54_000_000,
        ("livestream_target_grams", (("stream", "no-catalog"),)): 7,
        ("livestream_low_stock_share", (("stream", "lucngan"),)): 0.2,
    }
