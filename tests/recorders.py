"""In-test stand-ins for what a source needs from the runtime: a Sink and a Health that record
every call, a clock the test moves by hand, and a helper that runs a source as a task."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, Literal

from ingest.model import Decoded, Event, Reason, Rejection


class RecordingSink:
    """Records every submitted frame; the returned future is already complete (instant commit)."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, list[Decoded]]] = []

    async def submit(self, source: str, items: Sequence[Decoded]) -> asyncio.Future[None]:
        self.frames.append((source, list(items)))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def put(self, source: str, items: Sequence[Decoded]) -> None:
        await self.submit(source, items)

    def offer(self, source: str, items: Sequence[Decoded]) -> bool:
        self.frames.append((source, list(items)))
        return True

    @property
    def items(self) -> list[Decoded]:
        return [item for _, items in self.frames for item in items]

    @property
    def events(self) -> list[Event]:
        return [item for item in self.items if not isinstance(item, Rejection)]

    @property
    def event_ids(self) -> list[str]:
        return [event.id for event in self.events]

    @property
    def reasons(self) -> list[Reason]:
        return [item.reason for item in self.items if isinstance(item, Rejection)]

    @property
    def sources(self) -> set[str]:
        return {source for source, _ in self.frames}


@dataclasses.dataclass(frozen=True)
class HealthCall:
    what: Literal["connected", "reconnecting", "received"]
    source: str
    up: bool | None = None
    reason: str = ""
    delay: float = 0.0


class RecordingHealth:
    """Records every health call, in order."""

    def __init__(self) -> None:
        self.calls: list[HealthCall] = []

    def connected(self, source: str, up: bool) -> None:
        self.calls.append(HealthCall("connected", source, up=up))

    def reconnecting(self, source: str, reason: str, delay: float) -> None:
        self.calls.append(HealthCall("reconnecting", source, reason=reason, delay=delay))

    def received(self, source: str) -> None:
        self.calls.append(HealthCall("received", source))

    def story(self) -> list[str]:
        """Connection transitions, readable: ``up``, ``down``, ``retry <reason> after <delay>``."""
        out: list[str] = []
        for call in self.calls:
            if call.what == "connected":
                out.append("up" if call.up else "down")
            elif call.what == "reconnecting":
                out.append(f"retry {call.reason} after {call.delay:g}")
        return out

    @property
    def ups(self) -> int:
        return sum(1 for call in self.calls if call.what == "connected" and call.up)

    @property
    def retries(self) -> list[HealthCall]:
        return [call for call in self.calls if call.what == "reconnecting"]

    @property
    def delays(self) -> list[float]:
        return [call.delay for call in self.retries]

    @property
    def reasons(self) -> list[str]:
        return [call.reason for call in self.retries]

    @property
    def received_count(self) -> int:
        return sum(1 for call in self.calls if call.what == "received")


class ManualClock:
    """A monotonic clock that only moves when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.asynccontextmanager
async def running(coro: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run a source's ``run()`` as a task; cancel it on exit, re-raising anything but the cancel."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
