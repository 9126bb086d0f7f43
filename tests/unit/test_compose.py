"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from workers.cli import parser
from workers.config import load, split_listen

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_services_images_and_volumes_are_consistent() -> None:
    data = compose()
    services = data["services"]
    assert {"redis", "ingester", "demo-feed"} <= set(services)
    for name, service in services.items():
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), f"{name}: pin an image tag"
        assert not image.endswith(":latest"), name
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in data["volumes"], f"{name}: volume {source} not declared"
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").is_file()


def test_dockerfile_copies_existing_paths_and_drops_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    assert re.search(r"^USER (?!root)\S+", dockerfile, re.M)
    assert all("latest" not in line for line in dockerfile.splitlines() if line.startswith("FROM"))


def test_commands_parse_and_addresses_point_at_services() -> None:
    services = compose()["services"]
    for name in ("ingester", "demo-feed"):
        parser().parse_args(services[name]["command"])

    feed_args = parser().parse_args(services["demo-feed"]["command"])
    _, feed_port = split_listen(feed_args.feed_only)
    assert f"{feed_port}" in services["demo-feed"]["expose"]

    mount = next(v for v in services["ingester"]["volumes"] if "compose.toml" in v)
    config = load(ROOT / mount.split(":")[0])
    redis = urlparse(config.redis.url)
    assert redis.hostname in services
    assert f"{redis.port}" in str(services["redis"].get("ports", [])) or redis.port == 6379
    source = urlparse(config.sources[0].url)  # type: ignore[union-attr]
    assert (source.hostname, source.port) == ("demo-feed", feed_port)
    _, http_port = split_listen(config.http.listen)
    assert f"{http_port}:{http_port}" in services["ingester"]["ports"]
    assert str(http_port) in services["ingester"]["healthcheck"]["test"][-1]
