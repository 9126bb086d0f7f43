"""The ingester and Redis's eviction policy, with real redis-servers configured each way.

Under a policy that evicts, Redis at maxmemory drops exactly the dedup sets (they carry a TTL) and
redeliveries count again: ``eviction_policy_check = "refuse"`` (the default) does not run on such
a Redis, ``"warn"`` runs and says so in ``livestream_ingest_redis_eviction_safe``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from tests.clusters import Cluster
from tests.servers import RedisServer, free_port
from tests.waiting import UNIT, until
from workers import config as config_module
from workers.metrics import HealthMetrics
from workers.redis_policy import SAFE_POLICY, NodeMemory, PolicyWatch, parse_node, read_nodes
from workers.runtime import Ingester, redis_client


@contextlib.contextmanager
def redis_server(*extra: str) -> Iterator[RedisServer]:
    server = RedisServer(None, *extra)
    server.start()
    try:
        yield server
    finally:
        server.close()


def ingester(url: str, check: str, interval: float = 1.0) -> Ingester:
    data: dict[str, Any] = {
        "redis": {"url": url, "eviction_policy_check": check, "policy_check_interval": interval},
        "http": {"listen": "127.0.0.1:0"},
        "sources": [
            {
                "name": "feed",
                "type": "websocket-client",
                "format": "native",
                "url": f"ws://127.0.0.1:{free_port()}/feed",  # nothing there: it keeps retrying
                "backoff_initial": 0.5,
            }
        ],
    }
    return Ingester(config_module.parse(data, "test", {}))


@contextlib.asynccontextmanager
async def running(process: Ingester) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(process.run(stop), name="test.ingester")
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 20 * UNIT)


async def metric(port: int | None, name: str) -> list[float]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)]


@pytest.mark.asyncio
@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
async def test_refuses_to_start_on_a_redis_that_may_evict(policy: str) -> None:
    with redis_server("--maxmemory-policy", policy) as server:
        process = ingester(server.url, "refuse")
        await asyncio.wait_for(process.run(asyncio.Event()), 10 * UNIT)
    assert process.refused is not None
    assert f"{server.port}: {policy}" in str(process.refused)
    assert process.http_port is None  # never served, never read a source


@pytest.mark.asyncio
async def test_refuses_when_config_is_refused_too_reading_the_policy_from_info() -> None:
    # Managed Redis often renames or disables CONFIG: INFO memory has the policy.
    with redis_server("--maxmemory-policy", "allkeys-lfu", "--rename-command", "CONFIG", "") as s:
        process = ingester(s.url, "refuse")
        await asyncio.wait_for(process.run(asyncio.Event()), 10 * UNIT)
    assert process.refused is not None
    assert "allkeys-lfu" in str(process.refused)


@pytest.mark.asyncio
async def test_warn_runs_degraded_and_says_so_in_its_metrics() -> None:
    args = ("--maxmemory-policy", "volatile-lru", "--maxmemory", "64mb")
    with redis_server(*args) as server:
        process = ingester(server.url, "warn")
        async with running(process):
            await until(process.started.wait, 10, "the ingester to start")
            assert await metric(process.http_port, "livestream_ingest_redis_eviction_safe") == [0]
            used = await metric(process.http_port, "livestream_ingest_redis_memory_used_bytes")
            limit = await metric(process.http_port, "livestream_ingest_redis_memory_max_bytes")
            assert limit == [64 * 1024 * 1024]
            assert len(used) == 1
            assert 0 < used[0] < limit[0]
        assert process.refused is None


@pytest.mark.asyncio
async def test_a_policy_changed_under_a_running_ingester_is_noticed() -> None:
    with redis_server() as server:
        admin = Redis.from_url(server.url)
        try:
            warned, refusing = ingester(server.url, "warn"), ingester(server.url, "refuse")
            async with running(warned), running(refusing) as refusing_task:
                for process in (warned, refusing):
                    await until(process.started.wait, 10, "the ingesters to start")
                    safe = await metric(process.http_port, "livestream_ingest_redis_eviction_safe")
                    assert safe == [1]
                await admin.config_set("maxmemory-policy", "allkeys-random")

                async def unsafe() -> bool:
                    got = await metric(warned.http_port, "livestream_ingest_redis_eviction_safe")
                    return got == [0]

                await until(unsafe, 10, "the warning ingester to report the new policy")
                await asyncio.wait_for(refusing_task, 10 * UNIT)  # stopped by itself
                assert refusing.refused is not None
                assert warned.refused is None
                assert not refusing_task.cancelled()
        finally:
            await admin.aclose()


def test_policy_and_memory_from_config_or_info() -> None:
    info = {"used_memory": 1_048_576, "maxmemory": 0, "maxmemory_policy": "allkeys-lru"}
    assert parse_node({"maxmemory-policy": SAFE_POLICY}, info) == NodeMemory(
        SAFE_POLICY, 1_048_576, 0
    )
    assert parse_node(None, info).policy == "allkeys-lru"
    assert parse_node({b"maxmemory-policy": b"volatile-lfu"}, info).policy == "volatile-lfu"


@pytest.mark.asyncio
async def test_every_primary_of_a_cluster_is_checked() -> None:
    cluster = Cluster()
    cluster.start()
    client = redis_client(cluster.url, socket_timeout=2.0, cluster=True)
    try:
        nodes = await read_nodes(client)
        assert len(nodes) == 3
        assert {memory.policy for memory in nodes.values()} == {SAFE_POLICY}
        cluster.command(2, "CONFIG", "SET", "maxmemory-policy", "volatile-lru")
        watch = PolicyWatch(client, HealthMetrics(), refuse=False, interval=1.0)
        assert await watch.check() is False
        policies = {name: memory.policy for name, memory in (await read_nodes(client)).items()}
        assert sorted(policies.values()) == [SAFE_POLICY, SAFE_POLICY, "volatile-lru"]
        assert policies[f"127.0.0.1:{cluster.nodes[2].port}"] == "volatile-lru"
    finally:
        await client.aclose()
        cluster.close()
