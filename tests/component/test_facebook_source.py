"""The Facebook Live session logic against our Graph API, without Redis: what it does when the
stream goes quiet, breaks a bound, is not a stream, asks for a retry delay or refuses the token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from ingest.adapter import FormatOptions
from ingest.facebook import FacebookLiveFormat
from ingest.model import Comment
from ingest.sources.facebook import FacebookLiveSource, FacebookSettings, Mode, PageToken
from tests.facebook_api import FacebookApi
from tests.recorders import RecordingHealth, RecordingSink, running
from tests.waiting import UNIT, until

STREAM = "live-1"


@pytest_asyncio.fixture
async def api() -> AsyncIterator[FacebookApi]:
    async with FacebookApi().serving() as running_api:
        yield running_api


def source(
    api: FacebookApi,
    sink: RecordingSink,
    health: RecordingHealth,
    *,
    mode: Mode = "sse",
    token: PageToken | None = None,
    errors: list[str] | None = None,
    backoff_max: float = 0.05,
    read_timeout: float = 10.0,
    max_event_bytes: int = 64 * 1024,
) -> FacebookLiveSource:
    options = FormatOptions(default_stream=STREAM, platforms=frozenset({"facebook"}))
    settings = FacebookSettings(
        live_video_id=api.video_id,
        mode=mode,
        graph_url=api.graph_url,
        streaming_url=api.streaming_url,
        api_version=api.version,
        poll_interval=0.02,
        read_timeout=read_timeout,
        max_event_bytes=max_event_bytes,
        backoff_initial=0.01,
        backoff_max=backoff_max,
    )
    found = errors if errors is not None else []
    return FacebookLiveSource(
        "facebook",
        FacebookLiveFormat(options),
        sink,
        health,
        settings,
        token=token or PageToken(next(iter(api.valid_tokens))),
        rng=lambda: 1.0,
        on_error=found.append,
    )


async def comments(api: FacebookApi, sink: RecordingSink, count: int) -> None:
    """``count`` new comments, each delivered and received."""
    first = len(sink.events)
    for _ in range(count):
        await api.comment()
    await until(lambda: len(sink.events) == first + count, 10, f"{count} comments")


@pytest.mark.asyncio
async def test_a_silent_stream_is_dropped_after_the_read_timeout_and_opened_again(
    api: FacebookApi,
) -> None:
    sink, health = RecordingSink(), RecordingHealth()
    async with running(source(api, sink, health, read_timeout=0.3 * UNIT).run()):
        await until(lambda: api.stream_requests >= 2, 10, "a second stream")
        assert health.reasons[0] == "read timeout"
        await until(lambda: len(api.open_streams()) == 1, 10, "the new stream")
        await comments(api, sink, 3)


@pytest.mark.asyncio
async def test_the_streams_retry_is_the_least_reconnect_delay(api: FacebookApi) -> None:
    api.retry_ms = 700
    sink, health = RecordingSink(), RecordingHealth()
    async with running(source(api, sink, health, backoff_max=5.0).run()):
        await until(lambda: len(api.open_streams()) == 1, 10, "a stream")
        await comments(api, sink, 2)
        api.drop()
        await until(lambda: len(health.retries) == 1, 10, "a retry")
        # Our backoff says 0.01 s; the stream asked for 700 ms.
        assert health.delays == [pytest.approx(0.7)]
        await until(lambda: len(api.open_streams()) == 1, 10, "the new stream")
        assert api.last_event_ids == [None, "2"]  # where the stream had got to


@pytest.mark.asyncio
async def test_a_retry_beyond_backoff_max_is_cut_to_it(api: FacebookApi) -> None:
    api.retry_ms = 3_600_000
    sink, health = RecordingSink(), RecordingHealth()
    async with running(source(api, sink, health, backoff_max=0.2).run()):
        await until(lambda: len(api.open_streams()) == 1, 10, "a stream")
        api.drop()
        await until(lambda: len(health.retries) == 1, 10, "a retry")
        assert health.delays == [pytest.approx(0.2)]


@pytest.mark.asyncio
async def test_an_event_past_the_bound_drops_the_stream_and_nothing_is_counted_of_it(
    api: FacebookApi,
) -> None:
    sink, health = RecordingSink(), RecordingHealth()
    async with running(source(api, sink, health, max_event_bytes=1024).run()):
        await until(lambda: len(api.open_streams()) == 1, 10, "a stream")
        await api.send_raw(b"x" * 4096)
        await until(lambda: len(health.retries) == 1, 10, "a retry")
        assert health.reasons[0] in ("line too long", "event too large")
        assert sink.items == []
        await until(lambda: len(api.open_streams()) == 1, 10, "the new stream")
        await comments(api, sink, 2)


@pytest.mark.asyncio
async def test_an_answer_that_is_not_an_event_stream_is_refused(api: FacebookApi) -> None:
    api.content_type = "text/html"
    sink, health = RecordingSink(), RecordingHealth()
    async with running(source(api, sink, health).run()):
        await until(lambda: len(health.retries) >= 2, 10, "retries")
        assert set(health.reasons) == {"not an event stream"}
        assert health.ups == 0


@pytest.mark.asyncio
async def test_an_error_event_on_the_stream_is_a_graph_error(api: FacebookApi) -> None:
    errors: list[str] = []
    sink, health = RecordingSink(), RecordingHealth()
    async with running(source(api, sink, health, errors=errors).run()):
        await until(lambda: len(api.open_streams()) == 1, 10, "a stream")
        await api.send_raw(b'{"error": {"code": 613, "message": "Calls limit reached"}}')
        await until(lambda: errors == ["rate_limited"], 10, "the error counted")
        await until(lambda: len(api.open_streams()) == 1, 10, "a new stream after backoff")
        assert health.reasons[0] == "graph rate_limited"


@pytest.mark.asyncio
async def test_a_refused_token_waits_for_a_new_one_which_is_tried_at_once(
    api: FacebookApi,
) -> None:
    old = next(iter(api.valid_tokens))
    api.expire(old)
    token = PageToken(old)
    errors: list[str] = []
    sink, health = RecordingSink(), RecordingHealth()
    # backoff_max 60 s: without the new token's wake-up the test would time out.
    run = source(api, sink, health, token=token, errors=errors, backoff_max=60.0).run()
    async with running(run):
        await until(lambda: errors == ["token_expired"], 10, "the refusal counted")
        assert api.stream_requests == 1
        fresh = "EAAGfreshpagetoken0123456789"
        api.valid_tokens.add(fresh)
        await token.replace(fresh)
        await until(lambda: len(api.open_streams()) == 1, 10, "a stream with the new token")
        await comments(api, sink, 2)
        assert errors == ["token_expired"]


@pytest.mark.asyncio
async def test_a_stop_while_waiting_for_a_token_ends_the_source_at_once(
    api: FacebookApi,
) -> None:
    revoked = next(iter(api.valid_tokens))
    api.revoke(revoked)
    errors: list[str] = []
    sink, health = RecordingSink(), RecordingHealth()
    run = source(api, sink, health, token=PageToken(revoked), errors=errors, backoff_max=600)
    task = asyncio.create_task(run.run())
    await until(lambda: errors == ["token_invalid"], 10, "the refusal counted")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5 * UNIT)


@pytest.mark.asyncio
async def test_polling_ends_with_the_video_after_reading_what_is_left(api: FacebookApi) -> None:
    for _ in range(7):
        await api.comment()
    api.end()
    for _ in range(2):
        await api.comment()
    sink, health = RecordingSink(), RecordingHealth()
    run = source(api, sink, health, mode="poll")
    await asyncio.wait_for(run.run(), 10 * UNIT)  # returns: the video is over
    assert run.ended == "VOD"
    assert [event.id for event in sink.events] == [f"facebook:{c['id']}" for c in api.comments]
    assert all(isinstance(event, Comment) for event in sink.events)
