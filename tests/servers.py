"""Private, throw-away servers on free loopback ports for the tests and the benchmark: Mosquitto
here, ``redis-server`` from the demo's ``workers.demo.private_redis``."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.waiting import UNIT
from workers.demo import private_redis
from workers.demo.private_redis import free_port, stop_process

__all__ = ["Mosquitto", "RedisServer", "free_port"]


class RedisServer(private_redis.RedisServer):
    """The demo's private ``redis-server``, with its start and stop timeouts in ``UNIT``."""

    def start(self, timeout: float = 10.0) -> None:
        super().start(timeout * UNIT)

    def stop(self, kill: bool = False) -> None:
        stop_process(self.process, kill, 10 * UNIT)
        self.process = None


class Mosquitto:
    """``mosquitto`` with persistence in a temp dir; ``stop()`` (SIGTERM saves the sessions)
    and ``start()`` again on the same port."""

    def __init__(self, listener_options: str = "") -> None:
        """``listener_options``: lines for the listener, e.g. ``cafile``/``certfile``/``keyfile``
        for TLS."""
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="li-mosquitto-"))
        self.config = self.dir / "mosquitto.conf"
        self.config.write_text(
            f"""
listener {self.port} 127.0.0.1
{listener_options}
allow_anonymous true
persistence true
persistence_location {self.dir}/
autosave_interval 1
max_queued_messages 1000000
max_inflight_messages 1000
user root
log_dest file {self.dir}/mosquitto.log
""",
            encoding="utf-8",
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait for the port to answer, at most ``timeout`` × ``UNIT`` seconds."""
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout * UNIT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start: {self.log()}") from None
                time.sleep(0.02)

    def stop(self, kill: bool = False) -> None:
        stop_process(self.process, kill, 10 * UNIT)
        self.process = None

    def log(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text() if path.exists() else ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
