"""The EventSub session logic against our EventSub server, without Redis: what it does when
Twitch refuses, goes quiet or misbehaves, and that it never sends anything itself."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence

import orjson
import pytest
import pytest_asyncio
from websockets.asyncio.server import ServerConnection, serve

from ingest.adapter import FormatOptions
from ingest.model import Comment, Decoded
from ingest.sources.eventsub import EventSubSettings, EventSubSource, Helix, chat_subscriptions
from ingest.twitch import EventSubFormat, Revocation
from tests.platforms import EventSubServer
from tests.recorders import RecordingHealth, RecordingSink, running
from tests.servers import free_port
from tests.waiting import until

STREAM = "live-1"


def source(
    server: EventSubServer,
    sink: RecordingSink,
    health: RecordingHealth,
    *,
    url: str | None = None,
    token: str | None = None,
    revoked: list[Revocation] | None = None,
) -> EventSubSource:
    fmt = EventSubFormat(
        FormatOptions(default_stream=STREAM, platforms=frozenset({"twitch"})), server.broadcaster
    )
    settings = EventSubSettings(
        url=url or server.url,
        keepalive_margin=0.3,
        open_timeout=2.0,
        backoff_initial=0.01,
        backoff_max=0.08,
    )
    return EventSubSource(
        "twitch",
        fmt,
        sink,
        health,
        settings,
        helix=Helix(server.helix_url, server.client_id, token or server.token),
        subscriptions=chat_subscriptions(server.broadcaster, "2000"),
        rng=lambda: 1.0,
        on_revoked=(revoked if revoked is not None else []).append,
    )


@pytest_asyncio.fixture
async def server() -> AsyncIterator[EventSubServer]:
    async with EventSubServer(keepalive=1, subscribe_within=0.5).serving() as running_server:
        yield running_server


@pytest.mark.asyncio
async def test_a_refused_token_is_retried_and_never_reported_connected(
    server: EventSubServer,
) -> None:
    health = RecordingHealth()
    async with running(source(server, RecordingSink(), health, token="expired").run()):
        await until(lambda: len(health.retries) >= 3, 10, "three attempts")
    assert health.ups == 0
    assert set(health.reasons) == {"subscribe http 401"}
    assert health.delays[:3] == [0.01, 0.02, 0.04]
    assert server.subscriptions == []


@pytest.mark.asyncio
async def test_a_quiet_session_ends_with_a_keepalive_timeout(server: EventSubServer) -> None:
    health = RecordingHealth()
    sink = RecordingSink()
    async with running(source(server, sink, health).run()):
        await until(lambda: server.active is not None, 10, "a subscription")
        first = server.silence()
        await until(lambda: "keepalive timeout" in health.reasons, 10, "the keepalive timeout")
        await until(lambda: server.active not in (None, first), 10, "a new session")
        assert await server.chat("after", chatter="5")
        await until(lambda: len(sink.events) == 1, 10, "the line after the new session")
    assert health.ups == 2
    assert server.inbound_closes == 0
    (comment,) = sink.events
    assert isinstance(comment, Comment)
    assert comment.id == "twitch:after"


@pytest.mark.asyncio
async def test_a_server_that_does_not_welcome_is_left(server: EventSubServer) -> None:
    async def rude(ws: ServerConnection) -> None:
        await ws.send(orjson.dumps({"metadata": {}, "payload": {}}).decode())
        await ws.wait_closed()

    health = RecordingHealth()
    port = free_port()
    async with serve(rude, "127.0.0.1", port):
        url = f"ws://127.0.0.1:{port}/ws"
        async with running(source(server, RecordingSink(), health, url=url).run()):
            await until(lambda: len(health.retries) >= 2, 10, "two attempts")
    assert set(health.reasons) == {"no welcome"}
    assert health.ups == 0


@pytest.mark.asyncio
async def test_when_no_subscription_is_left_a_new_session_subscribes_again(
    server: EventSubServer,
) -> None:
    revoked: list[Revocation] = []
    health = RecordingHealth()
    sink = RecordingSink()
    async with running(source(server, sink, health, revoked=revoked).run()):
        await until(lambda: server.active is not None, 10, "a subscription")
        first = server.active
        await server.revoke("user_removed")
        await until(lambda: server.active not in (None, first), 10, "a new subscription")
        assert await server.chat("after", chatter="5")
        await until(lambda: len(sink.events) == 1, 10, "the line after the new subscription")
    assert [(r.type, r.status) for r in revoked] == [("channel.chat.message", "user_removed")]
    assert health.reasons == ["revoked"]
    assert server.subscribe_requests == 2


class GatedSink(RecordingSink):
    """A sink that holds every submit while its gate is closed (a full buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0

    async def submit(self, source: str, items: Sequence[Decoded]) -> asyncio.Future[None]:
        self.waiting += 1
        await self.gate.wait()
        self.waiting -= 1
        return await super().submit(source, items)


@pytest.mark.asyncio
async def test_a_hand_over_with_a_full_buffer_loses_nothing(server: EventSubServer) -> None:
    """The old connection is closed once the new one is welcomed, but its frames are still
    unread: the close must wait for them rather than abort after ``close_timeout``."""
    sink = GatedSink()
    health = RecordingHealth()
    eventsub = source(server, sink, health)
    eventsub.settings = dataclasses.replace(eventsub.settings, close_timeout=0.05)
    async with running(eventsub.run()):
        await until(lambda: server.active is not None, 10, "a subscription")
        first = server.active
        sink.gate.set()
        for n in range(5):
            assert await server.chat(f"early-{n}", chatter="1")
        await until(lambda: len(sink.events) == 5, 10, "the first lines")
        sink.gate.clear()
        assert first is not None
        await server.reconnect()
        for n in range(200):  # the drain of the old connection takes the first, then waits
            assert await server.chat(f"old-{n}", chatter="1", session=first)
        await until(lambda: server.active is not first, 10, "the new welcome")
        for n in range(50):
            assert await server.chat(f"new-{n}", chatter="1")
        # Twenty close timeouts with the buffer full: an aborted close would lose old-*.
        await asyncio.sleep(20 * eventsub.settings.close_timeout)
        sink.gate.set()
        await until(lambda: len(sink.events) == 255, 10, "every line")
    assert eventsub.hand_overs == 1
    assert health.retries == []
    assert sorted(sink.event_ids) == sorted(f"twitch:{line}" for line in server.sent)
