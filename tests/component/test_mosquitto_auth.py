"""The docker compose broker (config/mosquitto/compose.conf including the shipped mosquitto.conf),
run by a real mosquitto: anonymous clients are refused, the password from the environment works.

Paths that only exist in the container point at a temp dir, the listener at a free loopback port;
the password file is written with mosquitto_passwd, as the compose service does at start.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from pathlib import Path

import aiomqtt
import pytest

from tests.servers import free_port
from tests.waiting import UNIT, until

CONFIG = Path(__file__).resolve().parents[2] / "config" / "mosquitto"
USER, PASSWORD = "livestream", "compose-broker-password-0123"


def broker_files(directory: Path, port: int) -> Path:
    shipped = directory / "shipped"
    shipped.mkdir()
    text = (CONFIG / "mosquitto.conf").read_text(encoding="utf-8")
    text = text.replace("\nlistener 1883\n", f"\nlistener {port} 127.0.0.1\n")
    text = text.replace("/mosquitto/data/", f"{directory}/")
    if os.geteuid() == 0:  # mosquitto would switch to its own user, who cannot read here
        text += f"user {getpass.getuser()}\n"
    (shipped / "mosquitto.conf").write_text(text, encoding="utf-8")
    compose = (CONFIG / "compose.conf").read_text(encoding="utf-8")
    compose = compose.replace("/mosquitto/config/shipped", str(shipped))
    compose = compose.replace("/mosquitto/auth/passwd", str(directory / "passwd"))
    path = directory / "compose.conf"
    path.write_text(compose, encoding="utf-8")
    passwd = shutil.which("mosquitto_passwd")
    assert passwd, "mosquitto_passwd is missing (Debian package mosquitto)"
    subprocess.run([passwd, "-c", "-b", str(directory / "passwd"), USER, PASSWORD], check=True)
    return path


def start(directory: Path, port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with (directory / "mosquitto.log").open("wb") as out:
        return subprocess.Popen(
            [binary, "-c", str(broker_files(directory, port))],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.asyncio
async def test_the_compose_broker_refuses_anonymous_clients(tmp_path: Path) -> None:
    port = free_port()
    process = start(tmp_path, port)
    try:

        async def connects(**credentials: str) -> bool:
            if process.poll() is not None:
                log = (tmp_path / "mosquitto.log").read_text()
                raise AssertionError(f"mosquitto rejected the config:\n{log}")
            try:
                async with aiomqtt.Client("127.0.0.1", port, **credentials):  # type: ignore[arg-type]
                    return True
            except aiomqtt.MqttError:
                return False

        await until(lambda: connects(username=USER, password=PASSWORD), 10, "the broker")
        assert not await connects()
        assert not await connects(username=USER, password="wrong-password-0123456")
    finally:
        process.terminate()
        process.wait(10 * UNIT)
