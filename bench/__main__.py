"""The benchmark: throughput, latency and memory of the whole pipeline, side by side with its
transport ceiling and a naive peer, measured in one run on this machine.

    python -m bench                 # the full run (about 10 minutes on 2 cores)
    python -m bench --quick         # a small run that checks the bench itself works
    python -m bench --only scrape   # one section (here: scrapes beside commits)
    python -m bench --only push     # 1 and 2 processes sharing one push port (not in the full run)

Starts its own redis-server (and Mosquitto) on loopback ports and a websocket feed in this
process; every figure is the median of ``--runs`` runs with min and max, printed as a table and
written to ``bench/results/<time>.json``. See docs/benchmarks.md for the method.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from bench.workload import Workload
from ingest.sources.mqtt import Publisher
from tests.servers import Mosquitto, RedisServer, free_port
from workers import keys
from workers.keys import StreamKeys

RESULTS = Path(__file__).parent / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Sizes:
    throughput: int
    naive: int
    memory: int
    rss: int
    latency_seconds: float
    mqtt: int
    scaling: int
    scrape_streams: tuple[int, ...]
    scrape_phase_seconds: float
    scrapers: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            500_000,
            60_000,
            1_250_000,
            5_000_000,
            20.0,
            100_000,
            400_000,
            (10, 1_000, 10_000),
            10.0,
            50,
        )

    @classmethod
    def quick(cls) -> Sizes:
        return cls(20_000, 3_000, 30_000, 60_000, 2.0, 3_000, 20_000, (10, 100), 1.0, 10)


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# --- the feed ---------------------------------------------------------------------------------

CHUNK_BYTES = 64 * 1024


def wire_chunks(frames: Iterable[bytes]) -> Iterator[tuple[bytes, int]]:
    """``frames`` as a server sends them (RFC 6455: final text frames, unmasked), joined into
    chunks of about ``CHUNK_BYTES``: (chunk, frames in it)."""
    parts: list[bytes] = []
    size = count = 0
    for payload in frames:
        n = len(payload)
        if n < 126:
            head = bytes((0x81, n))
        elif n < 1 << 16:
            head = bytes((0x81, 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x81, 127)) + n.to_bytes(8, "big")
        parts += (head, payload)
        size += len(head) + n
        count += 1
        if size >= CHUNK_BYTES:
            yield b"".join(parts), count
            parts, size, count = [], 0, 0
    if parts:
        yield b"".join(parts), count


class Feed:
    """A websocket server sending ``frames(part, parts)`` to each connection
    (``/feed?part=i&parts=n``), as fast as possible or at ``rate`` frames per second."""

    def __init__(
        self, frames: Callable[[int, int], Iterable[bytes]], rate: float = 0, hold: bool = False
    ) -> None:
        self.frames = frames
        self.rate = rate
        self.port = free_port()
        self.go = asyncio.Event()
        """Sending starts once set: ``hold`` lets a measurement take its baselines first."""
        if not hold:
            self.go.set()
        self.started: float | None = None
        self.sent = 0
        self.on_send: Callable[[int, float], None] | None = None

    def url(self, part: int = 0, parts: int = 1) -> str:
        return f"ws://127.0.0.1:{self.port}/feed?part={part}&parts={parts}"

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = parse_qs(urlparse(ws.request.path).query)
        part, parts = int(query["part"][0]), int(query["parts"][0])
        if not self.rate:
            await self._flood(ws, list(wire_chunks(self.frames(part, parts))))
            return
        await self.go.wait()
        if self.started is None:
            self.started = time.perf_counter()
        start = time.perf_counter()
        with contextlib.suppress(ConnectionClosed):  # the ingester stopped before the end
            for n, frame in enumerate(self.frames(part, parts)):
                if self.rate:
                    due = start + n / self.rate - time.perf_counter()
                    if due > 0:
                        await asyncio.sleep(due)
                await ws.send(frame, text=True)
                if self.on_send is not None:
                    self.on_send(n, time.perf_counter())
                self.sent += 1
            await ws.wait_closed()

    async def _flood(self, ws: ServerConnection, chunks: list[tuple[bytes, int]]) -> None:
        """As fast as possible: the frames framed beforehand (``wire_chunks``), written ~64 KiB
        at a time, waiting only while the transport's buffer is full. Sending frame by frame
        cost the feed ~4.5 µs of CPU per event, most of it a write per frame whenever the
        reader kept up, and a faster reader made the sender its limit."""
        await self.go.wait()
        if self.started is None:
            self.started = time.perf_counter()
        with contextlib.suppress(ConnectionClosed):  # the ingester stopped before the end
            for chunk, count in chunks:
                ws.transport.write(chunk)
                self.sent += count
                await ws.drain()
            await ws.wait_closed()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Feed]:
        async with serve(self._handle, "127.0.0.1", self.port, compression=None, max_queue=None):
            yield self


# --- processes --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


UNLIMITED_SCRAPES = (
    "max_connections = 1024\nmax_connections_per_client = 1024\n"
    "requests_per_second = 1e6\nrequests_burst = 1000000\n"
    "client_requests_per_second = 1e6\nclient_requests_burst = 1000000\n"
)
"""``[http]`` keys: the scrape flood measures the scrape path, not the listener's limits."""


PUSH_TOKEN = "bench-push-token-0123456789"
PUSH_TOKEN_ENV = "BENCH_PUSH_TOKEN"
PUSH_CONNECTIONS = 16
"""Producers' connections of the push step: the kernel spreads them over the processes."""


def push_source(port: int) -> str:
    """A websocket-server every ingester of the push step shares (``reuse_port``). Its pings
    wait long: producers pushing flat out keep it behind (it stops reading while its buffer is
    full), and it would read no pong in time and close them (1011) on a busy machine; the
    producers send no pings, whose answers would wait as long."""
    return (
        f'[[sources]]\nname = "push"\ntype = "websocket-server"\nlisten = "127.0.0.1:{port}"\n'
        f'token_env = "{PUSH_TOKEN_ENV}"\nreuse_port = true\nping_timeout = 600\n'
    )


async def _push(ws: ClientConnection, frames: Iterable[bytes]) -> None:
    for n, frame in enumerate(frames):
        await ws.send(frame, text=True)
        if n % 128 == 0:
            await asyncio.sleep(0)


class Ingester:
    """``livestream-ingester run`` on its own config, as a user runs it."""

    def __init__(
        self,
        workdir: Path,
        redis_url: str,
        sources: str,
        name: str = "bench",
        env: dict[str, str] | None = None,
    ) -> None:
        self.env = {**os.environ, **env} if env else None
        self.http = free_port()
        self.config = workdir / f"{name}-{self.http}.toml"
        self.config.write_text(
            f'[redis]\nurl = "{redis_url}"\n[http]\nlisten = "127.0.0.1:{self.http}"\n'
            f"{UNLIMITED_SCRAPES}"
            f'[log]\nlevel = "warning"\n[labels]\nmax_streams = 100000\n{sources}',
            encoding="utf-8",
        )
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Ingester:
        profile = os.environ.get("BENCH_PROFILE")  # a cProfile output file for the ingester
        wrap = ["-m", "cProfile", "-o", f"{profile}.{self.http}"] if profile else []
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, *wrap, "-m", "workers", "run", "-c", str(self.config), env=self.env
        )
        for _ in range(300):
            with contextlib.suppress(OSError):
                await asyncio.to_thread(scrape, self.http)
                return self
            await asyncio.sleep(0.05)
        raise RuntimeError("the ingester did not start")

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def handled(self) -> float:
        values = await asyncio.to_thread(scrape, self.http)
        return values.get("livestream_ingest_events_total", 0.0)

    async def wait_handled(self, n: int, poll: float = 0.1) -> float:
        """perf_counter time at which ``n`` events were handled (to ``poll`` seconds)."""
        while await self.handled() < n:  # noqa: ASYNC110 - another process: polling is the way
            await asyncio.sleep(poll)
        return time.perf_counter()

    async def wait_connected(self) -> None:
        while not (await asyncio.to_thread(scrape, self.http)).get(  # noqa: ASYNC110
            "livestream_ingest_source_connected"
        ):
            await asyncio.sleep(0.05)


def ws_source(url: str, name: str = "feed", transport: str = "websockets") -> str:
    return (
        f'[[sources]]\nname = "{name}"\ntype = "websocket-client"\nurl = "{url}"\n'
        f'transport = "{transport}"\n'
    )


# --- measurements -----------------------------------------------------------------------------


class Bench:
    def __init__(self, sizes: Sizes, runs: int, workdir: Path) -> None:
        self.sizes = sizes
        self.runs = runs
        self.workdir = workdir
        self.workload = Workload()
        self.results: dict[str, Any] = {}

    def fresh_redis(self) -> RedisServer:
        server = RedisServer()
        server.start()
        return server

    def frames(self, n: int, parts: int = 1) -> list[list[bytes]]:
        return [list(self.workload.frames(n // parts, part=p, parts=parts)) for p in range(parts)]

    async def peer(self, mode: str, feed: Feed, n: int, *extra: str) -> float:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.peers",
            mode,
            feed.url(),
            str(n),
            *extra,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
        rate: float = orjson.loads(out)["rate"]
        return rate

    async def ceiling(self, frames: list[bytes], transport: str = "websockets") -> float:
        feed = Feed(lambda part, parts: frames)
        mode = "ceiling" if transport == "websockets" else f"ceiling-{transport}"
        async with feed.serving():
            return await self.peer(mode, feed, len(frames))

    async def naive(self, frames: list[bytes]) -> float:
        redis = self.fresh_redis()
        try:
            feed = Feed(lambda part, parts: frames)
            async with feed.serving():
                return await self.peer("naive", feed, len(frames), redis.url)
        finally:
            redis.close()

    async def pipeline(
        self,
        frames: list[bytes],
        detail: bool = False,
        per_frame: int = 1,
        transport: str = "websockets",
    ) -> dict[str, float]:
        """One ingester process to committed totals; with ``detail``, CPU split and Redis
        memory and CPU per event. ``per_frame``: events in each frame; ``transport``: the
        websocket client source's."""
        redis = self.fresh_redis()
        client = Redis.from_url(redis.url)
        try:
            feed = Feed(lambda part, parts: frames)
            async with (
                feed.serving(),
                Ingester(
                    self.workdir, redis.url, ws_source(feed.url(), transport=transport)
                ) as ing,
            ):
                memory0 = (await client.info("memory"))["used_memory"]
                redis_cpu0 = _redis_cpu(await client.info("cpu"))
                own_cpu0, ing_cpu0 = _self_cpu(), cpu_seconds(ing.pid)
                events = len(frames) * per_frame
                done = await ing.wait_handled(events)
                assert feed.started is not None
                seconds = done - feed.started
                result = {"rate": events / seconds}
                if detail:
                    redis_cpu = _redis_cpu(await client.info("cpu")) - redis_cpu0
                    ing_cpu = cpu_seconds(ing.pid) - ing_cpu0
                    own_cpu = _self_cpu() - own_cpu0
                    distinct = len(set(frames))
                    seen = 0
                    for stream in self.workload.streams:
                        async for key in client.scan_iter(
                            match=f"{StreamKeys(stream).seen_prefix}*", count=1000
                        ):
                            seen += await client.memory_usage(key) or 0
                    memory = (await client.info("memory"))["used_memory"] - memory0
                    result |= {
                        "distinct": distinct,
                        "dedup_bytes_per_id": seen / distinct,
                        "redis_bytes_per_id": memory / distinct,
                        "redis_cpu_us_per_event": redis_cpu / events * 1e6,
                        "ingester_cpu_us_per_event": ing_cpu / events * 1e6,
                        "feed_cpu_us_per_event": own_cpu / events * 1e6,
                        "seconds": seconds,
                        "cores_busy": (redis_cpu + ing_cpu + own_cpu) / seconds,
                    }
                return result
        finally:
            await client.aclose()
            redis.close()

    async def latency(self, rate: float) -> dict[str, float]:
        """Open loop at ``rate`` events/s; every 10 ms a probe comment whose commit Redis
        announces by keyspace notification: send → commit, in ms."""
        seconds = self.sizes.latency_seconds
        n = int(rate * seconds)
        probe_every = max(1, int(rate / 100))
        background = list(self.workload.frames(n))
        frames = [
            self.workload.probe(i // probe_every) if i % probe_every == 0 else f
            for i, f in enumerate(background)
        ]
        probes = (n + probe_every - 1) // probe_every
        sent: dict[int, float] = {}
        redis = self.fresh_redis()
        client = Redis.from_url(redis.url)
        try:
            feed = Feed(lambda part, parts: frames, rate=rate)
            feed.on_send = lambda i, at: (
                sent.__setitem__(i // probe_every, at) if i % probe_every == 0 else None
            )
            async with (
                probe_commits(client, redis.url) as committed,
                feed.serving(),
                Ingester(self.workdir, redis.url, ws_source(feed.url())) as ing,
            ):
                await ing.wait_handled(n, poll=1.0)  # a scrape costs the ingester time
                await _until_counted(committed, probes)
        finally:
            await client.aclose()
            redis.close()
        lat = sorted((committed[k] - sent[k]) * 1000 for k in range(min(len(committed), len(sent))))
        q = statistics.quantiles(lat, n=100)
        return {"p50": q[49], "p99": q[98], "max": lat[-1], "probes": len(lat)}

    async def scrapes(self, streams: int) -> dict[str, float]:
        """Commit latency and scrape time with ``streams`` streams in Redis, in three phases of
        ``scrape_phase_seconds``: no scrapes; one scraper, each scrape a fresh read of the
        totals; ``scrapers`` scrapers back to back. Probes go at 100/s throughout; each probe's
        send → commit is measured as in :meth:`latency` and counted in the phase it was sent in."""
        rate = 100.0
        sent: dict[int, float] = {}
        redis = self.fresh_redis()
        client = Redis.from_url(redis.url)
        try:
            await _fill(client, streams)
            probes = (self.workload.probe(i) for i in itertools.count())  # until the end
            feed = Feed(lambda part, parts: probes, rate=rate)
            feed.on_send = sent.__setitem__
            async with (
                probe_commits(client, redis.url) as committed,
                feed.serving(),
                Ingester(self.workdir, redis.url, ws_source(feed.url())) as ing,
            ):
                scrapes, extra, times = await _scrape_phases(ing, self.sizes)
                await _until_counted(committed, len(sent))  # the flood's last probes
        finally:
            await client.aclose()
            redis.close()
        return _scrape_figures(sent, committed, scrapes, times) | extra

    async def rss(self) -> dict[str, float]:
        n = self.sizes.rss
        marks = (n // 5, n)
        redis = self.fresh_redis()
        try:
            feed = Feed(lambda part, parts: self.workload.frames(n))
            async with (
                feed.serving(),
                Ingester(self.workdir, redis.url, ws_source(feed.url())) as ing,
            ):
                start = rss_bytes(ing.pid)
                values = []
                for mark in marks:
                    await ing.wait_handled(mark, poll=0.5)
                    values.append(rss_bytes(ing.pid))
        finally:
            redis.close()
        return {
            "events": n,
            "rss_start_mb": start / 2**20,
            f"rss_at_{marks[0]}_mb": values[0] / 2**20,
            f"rss_at_{marks[1]}_mb": values[1] / 2**20,
            "growth": values[1] / values[0] - 1,
        }

    async def mqtt(self, run: int = 0) -> dict[str, float]:
        """Drain rates of QoS 1 messages queued for persistent sessions while they were away:
        the ingester's (acknowledging after commit) and bare subscribers' (receive +
        acknowledge only, ``bench.peers mqtt-bare*``: paho-mqtt, gmqtt, aiomqtt), each
        draining alone, in an order that turns with ``run`` (the first drains while the broker
        still holds every backlog); the bare ones timed from their first message to their last,
        the ingester from its connection to its last commit; with each one's CPU per event and
        the ingester's events per commit."""
        n = self.sizes.mqtt
        redis, broker = self.fresh_redis(), Mosquitto()
        broker.start()
        try:
            source = (
                f'[[sources]]\nname = "mqtt"\ntype = "mqtt"\n'
                f'url = "mqtt://127.0.0.1:{broker.port}"\nclient_id = "bench"\n'
                f'topics = [{{ pattern = "bench/{{stream}}/events" }}]\n'
            )
            # Each bare client's session, subscribed.
            await asyncio.gather(*(_mqtt_bare(broker.port, 0, client) for client in BARE_CLIENTS))
            async with Ingester(self.workdir, redis.url, source, "mqtt") as ing:
                await ing.wait_connected()
            messages = [
                (f"bench/{orjson.loads(f)['stream']}/events", f) for f in self.workload.frames(n)
            ]
            await _publish(broker.port, messages)
            drainers = ["ingester", *BARE_CLIENTS]
            turn = run % len(drainers)
            out: dict[str, float] = {}
            for drainer in drainers[turn:] + drainers[:turn]:
                if drainer != "ingester":
                    bare = await _mqtt_bare(broker.port, n, drainer)
                    out[f"bare_{drainer}"] = bare["rate"]
                    out[f"bare_{drainer}_cpu_us_per_event"] = bare["cpu_us_per_event"]
                    continue
                async with Ingester(self.workdir, redis.url, source, "mqtt") as ing:
                    await ing.wait_connected()
                    start, cpu0 = time.perf_counter(), cpu_seconds(ing.pid)
                    done = await ing.wait_handled(n, poll=0.25)
                    cpu = cpu_seconds(ing.pid) - cpu0
                    values = await asyncio.to_thread(scrape, ing.http)
                batches = values.get("livestream_ingest_commit_batch_events_count", 0.0)
                out["rate"] = n / (done - start)
                out["ingester_cpu_us_per_event"] = cpu / n * 1e6
                out["events_per_commit"] = n / batches if batches else 0.0
            # The paho subscriber keeps its historical keys ("bare", "bare_cpu_us_per_event").
            out["bare"] = out.pop("bare_paho")
            out["bare_cpu_us_per_event"] = out.pop("bare_paho_cpu_us_per_event")
            out["ratio_to_bare"] = out["rate"] / out["bare"]
            for client in BARE_CLIENTS[1:]:
                out[f"ratio_to_bare_{client}"] = out["rate"] / out[f"bare_{client}"]
                out[f"bare_{client}_to_paho"] = out[f"bare_{client}"] / out["bare"]
            return out
        finally:
            broker.close()
            redis.close()

    async def scaling(self, processes: int) -> float:
        per = self.frames(self.sizes.scaling, parts=processes)
        redis = self.fresh_redis()
        try:
            feed = Feed(lambda part, parts: per[part])
            async with feed.serving(), contextlib.AsyncExitStack() as stack:
                ings = [
                    await stack.enter_async_context(
                        Ingester(
                            self.workdir, redis.url, ws_source(feed.url(p, processes)), f"p{p}"
                        )
                    )
                    for p in range(processes)
                ]
                ends = [await ing.wait_handled(len(per[p])) for p, ing in enumerate(ings)]
                assert feed.started is not None
                return sum(len(f) for f in per) / (max(ends) - feed.started)
        finally:
            redis.close()

    async def push(self, processes: int) -> float:
        """``processes`` ingesters sharing one websocket-server port (``reuse_port``), the bench
        pushing the workload over ``PUSH_CONNECTIONS`` connections as fast as it can: events/s
        from the first frame sent to the last event handled, over all the processes."""
        workload, n = Workload(streams=PUSH_CONNECTIONS), self.sizes.scaling  # a stream each
        per = [
            list(workload.frames(n // PUSH_CONNECTIONS, part=p, parts=PUSH_CONNECTIONS))
            for p in range(PUSH_CONNECTIONS)
        ]
        total = sum(len(frames) for frames in per)
        port = free_port()
        redis = self.fresh_redis()
        try:
            async with contextlib.AsyncExitStack() as stack:
                ings = [
                    await stack.enter_async_context(
                        Ingester(
                            self.workdir,
                            redis.url,
                            push_source(port),
                            f"push{p}",
                            env={PUSH_TOKEN_ENV: PUSH_TOKEN},
                        )
                    )
                    for p in range(processes)
                ]
                producers = [
                    await stack.enter_async_context(
                        connect(
                            f"ws://127.0.0.1:{port}/ingest",
                            additional_headers={"Authorization": f"Bearer {PUSH_TOKEN}"},
                            compression=None,
                            proxy=None,
                            ping_interval=None,  # its pongs would wait as long: see push_source
                        )
                    )
                    for _ in range(PUSH_CONNECTIONS)
                ]
                start = time.perf_counter()
                await asyncio.gather(*map(_push, producers, per))
                while (handled := sum([await ing.handled() for ing in ings])) < total:
                    closed = [ws.close_code for ws in producers if ws.close_code is not None]
                    if closed:  # what it had not read yet is lost: the figure would never come
                        raise RuntimeError(
                            f"{len(closed)} producer connection(s) closed {closed}: "
                            f"{total - handled:,.0f} events not handled"
                        )
                    await asyncio.sleep(0.1)
                return total / (time.perf_counter() - start)
        finally:
            redis.close()

    async def run_push(self) -> dict[str, Any]:
        out = self.results
        for processes in (1, 2):
            out[f"push_{processes}"] = spread(
                [await self.push(processes) for _ in range(self.runs)]
            )
            say(f"push {processes}: {out[f'push_{processes}']}")
        return out

    async def run_scrapes(self) -> dict[str, Any]:
        out = self.results
        for streams in self.sizes.scrape_streams:
            runs = [await self.scrapes(streams) for _ in range(self.runs)]
            out[f"scrape_{streams}"] = {k: spread([run[k] for run in runs]) for k in runs[0]}
            say(f"scrapes with {streams} streams: {out[f'scrape_{streams}']}")
        return out

    async def run_mqtt(self) -> dict[str, Any]:
        out = self.results
        runs = [await self.mqtt(run) for run in range(self.runs)]
        out["mqtt"] = spread([run["rate"] for run in runs])
        out["mqtt_detail"] = {k: spread([run[k] for run in runs]) for k in runs[0] if k != "rate"}
        say(f"mqtt: {out['mqtt']}; {out['mqtt_detail']}")
        return out

    async def run_orders(self) -> dict[str, Any]:
        """Ceiling, pipeline and naive peer on the order-heavy workload (``orders_`` figures,
        in events/s: each frame is a JSON array of ``per_frame`` events)."""
        r, sizes, out = self.runs, self.sizes, self.results
        workload = Workload.orders_heavy()
        per = workload.per_frame
        frames = list(workload.frames(sizes.throughput))
        say(f"orders workload: {len(frames):,} frames of {per} events")
        ceiling = [await self.ceiling(frames) * per for _ in range(r)]
        out["orders_ceiling"] = spread(ceiling)
        say(f"orders ceiling: {out['orders_ceiling']}")
        runs = [await self.pipeline(frames, detail=True, per_frame=per) for _ in range(r)]
        out["orders_pipeline"] = spread([run["rate"] for run in runs])
        out["orders_cpu"] = _cpu_split(runs)
        say(f"orders pipeline: {out['orders_pipeline']}; CPU µs per event: {out['orders_cpu']}")
        naive_frames = frames[: sizes.naive // per]
        out["orders_naive"] = spread([await self.naive(naive_frames) * per for _ in range(r)])
        say(f"orders naive: {out['orders_naive']}")
        out["orders_ratio_to_ceiling"] = (
            out["orders_pipeline"]["median"] / out["orders_ceiling"]["median"]
        )
        out["orders_ratio_to_naive"] = (
            out["orders_pipeline"]["median"] / out["orders_naive"]["median"]
        )
        await self._picows(frames, "orders_", per)
        return out

    async def _picows(self, frames: list[bytes], prefix: str, per: int = 1) -> None:
        """The same frames through the picows transport: its own ceiling, the pipeline with
        ``transport = "picows"``, and the ratios (``<prefix>picows_`` figures)."""
        r, out = self.runs, self.results
        ceiling = [await self.ceiling(frames, "picows") * per for _ in range(r)]
        out[f"{prefix}picows_ceiling"] = spread(ceiling)
        runs = [
            await self.pipeline(frames, detail=True, per_frame=per, transport="picows")
            for _ in range(r)
        ]
        pipeline = spread([run["rate"] for run in runs])
        out[f"{prefix}picows_pipeline"] = pipeline
        out[f"{prefix}picows_cpu"] = _cpu_split(runs)
        for name in ("ceiling", "picows_ceiling", "naive"):
            key = f"{prefix}{name}" if prefix else name
            out[f"{prefix}picows_ratio_to_{name}"] = pipeline["median"] / out[key]["median"]
        say(
            f"{prefix}picows: ceiling {out[f'{prefix}picows_ceiling']}, pipeline {pipeline}; "
            f"CPU µs per event: {out[f'{prefix}picows_cpu']}"
        )

    async def _throughput(self) -> dict[str, Any]:
        """Ceiling, pipeline (with its CPU split) and naive peer on the ordinary workload."""
        r, sizes, out = self.runs, self.sizes, self.results
        frames = self.frames(sizes.throughput)[0]
        say(f"workload: {len(frames):,} frames, {len(set(frames)):,} distinct events")
        out["ceiling"] = spread([await self.ceiling(frames) for _ in range(r)])
        say(f"ceiling: {out['ceiling']}")
        runs = [await self.pipeline(frames, detail=True) for _ in range(r)]
        out["pipeline"] = spread([run["rate"] for run in runs])
        out["pipeline_cpu"] = _cpu_split(runs)
        say(f"pipeline: {out['pipeline']}; CPU µs per event: {out['pipeline_cpu']}")
        naive_frames = frames[: sizes.naive]
        out["naive"] = spread([await self.naive(naive_frames) for _ in range(r)])
        say(f"naive: {out['naive']}")
        out["ratio_to_ceiling"] = out["pipeline"]["median"] / out["ceiling"]["median"]
        out["ratio_to_naive"] = out["pipeline"]["median"] / out["naive"]["median"]
        await self._picows(frames, "")
        return out

    async def run_throughput(self) -> dict[str, Any]:
        """The ordinary workload's throughput and CPU split, and latency at 10,000 events/s."""
        out = await self._throughput()
        runs = [await self.latency(10_000) for _ in range(self.runs)]
        out["latency_10000"] = {k: spread([run[k] for run in runs]) for k in runs[0]}
        say(f"latency at 10000/s: {out['latency_10000']}")
        return out

    async def run(self) -> dict[str, Any]:
        r, sizes, out = self.runs, self.sizes, self.results
        await self._throughput()
        out["detail"] = await self.pipeline(self.frames(sizes.memory)[0], detail=True)
        say(f"detail: {out['detail']}")
        for rate in (1_000, 10_000):
            runs = [await self.latency(rate) for _ in range(r)]
            out[f"latency_{rate}"] = {k: spread([run[k] for run in runs]) for k in runs[0]}
            say(f"latency at {rate}/s: {out[f'latency_{rate}']}")
        out["rss"] = await self.rss()
        say(f"rss: {out['rss']}")
        await self.run_mqtt()
        await self.run_orders()
        for processes in (1, 2, 4):
            out[f"scaling_{processes}"] = spread([await self.scaling(processes) for _ in range(r)])
            say(f"scaling {processes}: {out[f'scaling_{processes}']}")
        return await self.run_scrapes()


async def _scrape_phases(
    ing: Ingester, sizes: Sizes
) -> tuple[dict[str, list[float]], dict[str, float], list[float]]:
    """Scrape durations (s) of the one-at-a-time and flood phases, body size and RSS peak, and
    the bounds of the three phases. The flood's clients run in a process of their own."""
    phase = sizes.scrape_phase_seconds
    url = f"http://127.0.0.1:{ing.http}/metrics"
    scrapes: dict[str, list[float]] = {"single": [], "flood": []}
    rss = [rss_bytes(ing.pid)]
    await ing.wait_handled(1)
    times = [time.perf_counter()]
    await asyncio.sleep(phase)  # no scrapes
    times.append(time.perf_counter())
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        while time.perf_counter() < times[-1] + phase:  # one at a time, each a fresh read
            start = time.perf_counter()
            async with session.get(url) as reply:
                await reply.read()
            scrapes["single"].append(time.perf_counter() - start)
            await asyncio.sleep(1.1)
    times.append(time.perf_counter())
    flood = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.peers",
        "scrapers",
        url,
        str(sizes.scrapers),
        str(phase),
        stdout=asyncio.subprocess.PIPE,
    )
    waiting = asyncio.create_task(flood.communicate(), name="bench.scrapes.flood")
    while not waiting.done():
        rss.append(rss_bytes(ing.pid))
        await asyncio.wait([waiting], timeout=0.1)
    times.append(time.perf_counter())
    out = orjson.loads((await waiting)[0])
    scrapes["flood"] = out["durations"]
    extra = {"body_mb": out["body_bytes"] / 2**20, "rss_peak_mb": max(rss) / 2**20}
    return scrapes, extra, times


def _scrape_figures(
    sent: dict[int, float],
    committed: list[float],
    scrapes: dict[str, list[float]],
    times: list[float],
) -> dict[str, float]:
    """Probe latencies of each phase, and scrape durations, in ms."""
    t0, t1, t2, t3 = times

    def latencies(start: float, end: float) -> list[float]:
        return sorted(
            (committed[k] - sent[k]) * 1000
            for k in range(min(len(committed), len(sent)))
            if start <= sent[k] < end
        )

    def q(values: list[float], p: int) -> float:
        if len(values) < 2:
            return values[0] if values else 0.0
        return statistics.quantiles(values, n=100)[p - 1]

    idle, single_phase, flooded = latencies(t0, t1), latencies(t1, t2), latencies(t2, t3)
    single = sorted(v * 1000 for v in scrapes["single"])
    many = sorted(v * 1000 for v in scrapes["flood"])
    return {
        "commit_idle_p50": q(idle, 50),
        "commit_idle_p99": q(idle, 99),
        "commit_idle_max": max(idle, default=0.0),
        "commit_single_p50": q(single_phase, 50),
        "commit_single_p99": q(single_phase, 99),
        "commit_single_max": max(single_phase, default=0.0),
        "commit_flood_p50": q(flooded, 50),
        "commit_flood_p99": q(flooded, 99),
        "commit_flood_max": max(flooded, default=0.0),
        "scrape_single_p50": q(single, 50),
        "scrape_flood_p50": q(many, 50),
        "scrape_flood_p99": q(many, 99),
        "scrapes_per_second": len(many) / (t3 - t2),
    }


@contextlib.asynccontextmanager
async def probe_commits(client: Redis, url: str) -> AsyncIterator[list[float]]:
    """The times (``perf_counter``) at which probe comments were committed, from Redis keyspace
    notifications, appended while the context is open: one per probe, the commit script's
    ``SADD`` of its id to a dedup set of the probe stream (each new event's own write; the
    stream's totals are written once per batch, however many probes it holds). Stamped as they
    arrive by a process of their own (``bench.probes``, connecting to ``url``, ``client``'s
    server): this process's loop is busy sending."""
    committed: list[float] = []
    await client.config_set("notify-keyspace-events", "Ks")
    db = client.connection_pool.connection_kwargs.get("db", 0)
    pattern = f"__keyspace@{db}__:{StreamKeys('bench-probe').seen_prefix}*"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.probes", url, pattern, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    stdout = child.stdout
    ready = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            ready = await stdout.readline()
    if ready != b"ready\n":
        child.kill()
        await child.wait()
        raise RuntimeError("the probe listener did not start")

    async def listen() -> None:
        while line := await stdout.readline():
            committed.append(float(line))

    listening = asyncio.create_task(listen(), name="bench.probes.listen")
    try:
        yield committed
    finally:
        child.terminate()
        await child.wait()
        await listening


async def _until_counted(committed: list[float], probes: int, within: float = 2.0) -> None:
    """Give the last probes' notifications up to ``within`` seconds to arrive."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while len(committed) < probes:  # noqa: ASYNC110 - filled by probe_commits()
                await asyncio.sleep(0.02)


async def _fill(client: Redis, streams: int, chunk: int = 1000) -> None:
    """``streams`` streams with totals as a sale leaves them (a few platforms, countries and
    SKUs each, viewers, unique counts), written straight in the layout of ``workers/keys.py``."""
    names = [f"bench-fill-{n:05d}" for n in range(streams)]
    for start in range(0, streams, chunk):
        async with client.pipeline(transaction=False) as pipe:
            part = names[start : start + chunk]
            pipe.sadd(keys.STREAMS, *part)
            for n, name in enumerate(part, start):
                k = StreamKeys(name)
                fields: dict[Any, Any] = {}  # hset's mapping type is invariant
                for platform in ("tiktok", "facebook"):
                    fields[f"{keys.COMMENTS}|{platform}"] = 100 + n
                    for country in ("VN", "US"):
                        fields[f"{keys.ORDERS}|{platform}|{country}"] = 10
                        fields[f"{keys.GRAMS}|{platform}|{country}"] = 20_000
                    fields[f"{keys.VALUE}|{platform}|VND"] = 1_200_000
                for sku in ("VT01", "VT02", "VT05"):
                    fields[f"{keys.SKU_GRAMS}|{sku}"] = 5000
                fields[f"{keys.REGION_ORDERS}|VN|Hà Nội"] = 4
                pipe.hset(k.totals, mapping=fields)
                pipe.hset(k.viewers, mapping={"tiktok": 1000, "facebook": 500})
                pipe.pfadd(k.commenters, "a", "b", "c")
                pipe.pfadd(k.buyers, "a")
            await pipe.execute()


async def _publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    """Queue messages at QoS 1 with 8 publishers at once (each waits for its PUBACKs)."""
    chunks = [messages[i::8] for i in range(8)]
    await asyncio.gather(*(Publisher("127.0.0.1", port, chunk).run() for chunk in chunks))


BARE_CLIENTS = ("paho", "gmqtt", "aiomqtt")
"""The bare subscribers' clients: ``bench.peers`` mode ``mqtt-bare`` (paho), ``mqtt-bare-gmqtt``,
``mqtt-bare-aiomqtt``; each has a session of its own."""


async def _mqtt_bare(port: int, n: int, client: str = "paho") -> dict[str, float]:
    """``bench.peers mqtt-bare`` (or ``mqtt-bare-<client>``): drain ``n`` messages of the
    client's session "bench-bare" (or "bench-bare-<client>"; 0: create it); its rate and CPU
    per message."""
    suffix = "" if client == "paho" else f"-{client}"
    profile = os.environ.get("BENCH_PROFILE")
    wrap = ["-m", "cProfile", "-o", f"{profile}.bare{suffix}{n}"] if profile else []
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *wrap,
        "-m",
        "bench.peers",
        f"mqtt-bare{suffix}",
        str(port),
        str(n),
        f"bench-bare{suffix}",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    result: dict[str, float] = orjson.loads(out)
    return result


def _redis_cpu(info: dict[str, Any]) -> float:
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_split(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median, min and max of each process's CPU per event over pipeline runs with detail."""
    names = ("ingester_cpu_us_per_event", "redis_cpu_us_per_event", "feed_cpu_us_per_event")
    return {
        name.removesuffix("_cpu_us_per_event"): spread([run[name] for run in runs])
        for name in names
    }


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def scrape_table(out: dict[str, Any]) -> str:
    lines = [
        "| streams | scrape, one at a time (ms) | scrape p50 / p99 under flood (ms) | scrapes/s "
        "| commit p50 / p99 / max (ms): no scrapes | one scraper | flood "
        "| body (MiB) | RSS peak (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted((k for k in out if k.startswith("scrape_")), key=lambda k: int(k[7:])):
        m = {name: s["median"] for name, s in out[key].items()}
        lines.append(
            f"| {int(key[7:]):,} | {m['scrape_single_p50']:.1f} | {m['scrape_flood_p50']:.0f} / "
            f"{m['scrape_flood_p99']:.0f} | {m['scrapes_per_second']:.0f} | "
            f"{m['commit_idle_p50']:.2f} / {m['commit_idle_p99']:.2f} / "
            f"{m['commit_idle_max']:.1f} | {m['commit_single_p50']:.2f} / "
            f"{m['commit_single_p99']:.2f} / {m['commit_single_max']:.1f} | "
            f"{m['commit_flood_p50']:.2f} / {m['commit_flood_p99']:.2f} / "
            f"{m['commit_flood_max']:.1f} | {m['body_mb']:.2f} | {m['rss_peak_mb']:.0f} |"
        )
    return "\n".join(lines)


def mqtt_line(out: dict[str, Any]) -> str:
    d = out["mqtt_detail"]
    return (
        f"- MQTT drain against the bare paho subscriber: {d['ratio_to_bare']['median']:.2f}x "
        f"(min {d['ratio_to_bare']['min']:.2f}, max {d['ratio_to_bare']['max']:.2f}); "
        f"ingester {d['ingester_cpu_us_per_event']['median']:.1f} µs CPU per event (bare "
        f"subscriber {d['bare_cpu_us_per_event']['median']:.1f} µs), "
        f"{d['events_per_commit']['median']:,.0f} events per commit"
    )


def mqtt_clients_table(out: dict[str, Any]) -> str:
    """The ingester's drain beside each bare client's, from the same runs (medians, min-max)."""
    d = out["mqtt_detail"]

    def rate(s: dict[str, float]) -> str:
        return f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"

    def ratio(s: dict[str, float]) -> str:
        return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"

    lines = [
        "| QoS 1 backlog drained by | msgs/s, median (min-max) | CPU µs per msg "
        "| ingester ÷ this | this ÷ bare paho |",
        "|---|---|---|---|---|",
        f"| ingester (aiomqtt 2 on paho, ack after commit) | {rate(out['mqtt'])} | "
        f"{d['ingester_cpu_us_per_event']['median']:.1f} | 1.00 | "
        f"{ratio(d['ratio_to_bare'])} |",
        f"| bare paho-mqtt, its own loop | {rate(d['bare'])} | "
        f"{d['bare_cpu_us_per_event']['median']:.1f} | {ratio(d['ratio_to_bare'])} | 1.00 |",
    ]
    names = {"gmqtt": "bare gmqtt, uvloop", "aiomqtt": "bare aiomqtt 2, uvloop"}
    for client in BARE_CLIENTS[1:]:
        lines.append(
            f"| {names[client]} | {rate(d[f'bare_{client}'])} | "
            f"{d[f'bare_{client}_cpu_us_per_event']['median']:.1f} | "
            f"{ratio(d[f'ratio_to_bare_{client}'])} | {ratio(d[f'bare_{client}_to_paho'])} |"
        )
    return "\n".join(lines)


def mqtt_table(out: dict[str, Any]) -> str:
    def row(name: str, s: dict[str, float], unit: str) -> str:
        return f"| {name} | {s['median']:,.0f} | {s['min']:,.0f} | {s['max']:,.0f} | {unit} |"

    lines = ["| measure | median | min | max | unit |", "|---|---|---|---|---|"]
    lines.append(row("MQTT QoS 1 drain", out["mqtt"], "events/s"))
    lines.append(row("bare paho subscriber, same backlog", out["mqtt_detail"]["bare"], "msgs/s"))
    return "\n".join([*lines, "", mqtt_line(out), "", mqtt_clients_table(out)])


def orders_table(out: dict[str, Any]) -> str:
    def row(name: str, s: dict[str, float]) -> str:
        return f"| {name} | {s['median']:,.0f} | {s['min']:,.0f} | {s['max']:,.0f} | events/s |"

    return "\n".join(
        [
            "| order-heavy workload | median | min | max | unit |",
            "|---|---|---|---|---|",
            row("ceiling: receive + parse only", out["orders_ceiling"]),
            row("our pipeline, one process", out["orders_pipeline"]),
            row("naive peer", out["orders_naive"]),
            "",
            f"- order-heavy: ratio to the ceiling {out['orders_ratio_to_ceiling']:.2f}; to the "
            f"naive peer {out['orders_ratio_to_naive']:.1f}x",
            cpu_line(out["orders_cpu"]),
            "",
            *picows_lines(out, "orders_", "order-heavy"),
        ]
    )


def picows_lines(out: dict[str, Any], prefix: str, workload: str) -> list[str]:
    """The picows transport's rows, beside the websockets ones."""

    def row(name: str, s: dict[str, float]) -> str:
        return f"| {name} | {s['median']:,.0f} | {s['min']:,.0f} | {s['max']:,.0f} | events/s |"

    if f"{prefix}picows_pipeline" not in out:
        return []
    ratio = f"{prefix}picows_ratio_to_"
    return [
        f"| {workload}, transport = picows | median | min | max | unit |",
        "|---|---|---|---|---|",
        row("ceiling through picows: receive + parse only", out[f"{prefix}picows_ceiling"]),
        row("our pipeline, one process, picows", out[f"{prefix}picows_pipeline"]),
        "",
        f"- picows pipeline: ratio to the websockets ceiling {out[ratio + 'ceiling']:.2f}, "
        f"to the picows ceiling {out[ratio + 'picows_ceiling']:.2f}; to the naive peer "
        f"{out[ratio + 'naive']:.1f}x",
        cpu_line(out[f"{prefix}picows_cpu"]),
    ]


def cpu_line(split: dict[str, dict[str, float]]) -> str:
    return "- CPU per event (median of the runs): " + ", ".join(
        f"{name} {s['median']:.1f} µs" for name, s in split.items()
    )


def throughput_table(out: dict[str, Any]) -> str:
    def row(name: str, s: dict[str, float]) -> str:
        return f"| {name} | {s['median']:,.0f} | {s['min']:,.0f} | {s['max']:,.0f} | events/s |"

    lines = [
        "| ordinary workload | median | min | max | unit |",
        "|---|---|---|---|---|",
        row("ceiling: receive + parse only", out["ceiling"]),
        row("our pipeline, one process", out["pipeline"]),
        row("naive peer", out["naive"]),
    ]
    for q in ("p50", "p99", "max"):
        s = out["latency_10000"][q]
        lines.append(
            f"| latency {q} at 10,000/s | {s['median']:.1f} | {s['min']:.1f} | "
            f"{s['max']:.1f} | ms |"
        )
    lines += [
        "",
        f"- ratio to the ceiling: {out['ratio_to_ceiling']:.2f}; to the naive peer: "
        f"{out['ratio_to_naive']:.1f}x",
        cpu_line(out["pipeline_cpu"]),
        "",
        *picows_lines(out, "", "ordinary workload"),
    ]
    return "\n".join(lines)


def push_table(out: dict[str, Any]) -> str:
    def row(name: str, s: dict[str, float]) -> str:
        return f"| {name} | {s['median']:,.0f} | {s['min']:,.0f} | {s['max']:,.0f} | events/s |"

    lines = ["| pushed over 16 connections | median | min | max | unit |", "|---|---|---|---|---|"]
    lines += [row(f"{p} process(es), one shared port", out[f"push_{p}"]) for p in (1, 2)]
    return "\n".join(lines)


def table(out: dict[str, Any]) -> str:
    def row(name: str, s: dict[str, float], unit: str) -> str:
        return f"| {name} | {s['median']:,.0f} | {s['min']:,.0f} | {s['max']:,.0f} | {unit} |"

    lines = ["| measure | median | min | max | unit |", "|---|---|---|---|---|"]
    lines.append(row("ceiling: receive + parse only", out["ceiling"], "events/s"))
    lines.append(row("our pipeline, one process", out["pipeline"], "events/s"))
    lines.append(row("naive peer", out["naive"], "events/s"))
    for rate in (1_000, 10_000):
        lat = out[f"latency_{rate}"]
        for q in ("p50", "p99", "max"):
            s = lat[q]
            lines.append(
                f"| latency {q} at {rate:,}/s | {s['median']:.1f} | {s['min']:.1f} | "
                f"{s['max']:.1f} | ms |"
            )
    lines.append(row("MQTT QoS 1 drain", out["mqtt"], "events/s"))
    lines.append(row("bare paho subscriber, same backlog", out["mqtt_detail"]["bare"], "msgs/s"))
    for p in (1, 2, 4):
        lines.append(row(f"{p} process(es), partitioned", out[f"scaling_{p}"], "events/s"))
    d, rss = out["detail"], out["rss"]
    lines += [
        "",
        f"- ratio to the ceiling: {out['ratio_to_ceiling']:.2f}; to the naive peer: "
        f"{out['ratio_to_naive']:.1f}x",
        f"- after {d['distinct']:,} distinct events: dedup sets {d['dedup_bytes_per_id']:.1f} "
        f"B/id, all Redis memory {d['redis_bytes_per_id']:.1f} B/id",
        f"- CPU per event: Redis {d['redis_cpu_us_per_event']:.1f} µs, ingester "
        f"{d['ingester_cpu_us_per_event']:.1f} µs, feed {d['feed_cpu_us_per_event']:.1f} µs "
        f"({d['cores_busy']:.2f} cores busy)",
        f"- ingester RSS: {rss['rss_start_mb']:.0f} MB at start, "
        + ", ".join(f"{v:.0f} MB {k[7:-3]}" for k, v in rss.items() if k.startswith("rss_at_"))
        + f" events (growth {rss['growth']:.1%})",
        mqtt_line(out),
        "",
        *picows_lines(out, "", "ordinary workload"),
        "",
        mqtt_clients_table(out),
        "",
        orders_table(out),
        "",
        scrape_table(out),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: check the bench works")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    parser.add_argument(
        "--only",
        choices=["throughput", "scrape", "mqtt", "orders", "push"],
        help="run one section only",
    )
    parser.add_argument("--mqtt-messages", type=int, help="the MQTT backlog (default 100,000)")
    args = parser.parse_args()
    sizes = Sizes.quick() if args.quick else Sizes.full()
    if args.mqtt_messages:
        sizes = dataclasses.replace(sizes, mqtt=args.mqtt_messages)
    with tempfile.TemporaryDirectory(prefix="li-bench-") as tmp:
        bench = Bench(sizes, args.runs, Path(tmp))
        sections = {
            "throughput": bench.run_throughput,
            "scrape": bench.run_scrapes,
            "mqtt": bench.run_mqtt,
            "orders": bench.run_orders,
            "push": bench.run_push,
        }
        out = asyncio.run(sections[args.only]() if args.only else bench.run())
    out["machine"] = {"cores": os.cpu_count(), "python": sys.version.split()[0]}
    out["sizes"] = dataclasses.asdict(sizes)
    path = args.out or RESULTS / time.strftime("%Y%m%d-%H%M%S.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2), encoding="utf-8")
    tables = {
        "throughput": throughput_table,
        "scrape": scrape_table,
        "mqtt": mqtt_table,
        "orders": orders_table,
        "push": push_table,
    }
    print(tables[args.only](out) if args.only else table(out))
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
