"""Waiting on conditions instead of sleeping, and the time unit every test timeout is written in.

Timeouts are written in ``UNIT`` seconds, scaled by ``LIVESTREAM_TEST_TIMEOUT_SCALE`` on slow
machines.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

UNIT = float(os.environ.get("LIVESTREAM_TEST_TIMEOUT_SCALE", "1"))
POLL = 0.02


async def until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    within: float = 10.0,
    message: str = "condition",
) -> None:
    """Poll ``condition`` (sync or async) until true; fail after ``within`` × UNIT seconds."""
    deadline = time.monotonic() + within * UNIT
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        await asyncio.sleep(POLL)


def until_sync(
    condition: Callable[[], bool], within: float = 10.0, message: str = "condition"
) -> None:
    deadline = time.monotonic() + within * UNIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(POLL)
