"""The reconnect loop all client sources share: a stop wins over a retry; the MQTT watchdog."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from ingest.sources.backoff import Backoff
from ingest.sources.mqtt import MqttSource, SessionStalled, Watchdog
from ingest.sources.reconnect import Reconnecting, checkpoint


class RecordingHealth:
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
    ``__aexit__`` does when its DISCONNECT times out (or, ``swallow``, just returns)."""

    def __init__(self, swallow: bool) -> None:
        self.swallow = swallow
        self.name = "s"
        self.record = RecordingHealth()
        self.health = self.record
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
        except asyncio.CancelledError:
            if self.swallow:
                return
            raise OSError("disconnect timed out") from None

    def _retry_reason(self, exc: Exception) -> str | None:
        return "network" if isinstance(exc, OSError) else None


@pytest.mark.asyncio
@pytest.mark.parametrize("swallow", [False, True], ids=["cleanup-raises", "cleanup-returns"])
async def test_cancelling_ends_the_loop_whatever_the_session_does_with_it(swallow: bool) -> None:
    source = CleanupFails(swallow)
    task = asyncio.create_task(source.run())
    await source.up.wait()
    task.cancel()
    await asyncio.wait([task])
    assert source.sessions == 1, "the loop reconnected after a stop"
    assert task.cancelled()
    assert source.record.up[-1] is False
    assert source.record.reasons == []


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


@pytest.mark.asyncio
async def test_a_stop_that_a_library_swallowed_is_raised_at_the_checkpoint() -> None:
    """Python 3.11's ``asyncio.wait_for`` returns the result of a future that completes as the
    task is cancelled (aiomqtt waits for CONNACK so): the session would run on after a stop,
    unless it passes a checkpoint."""
    loop = asyncio.get_running_loop()
    passed = asyncio.Event()

    async def session() -> None:
        task = asyncio.current_task()
        assert task is not None
        connack: asyncio.Future[int] = loop.create_future()
        loop.call_soon(connack.set_result, 1)
        loop.call_soon(task.cancel)
        try:
            await asyncio.wait_for(connack, 10)
        finally:
            passed.set()  # the library call returned, or raised the stop itself
        checkpoint()
        await asyncio.sleep(3600)  # consuming, were the stop lost

    task = asyncio.create_task(session())
    await passed.wait()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
