"""Prometheus rules: promtool checks and unit tests, and what every alert must carry.

promtool comes with the Debian package ``prometheus`` (``scripts/setup --dev`` installs it); these
tests fail without it rather than skip, since CI runs them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack import (
    OPERATIONS,
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    RULE_TESTS,
    RULES,
    alerts,
    github_anchors,
    load_yaml,
    recordings,
    rules,
    tool,
    undeduplicated,
)
from tests.waiting import UNIT
from workers.rules import DEFAULT_RUNBOOK_BASE, RunbookBaseError, runbook_urls, with_runbook_base

SEVERITIES = {"critical", "warning", "info"}
ALWAYS_FIRING = {"LivestreamWatchdog"}
"""Alerts that fire by design (a dead man's switch): they have no silent case."""


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
        check=False,
    )


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_passes_promtool_check() -> None:
    result = promtool("check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    config = load_yaml(PROMETHEUS_CONFIG)
    assert [(PROMETHEUS_CONFIG.parent / f).resolve() for f in config["rule_files"]] == [RULES]


def tls_scrape_example(basic: bool) -> str:
    """The commented HTTPS job of prometheus.yml, as its own job (bearer, or basic instead)."""
    text = PROMETHEUS_CONFIG.read_text(encoding="utf-8")
    block = text.split("# tls-example-begin\n", 1)[1].split("    # tls-example-end", 1)[0]
    lines = [line.removeprefix("    # ") for line in block.splitlines()]
    if basic:
        start = next(i for i, line in enumerate(lines) if line.startswith("authorization:"))
        lines = lines[:start] + [line.removeprefix("# ") for line in lines[start + 4 :]]
    return "\n".join("    " + line for line in lines)


@pytest.mark.parametrize("basic", [False, True], ids=["bearer", "basic"])
def test_the_https_scrape_example_passes_promtool(tmp_path: Path, basic: bool) -> None:
    example = tls_scrape_example(basic)
    assert bool(re.search(r"^    basic_auth:$", example, re.M)) == basic
    assert bool(re.search(r"^    authorization:", example, re.M)) != basic
    for name in ("ca.crt", "metrics-token", "metrics-password"):
        (tmp_path / name).write_text("x\n", encoding="utf-8")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "scrape_configs:\n  - job_name: livestream-ingester\n"
        "    static_configs:\n      - targets: [ingester-1:9464]\n"
        + example.replace("/etc/prometheus/livestream/", f"{tmp_path}/")
        + "\n",
        encoding="utf-8",
    )
    result = promtool("check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr + config.read_text()


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool test files"
    result = promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_every_alert_is_tested_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        data = load_yaml(path)
        assert [(path.parent / f).resolve() for f in data["rule_files"]] == [RULES], path
        for case in data["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - firing == set(), "alerts without a test where they fire"
    assert names - silent == ALWAYS_FIRING, "alerts without a test where they stay silent"
    assert firing | silent <= names, "tests of alerts that do not exist"


def test_every_recording_rule_is_tested_and_follows_the_naming_convention() -> None:
    tested = set()
    for path in RULE_TESTS:
        for case in load_yaml(path)["tests"]:
            for check in case.get("promql_expr_test", []):
                tested.add(re.split(r"[{ ]", check["expr"])[0])
    for rule in recordings():
        name = rule["record"]
        # level:metric:operations (prometheus.io/docs/practices/rules)
        assert re.fullmatch(r"[a-z_]+:livestream_[a-z_]+:[a-z0-9_]+", name), name
        assert name in tested, f"{name} has no promql_expr_test"


def test_every_alert_has_a_summary_a_description_and_a_documented_runbook() -> None:
    anchors = github_anchors(OPERATIONS.read_text(encoding="utf-8"))
    for rule in alerts():
        name = rule["alert"]
        assert re.fullmatch(r"Livestream[A-Z][A-Za-z]+", name), name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        assert annotations["runbook_url"] == f"{DEFAULT_RUNBOOK_BASE}#{name.lower()}", name
        assert name.lower() in anchors, f"docs/operations.md has no section {name}"
        assert rule["labels"]["severity"] in SEVERITIES, name


def test_business_metrics_are_deduplicated_across_replicas_with_max_or_avg() -> None:
    problems = [problem for rule in rules() for problem in undeduplicated(rule["expr"])]
    assert problems == []


# Breaking a rule on purpose must break its tests: the tests bite.
MUTATIONS = {
    "replicas summed instead of de-duplicated": (
        "avg by (stream, platform, country) (rate(livestream_orders_total[1m]))",
        "sum by (stream, platform, country) (rate(livestream_orders_total[1m]))",
    ),
    "the largest replica's rate instead of their average": (
        "avg by (stream, platform, country) (rate(livestream_orders_total[1m]))",
        "max by (stream, platform, country) (rate(livestream_orders_total[1m]))",
    ),
    "no orders without the recent-chat gate": (
        """
          and on (stream)
          (
            sum by (stream) (
              max by (stream, platform) (increase(livestream_comments_total[3m]))
            ) > 0
          )""",
        "",
    ),
    "milestone from the raw total, not its 10-minute minimum": (
        "floor(min_over_time(stream:livestream_sold_grams_total:sum[10m]) / 1e7)",
        "0",
    ),
    "source silence without the activity gate": (
        """
          and on () (
            sum(rate(livestream_ingest_events_total{outcome="accepted"}[5m])) > 0
          )""",
        "",
    ),
    "duplicates of all replicas against the new events": (
        "sum by (instance, job, source) (\n                rate(",
        "sum by (source) (\n                rate(",
    ),
    "rejections without the volume gate": ("\n            >= 20", "\n            >= 0"),
    "ingester down for any job": ('up{job="livestream-ingester"} == 0', "up == 0"),
    "all down only when no target is known": (
        'absent(up{job="livestream-ingester"} == 1)',
        'absent(up{job="livestream-ingester"})',
    ),
}


CAUGHT_BY = {
    "replicas summed instead of de-duplicated": "business.yml",
    "the largest replica's rate instead of their average": "business.yml",
    "no orders without the recent-chat gate": "business.yml",
    "milestone from the raw total, not its 10-minute minimum": "business.yml",
    "source silence without the activity gate": "sources.yml",
    "duplicates of all replicas against the new events": "sources.yml",
    "rejections without the volume gate": "sources.yml",
    "ingester down for any job": "process.yml",
    "all down only when no target is known": "process.yml",
}
"""The promtool test file that must catch each mutation: only that file runs for it (running
every file for every mutation cost the suite two minutes)."""


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_a_broken_rule_fails_its_tests(mutation: str, tmp_path: Path) -> None:
    old, new = MUTATIONS[mutation]
    text = RULES.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"mutation {mutation!r} no longer matches rules.yml"
    (tmp_path / "rules.yml").write_text(text.replace(old, new), encoding="utf-8")
    shutil.copytree(PROMETHEUS_DIR / "tests", tmp_path / "tests")
    assert promtool("check", "rules", tmp_path / "rules.yml").returncode == 0
    result = promtool("test", "rules", tmp_path / "tests" / CAUGHT_BY[mutation])
    assert result.returncode != 0, f"{CAUGHT_BY[mutation]} still passes with {mutation}"


def test_runbook_links_are_absolute_and_the_rules_command_moves_them(tmp_path: Path) -> None:
    text = RULES.read_text(encoding="utf-8")
    names = [rule["alert"] for rule in alerts()]
    assert runbook_urls(text) == [f"{DEFAULT_RUNBOOK_BASE}#{n.lower()}" for n in names]
    base = "https://wiki.example.com/sre/livestream-runbooks"
    out = tmp_path / "rules.yml"
    result = subprocess.run(
        [sys.executable, "-m", "workers", "rules", "--runbook-base", base, str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out.write_text(result.stdout, encoding="utf-8")
    assert runbook_urls(result.stdout) == [f"{base}#{n.lower()}" for n in names]
    assert result.stdout == text.replace(DEFAULT_RUNBOOK_BASE, base)  # nothing else changes
    assert promtool("check", "rules", out).returncode == 0


@pytest.mark.parametrize(
    "base", ["docs/operations.md", "ftp://host/x", "https://host/x#anchor", "https:///x"]
)
def test_the_rules_command_refuses_a_base_that_is_not_an_absolute_link(base: str) -> None:
    with pytest.raises(RunbookBaseError):
        with_runbook_base(RULES.read_text(encoding="utf-8"), base)
    result = subprocess.run(
        [sys.executable, "-m", "workers", "rules", "--runbook-base", base, str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert "absolute" in result.stderr
