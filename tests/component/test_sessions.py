"""Sessions against a real Redis: opened by the commit script with the first counted event,
ended by command or after the idle time (the clock injected through the store and commands)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from ingest.model import Comment
from workers.sessions import ENDED, IDLE, OPEN, REPLACED, Sessions
from workers.store import Store, StoreSettings

T0 = 1_780_000_000
IDLE_SECONDS = 1800


def comment(stream: str, n: int, at: int) -> Comment:
    return Comment(stream, "tiktok", f"c{n}", at * 1000, "u")


def store(redis: Redis, now: int) -> Store:
    return Store(redis, StoreSettings(now_override=now, session_idle_seconds=IDLE_SECONDS))


@pytest.mark.asyncio
async def test_first_event_opens_idle_time_ends_and_next_event_opens_another(
    redis: Redis, stream: str
) -> None:
    now = [float(T0)]
    sessions = Sessions(redis, IDLE_SECONDS, clock=lambda: now[0])
    assert await sessions.all(stream) == []
    await store(redis, T0).commit([comment(stream, 1, T0), comment(stream, 2, T0 + 90)])
    await store(redis, T0 + 600).commit([comment(stream, 2, T0 + 90)])  # duplicate: no touch
    (first,) = await sessions.all(stream)
    assert (first.n, first.how, first.start, first.end) == (1, OPEN, T0, None)
    assert (first.first_minute, first.last_minute) == (T0 // 60, (T0 + 90) // 60)
    await store(redis, T0 + 1000).commit([comment(stream, 3, T0 + 1000)])
    now[0] = T0 + 1000 + IDLE_SECONDS + 1  # idle: shown ended at its last event
    (first,) = await sessions.all(stream)
    assert (first.how, first.end) == (IDLE, T0 + 1000)
    later = T0 + 1000 + IDLE_SECONDS + 5
    await store(redis, later).commit([comment(stream, 4, later)])
    now[0] = later
    ended, second = await sessions.all(stream)
    assert (ended.n, ended.how, ended.start, ended.end) == (1, IDLE, T0, T0 + 1000)
    assert (ended.first_minute, ended.last_minute) == (T0 // 60, (T0 + 1000) // 60)
    assert (second.n, second.how, second.start) == (2, OPEN, later)


@pytest.mark.asyncio
async def test_start_and_end_commands(redis: Redis, stream: str) -> None:
    now = [float(T0)]
    sessions = Sessions(redis, IDLE_SECONDS, clock=lambda: now[0])
    assert await sessions.end(stream) == 0  # nothing open
    assert await sessions.start(stream) == 1
    await store(redis, T0 + 60).commit([comment(stream, 1, T0 + 60)])
    now[0] = T0 + 120
    assert await sessions.start(stream) == 2  # the first one is replaced
    now[0] = T0 + 300
    assert await sessions.end(stream) == 2
    one, two = await sessions.all(stream)
    assert (one.how, one.end, one.first_minute) == (REPLACED, T0 + 120, (T0 + 60) // 60)
    assert (two.how, two.start, two.end, two.first_minute) == (ENDED, T0 + 120, T0 + 300, None)
    await store(redis, T0 + 400).commit([comment(stream, 2, T0 + 400)])  # opens the third
    assert [(s.n, s.how) for s in await sessions.all(stream)] == [
        (1, REPLACED),
        (2, ENDED),
        (3, OPEN),
    ]
    assert (await sessions.get(stream, 1)) == one
