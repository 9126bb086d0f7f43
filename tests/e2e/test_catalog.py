"""End to end: a stream's catalog as a user runs it. Orders without weights take the catalog's,
exactly, through duplicates, a replay and two replicas; unknown weights are counted apart;
cancellations count their value and SKU grams; stock left and the target are scraped; the
catalog reloads on SIGHUP and on a file change, and a bad one is refused and counted."""

from __future__ import annotations

import random
import signal
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.e2e.support import (
    IngesterProcess,
    ReplayFeed,
    client_source,
    scrape,
    select,
    write_config,
)
from tests.servers import free_port
from tests.waiting import until

CATALOG = """\
sku,name,unit_grams,stock_units,stock_grams,aliases,price_VND
VT05,Vải thiều thùng 5 kg,5000,400,,vt 05;vt5;thùng 5 ký,250000
VT01,Vải thiều hộp 1 kg,1000,,,vt1,60000
VTQ,Vải quả cân ký,kg,,300000,,55000
"""
UNIT_GRAMS = {"VT05": 5000, "VT01": 1000, "VTQ": 1000}
STOCK = {"VT05": 2_000_000, "VTQ": 300_000}
TS = "2025-06-14T09:05:08+07:00"


def sale(stream: str, orders: int = 300, seed: int = 14) -> tuple[list[bytes], dict[str, object]]:
    """Native frames (every order sent twice) and the exact totals they must give."""
    rng = random.Random(seed)
    frames: list[bytes] = []
    sku_grams: Counter[str] = Counter()
    cancelled_sku: Counter[str] = Counter()
    cancelled_value: Counter[str] = Counter()
    unweighed: Counter[str] = Counter()
    grams = 0
    for n in range(orders):
        items = []
        weight = 0
        skus: Counter[str] = Counter()
        for sku in rng.sample(["VT05", "VT01", "VTQ", "XX9"], rng.randint(1, 3)):
            qty = rng.randint(1, 4)
            item: dict[str, object] = {"sku": sku.lower() if n % 7 == 0 else sku, "qty": qty}
            if sku == "VT01" and n % 2:  # the feed's own weight, here 1.1 kg a box, wins
                item["grams"] = 1100
                line = 1100 * qty
            elif sku == "XX9":
                unweighed[sku] += 1
                items.append(item)
                continue
            else:
                line = UNIT_GRAMS[sku] * qty
            items.append(item)
            skus[sku] += line
            weight += line
        amount = rng.randint(1, 2_000) * 1000
        order = {
            "kind": "order",
            "id": f"o-{n}",
            "status": "created",
            "stream": stream,
            "platform": "tiktok",
            "ts": TS,
            "country": "VN",
            "currency": "VND",
            "amount": str(amount),
            "items": items,
        }
        created = orjson.dumps(order)
        sku_grams.update(skus)
        grams += weight
        if n % 5 == 0:
            cancel = orjson.dumps({**order, "status": "cancelled", "items": []})
            frames += [cancel, created] if n % 10 == 0 else [created, cancel]
            cancelled_sku.update(skus)
            cancelled_value["VND"] += amount
        else:
            frames.append(created)
        frames.append(created)  # every order delivered twice
    expected: dict[str, object] = {
        "grams": grams,
        "sku_grams": dict(sku_grams),
        "cancelled_sku": dict(cancelled_sku),
        "cancelled_value": dict(cancelled_value),
        "unweighed": dict(unweighed),
        "left": {s: STOCK[s] - sku_grams[s] + cancelled_sku[s] for s in STOCK},
    }
    return frames, expected


def catalog_ingester(
    folder: Path, name: str, redis_url: str, sources: str, stream: str, *, interval: float
) -> IngesterProcess:
    port = free_port()
    tables = f"""
[catalogs]
reload_interval_seconds = {interval}

[streams.{stream}]
catalog = "catalog.csv"
target_grams = 54000000
"""
    config = write_config(
        folder / f"{name}.toml", redis_url=redis_url, http_port=port, sources=sources + tables
    )
    return IngesterProcess(config, port)


def observed(port: int, stream: str) -> dict[str, object]:
    samples = scrape(port)

    def flat(name: str, **match: str) -> dict[str, float]:
        """By SKU (or currency): the one label left."""
        return {k: v for (k,), v in select(samples, name, stream=stream, **match).items()}

    return {
        "grams": sum(select(samples, "livestream_sold_grams_total", stream=stream).values()),
        "sku_grams": flat("livestream_sku_sold_grams_total"),
        "cancelled_sku": flat("livestream_sku_cancelled_grams_total"),
        "cancelled_value": flat("livestream_cancelled_value_total", platform="tiktok"),
        "unweighed": flat("livestream_unweighed_items_total", platform="tiktok"),
        "left": flat("livestream_sku_stock_left_grams"),
    }


@pytest.mark.asyncio
async def test_two_replicas_weigh_from_the_catalog_exactly_through_duplicates_and_replay(
    tmp_path: Path, redis_url: str, stream: str
) -> None:
    (tmp_path / "catalog.csv").write_text(CATALOG, encoding="utf-8")
    frames, expected = sale(stream)
    feed = ReplayFeed(frames, cut_after=len(frames) // 3, replay=100)
    processes = [
        catalog_ingester(
            tmp_path,
            f"r{n}",
            redis_url,
            client_source("feed", feed.url(f"r{n}")),
            stream,
            interval=0,
        )
        for n in range(2)
    ]
    async with feed.serving():
        with processes[0], processes[1]:
            for process in processes:
                await until(
                    lambda p=process: observed(p.http_port, stream) == expected,
                    60,
                    "exact catalog totals",
                )
            samples = scrape(processes[0].http_port)
            assert select(samples, "livestream_target_grams", stream=stream) == {(): 54_000_000}
            assert select(samples, "livestream_sku_info", stream=stream) == {
                ("Vải thiều thùng 5 kg", "VT05"): 1,
                ("Vải thiều hộp 1 kg", "VT01"): 1,
                ("Vải quả cân ký", "VTQ"): 1,
            }
            assert select(samples, "livestream_sku_stock_grams", stream=stream) == {
                ("VT05",): 2_000_000,
                ("VTQ",): 300_000,
            }


def info(port: int, stream: str) -> dict[tuple[str, ...], float]:
    return select(scrape(port), "livestream_sku_info", stream=stream)


def failures(port: int, stream: str) -> float:
    found = select(scrape(port), "livestream_catalog_reload_failures_total", stream=stream)
    return found.get((), -1)


RENAMED = CATALOG.replace("Vải quả cân ký", "Vải quả (kg)")
BROKEN = CATALOG.replace("VT01,Vải thiều hộp 1 kg,1000", "VT01,,0")


@pytest.mark.asyncio
async def test_sighup_reloads_the_catalog_and_a_bad_one_is_refused_and_counted(
    tmp_path: Path, redis_url: str, stream: str
) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(CATALOG, encoding="utf-8")
    source = client_source("feed", f"ws://127.0.0.1:{free_port()}/none")
    with catalog_ingester(tmp_path, "hup", redis_url, source, stream, interval=0) as process:
        port = process.http_port
        assert ("Vải quả cân ký", "VTQ") in info(port, stream)
        assert failures(port, stream) == 0
        path.write_text(RENAMED, encoding="utf-8")
        assert ("Vải quả cân ký", "VTQ") in info(port, stream)  # no watch: only on SIGHUP
        assert process.process is not None
        process.process.send_signal(signal.SIGHUP)
        await until(lambda: ("Vải quả (kg)", "VTQ") in info(port, stream), 10, "the reload")
        path.write_text(BROKEN, encoding="utf-8")
        process.process.send_signal(signal.SIGHUP)
        await until(lambda: failures(port, stream) == 1, 10, "the refused reload to count")
        assert ("Vải quả (kg)", "VTQ") in info(port, stream)
        assert ("Vải thiều hộp 1 kg", "VT01") in info(port, stream)
        assert process.terminate() == 0
    log = process.log.read_text(encoding="utf-8")
    assert log.count("catalog reload refused, the loaded one stays") == 1


@pytest.mark.asyncio
async def test_a_changed_file_is_reloaded_and_a_bad_change_refused(
    tmp_path: Path, redis_url: str, stream: str
) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(CATALOG, encoding="utf-8")
    source = client_source("feed", f"ws://127.0.0.1:{free_port()}/none")
    with catalog_ingester(tmp_path, "watch", redis_url, source, stream, interval=0.05) as process:
        port = process.http_port
        path.write_text(RENAMED, encoding="utf-8")
        await until(lambda: ("Vải quả (kg)", "VTQ") in info(port, stream), 10, "the reload")
        path.write_text(BROKEN, encoding="utf-8")
        await until(lambda: failures(port, stream) == 1, 10, "the refused reload to count")
        assert ("Vải quả (kg)", "VTQ") in info(port, stream)
        assert ("Vải thiều hộp 1 kg", "VT01") in info(port, stream)


def test_a_bad_catalog_is_refused_at_start(tmp_path: Path, redis_url: str, stream: str) -> None:
    (tmp_path / "catalog.csv").write_text(BROKEN, encoding="utf-8")
    process = catalog_ingester(tmp_path, "bad", redis_url, "", stream, interval=0)
    with pytest.raises(AssertionError, match=r"catalog.csv:3: name: required"):
        process.start()
    assert process.process is not None
    assert process.process.wait() == 2
