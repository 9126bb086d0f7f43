"""A quick throughput figure: one `livestream-ingester run` process, fed as fast as possible.

Starts a private redis-server and a websocket feed of a synthetic sale's deliveries (orders,
comments, viewer updates, ~15% duplicates, one event per frame), runs the ingester as a user
does, and reports events/s from its first to its last commit, read from its own /metrics.
The careful benchmark (ceiling, naive peer, latency, memory) is a separate command.

    python -m bench.quick [--events 300000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.server import ServerConnection, serve

from tests.servers import RedisServer, free_port
from workers.demo.sale import frames, lychee_sale


def handled(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "livestream_ingest_events"
        for sample in family.samples
    )


async def run_once(data: list[bytes], redis_url: str) -> float:
    sent = asyncio.Event()

    async def feed(ws: ServerConnection) -> None:
        for n, frame in enumerate(data):
            await ws.send(frame.decode())
            if n % 256 == 0:
                await asyncio.sleep(0)
        sent.set()
        await ws.wait_closed()

    feed_port, http_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(
            f'[redis]\nurl = "{redis_url}"\n[http]\nlisten = "127.0.0.1:{http_port}"\n'
            '[log]\nlevel = "warning"\n'
            f'[[sources]]\nname = "bench"\ntype = "websocket-client"\n'
            f'url = "ws://127.0.0.1:{feed_port}/"\n',
            encoding="utf-8",
        )
        async with serve(feed, "127.0.0.1", feed_port):
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "workers", "run", "-c", str(config)
            )
            try:
                start, first = 0.0, 0.0
                while True:
                    try:
                        count = await asyncio.to_thread(handled, http_port)
                    except OSError:
                        count = 0
                    if count > 0 and not first:
                        start, first = time.perf_counter(), count
                    if count >= len(data):
                        return (count - first) / (time.perf_counter() - start)
                    await asyncio.sleep(0.05)
            finally:
                process.terminate()
                await process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    deliveries: list[object] = []
    seed = 0
    while len(deliveries) < args.events:
        sale = lychee_sale(seed=seed, stream=f"bench-{seed}")
        deliveries.extend(sale.deliveries)
        seed += 1
    data = frames(deliveries[: args.events])  # type: ignore[arg-type]
    rates = []
    for _ in range(args.runs):
        server = RedisServer()
        server.start()
        try:
            rates.append(asyncio.run(run_once(data, server.url)))
        finally:
            server.close()
        print(f"run: {rates[-1]:,.0f} events/s", flush=True)
    print(
        f"one process, {args.events:,} events, single-event frames: median "
        f"{statistics.median(rates):,.0f} events/s (min {min(rates):,.0f}, max {max(rates):,.0f})"
    )


if __name__ == "__main__":
    main()
