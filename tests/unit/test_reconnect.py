"""The reconnect loop all client sources share: a stop wins over a retry; the MQTT watchdog."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from ingest.sources.backoff import Backoff
from ingest.sources.mqtt import MqttSource, SessionStalled, Watchdog
from ingest.sources.reconnect import Reconnecting


class Health:
    def __init__(self) -> None:
        self.up: list[bool] = []
        self.reasons: list[str] = []

    def connected(self, source: str, up: bool) -> None:
        self.up.append(up)

    def reconnecting(self, source: str, reason: str, delay: float) -> None:
        self.reasons.append(reason)

    def received(self, source: str) -> None:
        pass


class CleanupFails(Reconnecting):
    """A session whose cleanup, once cancelled, raises a retryable error, as aiomqtt's
    ``__aexit__`` does when its DISCONNECT times out."""

    def __init__(self) -> None:
        self.name = "s"
        self.health = Health()
        self.backoff = Backoff(0.001, 0.001)
        self.backoff_reset_after = 10.0
        self.clock = lambda: 0.0
        self.sessions = 0
        self.up = asyncio.Event()

    async def _session(self) -> None:
        self.sessions += 1
        if self.sessions > 1:
            raise RuntimeError("reconnected after a stop")  # not retryable: ends the test
        self.up.set()
        try:
            await asyncio.Event().wait()
        finally:
            raise OSError("disconnect timed out")

    def _retry_reason(self, exc: Exception) -> str | None:
        return "network" if isinstance(exc, OSError) else None


@pytest.mark.asyncio
async def test_cancelling_ends_the_loop_even_if_the_cleanup_raises_a_retryable_error() -> None:
    source = CleanupFails()
    task = asyncio.create_task(source.run())
    await source.up.wait()
    task.cancel()
    await asyncio.wait([task])
    assert source.sessions == 1, "the loop reconnected after a stop"
    assert task.cancelled()
    assert source.health.up[-1] is False
    assert source.health.reasons == []


def test_watchdog_expires_after_its_limit_of_silence_and_feeding_resets_it() -> None:
    now = [100.0]
    watchdog = Watchdog(45.0, lambda: now[0])
    now[0] += 45.0
    assert not watchdog.expired()
    watchdog.feed()
    now[0] += 45.0
    assert not watchdog.expired()
    now[0] += 0.5
    assert watchdog.expired()


def test_a_stalled_session_is_retried_with_its_own_reason() -> None:
    source = MqttSource.__new__(MqttSource)
    ended = aiomqtt.MqttError("Disconnected during message iteration")
    ended.__cause__ = SessionStalled()
    assert source._retry_reason(ended) == "stalled"
    assert source._retry_reason(aiomqtt.MqttError("x")) == "mqtt error"
