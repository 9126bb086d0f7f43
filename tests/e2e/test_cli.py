"""The ``run`` command's edges as an operator meets them: its log lines in either format, and a
listen address that cannot be used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.support import IngesterProcess, write_config
from tests.unit.test_logs import ISO, logfmt
from workers.redis_server import free_port

PUSH_TOKEN_ENV = "LIVESTREAM_TEST_PUSH_TOKEN"


def push_source(port: int) -> str:
    return f"""
[[sources]]
name = "push"
type = "websocket-server"
listen = "127.0.0.1:{port}"
token_env = "{PUSH_TOKEN_ENV}"
"""


def ingester(folder: Path, redis_url: str, fmt: str, level: str = "info") -> IngesterProcess:
    port = free_port()
    config = write_config(
        folder / f"{fmt}.toml",
        redis_url=redis_url,
        http_port=port,
        sources=push_source(free_port()),
    )
    text = config.read_text(encoding="utf-8")
    text = text.replace("[log]\n", f'[log]\nformat = "{fmt}"\nlevel = "{level}"\n')
    config.write_text(text, encoding="utf-8")
    return IngesterProcess(config, port, env={PUSH_TOKEN_ENV: "t0ken"})


@pytest.mark.parametrize("fmt", ["json", "logfmt"])
def test_every_line_of_a_run_is_in_the_configured_format(
    redis_url: str, tmp_path: Path, fmt: str
) -> None:
    process = ingester(tmp_path, redis_url, fmt)
    with process:
        assert process.terminate() == 0
    output = process.log.read_text(encoding="utf-8").splitlines()
    parse = json.loads if fmt == "json" else logfmt
    records = [parse(line) for line in output]
    assert all(ISO.match(r["timestamp"]) and r["level"].islower() for r in records), output
    by_event = {r["event"]: r for r in records}
    # The websocket server's own info line, a stdlib logger, carries the source it serves.
    listening = [r for r in records if r["event"].startswith("server listening on ")]
    assert [(r["logger"], r.get("source")) for r in listening] == [("websockets.server", "push")]
    assert by_event["ingester started"]["logger"] == "runtime"
