"""Feed gaps, pure: unmarked runs in the replicas' bitmaps, and what a replica marks, with an
injected clock."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from workers.feeds import MIN_GAP_SECONDS, FeedRecorder, Gap, State, bitmap_key, gaps_in, zero_runs

DAY = 86_400


def bitmap(marked: set[int]) -> bytes:
    bits = bytearray(DAY // 8)
    for second in marked:
        bits[second // 8] |= 0x80 >> (second % 8)
    return bytes(bits)


def test_zero_runs() -> None:
    bits = bitmap({2, 3, 4, 9})
    assert zero_runs(bits, 0, 0, 12) == [(0, 2), (5, 9), (10, 12)]
    assert zero_runs(b"", 100, 100, 103) == [(100, 103)]


def test_a_gap_across_midnight_is_one_gap_and_short_ones_are_not_gaps() -> None:
    day = 20_000
    end_of_day = (day + 1) * DAY
    first = {s - day * DAY for s in range(end_of_day - 100, end_of_day - 30)}
    first -= {end_of_day - 60 - day * DAY}  # one second missed: not a gap
    second = set(range(40, 100))
    bitmaps = {day: bitmap(first), day + 1: bitmap(second)}
    changes = [(end_of_day - 31.0, str(State.DISCONNECTED))]
    gaps = gaps_in(
        "feed", bitmaps, end_of_day - 200, end_of_day + 100, changes=changes, now=end_of_day + 5000
    )
    assert gaps == [Gap("feed", end_of_day - 30, end_of_day + 40, "disconnected")]
    assert MIN_GAP_SECONDS > 1


def test_an_open_window_ending_unmarked_is_an_ongoing_gap_else_the_end() -> None:
    day = 20_000
    bitmaps = {day: bitmap(set(range(0, 50)))}
    start, end = day * DAY, day * DAY + 80
    (gap,) = gaps_in("feed", bitmaps, start, end, changes=[], now=end)
    assert (gap.start, gap.end, gap.ongoing, gap.state) == (start + 50, end, True, "unknown")
    assert gaps_in("feed", bitmaps, start, end, changes=[], now=end, open_end=False) == []


class Clock:
    now = 1_000.0

    def __call__(self) -> float:
        return self.now


def marks(commands: list[tuple[str, Any]]) -> list[int]:
    return [args[1] for name, args in commands if name == "setbit"]


def test_a_replica_marks_receiving_seconds_and_notices_silence() -> None:
    clock = Clock()
    recorder = FeedRecorder(Redis(), silent_seconds=3, retention_seconds=60, clock=clock)
    recorder.connected("feed", True)
    recorder.received("feed")
    assert marks(recorder.tick_commands(clock.now)) == [1000]
    clock.now = 1002.5  # still within the silent time
    assert marks(recorder.tick_commands(clock.now)) == [1001, 1002]
    clock.now = 1004.0  # 3 s without a frame: silent, nothing marked
    commands = recorder.tick_commands(clock.now)
    assert marks(commands) == []
    logged = [args[1]["state"] for name, args in commands if name == "xadd"]
    assert logged == ["connected", "receiving", "silent"]
    clock.now = 1010.2
    recorder.received("feed")  # back: marked from now, not the five seconds before
    assert marks(recorder.tick_commands(clock.now)) == [1010]
    assert ("expireat", (bitmap_key("feed", 0), DAY + 60)) in recorder.tick_commands(1011.0)
