"""Shared fixtures: a private redis-server per session (and one per test where a test needs a
whole Redis), a private Mosquitto per test, unique stream names.

Tests wait on conditions (``tests.waiting``), never on bare sleeps; their timeouts are written in
``tests.waiting.UNIT`` seconds.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Protocol, TypeVar

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from tests.servers import Mosquitto, RedisServer


class _Server(Protocol):
    def start(self) -> None: ...
    def close(self) -> None: ...


S = TypeVar("S", bound=_Server)


def running(server: S) -> Iterator[S]:
    """A fixture's body: ``server`` started for the fixture's scope, then closed."""
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session; tests isolate themselves by stream name."""
    yield from running(RedisServer())


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A private redis-server for one test: for tests that stop it, fill or reset a registry
    every stream shares, or count its commands."""
    yield from running(RedisServer())


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    """A private Mosquitto for one test (persistence and limits as in ``tests.servers``)."""
    yield from running(Mosquitto())


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def stream() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"
