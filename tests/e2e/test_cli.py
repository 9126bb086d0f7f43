"""The ``run`` command's edges as an operator meets them: its log lines in either format, and a
listen address that cannot be used."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import (
    PUSH_TOKEN,
    SECRET,
    SECRET_ENV,
    IngesterProcess,
    push_and_shop_sources,
    webhook_source,
    write_config,
)
from tests.servers import free_port
from tests.unit.test_logs import ISO, logfmt
from tests.waiting import UNIT

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
    return IngesterProcess(config, port, env={PUSH_TOKEN_ENV: "t0ken-for-the-cli-tests"})


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


@contextlib.contextmanager
def occupied() -> Iterator[int]:
    """A loopback port another process listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def run_cli(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize("where", ["http.listen", "websocket-server", "http-server"])
def test_an_address_in_use_is_one_line_naming_the_key(
    redis_url: str, tmp_path: Path, where: str
) -> None:
    with occupied() as busy:
        ports = {where: busy}
        sources = push_source(free_port()) + (
            push_source(ports.get("websocket-server", free_port())).replace('"push"', '"push2"')
            + webhook_source(ports.get("http-server", free_port()), "s")
        )
        config = write_config(
            tmp_path / "busy.toml",
            redis_url=redis_url,
            http_port=ports.get("http.listen", free_port()),
            sources=sources,
        )
        result = run_cli(config, {PUSH_TOKEN_ENV: "t0ken-for-the-cli-tests", SECRET_ENV: SECRET})
    key = {"http.listen": "http.listen", "websocket-server": "sources[1].listen"}
    key["http-server"] = "sources[2].listen"
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error: {key[where]}: cannot listen on 127.0.0.1:{busy}: address already in use"
    )
    assert "Traceback" not in result.stderr
    assert "ingester started" not in result.stderr
    assert "source connected" not in result.stderr


@pytest.mark.parametrize("where", ["websocket-server", "http-server"])
def test_reuse_port_does_not_take_a_port_from_a_process_that_does_not_share_it(
    redis_url: str, tmp_path: Path, where: str
) -> None:
    """SO_REUSEPORT shares a port only among sockets that all set it: a listener with
    ``reuse_port = true`` meets a plain occupant as any listener does."""
    with occupied() as busy:
        push, hook = (busy, free_port()) if where == "websocket-server" else (free_port(), busy)
        config = write_config(
            tmp_path / "shared.toml",
            redis_url=redis_url,
            http_port=free_port(),
            sources=push_and_shop_sources(push, hook, "s", reuse_port=True),
        )
        result = run_cli(config, {PUSH_TOKEN_ENV: PUSH_TOKEN, SECRET_ENV: SECRET})
    key = "sources[0].listen" if where == "websocket-server" else "sources[1].listen"
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error: {key}: cannot listen on 127.0.0.1:{busy}: address already in use"
    )
    assert "Traceback" not in result.stderr
