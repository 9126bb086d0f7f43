"""The shipped config/mosquitto/mosquitto.conf, run by a real mosquitto (Debian package).

Only what cannot work outside the container changes: the listener is bound to a free loopback
port and the persistence directory is a temp dir. An unknown or misspelt directive makes
mosquitto exit, which fails this test.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import socket
import subprocess
from pathlib import Path

import aiomqtt
import pytest

from tests.servers import free_port
from tests.waiting import UNIT, until

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "mosquitto" / "mosquitto.conf"


def local_copy(directory: Path, port: int) -> Path:
    text = SHIPPED.read_text(encoding="utf-8")
    assert text.count("\nlistener 1883\n") == 1
    assert text.count("/mosquitto/data/") == 1
    text = text.replace("\nlistener 1883\n", f"\nlistener {port} 127.0.0.1\n")
    text = text.replace("/mosquitto/data/", f"{directory}/")
    if os.geteuid() == 0:  # mosquitto would switch to its own user, who cannot write here
        text += f"user {getpass.getuser()}\n"
    path = directory / "mosquitto.conf"
    path.write_text(text, encoding="utf-8")
    return path


def start(directory: Path, port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    assert Path(binary).is_file(), "mosquitto is missing (Debian package mosquitto)"
    with (directory / "mosquitto.log").open("wb") as out:
        return subprocess.Popen(
            [binary, "-c", str(local_copy(directory, port))], stdout=out, stderr=subprocess.STDOUT
        )


@pytest.mark.asyncio
async def test_mosquitto_runs_the_shipped_config_and_delivers(tmp_path: Path) -> None:
    port = free_port()
    process = start(tmp_path, port)
    try:

        async def delivered() -> bool:
            if process.poll() is not None:
                log = (tmp_path / "mosquitto.log").read_text()
                raise AssertionError(f"mosquitto rejected the config:\n{log}")
            try:
                async with aiomqtt.Client("127.0.0.1", port, identifier="conf-check") as client:
                    await client.subscribe("conf/check", qos=1)
                    await client.publish("conf/check", b"ok", qos=1)
                    async for message in client.messages:
                        return message.payload == b"ok"
            except aiomqtt.MqttError:
                return False
            return False

        await until(delivered, 10, "a message through the broker")
    finally:
        process.terminate()
        process.wait(10 * UNIT)


def setting(name: str) -> int:
    values = [
        int(line.split()[1])
        for line in SHIPPED.read_text(encoding="utf-8").splitlines()
        if line.split()[:1] == [name]
    ]
    assert len(values) == 1, f"{name} is set once in the shipped config"
    return values[0]


@pytest.mark.asyncio
async def test_the_shipped_in_flight_limit_holds_back_a_client_that_does_not_acknowledge(
    tmp_path: Path,
) -> None:
    """A 3.1.1 client announces no Receive Maximum: the broker's ``max_inflight_messages`` is
    all that bounds what an ingester that stops acknowledging must hold. It is set, bounded,
    and no smaller than the source's default receive_maximum (1000). (Mosquitto 2.0.11 sends a
    whole new window after one PUBACK, so the bound holds only once acknowledging stops.)"""
    limit = setting("max_inflight_messages")
    assert 1000 <= limit <= setting("max_queued_messages")
    port = free_port()
    process = start(tmp_path, port)
    try:
        await until(lambda: local_port_open(port, process), 10, "mosquitto to listen")
        # ``held`` never acknowledges; ``witness`` acknowledges all, and once it has every
        # message the broker has routed them all: ``held`` must then have one window, no more.
        held = aiomqtt.Client(
            "127.0.0.1", port, identifier="held", protocol=aiomqtt.ProtocolVersion.V311
        )
        held._client.manual_ack_set(True)
        witness = aiomqtt.Client("127.0.0.1", port, identifier="witness")
        total = limit + 500
        counts = {"held": 0, "witness": 0}

        async def count(name: str, client: aiomqtt.Client) -> None:
            async for _ in client.messages:
                counts[name] += 1

        async with held, witness:
            await held.subscribe("conf/inflight", qos=1)
            await witness.subscribe("conf/inflight", qos=1)
            tasks = [
                asyncio.create_task(count(n, c)) for n, c in (("held", held), ("witness", witness))
            ]
            try:
                async with aiomqtt.Client("127.0.0.1", port) as producer:
                    for n in range(total):
                        await producer.publish("conf/inflight", str(n).encode(), qos=1)
                await until(lambda: counts["witness"] == total, 20, "every message routed")
                await until(lambda: counts["held"] >= limit, 20, "a full in-flight window")
                assert counts["held"] == limit
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        process.terminate()
        process.wait(10 * UNIT)


def local_port_open(port: int, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, "mosquitto exited"
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True
