"""The operator package read for tests: Prometheus rules, Grafana dashboards and their queries."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from ingest.catalog import Catalog, Product
from workers import keys
from workers.metrics import business_families, catalog_families
from workers.store import StreamTotals

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "config" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "config" / "grafana" / "dashboards").glob("*.json"))
OPERATIONS = ROOT / "docs" / "operations.md"
JOB = "livestream-ingester"


def tool(name: str) -> str:
    """Path of a Prometheus binary; a missing one fails the test (CI installs the package)."""
    path = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None
    )
    assert path, f"{name} is missing: install the Debian package prometheus (scripts/setup --dev)"
    return path


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def recordings() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "record" in rule]


@dataclasses.dataclass(frozen=True)
class Target:
    dashboard: str
    panel: str
    expr: str


def dashboard(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def panels(board: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets() -> list[Target]:
    found = []
    for path in DASHBOARDS:
        board = dashboard(path)
        for panel in panels(board):
            for target in panel.get("targets", []):
                found.append(Target(board["uid"], panel["title"], target["expr"]))
    return found


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace Grafana variables (``$name`` and ``${name}``); fail on any left over."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"no value for ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def business_labels() -> dict[str, frozenset[str]]:
    """Business metric name (as queried) -> its labels, from the metrics contract."""
    counters = {
        f"{keys.ORDERS}|p|c": 1,
        f"{keys.GRAMS}|p|c": 1,
        f"{keys.VALUE}|p|VND": 1,
        f"{keys.CANCELLED}|p|c": 1,
        f"{keys.CANCELLED_GRAMS}|p|c": 1,
        f"{keys.SKU_GRAMS}|sku": 1,
        f"{keys.COMMENTS}|p": 1,
        f"{keys.REGION_ORDERS}|c|r": 1,
        f"{keys.CANCELLED_VALUE}|p|VND": 1,
        f"{keys.CANCELLED_SKU_GRAMS}|sku": 1,
        f"{keys.UNWEIGHED}|p|sku": 1,
        f"{keys.COMMENT_ORDERS}|p|sku": 1,
        f"{keys.COMMENT_ORDER_GRAMS}|sku": 1,
        f"{keys.COMMENT_WITHDRAWALS}|p|sku": 1,
        f"{keys.COMMENT_WITH_PHONE}|p": 1,
        f"{keys.COMMENT_CHANGES}|p": 1,
        keys.COMMENT_AMBIGUOUS: 1,
        f"{keys.COMMENT_UNKNOWN_CODES}|p": 1,
    }
    totals = StreamTotals("s", counters, {"p": 1}, 1, 1)
    catalog = Catalog((Product("SKU", "name", (), 1, {}, 1),))
    labels: dict[str, frozenset[str]] = {}
    families = [
        *business_families([totals]),
        *catalog_families({"s": catalog}, {"s": 1}, {"s": 0.1}, [totals]),
    ]
    for family in families:
        for sample in family.samples:
            labels[sample.name] = frozenset(sample.labels)
    return labels


def undeduplicated(expr: str) -> list[str]:
    """Business metrics in ``expr`` not first de-duplicated by all their labels across replicas.

    Every replica exposes the same business totals, so each selector must sit directly inside
    ``max by (<every label of the metric>)`` (possibly around ``increase``), or, around
    ``rate``, inside ``avg by (...)``: each replica's rate is a noisy estimate from its own
    scrape times, and their maximum overstates it.
    """
    problems = []
    for metric, labels in business_labels().items():
        uses = len(re.findall(rf"(?<![\w:]){metric}(?![\w:])", expr))
        if not uses:
            continue
        wrapped = re.findall(
            rf"(?:max by \(([^)]*)\) \((?:increase\()?"
            rf"|avg by \(([^)]*)\) \(rate\(){metric}(?![\w:])",
            expr,
        )
        by = [by_max or by_avg for by_max, by_avg in wrapped]
        good = [w for w in by if frozenset(x.strip() for x in w.split(",")) == labels]
        if len(good) != uses:
            problems.append(f"{metric} in {expr}")
    return problems


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub makes for a document's headings."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", markdown, re.M):
        text = re.sub(r"[`*_]", "", heading).strip().lower()
        anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors
