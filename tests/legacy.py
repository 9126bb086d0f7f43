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


async def old_commit(redis: Redis, stream: str, events: Sequence[Event]) -> str:
    """Commit ``events`` of one stream as an older version did (Redis' clock); the outcome
    codes ("1" counted, "0" duplicate)."""
    k = StreamKeys(stream)
    script_keys = [k.totals, k.legacy_orders_prefix, k.skus, k.viewers, k.commenters]
    script_keys += [k.buyers, k.seen_prefix, keys.STREAMS]
    args: list[object] = ["", keys.GENERATION_SECONDS, keys.lookback_generations(RETENTION)]
    args += [0, 200, keys.TOTAL_LIMIT]
    args += [msgspec.msgpack.encode([_record(e) for e in events]), stream, 1000, RETENTION]
    reply = await redis.eval(SCRIPT, len(script_keys), *script_keys, *args)  # type: ignore[arg-type]
    return reply.decode() if isinstance(reply, bytes) else str(reply)
