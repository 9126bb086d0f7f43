"""The YouTube Live chat poller against our Data API server over real HTTP: how it goes on after
each documented error, without losing or repeating a page. No Redis: a sink records what the
source hands on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import orjson
import pytest
import pytest_asyncio

from ingest.adapter import FormatOptions
from ingest.model import Comment, Decoded, Rejection
from ingest.sources.youtube import YouTubeSettings, YouTubeSource
from ingest.youtube import LiveChatFormat
from tests.waiting import UNIT, until
from tests.youtube_api import YouTubeApi, error_body


class Recorder:
    """Sink and health at once: what was submitted, and the source's state changes."""

    def __init__(self) -> None:
        self.items: list[Decoded] = []
        self.up: list[bool] = []
        self.retries: list[str] = []

    async def submit(self, source: str, items: Sequence[Decoded]) -> asyncio.Future[None]:
        self.items.extend(items)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def put(self, source: str, items: Sequence[Decoded]) -> None:
        self.items.extend(items)

    def offer(self, source: str, items: Sequence[Decoded]) -> bool:
        self.items.extend(items)
        return True

    def connected(self, source: str, up: bool) -> None:
        self.up.append(up)

    def reconnecting(self, source: str, reason: str, delay: float) -> None:
        self.retries.append(reason)

    def received(self, source: str) -> None:
        pass

    def ids(self) -> list[str]:
        return [item.id for item in self.items if isinstance(item, Comment)]


@pytest_asyncio.fixture
async def api() -> AsyncIterator[YouTubeApi]:
    async with YouTubeApi(polling_ms=50).serving() as running:
        yield running


def source(
    api: YouTubeApi, recorder: Recorder, errors: list[str], ended: list[str], **settings: object
) -> YouTubeSource:
    given: dict[str, object] = {"live_chat_id": api.chat_id, **settings}
    return YouTubeSource(
        "yt",
        LiveChatFormat(FormatOptions(default_stream="s", platforms=frozenset({"youtube"}))),
        recorder,
        recorder,
        YouTubeSettings(
            api_url=api.api_url,
            min_poll_interval=0.01,
            backoff_initial=0.02,
            backoff_max=0.1,
            **given,  # type: ignore[arg-type]
        ),
        tokens=api.token,
        on_api_error=errors.append,
        on_ended=ended.append,
    )


async def running(poller: YouTubeSource) -> asyncio.Task[None]:
    return asyncio.create_task(poller.run(), name="source[yt].receive")


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def expected(api: YouTubeApi) -> list[str]:
    return [f"youtube:{mid}" for mid in api.counted]


@pytest.mark.asyncio
async def test_after_rate_limits_server_errors_and_a_bad_page_it_resumes_from_its_page(
    api: YouTubeApi,
) -> None:
    recorder, errors, ended = Recorder(), list[str](), list[str]()
    task = await running(source(api, recorder, errors, ended))
    try:
        await until(lambda: api.first_polls == 1, 10, "the first poll")
        for n in range(10):
            api.text(f"a{n}")
        await until(lambda: len(recorder.ids()) == 10, 10, "the first messages")
        api.failures += [
            (403, orjson.dumps(error_body(403, "rateLimitExceeded"))),
            (503, orjson.dumps(error_body(503, "backendError", "global"))),
            (200, b"<html>not json</html>"),
        ]
        for n in range(10):
            api.text(f"b{n}")
        await until(lambda: len(recorder.ids()) == 20, 10, "the rest")
    finally:
        await stop(task)
    assert recorder.ids() == expected(api)  # each once, in order: no page lost or repeated
    assert errors == ["rate_limited", "server"]
    assert recorder.retries == ["rate_limited", "server", "malformed page"]
    (rejection,) = [item for item in recorder.items if isinstance(item, Rejection)]
    assert rejection.raw == b""  # not JSON: nothing of it is kept
    assert api.first_polls == 1
    assert ended == []


@pytest.mark.asyncio
async def test_a_broadcast_not_live_yet_is_looked_up_again_until_it_is(api: YouTubeApi) -> None:
    api.live = False
    recorder, errors, ended = Recorder(), list[str](), list[str]()
    task = await running(
        source(api, recorder, errors, ended, live_chat_id=None, video_id=api.video_id)
    )
    try:
        await until(lambda: api.lookups >= 3, 10, "lookups")
        assert api.polls == 0
        api.live = True
        api.text("hello")
        await until(lambda: len(recorder.ids()) == 1, 10, "the chat")
    finally:
        await stop(task)
    assert set(recorder.retries) == {"video not_live"}
    assert recorder.up[-1] is False  # stopped: down


@pytest.mark.parametrize(
    ("status", "reason", "why"),
    [
        (403, "liveChatDisabled", "chat_disabled"),
        (403, "liveChatEnded", "chat_ended"),
        (404, "liveChatNotFound", "chat_not_found"),
    ],
)
@pytest.mark.asyncio
async def test_a_chat_that_is_over_ends_the_source_without_retrying(
    api: YouTubeApi, status: int, reason: str, why: str
) -> None:
    api.failures.append((status, orjson.dumps(error_body(status, reason))))
    recorder, errors, ended = Recorder(), list[str](), list[str]()
    poller = source(api, recorder, errors, ended)
    async with asyncio.timeout(10 * UNIT):
        await poller.run()  # returns: the source is over
    assert ended == [why]
    assert poller.ended == why
    assert errors == [why]
    assert api.polls == 1
    assert recorder.retries == []


@pytest.mark.asyncio
async def test_a_video_that_does_not_exist_ends_the_source(api: YouTubeApi) -> None:
    recorder, errors, ended = Recorder(), list[str](), list[str]()
    poller = source(api, recorder, errors, ended, live_chat_id=None, video_id="no-such-video")
    async with asyncio.timeout(10 * UNIT):
        await poller.run()
    assert ended == ["video_not_found"]


@pytest.mark.asyncio
async def test_a_stop_during_the_quota_wait_is_prompt(api: YouTubeApi) -> None:
    api.quota_exhausted = True
    recorder, errors, ended = Recorder(), list[str](), list[str]()
    quota: list[bool] = []
    poller = source(api, recorder, errors, ended, quota_probe_interval=3600.0)
    poller.on_quota = quota.append
    task = await running(poller)
    await until(lambda: quota == [True], 10, "the quota wait")
    async with asyncio.timeout(2 * UNIT):
        await stop(task)
    assert errors == ["quota"]
    assert api.quota_refusals == 1


@pytest.mark.asyncio
async def test_the_stream_delivers_as_messages_come_and_resumes_after_a_drop(
    api: YouTubeApi,
) -> None:
    api.stream_seconds = 0.3  # the server ends each stream soon: the source opens the next
    recorder, errors, ended = Recorder(), list[str](), list[str]()
    task = await running(source(api, recorder, errors, ended, transport="stream"))
    try:
        await until(lambda: api.first_polls == 1, 10, "the first stream")
        for n in range(10):
            api.text(f"a{n}")
        await until(lambda: len(recorder.ids()) == 10, 10, "the first messages")
        api.drop_after_pages = 2  # the next stream is cut off mid-array
        for round_ in range(5):
            for n in range(6):
                api.text(f"b{round_}-{n}")
            await until(lambda: len(recorder.ids()) == len(api.counted), 10, "all so far")
        # The stream that replaced the dropped one ends normally after 0.3 s: a third opens.
        await until(lambda: api.streams >= 3, 10, "a stream ended by the server, and the next")
        api.text("last")
        await until(lambda: len(recorder.ids()) == len(api.counted), 10, "the last one")
        api.end()
        async with asyncio.timeout(10 * UNIT):
            await task
    finally:
        if not task.done():
            await stop(task)
    assert recorder.ids() == expected(api)  # each once, in order, across drops and reopenings
    assert api.first_polls == 1  # every later stream resumed from a page token
    assert api.streams >= 3
    assert api.dropped == 1
    assert "network" in recorder.retries
    assert api.polls == api.streams  # never fell back to list
    assert ended == ["chat_ended"]
    assert errors == []
