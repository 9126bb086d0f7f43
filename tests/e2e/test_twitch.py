"""Twitch EventSub end to end: our EventSub server, the ingester as a user runs it, real Redis.

In every case the server knows which chat lines it delivered to a session; the scraped comment
total must be exactly their number, however often and by whichever connection they came.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
import pytest_asyncio

from tests.e2e.support import (
    TOKEN_ENV,
    IngesterProcess,
    Refreshing,
    eventsub_source,
    scrape,
    select,
    twitch_environment,
    write_config,
)
from tests.platforms import EventSubServer
from tests.servers import free_port
from tests.waiting import UNIT, until


@pytest_asyncio.fixture
async def server() -> AsyncIterator[EventSubServer]:
    async with EventSubServer(keepalive=max(1, round(UNIT))).serving() as running:
        yield running


@pytest.fixture
def ingester(
    server: EventSubServer, tmp_path: Path, redis_url: str, stream: str
) -> Iterator[IngesterProcess]:
    port = free_port()
    config = write_config(
        tmp_path / "twitch.toml",
        redis_url=redis_url,
        http_port=port,
        sources=eventsub_source(server, stream),
    )
    with IngesterProcess(config, port, env={TOKEN_ENV: server.token}) as process:
        yield process


def comments(port: int, stream: str) -> float:
    return select(scrape(port), "livestream_comments_total", stream=stream).get(("twitch",), 0.0)


def metric(port: int, name: str, **labels: str) -> float:
    return sum(select(scrape(port), name, **labels).values())


async def subscribed(server: EventSubServer) -> None:
    await until(lambda: server.active is not None, 10, "the ingester to subscribe")


async def counted(server: EventSubServer, port: int, stream: str) -> None:
    """Wait until every delivered line is counted, then check nothing more is."""
    expected = len(server.sent)
    await until(lambda: comments(port, stream) >= expected, 20, f"{expected} comments")
    assert comments(port, stream) == expected


@pytest.mark.asyncio
async def test_chat_is_counted_once_whatever_the_duplicates(
    server: EventSubServer, ingester: IngesterProcess, stream: str
) -> None:
    await subscribed(server)
    port = ingester.http_port
    deliveries = 0
    for n in range(300):
        line = f"chat-{n}"
        assert await server.chat(line, chatter=str(3000 + n % 25), delivery_id=f"d-{n}")
        deliveries += 1
        if n % 5 == 0:  # a resend: the same delivery id
            assert await server.chat(line, chatter=str(3000 + n % 25), delivery_id=f"d-{n}")
            deliveries += 1
        if n % 7 == 0:  # the same event under a new delivery id (twitchdev/issues#918)
            assert await server.chat(line, chatter=str(3000 + n % 25), delivery_id=f"d2-{n}")
            deliveries += 1
    session = server.active
    assert session is not None
    await server.notify_other(session, "channel.follow")
    bad = {"metadata": {"message_id": "x", "message_type": "notification"}, "payload": {}}
    await session.ws.send(orjson.dumps(bad).decode())
    await counted(server, port, stream)
    assert len(server.sent) == 300
    await until(
        lambda: metric(port, "livestream_ingest_rejections_total", source="twitch") == 1,
        10,
        "the bad frame to be rejected",
    )

    def events() -> dict[tuple[str, ...], float]:
        return select(
            scrape(port), "livestream_ingest_events_total", source="twitch", kind="comment"
        )

    expected = {("accepted",): 300, ("duplicate",): deliveries - 300}
    await until(lambda: events() == expected, 10, f"outcomes {expected}")
    samples = scrape(port)
    assert select(samples, "livestream_ingest_ignored_total", source="twitch") == {
        ("other_subscription",): 1
    }
    assert select(samples, "livestream_unique_commenters", stream=stream) == {(): 25}
    assert select(samples, "livestream_ingest_source_connected", source="twitch") == {(): 1}
    # Keepalives (every second here) kept the session: one subscription, no inbound traffic.
    assert server.subscribe_requests == 1
    assert server.inbound_closes == 0
    assert metric(port, "livestream_ingest_source_reconnects_total", source="twitch") == 0


@pytest.mark.asyncio
async def test_reconnect_hand_over_under_load_loses_and_doubles_nothing(
    server: EventSubServer, ingester: IngesterProcess, stream: str
) -> None:
    await subscribed(server)
    port = ingester.http_port
    first = server.active
    assert first is not None
    ids = (f"line-{n}" for n in itertools.count())
    sent_on_old: list[str] = []

    async def load(count: int) -> None:
        for _ in range(count):
            line = next(ids)
            target = server.active
            if await server.chat(line, chatter="4242") and target is first:
                sent_on_old.append(line)
            if len(server.sent) % 50 == 0:
                await asyncio.sleep(0)

    await load(1000)
    await server.reconnect()
    # Keep sending at full speed while the client connects to the new URL: lines go to the old
    # connection until the new welcome, then to the new one.
    await load(2000)
    await until(lambda: server.active is not first, 10, "the hand-over")
    await until(lambda: first.close_code is not None, 10, "the old connection to be closed")
    new = server.active
    assert new is not None
    # The overlap: lines the old connection carried arrive again on the new one, under the same
    # and under new delivery ids.
    for n, line in enumerate(sent_on_old[-40:]):
        assert await server.chat(line, chatter="4242", session=new, delivery_id=f"again-{n}")
    await load(500)
    await counted(server, port, stream)
    assert len(server.sent) == 3500
    assert len(sent_on_old) > 1000  # the old connection carried load during the hand-over
    assert first.close_code == 1000  # closed by the client, after the new welcome
    assert server.subscribe_requests == 1  # the subscription carried over
    assert metric(port, "livestream_ingest_source_reconnects_total", source="twitch") == 0

    def duplicates() -> dict[tuple[str, ...], float]:
        return select(
            scrape(port), "livestream_ingest_events_total", source="twitch", outcome="duplicate"
        )

    await until(lambda: duplicates() == {("comment",): 40}, 10, "the 40 overlap duplicates")


@pytest.mark.asyncio
async def test_a_silent_session_is_replaced_after_its_keepalive_timeout(
    server: EventSubServer, ingester: IngesterProcess, stream: str
) -> None:
    await subscribed(server)
    port = ingester.http_port
    for n in range(100):
        assert await server.chat(f"before-{n}", chatter="7")
    dead = server.silence()
    for n in range(20):  # lost: the network is dead and EventSub does not replay
        assert not await server.chat(f"lost-{n}", chatter="7")
    await until(
        lambda: server.active is not None and server.active is not dead,
        10,
        "a new session after the keepalive timeout (1 s + 1.5 s margin)",
    )
    assert server.subscribe_requests == 2  # a new session needs new subscriptions
    for n in range(100):
        assert await server.chat(f"after-{n}", chatter="8")
    await counted(server, port, stream)
    assert len(server.sent) == 200
    assert metric(port, "livestream_ingest_source_reconnects_total", source="twitch") == 1


@pytest.mark.asyncio
async def test_a_revocation_is_counted_shown_and_recovered_from(
    server: EventSubServer, ingester: IngesterProcess, stream: str
) -> None:
    await subscribed(server)
    port = ingester.http_port
    for n in range(50):
        assert await server.chat(f"c-{n}", chatter="9")
    await server.revoke("authorization_revoked")
    assert not await server.chat("lost", chatter="9")
    await until(
        lambda: metric(port, "livestream_ingest_eventsub_revocations_total") == 1,
        10,
        "the revocation metric",
    )
    revocations = select(scrape(port), "livestream_ingest_eventsub_revocations_total")
    assert revocations == {  # every status's series from the start, so alerts see a change
        ("twitch", status, "channel.chat.message"): 1 if status == "authorization_revoked" else 0
        for status in ("authorization_revoked", "user_removed", "version_removed", "other")
    }
    # No subscription left: the session ends, and Helix refuses a new one (403) until the
    # user authorises the app again; meanwhile the source shows disconnected and retries.
    await until(lambda: server.subscribe_requests >= 3, 10, "retried subscriptions")
    assert metric(port, "livestream_ingest_source_connected", source="twitch") == 0
    server.authorized = True
    await until(lambda: server.active is not None, 10, "a new subscription")
    for n in range(30):
        assert await server.chat(f"again-{n}", chatter="9")
    await counted(server, port, stream)
    assert len(server.sent) == 80
    assert metric(port, "livestream_ingest_source_connected", source="twitch") == 1


# --- the Helix token refreshed with a refresh token ------------------------------------------


def refreshing_ingester(
    server: EventSubServer, tmp_path: Path, redis_url: str, stream: str, refreshing: Refreshing
) -> IngesterProcess:
    port = free_port()
    config = write_config(
        tmp_path / "twitch-refresh.toml",
        redis_url=redis_url,
        http_port=port,
        sources=eventsub_source(server, stream, refreshing),
    )
    return IngesterProcess(config, port, env=twitch_environment(server))


def refresh_failures(port: int) -> dict[tuple[str, ...], float]:
    return select(scrape(port), "livestream_ingest_token_refresh_failures_total", source="twitch")


NO_FAILURES = {(reason,): 0 for reason in ("invalid", "network", "http", "malformed")}


@pytest.mark.asyncio
async def test_chat_counts_exactly_across_token_expiries_without_a_restart(
    server: EventSubServer, tmp_path: Path, redis_url: str, stream: str
) -> None:
    """Tokens live 2 s and a public client's refresh token rotates with each refresh. Three
    times the token a session subscribed with expires and the session is then lost: each new
    session subscribes with a fresh token, and every line is counted once."""
    server.oauth.lifetime = 2
    server.oauth.client_secret = None
    file = tmp_path / "twitch-refresh-token"
    with refreshing_ingester(server, tmp_path, redis_url, stream, Refreshing(file)) as ingester:
        port = ingester.http_port
        await subscribed(server)
        for round_ in range(3):
            used = server.subscribed_with[-1]
            await until(lambda: not server.oauth.valid(used), 10, "the token to expire")  # noqa: B023
            for n in range(50):
                assert await server.chat(f"r{round_}-{n}", chatter=str(100 + n))
            dead = server.silence()
            await until(lambda: server.active not in (None, dead), 10, "a new session")  # noqa: B023
        for n in range(50):
            assert await server.chat(f"last-{n}", chatter="7")
        await counted(server, port, stream)
        assert len(server.sent) == 200
        assert server.refused_tokens == 0  # no subscription was tried with an expired token
        assert server.subscribe_requests == 4
        assert len(set(server.subscribed_with)) == 4
        assert metric(port, "livestream_ingest_source_reconnects_total", source="twitch") == 3
        assert server.oauth.refreshes >= 6
        # Counted exactly: the scrape says what the OAuth server answered (a refresh is due
        # every second; between two, nothing is in flight).
        await until(
            lambda: (
                metric(port, "livestream_ingest_token_refreshes_total") == server.oauth.refreshes
            ),
            5,
            "every refresh counted, and no more",
        )
        assert refresh_failures(port) == NO_FAILURES
    assert server.oauth.refused == 0
    assert file.read_text().strip() in server.oauth.refresh_tokens  # the latest rotated one
    log = ingester.log.read_text()
    for secret in [*server.oauth.expires, *server.oauth.refresh_tokens]:
        assert secret not in log


@pytest.mark.asyncio
async def test_a_revoked_refresh_token_is_counted_alerted_and_logged_once(
    server: EventSubServer, tmp_path: Path, redis_url: str, stream: str
) -> None:
    server.oauth.lifetime = 2
    file = tmp_path / "twitch-refresh-token"
    with refreshing_ingester(server, tmp_path, redis_url, stream, Refreshing(file)) as ingester:
        port = ingester.http_port
        await subscribed(server)
        server.oauth.revoke_refresh_tokens()
        await until(
            lambda: refresh_failures(port)[("invalid",)] >= 3, 10, "three refused refreshes"
        )
        # The running session's subscription still delivers.
        for n in range(30):
            assert await server.chat(f"c-{n}", chatter="9")
        await counted(server, port, stream)
        # A new session cannot subscribe: the token has expired and none can be had.
        server.silence()
        await until(
            lambda: metric(port, "livestream_ingest_source_reconnects_total", source="twitch") >= 2,
            10,
            "retried sessions",
        )
        assert metric(port, "livestream_ingest_source_connected", source="twitch") == 0
        failures = refresh_failures(port)
        assert failures[("invalid",)] == server.oauth.refused
        assert {k: v for k, v in failures.items() if k != ("invalid",)} == {
            (reason,): 0 for reason in ("network", "http", "malformed")
        }
    log = ingester.log.read_text()
    assert log.count("refresh token is invalid or revoked") == 1
    assert (
        "reason='token invalid'" in log or "reason=token invalid" in log or "token invalid" in log
    )
    assert "Traceback" not in log
    assert server.oauth.initial_refresh_token not in log


@pytest.mark.asyncio
async def test_sigterm_during_a_refresh_backoff_exits_promptly(
    server: EventSubServer, tmp_path: Path, redis_url: str, stream: str
) -> None:
    """Nothing answers at the OAuth URL and the source backs off for a minute: SIGTERM still
    ends the ingester at once, cleanly."""
    refreshing = Refreshing(
        tmp_path / "twitch-refresh-token",
        oauth_url=f"http://127.0.0.1:{free_port()}/oauth2",
        backoff=(60.0, 120.0),
    )
    with refreshing_ingester(server, tmp_path, redis_url, stream, refreshing) as ingester:
        port = ingester.http_port
        await until(
            lambda: (
                refresh_failures(port)[("network",)] >= 2
                and metric(port, "livestream_ingest_source_reconnects_total", source="twitch") >= 1
            ),
            10,
            "the token task and the session in backoff",
        )
        started = time.monotonic()
        assert ingester.terminate() == 0
        assert time.monotonic() - started < 5 * UNIT
    log = ingester.log.read_text()
    assert "stopping: no more reading" in log
    assert "Traceback" not in log
    assert server.subscribe_requests == 0
