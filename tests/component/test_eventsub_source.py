"""The EventSub session logic against our EventSub server, without Redis: what it does when
Twitch refuses, goes quiet or misbehaves, and that it never sends anything itself."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import orjson
import pytest
import pytest_asyncio
from websockets.asyncio.server import ServerConnection, serve

from ingest.adapter import FormatOptions
from ingest.model import Comment, Decoded
from ingest.sources.eventsub import EventSubSettings, EventSubSource, Helix, chat_subscriptions
from ingest.sources.twitch_auth import RefreshingToken, RefreshSettings, Tokens
from ingest.twitch import EventSubFormat, Revocation
from tests.platforms import EventSubServer
from tests.recorders import ManualClock, RecordingHealth, RecordingSink, running
from tests.servers import free_port
from tests.waiting import UNIT, until

STREAM = "live-1"


def source(
    server: EventSubServer,
    sink: RecordingSink,
    health: RecordingHealth,
    *,
    url: str | None = None,
    token: str | Tokens | None = None,
    revoked: list[Revocation] | None = None,
    backoff: float = 0.01,
) -> EventSubSource:
    fmt = EventSubFormat(
        FormatOptions(default_stream=STREAM, platforms=frozenset({"twitch"})), server.broadcaster
    )
    settings = EventSubSettings(
        url=url or server.url,
        keepalive_margin=0.3,
        open_timeout=2.0,
        backoff_initial=backoff,
        backoff_max=backoff * 8,
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


# --- the refresh-token flow ----------------------------------------------------------------


def refreshing(
    server: EventSubServer,
    failures: list[str],
    *,
    file: Path | None = None,
    oauth_url: str | None = None,
    backoff: float = 0.01,
    clock: ManualClock | None = None,
) -> RefreshingToken:
    oauth = server.oauth
    settings = RefreshSettings(
        client_id=server.client_id,
        client_secret=oauth.client_secret,
        refresh_token=oauth.initial_refresh_token,
        refresh_token_file=file,
        oauth_url=oauth_url or server.oauth_url,
        timeout=2.0,
        backoff_initial=backoff,
        backoff_max=backoff * 8,
    )
    return RefreshingToken(
        settings, clock=clock or time.monotonic, rng=lambda: 1.0, on_failure=failures.append
    )


@pytest.mark.asyncio
async def test_subscriptions_outlive_several_token_expiries(
    server: EventSubServer, tmp_path: Path
) -> None:
    """Tokens live 2 s and every refresh rotates the refresh token (a public client): each new
    session subscribes with a token that is still valid, and the rotated refresh token is kept
    in its file."""
    server.oauth.lifetime = 2
    server.oauth.client_secret = None
    file = tmp_path / "refresh-token"
    failures: list[str] = []
    tokens = refreshing(server, failures, file=file)
    health = RecordingHealth()
    sink = RecordingSink()
    async with running(source(server, sink, health, token=tokens).run()):
        await until(lambda: server.active is not None, 10, "a subscription")
        for round_ in range(3):
            used = server.subscribed_with[-1]
            await until(lambda: not server.oauth.valid(used), 10, "the token to expire")  # noqa: B023
            for n in range(5):
                assert await server.chat(f"r{round_}-{n}", chatter="5")
            dead = server.silence()  # a new session needs new subscriptions, so a token
            await until(lambda: server.active not in (None, dead), 10, "a new session")  # noqa: B023
        assert await server.chat("last", chatter="5")
        await until(lambda: len(sink.events) == 16, 10, "every line")
    assert server.refused_tokens == 0  # never an expired token
    assert server.subscribe_requests == 4
    assert len(set(server.subscribed_with)) == 4
    assert health.reasons == ["keepalive timeout"] * 3
    assert failures == []
    assert server.oauth.refused == 0
    assert tokens.refreshes == server.oauth.refreshes >= 6
    assert sorted(sink.event_ids) == sorted(f"twitch:{line}" for line in server.sent)
    assert file.read_text().strip() in server.oauth.refresh_tokens
    assert file.stat().st_mode & 0o777 == 0o600


@pytest.mark.asyncio
async def test_a_token_revoked_early_is_refreshed_once_and_the_subscription_retried(
    server: EventSubServer,
) -> None:
    server.oauth.lifetime = 600
    failures: list[str] = []
    health = RecordingHealth()
    sink = RecordingSink()
    async with running(source(server, sink, health, token=refreshing(server, failures)).run()):
        await until(lambda: server.active is not None, 10, "a subscription")
        server.oauth.expire_access_tokens()
        first = server.silence()
        await until(lambda: server.active not in (None, first), 10, "a new subscription")
        assert await server.chat("after", chatter="5")
        await until(lambda: len(sink.events) == 1, 10, "the line after")
    assert server.refused_tokens == 1  # the 401 ...
    assert server.subscribe_requests == 3  # ... and its one retry, with a new token
    assert server.oauth.refreshes == 2
    assert health.reasons == ["keepalive timeout"]
    assert failures == []


@pytest.mark.asyncio
async def test_an_invalid_refresh_token_is_counted_logged_once_and_recovers_from_its_file(
    server: EventSubServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.oauth.revoke_refresh_tokens()
    file = tmp_path / "refresh-token"
    failures: list[str] = []
    health = RecordingHealth()
    eventsub = source(
        server, RecordingSink(), health, token=refreshing(server, failures, file=file)
    )
    with caplog.at_level(logging.INFO, logger="ingest.sources.twitch_auth"):
        async with running(eventsub.run()):
            await until(lambda: len(failures) >= 5, 10, "five refused refreshes")
            assert health.ups == 0
            assert server.subscribe_requests == 0
            # The operator issues a new refresh token and puts it in the file.
            server.oauth.refresh_tokens.add("operator-refresh-token-0123456789")
            file.write_text("operator-refresh-token-0123456789\n")
            await until(lambda: server.active is not None, 10, "a subscription")
    assert set(failures) == {"invalid"}
    assert server.oauth.refused == len(failures)
    assert set(health.reasons) == {"token invalid"}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "refresh token is invalid or revoked" in errors[0].getMessage()
    assert "operator-refresh-token" not in caplog.text
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        "twitch token refresh works again"
    ]


@pytest.mark.asyncio
async def test_cancelling_during_a_refresh_backoff_ends_at_once(server: EventSubServer) -> None:
    """Nothing listens at the OAuth URL: the token task and the session both wait out long
    backoffs, and a cancellation still ends the source at once."""
    failures: list[str] = []
    tokens = refreshing(
        server, failures, oauth_url=f"http://127.0.0.1:{free_port()}/oauth2", backoff=30.0
    )
    health = RecordingHealth()
    eventsub = source(server, RecordingSink(), health, token=tokens, backoff=30.0)
    task = asyncio.create_task(eventsub.run())
    await until(lambda: len(failures) >= 2 and health.retries != [], 10, "both in backoff")
    assert set(failures) == {"network"}
    assert health.reasons == ["token network"]
    started = time.monotonic()
    task.cancel()
    # "At once": well inside the 30 s backoffs, with room for a machine busy with other tests.
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5 * UNIT)
    assert time.monotonic() - started < 5 * UNIT


@pytest.mark.asyncio
async def test_the_token_is_refreshed_by_the_clock_it_is_given(server: EventSubServer) -> None:
    """``current()`` keeps a token until the injected clock says it expired (validate supplies
    the lifetime when the token answer has none, as in Twitch's documented example)."""
    server.oauth.lifetime = 600
    server.oauth.omit_expires_in = True
    clock = ManualClock()
    tokens = refreshing(server, [], clock=clock)
    first = await tokens.current()
    assert await tokens.current() == first
    assert (server.oauth.refreshes, server.oauth.validations) == (1, 1)
    clock.advance(598)
    assert await tokens.current() == first
    clock.advance(2)
    second = await tokens.current()
    assert second != first
    assert server.oauth.refreshes == 2
    assert server.oauth.valid(second)


@pytest.mark.asyncio
async def test_a_token_revoked_early_is_found_by_validation_and_replaced(
    server: EventSubServer,
) -> None:
    """Between Helix calls only the periodic validation (hourly on Twitch; 0.2 s here) can see
    that a token died early: it is then replaced at once, not at its planned refresh."""
    server.oauth.lifetime = 600
    failures: list[str] = []
    tokens = refreshing(server, failures)
    tokens.settings = dataclasses.replace(tokens.settings, validate_interval=0.2)
    async with running(tokens.run()):
        await until(lambda: server.oauth.refreshes == 1, 10, "the first token")
        first = await tokens.current()
        await until(lambda: server.oauth.validations >= 2, 10, "two validations")
        assert server.oauth.refreshes == 1  # a valid token is kept
        server.oauth.expire_access_tokens()
        await until(lambda: server.oauth.refreshes == 2, 10, "a new token")
        second = await tokens.current()
    assert second != first
    assert server.oauth.valid(second)
    assert failures == []
