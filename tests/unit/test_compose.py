"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine runs here): services,
images, volumes, ports and every referenced file agree with each other and with the configs."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from workers.cli import parser
from workers.config import load, split_listen

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    "redis",
    "mosquitto",
    "demo-feed",
    "ingester-1",
    "ingester-2",
    "prometheus",
    "grafana",
}
INGESTERS = ("ingester-1", "ingester-2")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path, for the bind mounts of a service."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            found[target] = source
    return found


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The host file behind ``container_path`` in a service, via its bind mounts."""
    path = PurePosixPath(container_path)
    for target, source in mounts(service).items():
        if path == PurePosixPath(target) or PurePosixPath(target) in path.parents:
            return ROOT / source / path.relative_to(target)
    raise AssertionError(f"{container_path} is not mounted")


class MissingVariable(Exception):
    """A required variable (``${NAME:?message}``) is unset: docker compose refuses to start."""


def interpolate(value: str, environ: dict[str, str]) -> str:
    """Compose's variable interpolation, as far as this file uses it: ``$$``, ``${NAME}``,
    ``${NAME:-default}`` and ``${NAME:?message}``."""

    def one(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name, operator, rest = match["name"], match["op"], match["rest"] or ""
        if environ.get(name):
            return environ[name]
        if operator == ":?":
            raise MissingVariable(f"{name}: {rest}")
        return rest

    pattern = r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:-|:\?)(?P<rest>[^}]*))?\}"
    return re.sub(pattern, one, value)


def published(service: dict[str, Any], environ: dict[str, str] | None = None) -> dict[int, int]:
    """Container port -> host port."""
    return {port: host for port, (_, host) in bindings(service, environ).items()}


def bindings(service: dict[str, Any], environ: dict[str, str] | None = None) -> dict[int, Any]:
    """Container port -> (host address, host port), with the variables of ``environ``."""
    found = {}
    for mapping in service.get("ports", []):
        address, host, container = interpolate(mapping, environ or {}).split(":")
        found[int(container)] = (address, int(host))
    return found


def test_services_images_and_volumes_are_consistent() -> None:
    data = compose()
    assert set(data["services"]) == SERVICES
    used = set()
    for name, service in data["services"].items():
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), f"{name}: pin an image tag"
        assert not image.endswith(":latest"), name
        assert "healthcheck" in service, f"{name}: no healthcheck"
        for dependency in service.get("depends_on", {}):
            assert dependency in data["services"], f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in data["volumes"], f"{name}: volume {source} not declared"
                used.add(source)
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").is_file()
    assert used == set(data["volumes"]), "declared volumes that nothing uses"
    hosts = [port for service in data["services"].values() for port in published(service).values()]
    assert len(hosts) == len(set(hosts)), "a host port is published twice"


def test_dockerfile_copies_existing_paths_and_drops_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    assert re.search(r"^USER (?!root)\S+", dockerfile, re.M)
    assert all("latest" not in line for line in dockerfile.splitlines() if line.startswith("FROM"))


def test_commands_parse_and_addresses_point_at_services() -> None:
    all_services = services()
    feed_args = parser().parse_args(all_services["demo-feed"]["command"])
    _, feed_port = split_listen(feed_args.feed_only)
    assert f"{feed_port}" in all_services["demo-feed"]["expose"]
    assert str(feed_port) in all_services["demo-feed"]["healthcheck"]["test"][-1]

    for name in INGESTERS:
        ingester = all_services[name]
        args = parser().parse_args(ingester["command"])
        config = load(host_path(ingester, args.config))
        redis = urlparse(config.redis.url)
        assert redis.hostname in all_services
        assert f"{redis.port}" in str(all_services["redis"].get("ports", [])) or redis.port == 6379
        source = urlparse(config.sources[0].url)  # type: ignore[union-attr]
        assert (source.hostname, source.port) == ("demo-feed", feed_port)
        _, http_port = split_listen(config.http.listen)
        assert http_port in published(ingester), f"{name}: /metrics port not published"
        assert str(http_port) in ingester["healthcheck"]["test"][-1]
    # The same image and config, each replica on its own host port.
    first, second = (all_services[name] for name in INGESTERS)
    assert (first["image"], first["command"]) == (second["image"], second["command"])
    assert sorted(published(first).values()) + sorted(published(second).values()) == [9464, 9465]


def test_prometheus_scrapes_every_ingester_and_loads_the_rules() -> None:
    all_services = services()
    prometheus = all_services["prometheus"]
    flags = dict(flag.removeprefix("--").split("=", 1) for flag in prometheus["command"])
    config_path = host_path(prometheus, flags["config.file"])
    config = yaml.safe_load(config_path.read_text())
    for rule_file in config["rule_files"]:
        assert (config_path.parent / rule_file).is_file(), rule_file
    (job,) = config["scrape_configs"]
    scraped = {target for group in job["static_configs"] for target in group["targets"]}
    expected = set()
    for name in INGESTERS:
        ingester = all_services[name]
        http = load(host_path(ingester, parser().parse_args(ingester["command"]).config)).http
        expected.add(f"{name}:{split_listen(http.listen)[1]}")
    assert scraped == expected
    assert 9090 in published(prometheus)
    assert "9090/-/ready" in prometheus["healthcheck"]["test"][-1]


def test_grafana_provisioning_matches_its_mounts() -> None:
    all_services = services()
    grafana = all_services["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    assert provisioning == ROOT / "config/grafana/provisioning"

    (provider,) = yaml.safe_load((provisioning / "dashboards" / "dashboards.yaml").read_text())[
        "providers"
    ]
    dashboards = host_path(grafana, provider["options"]["path"])
    assert dashboards == ROOT / "config/grafana/dashboards"
    assert sorted(p.name for p in dashboards.glob("*.json")) == [
        "live-session.json",
        "pipeline-health.json",
    ]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home).is_file()

    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    url = urlparse(source["url"])
    assert url.hostname == "prometheus"
    assert url.port in published(all_services["prometheus"])
    scrape = yaml.safe_load((ROOT / "config/prometheus/prometheus.yml").read_text())
    assert source["jsonData"]["timeInterval"] == scrape["global"]["scrape_interval"]
    assert 3000 in published(grafana)


def broker_settings(service: dict[str, Any], conf: Path) -> dict[str, str]:
    """Mosquitto's settings from ``conf`` and the files it includes; a later line wins."""
    settings: dict[str, str] = {}
    for line in conf.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            if key == "include_dir":  # the files mounted into it, in name order
                directory = PurePosixPath(value.strip())
                for target in sorted(mounts(service)):
                    if PurePosixPath(target).parent == directory and target.endswith(".conf"):
                        settings.update(broker_settings(service, host_path(service, target)))
            else:
                settings[key] = value.strip()
    return settings


def test_mosquitto_config_is_mounted_where_the_image_reads_it() -> None:
    mosquitto = services()["mosquitto"]
    (command,) = mosquitto["command"]
    run = re.search(r"exec mosquitto -c (\S+)$", command)
    assert run, command
    settings = broker_settings(mosquitto, host_path(mosquitto, run[1]))
    assert int(settings["listener"]) in published(mosquitto)
    assert int(settings["max_queued_messages"]) > 1000  # the default drops bursts
    data_dir = settings["persistence_location"]
    volumes = {v.split(":")[1]: v.split(":")[0] for v in mosquitto["volumes"]}
    assert volumes[data_dir.rstrip("/")] in compose()["volumes"]


def test_ports_are_published_on_loopback_unless_the_operator_opts_out() -> None:
    everywhere = {"LIVESTREAM_PUBLISH_ADDRESS": "0.0.0.0"}
    for name, service in services().items():
        for address, _ in bindings(service).values():
            assert address == "127.0.0.1", name
        for address, _ in bindings(service, everywhere).values():
            assert address == "0.0.0.0", name


def test_grafana_and_the_broker_refuse_to_start_without_a_password() -> None:
    all_services = services()
    grafana = all_services["grafana"]["environment"]
    with pytest.raises(MissingVariable, match="GRAFANA_ADMIN_PASSWORD"):
        interpolate(grafana["GF_SECURITY_ADMIN_PASSWORD"], {})
    assert interpolate(grafana["GF_SECURITY_ADMIN_PASSWORD"], {"GRAFANA_ADMIN_PASSWORD": "pw"}) == (
        "pw"
    )
    mosquitto = all_services["mosquitto"]
    with pytest.raises(MissingVariable, match="MQTT_PASSWORD"):
        interpolate(mosquitto["environment"]["MQTT_PASSWORD"], {})
    (command,) = mosquitto["command"]
    conf = re.search(r"exec mosquitto -c (\S+)$", command)
    assert conf
    settings = broker_settings(mosquitto, host_path(mosquitto, conf[1]))
    assert settings["allow_anonymous"] == "false"
    assert settings["password_file"] in command  # written from the environment at start
    assert "$$MQTT_USERNAME" in mosquitto["healthcheck"]["test"][-1]
