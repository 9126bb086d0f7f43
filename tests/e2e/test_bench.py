"""The benchmark command still runs end to end (small sizes): every figure is written, and the
ingester's memory stays flat. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.waiting import UNIT


def _bench(out: Path, *options: str, timeout: float) -> tuple[str, dict[str, Any]]:
    """``python -m bench --quick --runs 1 <options>``: its stdout and the figures it wrote."""
    command = [sys.executable, "-m", "bench", "--quick", "--runs", "1", "--out", str(out)]
    result = subprocess.run(
        [*command, *options], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures: dict[str, Any] = json.loads(out.read_text())
    return result.stdout, figures


@pytest.mark.slow  # about a minute: with the soaks, out of CI's budget (scripts/check -m slow -n 0)
def test_the_quick_benchmark_runs_and_writes_every_figure(tmp_path: Path) -> None:
    stdout, figures = _bench(tmp_path / "bench.json", timeout=300 * UNIT)
    for key in ("ceiling", "pipeline", "naive", "mqtt", "scaling_1", "scaling_2", "scaling_4"):
        assert figures[key]["median"] > 0, key
    for rate in (1_000, 10_000):
        latency = figures[f"latency_{rate}"]
        assert latency["probes"]["median"] > 0
        assert 0 < latency["p50"]["median"] <= latency["p99"]["median"] <= latency["max"]["median"]
    mqtt = figures["mqtt_detail"]  # the bare paho subscriber drained the same backlog
    assert mqtt["bare"]["median"] > 0
    assert mqtt["ratio_to_bare"]["median"] > 0
    assert mqtt["events_per_commit"]["median"] >= 1
    for client in ("gmqtt", "aiomqtt"):  # and bare subscribers of two other clients
        assert mqtt[f"bare_{client}"]["median"] > 0, client
    for key in ("orders_ceiling", "orders_pipeline", "orders_naive"):  # order-heavy workload
        assert figures[key]["median"] > 0, key
    for split in (figures["pipeline_cpu"], figures["orders_cpu"]):  # CPU per event
        assert all(split[name]["median"] > 0 for name in ("ingester", "redis", "feed")), split
    assert "| order-heavy workload |" in stdout
    assert figures["detail"]["dedup_bytes_per_id"] > 0
    rss = figures["rss"]
    assert rss["events"] == 60_000
    assert 0 < rss["rss_start_mb"] <= rss["rss_at_12000_mb"]
    # From 12,000 to 60,000 events the ingester's RSS stays flat (0.0% measured; bounded buffers
    # are full by then). Keeping ~1 KB per event would add ~47 MB to ~107 MB and break this.
    assert rss["growth"] < 0.25, rss
    assert "| our pipeline, one process |" in stdout
    for streams in (10, 100):  # scrapes beside commits
        scrapes = figures[f"scrape_{streams}"]
        assert scrapes["scrape_single_p50"]["median"] > 0
        assert scrapes["scrape_flood_p50"]["median"] > 0
        assert scrapes["commit_idle_p50"]["median"] > 0
        assert scrapes["commit_flood_p50"]["median"] > 0
        assert scrapes["body_mb"]["median"] > 0
    assert "| 100 |" in stdout


@pytest.mark.slow  # about 15 s
def test_the_quick_push_section_runs_and_writes_its_figures(tmp_path: Path) -> None:
    stdout, figures = _bench(tmp_path / "push.json", "--only", "push", timeout=120 * UNIT)
    for processes in (1, 2):
        assert figures[f"push_{processes}"]["median"] > 0
    assert "| 2 process(es), one shared port |" in stdout


@pytest.mark.slow  # about 30 s
def test_the_quick_throughput_section_runs_and_writes_its_figures(tmp_path: Path) -> None:
    stdout, figures = _bench(
        tmp_path / "throughput.json", "--only", "throughput", timeout=120 * UNIT
    )
    for key in ("ceiling", "pipeline", "naive"):
        assert figures[key]["median"] > 0, key
    latency = figures["latency_10000"]
    assert 0 < latency["p50"]["median"] <= latency["p99"]["median"] <= latency["max"]["median"]
    assert figures["pipeline_cpu"]["ingester"]["median"] > 0
    assert "| latency p99 at 10,000/s |" in stdout
