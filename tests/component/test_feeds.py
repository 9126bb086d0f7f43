"""Feed gaps against a real Redis: replicas mark the seconds their sources receive, with
injected clocks; a gap is a run of seconds no replica marked."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from tests.servers import RedisServer
from workers.feeds import FeedRecorder, Gap, State, bitmap_key, read_gaps

T0 = (int(time.time()) // 86_400) * 86_400 - 120  # two minutes before a midnight: crosses it
SILENT = 5


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


async def run(recorders: list[tuple[FeedRecorder, Clock]], until: float, alive: set[int]) -> None:
    """Advance every replica's clock to ``until`` in half seconds; ``alive`` replicas receive a
    frame every half second and tick (a killed one does nothing)."""
    clock0 = recorders[0][1]
    while clock0.now < until:
        for n, (recorder, clock) in enumerate(recorders):
            clock.now += 0.5
            if n in alive:
                recorder.received("feed")
                await recorder.tick()


@pytest.mark.asyncio
async def test_a_gap_only_when_no_replica_received(own_redis: RedisServer) -> None:
    async with Redis.from_url(own_redis.url) as redis:
        clocks = [Clock(), Clock()]
        recorders = [
            (FeedRecorder(redis, SILENT, 86_400, clock=c, replica=f"r{n}"), c)
            for n, c in enumerate(clocks)
        ]
        for recorder, _ in recorders:
            recorder.connected("feed", True)
        await run(recorders, T0 + 60, {0, 1})
        await run(recorders, T0 + 90, {0})  # replica 1 killed: replica 0 still receives
        await run(recorders, T0 + 100, {0, 1})  # replica 1 back
        # The feed goes down: both replicas see the disconnect and retry.
        for recorder, _ in recorders:
            recorder.connected("feed", False)
            recorder.reconnecting("feed")
        for _ in range(40):  # 20 s down, ticking, nothing received
            for recorder, clock in recorders:
                clock.now += 0.5
                await recorder.tick()
        for recorder, _ in recorders:
            recorder.connected("feed", True)
        await run(recorders, T0 + 180, {0, 1})  # past midnight
        # Connected, but the feed sends nothing: silent after SILENT seconds.
        for _ in range(30):
            for recorder, clock in recorders:
                clock.now += 0.5
                await recorder.tick()
        await run(recorders, T0 + 240, {0, 1})
        gaps = await read_gaps(redis, "any", T0, T0 + 240, clock=clocks[0])
        assert gaps == [
            Gap("feed", T0 + 101, T0 + 120, State.RECONNECTING),
            Gap("feed", T0 + 180 + SILENT, T0 + 195, State.SILENT),
        ]
        day = (T0 + 240) // 86_400
        ttl = await redis.ttl(bitmap_key("feed", day))
        assert 86_400 < ttl <= 2 * 86_400 + 60
        log = await redis.xrange("li:feed:{feed}:log")
        states = [(f[b"replica"], f[b"state"]) for _, f in log or [] if f]
        assert (b"r0", b"silent") in states
        assert (b"r1", b"disconnected") in states


@pytest.mark.asyncio
async def test_a_gap_still_open_is_ongoing(own_redis: RedisServer) -> None:
    async with Redis.from_url(own_redis.url) as redis:
        clock = Clock()
        recorder = FeedRecorder(redis, SILENT, 86_400, clock=clock, replica="r0")
        recorder.connected("feed", True)
        await run([(recorder, clock)], T0 + 30, {0})
        recorder.connected("feed", False)
        for _ in range(20):
            clock.now += 0.5
            await recorder.tick()
        (gap,) = await read_gaps(redis, "any", T0, clock.now, clock=clock)
        assert (gap.start, gap.state, gap.ongoing) == (T0 + 31, State.DISCONNECTED, True)
