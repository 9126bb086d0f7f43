"""Grafana dashboards and provisioning, checked without Grafana: structure, units, aggregation,
and every query parsed by promtool. tests/e2e/test_prometheus.py runs the queries for real."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.stack import (
    DASHBOARDS,
    ROOT,
    dashboard,
    panels,
    substitute,
    targets,
    tool,
    undeduplicated,
)
from tests.waiting import UNIT

UIDS = {
    "live-session.json": "livestream-live-session",
    "pipeline-health.json": "livestream-pipeline-health",
}
BUILTINS = {"__rate_interval", "__range", "__interval"}
MASS_UNITS = {"suffix:kg", "suffix:kg/min", "masst"}
SAMPLE = {
    "stream": "lucngan-2025",
    "instance": ".*",
    "datasource": "prometheus",
    "__rate_interval": "1m",
    "__range": "1h",
    "__interval": "15s",
}


def boards() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, dashboard(path)) for path in DASHBOARDS]


def test_both_dashboards_exist_with_stable_uids() -> None:
    assert {path.name: board["uid"] for path, board in boards()} == UIDS
    for _, board in boards():
        assert board.get("id") is None, "provisioned dashboards carry no database id"
        assert board["title"]
        assert board["description"]
        for link in board.get("links", []):
            assert link["url"].removeprefix("/d/") in UIDS.values()


def test_variables_are_defined_and_the_stream_lists_every_stream() -> None:
    for path, board in boards():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        used = {
            name
            for panel in panels(board)
            for target in panel.get("targets", [])
            for pair in re.findall(r"\$\{(\w+)\}|\$(\w+)", target["expr"])
            for name in pair
            if name
        }
        assert used - BUILTINS <= set(variables), path.name
        if path.name == "live-session.json":
            stream = variables["stream"]
            # Every stream, chat-only ones too; one at a time, matched exactly (no regex to escape).
            assert stream["query"] == (
                'label_values({__name__=~"livestream_orders_total|livestream_comments_total'
                '|livestream_viewers"}, stream)'
            )
            assert (stream["multi"], stream["includeAll"]) == (False, False)
            assert board["time"]["from"] == "now-6h", "the default range covers a whole sale"
            for panel in panels(board):
                for target in panel.get("targets", []):
                    assert "$stream" not in target["expr"] or 'stream="$stream"' in target["expr"]
            assert stream["datasource"]["uid"] == "${datasource}"


def test_every_panel_has_a_description_a_datasource_queries_and_a_unit() -> None:
    for path, board in boards():
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids)), path.name
        for panel in panels(board):
            if panel["type"] == "row":
                continue
            where = f"{path.name}: {panel['title']}"
            assert panel.get("description"), where
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert panel["targets"], where
            assert panel["fieldConfig"]["defaults"].get("unit"), where
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"], where
                assert target["refId"], where
                assert target["expr"].strip(), where


def test_panels_fit_the_grid_without_overlapping() -> None:
    for path, board in boards():
        taken: set[tuple[int, int]] = set()
        for panel in panels(board):
            grid = panel["gridPos"]
            assert grid["x"] >= 0, (path.name, panel["title"])
            assert grid["x"] + grid["w"] <= 24, (path.name, panel["title"])
            cells = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not cells & taken, (path.name, panel["title"])
            taken |= cells


def test_grams_are_shown_as_kilograms_or_tonnes() -> None:
    for _, board in boards():
        for panel in panels(board):
            exprs = [t["expr"] for t in panel.get("targets", [])]
            if any(re.search(r"grams|kilograms", expr) for expr in exprs):
                assert panel["fieldConfig"]["defaults"]["unit"] in MASS_UNITS, panel["title"]
                for expr in exprs:
                    if "_grams" in expr:
                        assert re.search(r"/ (1000|1e6)\b", expr), expr


def test_rates_use_the_rate_interval_and_replicas_are_aggregated_right() -> None:
    for target in targets():
        expr = target.expr
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window in ("$__rate_interval", "$__range", "$__range:$__interval"), (
                f"fixed window in {target}"
            )
        # Business totals: max across replicas (every replica exposes the same values).
        assert undeduplicated(expr) == [], target
        # Process health counters: summed across replicas.
        health_ranges = len(re.findall(r"(?:rate|increase)\(livestream_ingest_", expr))
        summed = len(re.findall(r"sum by \([^)]*\) \((?:rate|increase)\(livestream_ingest_", expr))
        assert health_ranges == summed, target


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool parses each query, variables substituted, as a recording rule."""
    group = {
        "name": "dashboard-queries",
        "rules": [
            {"record": f"dashboard:query:n{n}", "expr": substitute(target.expr, SAMPLE)}
            for n, target in enumerate(targets())
        ],
    }
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}), encoding="utf-8")
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    provisioning = ROOT / "config" / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    assert sources["apiVersion"] == 1
    (source,) = sources["datasources"]
    assert (source["type"], source["uid"], source["isDefault"]) == (
        "prometheus",
        "prometheus",
        True,
    )
    providers = yaml.safe_load((provisioning / "dashboards" / "dashboards.yaml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
