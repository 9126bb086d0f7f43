"""Facebook Live comments end to end: our Graph API, two ingesters as a user runs them, real Redis.

The server knows which comments it wrote to some stream (SSE) or has at all (polling); the
scraped comment total must be exactly their number, whichever replica read them and however
often they came.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from tests.e2e.support import IngesterProcess, scrape, select, write_config
from tests.facebook_api import FacebookApi
from tests.servers import free_port
from tests.waiting import UNIT, until

TOKEN_ENV = "LIVESTREAM_TEST_FACEBOOK_TOKEN"
NAMESPACE = "facebook-live"


def facebook_source(
    api: FacebookApi,
    stream: str,
    *,
    name: str = "facebook",
    mode: str = "sse",
    token_file: Path | None = None,
) -> str:
    token = f'token_file = "{token_file}"' if token_file else f'token_env = "{TOKEN_ENV}"'
    return f"""
[[sources]]
name = "{name}"
type = "http-client"
format = "facebook-live"
stream = "{stream}"
namespace = "{NAMESPACE}"
{token}
token_poll_seconds = 0.05
backoff_initial = 0.05
backoff_max = {0.5 * UNIT}

[sources.facebook]
live_video_id = "{api.video_id}"
mode = "{mode}"
graph_url = "{api.graph_url}"
streaming_url = "{api.streaming_url}"
api_version = "{api.version}"
poll_interval_seconds = 0.05
page_limit = 100
status_interval_seconds = {0.5 * UNIT}
"""


@contextlib.contextmanager
def ingesters(
    tmp_path: Path, redis_url: str, sources: str, count: int, env: dict[str, str] | None = None
) -> Iterator[list[IngesterProcess]]:
    """``count`` replicas of one config, each on its own metrics port."""
    with contextlib.ExitStack() as stack:
        running = []
        for n in range(count):
            port = free_port()
            config = write_config(
                tmp_path / f"facebook-{n}.toml",
                redis_url=redis_url,
                http_port=port,
                sources=sources,
            )
            running.append(stack.enter_context(IngesterProcess(config, port, env=env)))
        yield running


@pytest_asyncio.fixture
async def api() -> AsyncIterator[FacebookApi]:
    async with FacebookApi(retry_ms=50, overlap=5).serving() as running:
        yield running


def comments(port: int, stream: str) -> float:
    return select(scrape(port), "livestream_comments_total", stream=stream).get(("facebook",), 0.0)


def metric(ports: list[int], name: str, **labels: str) -> float:
    return sum(sum(select(scrape(port), name, **labels).values()) for port in ports)


def read(port: int) -> float:
    """Comments this replica has read and committed (first counted here, or a duplicate)."""
    samples = scrape(port)
    return sum(
        select(samples, "livestream_ingest_events_total", source="facebook", outcome=outcome).get(
            ("comment",), 0.0
        )
        for outcome in ("accepted", "duplicate")
    )


async def counted(expected: int, port: int, stream: str) -> None:
    """Wait until ``expected`` comments are counted, then check that is all."""
    await until(lambda: comments(port, stream) >= expected, 20, f"{expected} comments")
    assert comments(port, stream) == expected


async def streams_open(api: FacebookApi, count: int) -> None:
    await until(lambda: len(api.open_streams()) == count, 15, f"{count} open streams")


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


async def no_personal_data(redis: Redis) -> None:
    """Nothing in Redis holds a commenter's name or message (we never ask for them)."""
    found: list[bytes] = []
    async for key in redis.scan_iter(count=1000):
        found.append(key)
        kind = await redis.type(key)
        if kind == b"string":
            found.append(_bytes(await redis.get(key) or b""))
        elif kind == b"stream":
            for _, fields in await redis.xrange(key) or []:
                for field, value in (fields or {}).items():
                    found += [_bytes(field), _bytes(value)]
        elif kind == b"hash":
            for field, value in (await redis.hgetall(key)).items():
                found += [_bytes(field), _bytes(value)]
    text = b"\n".join(found)
    # The phone numbers of the test API's messages ("0912 345 nnn"), not four digits alone: the
    # shared Redis holds other tests' keys, whose numbers may contain "0912" by chance.
    assert b"0912 345" not in text
    assert b"0912345" not in text
    assert "Người".encode() not in text


@pytest.mark.asyncio
async def test_two_replicas_count_each_streamed_comment_once_across_drops(
    api: FacebookApi, tmp_path: Path, redis_url: str, stream: str, redis: Redis
) -> None:
    token = next(iter(api.valid_tokens))
    sources = facebook_source(api, stream)
    with ingesters(tmp_path, redis_url, sources, 2, {TOKEN_ENV: token}) as replicas:
        ports = [replica.http_port for replica in replicas]
        for round_ in range(4):
            await streams_open(api, 2)
            for n in range(60):
                await api.comment(author=str(100 + n % 20))
            await until(
                lambda r=round_: len(api.delivered) == 60 * (r + 1), 10, "the round's comments"
            )
            if round_ < 3:
                assert api.drop() == 2  # cut both off; they reconnect (retry: 50 ms)
        await api.send_raw(b'{"id": 5, "created_time": "2025-06-15T02:05:07+0000"}')
        await counted(240, ports[0], stream)
        assert comments(ports[1], stream) == 240
        await until(
            lambda: metric(ports, "livestream_ingest_rejections_total", source="facebook") == 2,
            10,
            "the bad event rejected by both replicas",
        )
        samples = [scrape(port) for port in ports]
        accepted = sum(
            select(s, "livestream_ingest_events_total", source="facebook", outcome="accepted").get(
                ("comment",), 0
            )
            for s in samples
        )
        duplicates = sum(
            select(s, "livestream_ingest_events_total", source="facebook", outcome="duplicate").get(
                ("comment",), 0
            )
            for s in samples
        )
        # Each comment reached both replicas, and each reconnected stream re-sent the last 5.
        assert accepted == 240
        assert duplicates == 240 + 3 * 2 * 5
        assert select(samples[0], "livestream_unique_commenters", stream=stream) == {(): 20}
        assert metric(ports, "livestream_ingest_source_reconnects_total", source="facebook") >= 6
        assert metric(ports, "livestream_ingest_source_connected", source="facebook") == 2
        # Every reconnect said where the stream had got to (the docs do not say it is honoured).
        assert api.last_event_ids[:2] == [None, None]
        assert all(last for last in api.last_event_ids[2:])
        await no_personal_data(redis)
        for replica in replicas:
            assert token not in replica.log.read_text()
        assert replicas[0].terminate() == 0  # SIGTERM with a stream open: a clean stop


@pytest.mark.asyncio
async def test_two_replicas_poll_every_page_exactly_through_a_rate_limit(
    api: FacebookApi, tmp_path: Path, redis_url: str, stream: str
) -> None:
    for n in range(250):
        await api.comment(author=str(n % 40))
    api.rate_limit = 2
    sources = facebook_source(api, stream, mode="poll")
    env = {TOKEN_ENV: next(iter(api.valid_tokens))}
    with ingesters(tmp_path, redis_url, sources, 2, env) as replicas:
        ports = [replica.http_port for replica in replicas]
        await counted(250, ports[0], stream)
        for n in range(130):
            await api.comment(author=str(n % 40))
        await counted(380, ports[0], stream)
        assert comments(ports[1], stream) == 380
        # Both replicas have read every page (the totals above are shared, so one replica may lag):
        # each one's cursor now names the last comment.
        await until(
            lambda: all(read(port) == 380 for port in ports), 20, "both replicas at the end"
        )
        # The last comment is deleted: the cursors naming it die with it (graph-api/results).
        # Polling starts over from the first page, and what it reads again is a duplicate.
        api.delete(api.comments[-1])
        for n in range(20):
            await api.comment(author=str(n % 40))
        await counted(400, ports[0], stream)
        assert comments(ports[1], stream) == 400
        await until(
            lambda: (
                metric(ports, "livestream_ingest_facebook_api_errors_total", reason="other") == 2
            ),
            10,
            "the refused cursor, once per replica",
        )
        errors = {
            reason: metric(ports, "livestream_ingest_facebook_api_errors_total", reason=reason)
            for reason in ("rate_limited", "token_expired", "token_invalid", "permission")
        }
        assert errors == {
            "rate_limited": 2,
            "token_expired": 0,
            "token_invalid": 0,
            "permission": 0,
        }
        first = api.poll_params[0]
        assert first["order"] == "chronological"
        assert first["filter"] == "stream"
        assert first["live_filter"] == "no_filter"
        assert first["fields"] == "id,created_time,from{id}"
        assert "after" not in first
        assert any(params.get("after") for params in api.poll_params)  # pages followed


@pytest.mark.asyncio
async def test_an_expired_token_is_counted_and_a_new_token_file_mends_it_without_a_restart(
    api: FacebookApi, tmp_path: Path, redis_url: str, stream: str
) -> None:
    old = next(iter(api.valid_tokens))
    token_file = tmp_path / "facebook-token"
    token_file.write_text(old + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    sources = facebook_source(api, stream, token_file=token_file)
    with ingesters(tmp_path, redis_url, sources, 1) as [replica]:
        port = replica.http_port
        await streams_open(api, 1)
        for _ in range(20):
            await api.comment()
        await until(lambda: len(api.delivered) == 20, 10, "the first 20 written")
        api.expire(old)
        api.drop()
        await until(
            lambda: (
                metric(
                    [port], "livestream_ingest_facebook_api_errors_total", reason="token_expired"
                )
                >= 1
            ),
            10,
            "the expired token counted",
        )
        await until(
            lambda: metric([port], "livestream_ingest_source_connected", source="facebook") == 0,
            10,
            "the source shown down",
        )
        for _ in range(5):  # nobody reads these: no stream is open
            await api.comment()
        fresh = "EAAGnewpagetoken9876543210fedcba"
        api.valid_tokens.add(fresh)
        token_file.write_text(fresh + "\n", encoding="utf-8")
        await streams_open(api, 1)
        for _ in range(30):
            await api.comment()
        # The 5 made meanwhile came with the new stream's overlap (the last 5 comments).
        await until(lambda: len(api.delivered) == 55, 10, "the comments after the new token")
        await counted(55, port, stream)
        assert metric([port], "livestream_ingest_source_connected", source="facebook") == 1
        assert metric([port], "livestream_ingest_secrets_reloads_total", outcome="ok") >= 1
        log = replica.log.read_text()
        assert old not in log
        assert fresh not in log
        assert "token_expired" in log


@pytest.mark.asyncio
async def test_both_modes_stop_when_the_live_video_ends_and_count_every_comment(
    api: FacebookApi, tmp_path: Path, redis_url: str, stream: str
) -> None:
    """One SSE source and one polling source, in one namespace: the poll fills what the
    stream missed; when the live video ends, the poll reads what is left and both stop."""
    sources = facebook_source(api, stream, name="facebook") + facebook_source(
        api, stream, name="facebook-poll", mode="poll"
    )
    with ingesters(tmp_path, redis_url, sources, 1, {TOKEN_ENV: next(iter(api.valid_tokens))}) as [
        replica
    ]:
        port = replica.http_port
        await streams_open(api, 1)
        for _ in range(40):
            await api.comment()
        api.drop()
        for _ in range(10):  # missed by the stream, read by the poll
            await api.comment()
        await streams_open(api, 1)
        for _ in range(40):
            await api.comment()
        api.end()
        for _ in range(3):  # the last comments, after the end: only the poll reads them
            await api.comment()

        def ended() -> float:
            return metric([port], "livestream_ingest_source_ended")

        await until(lambda: ended() == 2, 15, "both sources to stop")
        await counted(93, port, stream)
        samples = scrape(port)
        assert select(samples, "livestream_ingest_source_ended") == {
            ("video_ended", "facebook"): 1,
            ("video_ended", "facebook-poll"): 1,
        }
        assert metric([port], "livestream_ingest_source_connected") == 0
        log = replica.log.read_text()
        assert log.count("facebook live video ended") == 2
        assert replica.terminate() == 0  # the ingester itself ran on, and stops cleanly
