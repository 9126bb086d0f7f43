"""A private, throw-away ``redis-server`` on a free loopback port: the demo starts one when no
Redis answers at REDIS_URL. The tests and the benchmark reuse it through ``tests.servers``."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

import redis


class NoRedisServer(RuntimeError):
    """``redis-server`` is not on PATH."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ping(url: str, timeout: float = 1.0) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def stop_process(
    process: subprocess.Popen[bytes] | None, kill: bool = False, within: float = 10.0
) -> None:
    """SIGTERM (or SIGKILL) a server process and reap it (waiting at most ``within`` seconds)."""
    if process is None:
        return
    if kill:
        process.kill()
    else:
        process.terminate()
    process.wait(within)


class RedisServer:
    """A ``redis-server`` process: ``start()``, ``stop()`` (SIGTERM or SIGKILL), restartable."""

    def __init__(self, port: int | None = None, *extra: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise NoRedisServer("redis-server is not on PATH")
        self.binary = binary
        self.port = port or free_port()
        self.extra = extra
        self.dir = tempfile.mkdtemp(prefix="li-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not ping(self.url, 0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self, kill: bool = False) -> None:
        stop_process(self.process, kill)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
