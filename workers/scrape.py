"""Reads shared by concurrent HTTP requests: one in flight, and a result reused for a short while.

A flood of ``/metrics`` scrapes must not become a flood of Redis reads: every scrape that comes
while a read is in flight waits for that read, and a result younger than the freshness window
(counted from the read's start, so the data is never older than that) answers at once. A read
slower than the window is reused for as long as it took, so however many scrapes come, reading
takes at most half the time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedRead(Generic[T]):
    """``await get()`` runs ``read()`` at most once at a time for all callers.

    A result is reused while younger than ``freshness`` seconds (0: only callers that come
    while it is in flight share it), or for as long after its end as the read took. A failed
    read reaches the callers that waited for it and is then forgotten: the next caller starts a
    new read. A caller that gives up (a timeout, a cancelled request) does not cancel the read
    for the others.
    """

    def __init__(
        self,
        read: Callable[[], Awaitable[T]],
        freshness: float,
        *,
        name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self.freshness = freshness
        self.name = name
        self.clock = clock
        self._result: tuple[float, float, T] | None = None
        """When the last read started and ended, and its result."""
        self._task: asyncio.Task[T] | None = None
        self.reads = 0
        """Reads started."""
        self.waiting = 0
        """Callers waiting for the read in flight."""

    async def get(self) -> T:
        if self._result is not None:
            started, ended, value = self._result
            now = self.clock()
            if now - started < self.freshness or now - ended < ended - started:
                return value
        task = self._task
        if task is None:
            task = self._task = asyncio.create_task(self._run(), name=self.name)
            task.add_done_callback(_retrieve)
        self.waiting += 1
        try:
            return await asyncio.shield(task)
        finally:
            self.waiting -= 1

    async def _run(self) -> T:
        self.reads += 1
        started = self.clock()
        try:
            value = await self._read()
        finally:
            self._task = None
        self._result = (started, self.clock(), value)
        return value

    async def aclose(self) -> None:
        """Cancel a read in flight and forget the last result."""
        task, self._task = self._task, None
        self._result = None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # raises only if this caller is cancelled


def _retrieve(task: asyncio.Task[T]) -> None:
    # Every waiter may have given up: the error was seen by whoever waited, don't warn about it.
    if not task.cancelled():
        task.exception()
