"""The reconnect loop that every client source shares: one session after another, for ever.

After each ended session the source is down; then it waits a backoff delay with jitter, which
only a session that stayed up ``backoff_reset_after`` seconds resets (a slow failed attempt does
not). Each source says what a session is and which of its errors are worth retrying; the loop
stacks on no retry layer of a library. A stop wins: an error raised while the task is being
cancelled (a library's close that timed out, say) ends the loop as the cancellation it is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable

from ingest.sources.backoff import Backoff
from ingest.sources.base import Health


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ReconnectSettings:
    """How a client source retries: the delays of its :class:`Backoff`, and how long a session
    must stay up to reset them."""

    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    backoff_reset_after: float = 10.0


class Reconnecting:
    """Base of the client sources. Subclasses call ``_reconnect_with`` (or set the attributes
    below), implement ``_session()``, and set ``_connected_at = clock()`` once a session is
    established."""

    name: str
    health: Health
    backoff: Backoff
    backoff_reset_after: float
    clock: Callable[[], float]
    _connected_at: float | None = None

    def _reconnect_with(
        self,
        settings: ReconnectSettings,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.backoff = Backoff(settings.backoff_initial, settings.backoff_max, rng=rng)
        self.backoff_reset_after = settings.backoff_reset_after
        self.clock = clock

    async def _session(self) -> None:
        raise NotImplementedError

    def _retry_reason(self, exc: Exception) -> str | None:
        """A short, bounded reason to retry after ``exc``, or None to let it end the source."""
        return None

    def _ended(self) -> None:
        """Forget the ended session's state."""

    async def run(self) -> None:
        while True:
            self._connected_at = None
            try:
                await self._session()
                reason = "closed"
                if _stopping():  # a library swallowed the cancellation
                    raise asyncio.CancelledError
            except Exception as exc:
                if _stopping():
                    raise asyncio.CancelledError from exc
                why = self._retry_reason(exc)
                if why is None:
                    raise
                reason = why
            finally:
                self._ended()
                self.health.connected(self.name, False)
            up_since = self._connected_at
            if up_since is not None and self.clock() - up_since >= self.backoff_reset_after:
                self.backoff.reset()
            delay = self.backoff.next()
            self.health.reconnecting(self.name, reason, delay)
            await asyncio.sleep(delay)


def checkpoint() -> None:
    """Raise CancelledError if the running task was asked to stop. Called after a library call
    that can swallow a cancellation, so that a session just opened does not run on after a
    stop. In Python 3.11, ``asyncio.wait_for`` returns its future's result when the future
    completes just as the task is cancelled, and aiomqtt waits for CONNACK and SUBACK so: a
    SIGTERM that met a reconnect's CONNACK left the MQTT source draining on, and the process
    past its shutdown deadline."""
    if _stopping():
        raise asyncio.CancelledError


def _stopping() -> bool:
    """The running task has been asked to stop (cancelled, whatever happened since)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
