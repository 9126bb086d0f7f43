"""Tests for small pure parts: Backoff, Throttle, ListenError, dedup fingerprints and lookback
generations."""

from __future__ import annotations

import collections
import errno
import hashlib
import random
import socket
from collections.abc import Callable, Iterable

import pytest

from ingest.model import Order
from ingest.sources.backoff import Backoff
from workers.keys import DEDUP_SHARDS, GENERATION_SECONDS, fingerprint, lookback_generations
from workers.logs import Decision, Throttle
from workers.runtime import ListenError

HOUR = 3600


def fixed(value: float) -> Callable[[], float]:
    return lambda: value


def sequence(values: Iterable[float]) -> Callable[[], float]:
    iterator = iter(values)
    return lambda: next(iterator)


# --- Backoff -----------------------------------------------------------------------------------


def test_backoff_ceiling_doubles_up_to_the_maximum() -> None:
    backoff = Backoff(0.5, 30.0, rng=fixed(1.0))
    delays = [backoff.next() for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff.attempt == 9


def test_backoff_is_jittered_within_the_ceiling() -> None:
    backoff = Backoff(1.0, 100.0, rng=fixed(0.25))
    assert [backoff.next() for _ in range(5)] == [0.25, 0.5, 1.0, 2.0, 4.0]


def test_backoff_uses_the_rng_for_every_delay() -> None:
    backoff = Backoff(2.0, 8.0, rng=sequence([0.5, 0.75, 0.5, 1.0]))
    assert [backoff.next() for _ in range(4)] == [1.0, 3.0, 4.0, 8.0]


def test_backoff_never_below_a_tenth_of_initial() -> None:
    backoff = Backoff(0.5, 30.0, rng=fixed(0.0))
    assert [backoff.next() for _ in range(4)] == [0.05, 0.05, 0.05, 0.05]
    small = Backoff(1.0, 10.0, rng=fixed(0.01))
    assert small.next() == 0.1  # 0.01 × 1.0 is below the floor
    assert small.next() == 0.1  # 0.01 × 2.0 too
    assert [small.next() for _ in range(3)] == [0.1, 0.1, 0.1]  # 0.04, 0.08, 0.1 (capped)


def test_backoff_reset_starts_over() -> None:
    backoff = Backoff(0.5, 30.0, rng=fixed(1.0))
    for _ in range(6):
        backoff.next()
    assert backoff.next() == 30.0
    backoff.reset()
    assert backoff.attempt == 0
    assert [backoff.next() for _ in range(3)] == [0.5, 1.0, 2.0]


def test_backoff_initial_equal_to_maximum() -> None:
    backoff = Backoff(3.0, 3.0, rng=fixed(1.0))
    assert [backoff.next() for _ in range(3)] == [3.0, 3.0, 3.0]


def test_backoff_survives_many_attempts() -> None:
    # ~1024 failed reconnects without one healthy connection (hours of outage at 30 s apart).
    backoff = Backoff(0.5, 30.0, rng=fixed(1.0))
    for _ in range(1100):
        assert backoff.next() <= 30.0


def test_backoff_default_rng_stays_in_bounds() -> None:
    backoff = Backoff(0.5, 4.0)
    for attempt in range(50):
        ceiling = min(4.0, 0.5 * 2**attempt)
        assert 0.05 <= backoff.next() <= ceiling


@pytest.mark.parametrize(("initial", "maximum"), [(0, 1), (-1, 1), (2, 1), (0, 0), (-2, -1)])
def test_backoff_invalid_arguments(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial, maximum)


# --- Throttle ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_first_call_is_allowed_with_nothing_suppressed() -> None:
    throttle = Throttle(10.0, clock=Clock())
    assert throttle.decide("key") == Decision(allowed=True, suppressed=0)


def test_throttle_drops_and_counts_within_the_interval() -> None:
    clock = Clock()
    throttle = Throttle(10.0, clock=clock)
    assert throttle.decide("k") == Decision(allowed=True, suppressed=0)
    for step in (0.0, 1.0, 5.0, 9.999):
        clock.now = 1000.0 + step
        assert not throttle.decide("k").allowed
    clock.now = 1010.0
    assert throttle.decide("k") == Decision(allowed=True, suppressed=4)
    # The count starts over after it is reported, and the interval from the allowed call.
    clock.now = 1015.0
    assert not throttle.decide("k").allowed
    clock.now = 1020.0
    assert throttle.decide("k") == Decision(allowed=True, suppressed=1)
    clock.now = 1040.0
    assert throttle.decide("k") == Decision(allowed=True, suppressed=0)


def test_throttle_keys_are_independent() -> None:
    clock = Clock()
    throttle = Throttle(10.0, clock=clock)
    assert throttle.decide(("source-a", "oversize")) == Decision(allowed=True, suppressed=0)
    assert throttle.decide(("source-a", "malformed_json")) == Decision(allowed=True, suppressed=0)
    assert throttle.decide(("source-b", "oversize")) == Decision(allowed=True, suppressed=0)
    assert not throttle.decide(("source-a", "oversize")).allowed
    assert not throttle.decide(("source-a", "oversize")).allowed
    assert not throttle.decide(("source-b", "oversize")).allowed
    clock.now += 10
    assert throttle.decide(("source-a", "oversize")) == Decision(allowed=True, suppressed=2)
    assert throttle.decide(("source-a", "malformed_json")) == Decision(allowed=True, suppressed=0)
    assert throttle.decide(("source-b", "oversize")) == Decision(allowed=True, suppressed=1)


def test_throttle_zero_interval_allows_everything() -> None:
    throttle = Throttle(0.0, clock=Clock())
    assert [throttle.decide("k") for _ in range(3)] == [Decision(allowed=True)] * 3


# --- fingerprint -------------------------------------------------------------------------------

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def test_fingerprint_is_stable_across_releases() -> None:
    # Remembered ids live in Redis across restarts and upgrades: these values must never change.
    assert fingerprint("o\x1fo-1") == (3119, -4511606940707904781)
    assert fingerprint("x\x1fo-1") == (2331, 9147860226254819562)
    assert fingerprint("c\x1fc-1") == (3205, -6060729604054684682)
    assert fingerprint("") == (4001, -2811093403192338590)


def test_fingerprint_is_deterministic() -> None:
    assert fingerprint("o\x1fabc") == fingerprint("o\x1f" + "abc")
    assert fingerprint("Hà Nội") == fingerprint("Hà Nội")


def test_fingerprint_ranges_and_distinctness() -> None:
    identities = [f"{kind}\x1f{n}" for kind in "cvox" for n in range(25_000)]
    identities += ["o\x1f" + "é" * 256, "o\x1f\x00", "o\x1f" + "x" * 256]
    fingerprints = [fingerprint(identity) for identity in identities]
    for shard, member in fingerprints:
        assert 0 <= shard < DEDUP_SHARDS
        assert INT64_MIN <= member <= INT64_MAX
        assert type(shard) is int
        assert type(member) is int
    assert len(set(fingerprints)) == len(identities)
    assert len({member for _, member in fingerprints}) == len(identities)
    # 100k ids spread over the shards: every shard is used, none is badly overloaded.
    per_shard = collections.Counter(shard for shard, _ in fingerprints)
    counts = [per_shard[shard] for shard in range(DEDUP_SHARDS)]
    assert min(counts) > 0
    assert max(counts) < 60
    # Both signs occur: the member uses all 64 bits.
    assert any(member < 0 for _, member in fingerprints)
    assert any(member > 0 for _, member in fingerprints)


def test_created_and_cancelled_fingerprints_differ() -> None:
    created = Order("s", "tiktok", "o-1", 0, cancelled=False)
    cancelled = Order("s", "tiktok", "o-1", 0, cancelled=True)
    assert fingerprint(created.identity) != fingerprint(cancelled.identity)


# --- lookback_generations ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retention_seconds", "generations"),
    [
        (48 * HOUR, 2),
        (24 * HOUR, 1),
        (25 * HOUR, 2),
        (1, 1),
        (24 * HOUR - 1, 1),
        (24 * HOUR + 1, 2),
        (72 * HOUR, 3),
        (90 * 24 * HOUR, 90),
    ],
)
def test_lookback_generations(retention_seconds: int, generations: int) -> None:
    assert GENERATION_SECONDS == 24 * HOUR
    assert lookback_generations(retention_seconds) == generations


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (OSError(errno.EADDRINUSE, "error while attempting to bind"), "address already in use"),
        (OSError(errno.EACCES, "Permission denied"), "permission denied"),
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "name or service not known",
        ),
        (OSError("no errno"), "no errno"),
    ],
)
def test_listen_error_is_one_line_naming_key_and_address(error: OSError, reason: str) -> None:
    assert str(ListenError("sources[2].listen", "127.0.0.1:8766", error)) == (
        f"sources[2].listen: cannot listen on 127.0.0.1:8766: {reason}"
    )


def test_fingerprint_is_its_digest_read_as_documented() -> None:
    # The first two bytes of 80 bits of BLAKE2b pick the shard, the last eight (signed,
    # big-endian) are the member: whatever reads them, the result must be this.
    rng = random.Random(17)
    alphabet = "abcxyz0123é🍒\x1e\x1f "
    for _ in range(20_000):
        identity = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        digest = hashlib.blake2b(identity.encode(), digest_size=10).digest()
        shard = int.from_bytes(digest[:2], "big") % DEDUP_SHARDS
        assert fingerprint(identity) == (shard, int.from_bytes(digest[2:], "big", signed=True))
