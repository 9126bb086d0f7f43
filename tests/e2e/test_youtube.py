"""YouTube Live chat end to end: our Data API server, the ingester as a user runs it, real Redis.

The server knows which messages count (text, Super Chat, Super Sticker) and their amounts; the
scraped totals must be exactly those, however many replicas polled and however often a page of
history came again.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from tests.e2e.support import IngesterProcess, scrape, select, write_config
from tests.servers import free_port
from tests.waiting import UNIT, until
from tests.youtube_api import YouTubeApi
from workers.store import Store, StoreSettings

TOKEN_ENV = "LIVESTREAM_TEST_YOUTUBE_TOKEN"
REFRESH_TOKEN_ENV = "LIVESTREAM_TEST_YOUTUBE_REFRESH_TOKEN"
CLIENT_SECRET_ENV = "LIVESTREAM_TEST_YOUTUBE_CLIENT_SECRET"


@pytest_asyncio.fixture
async def api() -> AsyncIterator[YouTubeApi]:
    async with YouTubeApi().serving() as running:
        yield running


def youtube_source(
    api: YouTubeApi,
    stream: str,
    *,
    name: str = "youtube",
    by_video: bool = False,
    refreshing: Path | None = None,
    transport: str = "poll",
) -> str:
    """A YouTube Live chat source of ``api``'s chat (or, ``by_video``, of its broadcast), with
    the static token in ``TOKEN_ENV`` or (``refreshing``: the refresh token file) refreshed."""
    chat = f'video_id = "{api.video_id}"' if by_video else f'live_chat_id = "{api.chat_id}"'
    token = f'token_env = "{TOKEN_ENV}"'
    if refreshing is not None:
        token = (
            f'refresh_token_env = "{REFRESH_TOKEN_ENV}"\n'
            f'client_id = "{api.oauth.client_id}"\n'
            f'client_secret_env = "{CLIENT_SECRET_ENV}"\n'
            f'refresh_token_file = "{refreshing}"\n'
            f'oauth_url = "{api.oauth_url}"\n'
            "refresh_margin_seconds = 2"
        )
    return f"""
[[sources]]
name = "{name}"
namespace = "youtube-chat"
type = "http-poll"
format = "youtube-livechat"
stream = "{stream}"
backoff_initial = 0.05
backoff_max = 0.5

[sources.youtube]
{chat}
{token}
api_url = "{api.api_url}"
min_poll_interval_seconds = 0.05
quota_probe_interval_seconds = {0.3 * UNIT}
transport = "{transport}"
"""


def environment(api: YouTubeApi) -> dict[str, str]:
    assert api.oauth.client_secret is not None
    return {
        TOKEN_ENV: api.token,
        REFRESH_TOKEN_ENV: api.oauth.initial_refresh_token,
        CLIENT_SECRET_ENV: api.oauth.client_secret,
    }


@contextlib.contextmanager
def ingester(
    api: YouTubeApi, tmp_path: Path, redis_url: str, name: str, sources: str
) -> Iterator[IngesterProcess]:
    port = free_port()
    config = write_config(
        tmp_path / f"{name}.toml", redis_url=redis_url, http_port=port, sources=sources
    )
    with IngesterProcess(config, port, env=environment(api)) as process:
        yield process


def metric(port: int, name: str, **labels: str) -> float:
    return sum(select(scrape(port), name, **labels).values())


def comments(port: int, stream: str) -> float:
    return metric(port, "livestream_comments_total", stream=stream, platform="youtube")


async def counted(api: YouTubeApi, port: int, stream: str) -> None:
    """Every counted message of the server is counted once, with every paid amount exact."""
    expected = len(api.counted)
    await until(lambda: comments(port, stream) >= expected, 20, f"{expected} comments")
    samples = scrape(port)
    assert select(samples, "livestream_comments_total", stream=stream) == {("youtube",): expected}
    paid_count: dict[tuple[str, ...], float] = {}
    paid_micros: dict[str, int] = {}
    for paid in api.paid.values():
        key = (paid.currency, "youtube")  # labels sorted by name: currency, platform
        paid_count[key] = paid_count.get(key, 0) + 1
        paid_micros[paid.currency] = paid_micros.get(paid.currency, 0) + paid.micros
    assert select(samples, "livestream_paid_comments_total", stream=stream) == paid_count
    values = select(samples, "livestream_paid_comment_value_total", stream=stream)
    assert values == {
        (currency, "youtube"): micros / 1_000_000 for currency, micros in paid_micros.items()
    }
    assert select(samples, "livestream_orders_total", stream=stream) == {}


def post_chat(api: YouTubeApi, start: int, count: int) -> None:
    """``count`` messages: mostly text, every 7th a Super Chat (VND or USD), every 11th a Super
    Sticker, every 13th a message we do not count."""
    for n in range(start, start + count):
        if n % 7 == 0:
            if n % 2:
                api.super_chat(20_000 * 1_000_000, "VND", author=f"UC-fan-{n % 5}")
            else:
                api.super_chat(1_990_000, "USD", author=f"UC-fan-{n % 5}")
        elif n % 11 == 0:
            api.super_sticker(4_990_000, "EUR")
        elif n % 13 == 0:
            api.other()
        else:
            api.text(f"chat line {n}", author=f"UC-viewer-{n % 30}")


@pytest.mark.asyncio
async def test_two_replicas_polling_and_streaming_count_chat_and_paid_comments_exactly(
    api: YouTubeApi, tmp_path: Path, redis_url: str, stream: str
) -> None:
    post_chat(api, 0, 15)  # history before the ingesters start: both read it (20 are given)
    with (
        ingester(api, tmp_path, redis_url, "a", youtube_source(api, stream, name="yt-a")) as a,
        ingester(
            api,
            tmp_path,
            redis_url,
            "b",
            youtube_source(api, stream, name="yt-b", by_video=True, transport="stream"),
        ) as b,
    ):
        # What came before a replica's first poll reaches it only as recent history.
        await until(lambda: api.first_polls >= 2, 10, "both replicas to poll")
        for batch in range(5):
            polls = api.polls
            post_chat(api, 15 + batch * 60, 60)
            await until(lambda: api.polls >= polls + 4, 10, "polls to go on")  # noqa: B023
        for port in (a.http_port, b.http_port):
            await counted(api, port, stream)

        # Two replicas polled the same chat, each every page once: every message was delivered
        # twice in all, and counted once.
        def outcome(name: str) -> float:
            return sum(
                metric(port, "livestream_ingest_events_total", outcome=name)
                for port in (a.http_port, b.http_port)
            )

        await until(
            lambda: outcome("accepted") + outcome("duplicate") == 2 * len(api.counted),
            10,
            "both replicas to read every message",
        )
        assert outcome("accepted") == len(api.counted)
        # The second replica found the chat from the broadcast's video id, and streamed it,
        # opening a new stream with its page token each time the server ended one.
        assert api.lookups >= 1
        assert api.streams >= 2
        # pollingIntervalMillis was honoured: no poll came too soon.
        assert api.too_soon == 0
        assert metric(a.http_port, "livestream_ingest_ignored_total", source="yt-a") > 0
        assert metric(a.http_port, "livestream_ingest_rejections_total", source="yt-a") == 0


@pytest.mark.asyncio
async def test_quota_exceeded_waits_then_resumes_where_it_was(
    api: YouTubeApi, tmp_path: Path, redis_url: str, stream: str
) -> None:
    with ingester(api, tmp_path, redis_url, "q", youtube_source(api, stream)) as process:
        port = process.http_port
        await until(lambda: api.first_polls >= 1, 10, "the first poll")
        post_chat(api, 0, 30)
        await counted(api, port, stream)
        api.quota_exhausted = True
        await until(
            lambda: metric(port, "livestream_ingest_api_quota_exhausted", source="youtube") == 1,
            10,
            "the quota gauge",
        )
        post_chat(api, 30, 30)  # written while the quota is out: read once it is back
        await until(lambda: api.quota_refusals >= 2, 10, "a second probe of the quota")
        assert comments(port, stream) < len(api.counted)
        api.quota_exhausted = False
        await counted(api, port, stream)
        samples = scrape(port)
        assert select(samples, "livestream_ingest_api_quota_exhausted", source="youtube") == {(): 0}
        errors = select(samples, "livestream_ingest_api_errors_total", source="youtube")
        assert errors[("quota",)] >= 2
        assert errors[("rate_limited",)] == 0
        # Resumed with its page token: nothing was read twice.
        duplicates = metric(port, "livestream_ingest_events_total", outcome="duplicate")
        assert duplicates == 0


@pytest.mark.asyncio
async def test_hourly_token_is_refreshed_before_expiry_and_after_a_401(
    api: YouTubeApi, tmp_path: Path, redis_url: str, stream: str
) -> None:
    file = tmp_path / "refresh-token"
    source = youtube_source(api, stream, refreshing=file)
    with ingester(api, tmp_path, redis_url, "r", source) as process:
        port = process.http_port
        await until(lambda: api.first_polls >= 1, 10, "the first poll")
        # Tokens live 3 s here, refreshed 2 s ahead: keep the chat going across several lifetimes.
        for n in range(8):
            post_chat(api, n * 10, 10)
            before = api.oauth.refreshes
            await until(lambda: api.oauth.refreshes > before, 10, "a refresh")  # noqa: B023
        await counted(api, port, stream)
        assert api.unauthorized == 0  # refreshed ahead of expiry, never after
        api.oauth.expire_access_tokens()  # revoked early: the API answers 401 once
        post_chat(api, 80, 10)
        await counted(api, port, stream)
        assert api.unauthorized >= 1
        samples = scrape(port)
        assert select(samples, "livestream_ingest_token_refreshes_total", source="youtube")[()] >= 9
        failures = select(
            samples, "livestream_ingest_token_refresh_failures_total", source="youtube"
        )
        assert sum(failures.values()) == 0
        assert metric(port, "livestream_ingest_source_reconnects_total", source="youtube") == 0


@pytest.mark.asyncio
async def test_chat_end_stops_the_source_cleanly(
    api: YouTubeApi, tmp_path: Path, redis_url: str, stream: str
) -> None:
    with ingester(api, tmp_path, redis_url, "e", youtube_source(api, stream)) as process:
        port = process.http_port
        await until(lambda: api.first_polls >= 1, 10, "the first poll")
        post_chat(api, 0, 25)
        api.end()
        await until(
            lambda: metric(port, "livestream_ingest_source_ended", source="youtube") == 1,
            10,
            "the source to end",
        )
        await counted(api, port, stream)
        samples = scrape(port)
        assert select(samples, "livestream_ingest_source_ended", source="youtube") == {
            ("chat_ended",): 1
        }
        assert select(samples, "livestream_ingest_source_connected", source="youtube") == {(): 0}
        # It ended on the page that said so (offlineAt, chatEndedEvent): no poll ran into the
        # liveChatEnded error after it, and the process goes on serving.
        errors = select(samples, "livestream_ingest_api_errors_total", source="youtube")
        assert errors[("chat_ended",)] == 0
        assert process.process is not None
        assert process.process.poll() is None
        assert process.terminate() == 0
    assert "youtube live chat is over" in process.log.read_text()


@pytest.mark.asyncio
async def test_a_killed_replica_restarts_from_recent_history_and_counts_nothing_twice(
    api: YouTubeApi, tmp_path: Path, redis_url: str, stream: str
) -> None:
    with ingester(api, tmp_path, redis_url, "k", youtube_source(api, stream)) as process:
        port = process.http_port
        await until(lambda: api.first_polls >= 1, 10, "the first poll")
        post_chat(api, 0, 30)
        await counted(api, port, stream)
        process.kill()  # SIGKILL: its page token is gone with it
        post_chat(api, 30, 8)  # written while it is down: within the history the restart gets
        process.start()
        await until(lambda: api.first_polls >= 2, 10, "the first poll after the restart")
        post_chat(api, 38, 20)
        await counted(api, port, stream)
        # The restart's first page repeated messages counted before the kill: duplicates now.
        duplicates = metric(port, "livestream_ingest_events_total", outcome="duplicate")
        assert duplicates > 0


@pytest.mark.asyncio
async def test_a_bad_paid_message_is_dead_lettered_without_name_or_phone_and_the_rest_counts(
    api: YouTubeApi, tmp_path: Path, redis_url: str, stream: str, redis: Redis
) -> None:
    with ingester(api, tmp_path, redis_url, "d", youtube_source(api, stream)) as process:
        port = process.http_port
        await until(lambda: api.first_polls >= 1, 10, "the first poll")
        post_chat(api, 0, 10)
        bad = api.super_chat(5_000_000, "usd")  # not an ISO 4217 code: refused
        api.counted.remove(bad)
        del api.paid[bad]
        (item,) = [m for m in api.messages if m["id"] == bad]
        item["snippet"]["displayMessage"] = "gọi 0912345678 nhé"
        item["authorDetails"] = {"displayName": "Nguyễn Thị Hoa", "channelId": "UC-fan-1"}
        post_chat(api, 10, 10)
        await counted(api, port, stream)
        await until(
            lambda: metric(port, "livestream_ingest_rejections_total", source="youtube") == 1,
            10,
            "the rejection",
        )
        assert select(scrape(port), "livestream_ingest_rejections_total", source="youtube") == {
            ("invalid_currency",): 1
        }
    (letter,) = await Store(redis, StoreSettings()).dead_letters(stream)
    raw = letter["raw"]
    assert bad.encode() in raw
    assert b"0912345678" not in raw
    assert "Nguyễn".encode() not in raw
    assert b"authorDetails" not in raw
