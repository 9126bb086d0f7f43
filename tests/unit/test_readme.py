"""The README stays true: its examples run, and its reference tables match the code."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest import comment_corpus
from ingest.adapter import FormatOptions
from ingest.catalog import Catalog, Product
from ingest.model import Reason, Rejection
from ingest.native import NativeFormat
from tests.waiting import UNIT
from workers.catalogs import Catalogs
from workers.cli import parser
from workers.config import (
    DEFAULT_PLATFORMS,
    MqttConfig,
    WebsocketClientConfig,
    WebsocketServerConfig,
    load,
    parse,
)
from workers.keys import UNROUTED_DEAD, StreamKeys
from workers.metrics import HealthMetrics, catalog_exposition, exposition
from workers.store import StreamTotals

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_native_examples_decode_without_rejection() -> None:
    fmt = NativeFormat(FormatOptions(platforms=frozenset(DEFAULT_PLATFORMS)))
    lines = [line for block in blocks("json") for line in block.splitlines() if line.strip()]
    assert len(lines) == 4
    for line in lines:
        (result,) = fmt.decode(line)
        assert not isinstance(result, Rejection), result


def test_config_examples_are_valid() -> None:
    examples = [block for block in blocks("toml") if "[streams." not in block]
    assert len(examples) == 5
    env = {
        "LIVESTREAM_PUSH_TOKEN": "t" * 16,
        "MQTT_PASSWORD": "p" * 16,
        "TWITCH_REFRESH_TOKEN": "r" * 50,
        "TWITCH_CLIENT_SECRET": "c" * 30,
        "SHOPIFY_SECRET": "s" * 32,
        "FACEBOOK_PAGE_TOKEN": "f" * 40,
        "YOUTUBE_REFRESH_TOKEN": "y" * 50,
        "YOUTUBE_CLIENT_SECRET": "g" * 30,
    }
    sources = [
        (source.type, source.format, source.identity_namespace)
        for example in examples
        for source in parse(tomllib.loads(example), "README", env).sources
    ]
    assert sources == [
        ("websocket-client", "native", "shop-relay"),
        ("websocket-server", "native", "push"),
        ("websocket-client", "native", "shop-feed"),  # two copies of one feed share a namespace
        ("mqtt", "native", "shop-feed"),
        ("websocket-client", "native", "shop-feed"),  # running N processes on one box
        ("websocket-server", "native", "push"),
        ("mqtt", "native", "shop-mqtt"),
        ("mqtt", "native", "shop-mqtt"),
        ("websocket-client", "twitch-eventsub", "twitch"),
        ("http-server", "shopify", "shopify"),
        ("websocket-client", "socialstream", "relay"),
        ("http-client", "facebook-live", "facebook"),
        ("http-poll", "youtube-livechat", "youtube"),
    ]


def test_the_n_processes_example_differs_by_process_only_through_the_environment() -> None:
    (example,) = [block for block in blocks("toml") if "reuse_port = true" in block]
    data = tomllib.loads(example)
    seen = []
    for i in range(4):
        env = {
            "LIVESTREAM_PUSH_TOKEN": "t" * 16,
            "LIVESTREAM__HTTP__LISTEN": f"127.0.0.1:946{i}",
            "LIVESTREAM__SOURCES__0__URL": f"ws://127.0.0.1:8765/feed?part={i}&parts=4",
            "LIVESTREAM__SOURCES__2__CLIENT_ID": f"ingester-{i}",
        }
        assert all(name in README for name in env if name.startswith("LIVESTREAM__"))
        config = parse(data, "README", env)
        feed, push, mqtt = config.sources
        assert isinstance(feed, WebsocketClientConfig)
        assert isinstance(push, WebsocketServerConfig)
        assert isinstance(mqtt, MqttConfig)
        assert push.reuse_port
        assert mqtt.shared_group == "ingesters"
        seen.append((config.http.listen, feed.url, mqtt.client_id))
    for column in zip(*seen, strict=True):  # every process its own of each
        assert len(set(column)) == 4, column


def test_the_catalog_example_loads_and_weighs(tmp_path: Path) -> None:
    (config,) = [block for block in blocks("toml") if "[streams." in block]
    (csv,) = blocks("csv")
    (tmp_path / "catalogs").mkdir()
    (tmp_path / "catalogs" / "lucngan-2025.csv").write_text(csv, encoding="utf-8")
    (tmp_path / "ingester.toml").write_text(config, encoding="utf-8")
    loaded = load(tmp_path / "ingester.toml", {})
    assert loaded.streams["lucngan-2025"].target_grams == 54_000_000
    held = Catalogs(loaded.catalog_files())
    held.load()
    catalog = held.catalog("lucngan-2025")
    assert catalog is not None
    assert [(p.sku, p.unit_grams, p.stock_grams) for p in catalog] == [
        ("VT01", 1000, 20_000_000),
        ("VT05", 5000, 20_000_000),
        ("VTQ", None, 3_000_000),
    ]
    assert held.weigh("lucngan-2025", "vt05", 2) == 10_000
    vt05 = catalog.get("VT05")
    assert vt05 is not None
    assert vt05.aliases == ("vt5", "vt 05", "vải 5kg", "thùng 5 ký")
    assert dict(vt05.prices) == {"VND": 550_000, "USD": 4200}


def test_shell_examples_parse_and_name_real_keys() -> None:
    for block in blocks("sh"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if words[0] in ("scripts/demo", "scripts/check"):
                assert os.access(ROOT / words[0], os.X_OK)
            elif words[0] == "livestream-ingester":
                parser().parse_args(words[1:])
            elif words[:3] == ["python", "-m", "ingest.comment_corpus"]:
                assert all((ROOT / word).is_file() for word in words[3:] if "/" in word)
            elif words[:2] == ["python", "-m"]:
                assert words[2] in ("workers", "bench")
                assert (ROOT / words[2] / "__main__.py").is_file()
            elif words[0] == "redis-cli":
                assert words[2] in (StreamKeys("lucngan-2025").dead, UNROUTED_DEAD)
            else:
                raise AssertionError(f"unexpected example: {line}")


def test_check_config_example_passes_on_a_fresh_shell() -> None:
    """No secret exported: check-config warns of them and passes, as the README says."""
    examples = [
        shlex.split(line, comments=True)
        for block in blocks("sh")
        for line in block.splitlines()
        if line.startswith("livestream-ingester check-config")
    ]
    assert examples
    fresh = {k: v for k, v in os.environ.items() if not k.startswith(("LIVESTREAM", "REDIS"))}
    for words in examples:
        result = subprocess.run(
            [sys.executable, "-m", "workers", *words[1:]],
            cwd=ROOT,
            env=fresh,
            capture_output=True,
            text=True,
            timeout=60 * UNIT,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "LIVESTREAM_PUSH_TOKEN" in result.stderr


def documented_metrics() -> set[str]:
    return set(re.findall(r"^\| `(livestream_\w+)` \|", README, re.M))


def test_metric_tables_match_the_exposition() -> None:
    totals = StreamTotals(
        "s",
        {
            f"{metric}|{'|'.join(labels)}": 1
            for metric, labels in [
                ("orders", ("tiktok", "VN")),
                ("grams", ("tiktok", "VN")),
                ("value", ("tiktok", "VND")),
                ("cancelled", ("tiktok", "VN")),
                ("cancelled_grams", ("tiktok", "VN")),
                ("sku_grams", ("VT01",)),
                ("comments", ("tiktok",)),
                ("region", ("VN", "Hà Nội")),
                ("cancelled_value", ("tiktok", "VND")),
                ("cancelled_sku_grams", ("VT01",)),
                ("unweighed", ("tiktok", "VT09")),
            ]
        },
        {"tiktok": 5},
        1,
        1,
    )
    health = HealthMetrics()
    health.add_source("src")
    health.events.labels("src", "order", "accepted").inc()
    health.rejections.labels("src", "oversize").inc()
    health.lag.labels("src").observe(0.1)
    health.commit_errors.labels("ConnectionError").inc()
    health.tls_expiry.labels("http").set(1.0)
    health.tls_loads.labels("http").inc()
    health.tls_reload_failures.labels("http")
    catalog = Catalog((Product("VT01", "Vải 1 kg", (), 1000, {}, 5000),))
    text = exposition(health, [totals]).decode()
    text += catalog_exposition({"s": catalog}, {"s": 9}, {"s": 0.1}, [totals]).decode()
    exposed = set()
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        exposed.add(name)
    assert exposed == documented_metrics()


def test_rejection_reasons_are_all_documented() -> None:
    listed = re.search(r"Rejection reasons: (.*?)\.\n", README, re.S)
    assert listed is not None
    assert set(re.findall(r"`(\w+)`", listed.group(1))) == {r.value for r in Reason}


def test_comment_order_figures_are_what_the_command_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The precision and recall the README cites are the score command's output, to the digit."""
    (command,) = [
        shlex.split(line)
        for block in blocks("sh")
        for line in block.splitlines()
        if line.startswith("python -m ingest.comment_corpus")
    ]
    args = [str(ROOT / arg) if "/" in arg else arg for arg in command[3:]]
    assert comment_corpus.main(args) == 0
    printed = capsys.readouterr().out.splitlines()[0]
    assert printed.startswith("all: ")
    assert f"```text\n{printed}\n```" in README.split("## Comment orders", 1)[1]
