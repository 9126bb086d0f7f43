"""The README's demo, as a user runs it: the console script, to the end of the sale."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import UNIT
from workers.redis_server import RedisServer, free_port


def test_demo_counts_the_whole_sale_exactly(redis_url: str) -> None:
    script = shutil.which("livestream-ingester", path=str(Path(sys.executable).parent))
    assert script, "the console script is installed with the package"
    result = subprocess.run(
        [
            script,
            "demo",
            "--speed",
            "0",
            "--exit-when-done",
            "--plain",
            "--http",
            f"127.0.0.1:{free_port()}",
        ],
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=180 * UNIT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "totals equal the expected ones" in result.stdout
    assert "source reconnecting" in result.stderr  # the mid-stream disconnect happened
    assert "t  orders" in result.stdout  # the plain summary lines were shown


def test_demo_starts_a_private_redis_when_none_answers() -> None:
    dead = RedisServer()  # a port with nothing listening
    dead.close()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "workers",
            "demo",
            "--speed",
            "0",
            "--exit-when-done",
            "--plain",
            "--http",
            f"127.0.0.1:{free_port()}",
        ],
        env={**os.environ, "REDIS_URL": dead.url},
        capture_output=True,
        text=True,
        timeout=180 * UNIT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "started a private redis-server" in result.stderr


def test_demo_explains_how_to_get_redis_when_it_cannot_start_one(tmp_path: Path) -> None:
    dead = RedisServer()
    dead.close()
    env = {**os.environ, "REDIS_URL": dead.url, "PATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "workers", "demo", "--speed", "0", "--exit-when-done", "--plain"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
        check=False,
    )
    assert result.returncode == 1
    assert "install Redis" in result.stderr
    assert "Traceback" not in result.stderr
