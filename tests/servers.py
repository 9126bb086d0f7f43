"""Private, throw-away servers on free loopback ports for the tests and the benchmark: Mosquitto
here, ``redis-server`` from the demo's ``workers.demo.private_redis``.

The tests run in parallel (pytest-xdist): ``free_port`` gives each worker of a run its own share
of the ports, so two workers never pick the same one, and a server that still cannot bind the
port it was given (another program took it meanwhile) is started again on a new one.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.waiting import UNIT
from workers.demo import private_redis
from workers.demo.private_redis import stop_process

__all__ = ["Mosquitto", "RedisServer", "free_port"]

# Mosquitto's log line once its listeners are bound.
RUNNING = " running\n"
# Attempts at starting a server on a port of its own choosing before giving up.
STARTS = 3


def _worker() -> tuple[int, int]:
    """This process's index among the parallel test workers of the run, and their number."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = re.fullmatch(r"gw(\d+)", name)
    return (int(index[1]) % count, count) if index and count > 1 else (0, 1)


_given: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, chosen by the kernel, and never given before by this
    process. Under pytest-xdist, only one whose ``(port // 2) % workers`` is this worker's index
    (``// 2``: the kernel prefers odd ports for ``bind``), so two workers never share a port."""
    index, count = _worker()
    for _ in range(1000):
        port = private_redis.free_port()
        if (port // 2) % count == index and port not in _given:
            _given.add(port)
            return port
    raise RuntimeError("no free port for this test worker")


class RedisServer(private_redis.RedisServer):
    """The demo's private ``redis-server``, with its start and stop timeouts in ``UNIT``, and on
    a new port if it cannot bind the one it was given (only the first start on a port it chose:
    a restart keeps its port, as a restarted Redis does)."""

    def __init__(self, port: int | None = None, *extra: str) -> None:
        super().__init__(port or free_port(), *extra)
        self.own_port = port is None
        self.started = False

    def start(self, timeout: float = 10.0) -> None:
        for attempt in range(1, STARTS + 1):
            try:
                super().start(timeout * UNIT)
            except RuntimeError:
                if not self.own_port or self.started or attempt == STARTS:
                    raise
                self.port = free_port()
            else:
                self.started = True
                return

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
        self.listener_options = listener_options
        self.port = free_port()
        self.started = False
        self.dir = Path(tempfile.mkdtemp(prefix="li-mosquitto-"))
        self.config = self.dir / "mosquitto.conf"
        self.write_config()
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        listener_options = self.listener_options
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

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait for the port to answer, at most ``timeout`` × ``UNIT`` seconds; the
        first start moves to a new port if Mosquitto cannot bind the one it was given."""
        for attempt in range(1, STARTS + 1):
            try:
                self._start(timeout)
            except _Exited:
                if self.started or attempt == STARTS:
                    raise
                self.port = free_port()
                self.write_config()
            else:
                self.started = True
                return

    def _start(self, timeout: float) -> None:
        # Ready once this start logged that it runs (so its listener is bound: a port answering
        # could be another program's) and the port answers.
        runs = self.log().count(RUNNING)
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout * UNIT
        while True:
            try:
                if self.log().count(RUNNING) == runs:
                    raise OSError("not running yet")
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.process.poll() is not None:
                    self.process = None
                    raise _Exited(f"mosquitto did not start: {self.log()}") from None
                if time.monotonic() > deadline:
                    self.stop(kill=True)
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


class _Exited(RuntimeError):
    """The server process ended before it answered (it could not bind its port, say)."""
