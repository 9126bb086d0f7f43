"""What a source needs from the runtime: somewhere to put decoded frames, and hooks for health.

Sources only read, decode with their format and hand the result on; they never talk to Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from ingest.model import Decoded


class Sink(Protocol):
    async def submit(self, source: str, items: Sequence[Decoded]) -> asyncio.Future[None]:
        """Queue a decoded frame; waits while the buffer is full (backpressure).

        The returned future completes once every item is committed (or dead-lettered), for
        sources that acknowledge upstream only after the commit.
        """
        ...

    async def put(self, source: str, items: Sequence[Decoded]) -> None:
        """Queue a decoded frame as :meth:`submit` does, for a source that acknowledges nothing
        upstream: no future is made or kept."""
        ...

    def offer(self, source: str, items: Sequence[Decoded]) -> bool:
        """:meth:`put` without waiting: queued now if the buffer has room, else False and
        nothing queued (the source then waits in ``put``)."""
        ...


class Health(Protocol):
    def connected(self, source: str, up: bool) -> None: ...

    def reconnecting(self, source: str, reason: str, delay: float) -> None: ...

    def received(self, source: str) -> None: ...


class Format(Protocol):
    def decode(self, frame: bytes | str) -> list[Decoded]: ...


def split_address(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6) as (host, port); validated by the config."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)
