"""The README's demo, as a user runs it: the console script, to the end of the sale."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.brokers import Mosquitto
from tests.servers import RedisServer, free_port
from tests.waiting import UNIT

DEMO_TO_THE_END = ["demo", "--speed", "0", "--exit-when-done", "--plain"]

# A whole demo sale is CPU work (30-55 s here beside the other tests): the tests' own timeouts
# (180 s a demo) must run out before pytest-timeout's default 120 s does.
pytestmark = pytest.mark.timeout(300 * UNIT)


def run_demo(
    command: list[str], env: dict[str, str], extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``command`` is the program, optionally followed by demo options after a "--mqtt";
    ``extra``: more demo options."""
    program, options = (command[:3], command[3:]) if "--mqtt" in command else (command, [])
    return subprocess.run(
        [*program, *DEMO_TO_THE_END, *options, *extra, "--http", f"127.0.0.1:{free_port()}"],
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


def test_demo_counts_the_whole_sale_exactly(redis_url: str, tmp_path: Path) -> None:
    script = shutil.which("livestream-ingester", path=str(Path(sys.executable).parent))
    assert script, "the console script is installed with the package"
    report = tmp_path / "sale.html"
    result = run_demo([script], {"REDIS_URL": redis_url}, ("--report", str(report)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "totals equal the expected ones" in result.stdout
    assert "source reconnecting" in result.stderr  # the mid-stream disconnect happened
    assert "t  orders" in result.stdout  # the plain summary lines were shown
    assert f"report of the sale: {report}\n" in result.stdout  # written at the end
    page = report.read_text(encoding="utf-8")
    assert "ended by command" in page  # the demo ended its session
    assert "54.000 t" in page  # the whole sale, gross
    # Comment orders from the catalog's aliases, and the target, in the live view; the exact
    # check above covered the comment-order counters and the order lines without grams.
    assert "comment orders " in result.stdout
    assert re.search(r"target \d+\.\d% of 54,000\.000 kg", result.stdout)


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


ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_from_a_wheel_install(tmp_path: Path, redis_url: str) -> None:
    """What `pip install .` gives a newcomer (and the Docker image): the wheel alone, run from
    elsewhere. The dependencies come from this venv's site-packages through a .pth line (its
    editable finder is not loaded that way), so neither the checkout nor the network is used."""
    source = tmp_path / "source"  # a copy, as the Dockerfile builds: no build/ in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("ingest", "workers"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    build = [*pip, "wheel", "--no-deps", "--wheel-dir", str(wheels), str(source)]
    subprocess.run(build, check=True, cwd=tmp_path, timeout=180 * UNIT)
    (wheel,) = wheels.glob("livestream_ingester-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60 * UNIT)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    deps = sysconfig.get_paths()["purelib"]
    (Path(purelib) / "dev-dependencies.pth").write_text(deps + "\n", encoding="utf-8")
    install = [str(python), "-m", "pip", "--disable-pip-version-check", "--quiet", "install"]
    subprocess.run([*install, "--no-deps", str(wheel)], check=True, timeout=120 * UNIT)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["REDIS_URL"] = redis_url
    result = subprocess.run(
        [str(venv / "bin" / "livestream-ingester"), *DEMO_TO_THE_END],
        cwd=tmp_path,
        env={**env, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=180 * UNIT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "totals equal the expected ones" in result.stdout
    where = subprocess.run(
        [str(python), "-c", "import workers; print(workers.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(purelib), where  # the wheel's copy ran, not the checkout
