"""The README's demo, as a user runs it: the console script, to the end of the sale."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.brokers import Mosquitto
from tests.servers import RedisServer, free_port
from tests.waiting import UNIT

DEMO_TO_THE_END = ["demo", "--speed", "0", "--exit-when-done", "--plain"]


def run_demo(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``command`` is the program, optionally followed by demo options after a "--mqtt"."""
    program, options = (command[:3], command[3:]) if "--mqtt" in command else (command, [])
    return subprocess.run(
        [*program, *DEMO_TO_THE_END, *options, "--http", f"127.0.0.1:{free_port()}"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180 * UNIT,
        check=False,
    )


def unanswered_redis_url() -> str:
    dead = RedisServer()  # a free port with nothing listening once closed
    dead.close()
    return dead.url


def test_demo_counts_the_whole_sale_exactly(redis_url: str) -> None:
    script = shutil.which("livestream-ingester", path=str(Path(sys.executable).parent))
    assert script, "the console script is installed with the package"
    result = run_demo([script], {"REDIS_URL": redis_url})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "totals equal the expected ones" in result.stdout
    assert "source reconnecting" in result.stderr  # the mid-stream disconnect happened
    assert "t  orders" in result.stdout  # the plain summary lines were shown


def test_demo_starts_a_private_redis_when_none_answers() -> None:
    result = run_demo([sys.executable, "-m", "workers"], {"REDIS_URL": unanswered_redis_url()})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "started a private redis-server" in result.stderr


def test_demo_explains_how_to_get_redis_when_it_cannot_start_one(tmp_path: Path) -> None:
    env = {"REDIS_URL": unanswered_redis_url(), "PATH": str(tmp_path)}
    result = run_demo([sys.executable, "-m", "workers"], env)
    assert result.returncode == 1
    assert "install Redis" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_publishes_its_orders_over_mqtt(redis_url: str) -> None:
    broker = Mosquitto()
    broker.start()
    try:
        url = f"mqtt://127.0.0.1:{broker.port}"
        result = run_demo(
            [sys.executable, "-m", "workers", "--mqtt", url], {"REDIS_URL": redis_url}
        )
    finally:
        broker.close()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "totals equal the expected ones" in result.stdout
    assert "source=demo-mqtt" in result.stderr


def test_demo_says_when_no_broker_answers(redis_url: str) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    result = run_demo([sys.executable, "-m", "workers", "--mqtt", url], {"REDIS_URL": redis_url})
    assert result.returncode == 1
    assert f"No MQTT broker answers at {url}" in result.stderr
