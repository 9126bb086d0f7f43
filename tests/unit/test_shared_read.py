"""SharedRead: one read in flight for every caller, reused within its freshness window."""

from __future__ import annotations

import asyncio

import pytest

from workers.scrape import SharedRead


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Source:
    """A read that waits for ``release`` and answers with the read's number, or ``error``."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0
        self.error: Exception | None = None

    async def read(self) -> int:
        self.started += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.started


async def waiting(shared: SharedRead[int], source: Source, n: int) -> None:
    """Until ``n`` callers wait and the read has started (one event-loop turn at a time)."""
    while shared.waiting < n or not source.started:  # noqa: ASYNC110 - no timing involved
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_concurrent_callers_share_one_read() -> None:
    source, clock = Source(), Clock()
    shared = SharedRead(source.read, 1.0, name="test.read", clock=clock)
    callers = [asyncio.create_task(shared.get()) for _ in range(50)]
    await waiting(shared, source, 50)
    source.release.set()
    assert await asyncio.gather(*callers) == [1] * 50
    assert source.started == shared.reads == 1


@pytest.mark.asyncio
async def test_a_result_is_reused_within_the_window_counted_from_the_reads_start() -> None:
    source, clock = Source(), Clock()
    source.release.set()
    shared = SharedRead(source.read, 1.0, name="test.read", clock=clock)
    assert await shared.get() == 1
    clock.now += 0.999
    assert await shared.get() == 1
    clock.now += 0.001
    assert await shared.get() == 2


@pytest.mark.asyncio
async def test_a_read_slower_than_the_window_is_reused_for_as_long_as_it_took() -> None:
    source, clock = Source(), Clock()
    shared = SharedRead(source.read, 1.0, name="test.read", clock=clock)
    first = asyncio.create_task(shared.get())
    await waiting(shared, source, 1)
    clock.now += 3.0  # the read takes 3 s
    source.release.set()
    assert await first == 1
    clock.now += 2.999  # reading never takes more than half the time
    assert await shared.get() == 1
    clock.now += 0.001
    assert await shared.get() == 2


@pytest.mark.asyncio
async def test_an_error_reaches_its_waiters_and_is_not_kept() -> None:
    source, clock = Source(), Clock()
    source.error = ConnectionError("down")
    shared = SharedRead(source.read, 1.0, name="test.read", clock=clock)
    callers = [asyncio.create_task(shared.get()) for _ in range(3)]
    await waiting(shared, source, 3)
    source.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert source.started == 1
    source.error = None  # no time has passed: a new read all the same
    assert await shared.get() == 2


@pytest.mark.asyncio
async def test_a_caller_giving_up_does_not_cancel_the_read_for_the_others() -> None:
    source, clock = Source(), Clock()
    shared = SharedRead(source.read, 1.0, name="test.read", clock=clock)
    impatient = asyncio.create_task(shared.get())
    patient = asyncio.create_task(shared.get())
    await waiting(shared, source, 2)
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    source.release.set()
    assert await patient == 1
    assert shared.reads == 1


@pytest.mark.asyncio
async def test_zero_freshness_shares_only_the_read_in_flight() -> None:
    source, clock = Source(), Clock()
    source.release.set()
    shared = SharedRead(source.read, 0.0, name="test.read", clock=clock)
    assert list(await asyncio.gather(shared.get(), shared.get())) == [1, 1]
    assert await shared.get() == 2


@pytest.mark.asyncio
async def test_close_cancels_the_read_in_flight() -> None:
    source, clock = Source(), Clock()
    shared = SharedRead(source.read, 1.0, name="test.read", clock=clock)
    caller = asyncio.create_task(shared.get())
    await waiting(shared, source, 1)
    await shared.aclose()
    with pytest.raises(asyncio.CancelledError):
        await caller
