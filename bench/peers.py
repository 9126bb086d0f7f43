"""The two yardsticks the benchmark runs beside the ingester, each as its own process, and the
scrape flood it turns on an ingester (a process of its own, so the bench's clock stays free).

``ceiling``: a plain websockets client that only receives and parses frames (no validation, no
Redis): the transport limit of our stack. ``naive``: the design many would write, and generic
pipelines use: per event one awaited ``SET NX EX`` round trip, then the ``HINCRBY``s, with
per-process prometheus counters. Both print one JSON line: events, seconds, events/s.

    python -m bench.peers ceiling URL N
    python -m bench.peers naive URL N REDIS_URL
    python -m bench.peers scrapers URL N SECONDS    # N clients scraping URL back to back
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import aiohttp
import orjson
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis
from websockets.asyncio.client import connect


async def ceiling(url: str, n: int) -> dict[str, float]:
    async with connect(url, max_size=None, compression=None) as ws:
        count = 0
        start = 0.0
        async for frame in ws:
            if count == 0:
                start = time.perf_counter()
            orjson.loads(frame)
            count += 1
            if count == n:
                break
        return _result(n, time.perf_counter() - start)


async def naive(url: str, n: int, redis_url: str) -> dict[str, float]:
    registry = CollectorRegistry()
    events = Counter("naive_events", "events", ["kind", "outcome"], registry=registry)
    redis = Redis.from_url(redis_url)
    try:
        async with connect(url, max_size=None, compression=None) as ws:
            count = 0
            start = 0.0
            async for frame in ws:
                if count == 0:
                    start = time.perf_counter()
                await _handle(redis, orjson.loads(frame), events)
                count += 1
                if count == n:
                    break
            return _result(n, time.perf_counter() - start)
    finally:
        await redis.aclose()


async def _handle(redis: Redis, event: dict[str, Any], events: Counter) -> None:
    stream, kind = event["stream"], event["kind"]
    key = f"naive:{stream}:{kind}:{event['id']}:{event.get('status', '')}"
    if not await redis.set(key, 1, nx=True, ex=48 * 3600):
        events.labels(kind, "duplicate").inc()
        return
    totals = f"naive:{stream}:totals"
    if kind == "comment":
        await redis.hincrby(totals, f"comments|{event['platform']}", 1)
    elif kind == "viewers":
        await redis.hset(f"naive:{stream}:viewers", event["platform"], event["count"])
    elif event["status"] == "created":
        grams = sum(item["grams"] * item["qty"] for item in event["items"])
        where = f"{event['platform']}|{event.get('country', 'unknown')}"
        await redis.hincrby(totals, f"orders|{where}", 1)
        await redis.hincrby(totals, f"grams|{where}", grams)
        await redis.hincrby(totals, f"value|{event['platform']}|VND", int(event["amount"]))
    else:
        await redis.hincrby(totals, f"cancelled|{event['platform']}", 1)
    events.labels(kind, "accepted").inc()


async def scrapers(url: str, n: int, seconds: float) -> dict[str, Any]:
    """``n`` clients scraping ``url`` back to back for ``seconds``: each scrape's duration."""
    durations: list[float] = []
    size = 0
    end = time.perf_counter() + seconds

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal size
        while time.perf_counter() < end:
            start = time.perf_counter()
            async with session.get(url) as reply:
                size = len(await reply.read())
            durations.append(time.perf_counter() - start)

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(one(session) for _ in range(n)))
    return {"durations": durations, "body_bytes": size}


def _result(n: int, seconds: float) -> dict[str, float]:
    return {"events": n, "seconds": seconds, "rate": n / seconds}


def main() -> None:
    mode, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    result: dict[str, Any]
    if mode == "ceiling":
        result = asyncio.run(ceiling(url, n))
    elif mode == "scrapers":
        result = asyncio.run(scrapers(url, n, float(sys.argv[4])))
    else:
        result = asyncio.run(naive(url, n, sys.argv[4]))
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")


if __name__ == "__main__":
    main()
