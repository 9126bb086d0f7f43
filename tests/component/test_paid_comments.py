"""Paid comments (YouTube Super Chat) in the commit script, against a real Redis: a paid comment
is a comment, counted once, with its own count and exact amount in micros."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from ingest.model import Comment, PaidComment
from workers import keys
from workers.keys import StreamKeys
from workers.store import Outcome, Store, StoreSettings
from workers.timeline import read_timeline

NOW = 40_000 * keys.GENERATION_SECONDS


def paid(
    stream: str, pid: str, micros: int, currency: str = "VND", user: str = "UC-1"
) -> PaidComment:
    return PaidComment(
        stream, "youtube", pid, 1_750_000_000_000, user, currency=currency, amount_micros=micros
    )


@pytest.mark.asyncio
async def test_a_paid_comment_counts_once_as_a_comment_and_a_paid_comment(
    redis: Redis, stream: str
) -> None:
    s = Store(redis, StoreSettings(now_override=NOW))
    big = 123_456_789_012_345_678  # beyond a double's 2^53: HINCRBY keeps it exact
    events = [
        paid(stream, "youtube:a", big),
        paid(stream, "youtube:b", 1_990_000, "USD", user="UC-2"),
        Comment(stream, "youtube", "youtube:c", 1_750_000_000_000, "UC-3"),
    ]
    assert await s.commit(events) == [Outcome.NEW] * 3
    assert await s.commit([*events, paid(stream, "youtube:a", 5)]) == [Outcome.DUPLICATE] * 4
    (totals,) = await s.totals([stream])
    assert totals.by(keys.COMMENTS) == {("youtube",): 3}
    assert totals.by(keys.PAID_COMMENTS) == {("youtube", "VND"): 1, ("youtube", "USD"): 1}
    assert totals.by(keys.PAID_VALUE_MICROS) == {
        ("youtube", "VND"): big,
        ("youtube", "USD"): 1_990_000,
    }
    assert totals.by(keys.ORDERS) == {}
    assert totals.unique_commenters == 3
    minute = 1_750_000_000_000 // 60_000  # a paid comment is a comment of its minute too
    (bucket,) = await read_timeline(redis, stream, minute, minute)
    assert (bucket.minute, bucket.comments) == (minute, 3)


@pytest.mark.asyncio
async def test_a_paid_comment_that_would_overflow_its_total_is_refused_whole(
    redis: Redis, stream: str
) -> None:
    s = Store(redis, StoreSettings(now_override=NOW))
    field = f"{keys.PAID_VALUE_MICROS}|youtube|VND"
    await redis.hset(StreamKeys(stream).totals, field, keys.TOTAL_LIMIT - 1000)
    outcomes = await s.commit([paid(stream, "youtube:x", 1001), paid(stream, "youtube:y", 1000)])
    assert outcomes == [Outcome.TOTAL_LIMIT, Outcome.NEW]
    (totals,) = await s.totals([stream])
    assert totals.by(keys.PAID_VALUE_MICROS) == {("youtube", "VND"): keys.TOTAL_LIMIT}
    assert totals.by(keys.COMMENTS) == {("youtube",): 1}  # the refused one is no comment either
    # Refused, it was not remembered: once there is room it counts.
    await redis.hset(StreamKeys(stream).totals, field, 0)
    assert await s.commit([paid(stream, "youtube:x", 1001)]) == [Outcome.NEW]
