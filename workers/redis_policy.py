"""Is it safe to count in this Redis? Its eviction policy and memory, as the ingester sees them.

Under any ``maxmemory-policy`` but ``noeviction``, a Redis that reaches ``maxmemory`` evicts keys,
and the dedup sets (they carry a TTL, so even the ``volatile-*`` policies take them) are exactly
what it evicts: a redelivery is then counted again, silently. Job queues built on Redis (Sidekiq,
BullMQ) require ``noeviction`` for the same reason. With ``noeviction`` a full Redis refuses
writes instead: commits fail, loudly (LivestreamRedisCommitsFailing), and nothing is counted twice.

``CONFIG GET`` is often refused on managed Redis; ``INFO memory`` carries the same policy
(``maxmemory_policy``, Redis >= 4). In a cluster every primary is checked: one evicting shard is
enough to double count its streams.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from workers.metrics import HealthMetrics

log = structlog.get_logger("redis")

SAFE_POLICY = "noeviction"


class UnsafeEvictionPolicy(Exception):
    """Redis may evict the dedup sets; ``eviction_policy_check = "refuse"`` stops the ingester."""

    def __init__(self, policies: Mapping[str, str]) -> None:
        self.policies = dict(policies)
        unsafe = ", ".join(
            f"{node}: {p}" for node, p in sorted(policies.items()) if p != SAFE_POLICY
        )
        super().__init__(
            f"Redis maxmemory-policy is not noeviction ({unsafe}): at maxmemory it would evict "
            "the dedup sets and count redeliveries again. Set `maxmemory-policy noeviction`, "
            'or [redis] eviction_policy_check = "warn" to run anyway.'
        )


@dataclasses.dataclass(frozen=True)
class NodeMemory:
    """One Redis primary's view: its eviction policy and memory (``maxmemory`` 0 = no limit)."""

    policy: str
    used_bytes: int
    max_bytes: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_node(config: Mapping[Any, Any] | None, info: Mapping[Any, Any]) -> NodeMemory:
    """From ``CONFIG GET maxmemory-policy`` (or None when refused) and ``INFO memory``."""
    fields = {_text(k): v for k, v in info.items()}
    policy: Any = None
    if config:
        policy = {_text(k): v for k, v in config.items()}.get("maxmemory-policy")
    if policy is None:
        policy = fields.get("maxmemory_policy", "unknown")
    return NodeMemory(
        policy=_text(policy),
        used_bytes=int(fields.get("used_memory", 0)),
        max_bytes=int(fields.get("maxmemory", 0)),
    )


async def _node(redis: Redis | RedisCluster, node: ClusterNode | None) -> NodeMemory:
    target: dict[str, Any] = {} if node is None else {"target_nodes": node}
    info = await redis.info("memory", **target)
    try:
        config = await redis.config_get("maxmemory-policy", **target)
    except ResponseError:  # CONFIG refused or renamed (managed Redis): INFO has the policy
        config = None
    return parse_node(config, info)


async def read_nodes(redis: Redis | RedisCluster) -> dict[str, NodeMemory]:
    """Every primary's policy and memory, by ``host:port``."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()
        primaries = redis.get_primaries()
        found = await asyncio.gather(*(_node(redis, node) for node in primaries))
        return {node.name: memory for node, memory in zip(primaries, found, strict=True)}
    kwargs = redis.connection_pool.connection_kwargs
    name = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    if "path" in kwargs:
        name = str(kwargs["path"])
    return {name: await _node(redis, None)}


class PolicyWatch:
    """Reads the policy and memory at start and then every ``interval`` seconds (so after a
    reconnect, a failover or a ``CONFIG SET``, within one interval), into the health metrics.

    ``check()`` returns whether every primary is safe; ``refuse`` makes an unsafe one raise
    :class:`UnsafeEvictionPolicy`. Redis unreachable: nothing is known, nothing changes.
    """

    def __init__(
        self,
        redis: Redis | RedisCluster,
        metrics: HealthMetrics,
        *,
        refuse: bool,
        interval: float,
    ) -> None:
        self.redis = redis
        self.metrics = metrics
        self.refuse = refuse
        self.interval = interval
        self.safe: bool | None = None
        self._warned: frozenset[tuple[str, str]] = frozenset()

    async def check(self) -> bool | None:
        try:
            nodes = await read_nodes(self.redis)
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            log.warning("cannot read the redis eviction policy", error=type(exc).__name__)
            return self.safe
        for node, memory in nodes.items():
            self.metrics.redis_memory_used.labels(node).set(memory.used_bytes)
            self.metrics.redis_memory_max.labels(node).set(memory.max_bytes)
        policies = {node: memory.policy for node, memory in nodes.items()}
        self.safe = all(p == SAFE_POLICY for p in policies.values())
        self.metrics.redis_eviction_safe.set(1 if self.safe else 0)
        unsafe = frozenset((n, p) for n, p in policies.items() if p != SAFE_POLICY)
        if unsafe and self.refuse:
            raise UnsafeEvictionPolicy(policies)
        if unsafe != self._warned and unsafe:
            log.error(
                "redis may evict dedup sets: redeliveries would be counted again",
                policies=dict(sorted(unsafe)),
            )
        self._warned = unsafe
        return self.safe

    async def run(self) -> None:
        """Check every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            await self.check()
