"""What versions before identity namespaces wrote to Redis, for the upgrade tests.

Their commit script runs as it was (``tests/legacy_commit.lua``, taken from ``workers/keys.py``
at a5a3573), on records built as they built them: fingerprints of the bare identities, orders
keyed by their id alone in ``li:{s}:orders:<gen>``, and the stream admitted in ``li:streams``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from ingest.model import Comment, Event, Order, Viewers
from workers import keys
from workers.keys import StreamKeys, fingerprint

SCRIPT = (Path(__file__).with_name("legacy_commit.lua")).read_text(encoding="utf-8")
RETENTION = 48 * 3600


def _record(event: Event) -> tuple[object, ...]:
    shard, member = fingerprint(event.identity)
    record: tuple[object, ...]
    match event:
        case Comment():
            record = ("c", shard, str(member), event.platform, event.user or "")
        case Viewers():
            record = ("v", shard, str(member), event.platform, event.count, event.ts_ms)
        case Order(cancelled=True):
            record = ("x", shard, str(member), event.id)
        case Order():
            items = [(item.sku, str(item.grams)) for item in event.items]
            record = ("o", shard, str(member), event.id, event.platform, event.country)
            record += (event.region, event.buyer or "", event.currency)
            record += (str(event.amount_minor), str(event.grams), items)
    if event.aliases:
        record += ([(s, str(m)) for s, m in map(fingerprint, event.aliases)],)
    return record


async def old_commit(
    redis: Redis | RedisCluster, stream: str, events: Sequence[Event], now: int | None = None
) -> str:
    """Commit ``events`` of one stream as an older version did; the outcome codes ("1" counted,
    "0" duplicate). On a single Redis with Redis' clock, admitting the stream in the registry;
    on a cluster (``now`` given) with every key declared, as it ran there (the registry is
    another slot's: the caller writes it)."""
    k = StreamKeys(stream)
    lookback = keys.lookback_generations(RETENTION)
    script_keys = [k.totals, k.legacy_orders_prefix, k.skus, k.viewers, k.commenters]
    script_keys += [k.buyers, k.seen_prefix]
    records = [_record(e) for e in events]
    args: list[object] = ["" if now is None else now, keys.GENERATION_SECONDS, lookback]
    args += [0 if now is None else 1, 200, keys.TOTAL_LIMIT, msgspec.msgpack.encode(records)]
    if now is None:
        script_keys.append(keys.STREAMS)
        args += [stream, 1000, RETENTION]
    else:
        gen = now // keys.GENERATION_SECONDS
        generations = range(gen - lookback, gen + 2)
        shards = {fingerprint(i)[0] for e in events for i in (e.identity, *e.aliases)}
        script_keys += [f"{k.seen_prefix}{g}:{shard}" for shard in shards for g in generations]
        script_keys += [f"{k.legacy_orders_prefix}{g}" for g in generations]
    reply = await redis.eval(SCRIPT, len(script_keys), *script_keys, *args)  # type: ignore[arg-type]
    return reply.decode() if isinstance(reply, bytes) else str(reply)
