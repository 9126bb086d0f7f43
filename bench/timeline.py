"""Redis memory of a sale's story: the per-minute timeline and the session, per stream-hour.

    python -m bench.timeline              # the six-hour demo sale, one stream
    python -m bench.timeline --streams 4  # four such sales at once

Starts its own redis-server, commits every delivery of the demo sale (duplicates included)
through the store as the ingester does, then reads ``MEMORY USAGE`` of each timeline day hash
and the session keys (``SAMPLES 0``: every field counted), and how many of the hashes Redis
keeps as compact listpacks. One feed's gap bitmap is a fixed
10.8 kB per source and day (86,400 bits), whatever the streams.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime

from redis.asyncio import Redis

from ingest.adapter import FormatOptions
from ingest.model import Rejection
from ingest.native import NativeFormat
from tests.servers import RedisServer
from workers.demo.sale import PLATFORMS, frames, lychee_sale
from workers.keys import StreamKeys
from workers.store import Store, StoreSettings

HOURS = 6.0


async def measure(url: str, streams: int) -> dict[str, float]:
    # Yesterday's sale, from 07:00 UTC (14:00 in Vietnam).
    day = int(time.time()) // 86_400 - 1
    start = datetime.fromtimestamp(day * 86_400 + 7 * 3600, UTC)
    totals = 0
    async with Redis.from_url(url) as redis:
        store = Store(redis, StoreSettings())
        for n in range(streams):
            stream = f"lucngan-{n}"
            sale = lychee_sale(seed=2025 + n, stream=stream, hours=HOURS, start=start)
            options = FormatOptions(
                default_stream=stream, max_frame_bytes=4 << 20, platforms=frozenset(PLATFORMS)
            )
            fmt = NativeFormat(options)
            events = []
            for frame in frames(sale.deliveries, batch=50):
                events += [e for e in fmt.decode(frame) if not isinstance(e, Rejection)]
            totals += len(events)
            for i in range(0, len(events), 1000):
                await store.commit(events[i : i + 1000])
        timeline = session = fields = hashes = compact = 0
        for n in range(streams):
            k = StreamKeys(f"lucngan-{n}")
            async for key in redis.scan_iter(match=f"{k.timeline_prefix}*"):
                timeline += int(await redis.memory_usage(key, samples=0) or 0)
                fields += int(await redis.hlen(key))
                hashes += 1
                compact += await redis.object("encoding", key) in (b"listpack", b"ziplist")
            for key in (k.session, k.sessions):
                session += int(await redis.memory_usage(key, samples=0) or 0)
    hours = HOURS * streams
    return {
        "deliveries": totals,
        "timeline_bytes": timeline,
        "timeline_fields": fields,
        "timeline_hashes": hashes,
        "listpack_hashes": compact,
        "session_bytes": session,
        "timeline_bytes_per_stream_hour": timeline / hours,
        "bytes_per_stream_hour": (timeline + session) / hours,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1)
    args = parser.parse_args()
    server = RedisServer()
    server.start()
    try:
        figures = asyncio.run(measure(server.url, args.streams))
    finally:
        server.close()
    for name, value in figures.items():
        print(f"{name:32} {value:>12,.0f}")


if __name__ == "__main__":
    main()
