"""Rate limits and connection caps of the listeners, on an injected clock."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ingest.sources.admission import (
    CLIENT,
    LISTENER,
    ConnectionCaps,
    RateLimiter,
    RateLimits,
    Refusal,
    TokenBucket,
    client_key,
    retry_after,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **limits: Any) -> RateLimiter:
    """A client share of 3 at once and 2 a second, 4 clients remembered, unless ``limits``."""
    base = RateLimits(
        per_second=100.0, burst=100, client_per_second=2.0, client_burst=3, max_clients=4
    )
    return RateLimiter(dataclasses.replace(base, **limits), clock)


def test_a_bucket_takes_its_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(per_second=4.0, burst=2, now=0.0)
    taken = 0
    while not bucket.wait(0.0):
        bucket.take()
        taken += 1
    assert taken == 2
    assert bucket.wait(0.0) == pytest.approx(0.25)
    assert bucket.wait(0.25) == 0.0
    bucket.take()
    assert bucket.wait(100.0) == 0.0
    assert bucket.tokens == 2  # never more than the burst, however long it waited


def test_a_client_over_its_burst_is_refused_with_whole_seconds_to_wait() -> None:
    clock = Clock()
    limits = limiter(clock, client_per_second=0.4)
    assert [limits.admit("10.0.0.1") for _ in range(3)] == [None] * 3
    assert limits.admit("10.0.0.1") == Refusal(CLIENT, 3)  # 2.5 s to the next token
    assert limits.admit("10.0.0.2") is None  # others are not affected
    clock.now += 2.5
    assert limits.admit("10.0.0.1") is None
    assert limits.admit("10.0.0.1") == Refusal(CLIENT, 3)


def test_a_refused_client_takes_nothing_from_the_listener() -> None:
    clock = Clock()
    limits = limiter(clock, burst=5)
    for _ in range(50):  # a flood from one address
        limits.admit("10.0.0.1")
    assert [limits.admit("10.0.0.2") for _ in range(2)] == [None, None]
    assert limits.listener.tokens == 0  # 3 of the flood, 2 of the other client


def test_the_listener_bucket_bounds_many_clients_together() -> None:
    clock = Clock()
    limits = limiter(clock, per_second=10.0, burst=5, max_clients=100)
    answers = [limits.admit(f"10.0.0.{n}") for n in range(7)]
    assert answers[:5] == [None] * 5
    assert answers[5:] == [Refusal(LISTENER, 1)] * 2
    clock.now += 0.1
    assert limits.admit("10.0.0.6") is None


def test_the_client_table_stays_bounded_and_forgets_the_one_unseen_longest() -> None:
    clock = Clock()
    limits = limiter(clock, per_second=1e6, burst=10**6)
    for _ in range(3):
        limits.admit("victim")
    assert limits.admit("victim") is not None
    for n in range(10_000):  # addresses seen once each
        limits.admit(f"10.1.{n // 256}.{n % 256}")
        assert len(limits.clients) <= 4
    assert "victim" not in limits.clients
    assert limits.admit("victim") is None  # forgotten: a full bucket again


def test_a_client_seen_again_is_kept_over_older_ones() -> None:
    clock = Clock()
    limits = limiter(clock)
    for name in ("a", "b", "c", "d"):
        limits.admit(name)
    limits.admit("a")
    limits.admit("e")
    assert list(limits.clients) == ["c", "d", "a", "e"]


@pytest.mark.parametrize(
    ("wait", "seconds"), [(0.001, 1), (0.5, 1), (1.0, 1), (1.01, 2), (59.2, 60)]
)
def test_retry_after_is_whole_seconds_rounded_up(wait: float, seconds: int) -> None:
    assert retry_after(wait) == seconds


def test_connection_caps_per_listener_and_per_client() -> None:
    caps = ConnectionCaps(max_connections=4, max_per_client=2)
    assert [caps.admit("a") for _ in range(3)] == [None, None, CLIENT]
    assert [caps.admit("b"), caps.admit("c"), caps.admit("d")] == [None, None, LISTENER]
    caps.release("a")
    assert caps.admit("d") is None
    for client in ("a", "b", "c", "d"):
        caps.release(client)
    assert (caps.open, caps.per_client) == (0, {})  # nothing kept for clients gone


@pytest.mark.parametrize(
    ("peername", "key"),
    [
        (("127.0.0.2", 5000), "127.0.0.2"),
        (("2001:db8:1:2:aaaa::1", 5000, 0, 0), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:bbbb::9", 6000, 0, 0), "2001:db8:1:2::/64"),
        (("::ffff:192.0.2.7", 5000, 0, 0), "192.0.2.7"),
        (("fe80::1%eth0", 5000, 0, 2), "fe80::/64"),
        ("/run/ingester.sock", "unknown"),
        (None, "unknown"),
    ],
)
def test_a_client_is_its_ipv4_address_or_its_ipv6_64(peername: object, key: str) -> None:
    assert client_key(peername) == key
