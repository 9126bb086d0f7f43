"""Component tests for the demo feed server (workers.demo.feed) with a real websocket client."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import CloseCode
from websockets.protocol import State

from tests.waiting import UNIT
from workers.demo.feed import SUPERSEDED, FeedServer
from workers.demo.sale import Sale, frames, lychee_sale


@pytest.fixture(scope="module")
def small_sale() -> Sale:
    """A three-minute sale of about 200 kg."""
    return lychee_sale(hours=0.05, target_grams=200_000)


async def receive(ws: ClientConnection, count: int) -> list[str]:
    """Exactly ``count`` text messages."""
    out: list[str] = []
    for _ in range(count):
        message = await ws.recv()
        assert isinstance(message, str)
        out.append(message)
    return out


async def receive_until_closed(ws: ClientConnection) -> tuple[list[str], ConnectionClosed]:
    """All text messages until the server closes the connection."""
    out: list[str] = []
    while True:
        try:
            message = await ws.recv()
        except ConnectionClosed as closed:
            return out, closed
        assert isinstance(message, str)
        out.append(message)


def identity(event: dict[str, object]) -> tuple[object, ...]:
    return (event["stream"], event["kind"], event["id"], event.get("status"))


@pytest.mark.asyncio
async def test_feed_survives_one_cut_and_delivers_everything(small_sale: Sale) -> None:
    expected = [payload.decode() for payload in frames(small_sale.deliveries)]
    async with FeedServer(small_sale, speed=0, replay=25) as feed, asyncio.timeout(30 * UNIT):
        assert feed.url.startswith("ws://127.0.0.1:")
        assert feed.url.endswith("/feed")
        async with connect(feed.url) as ws:
            before, closed = await receive_until_closed(ws)
        assert closed.rcvd is not None
        assert closed.rcvd.code == CloseCode.SERVICE_RESTART
        assert closed.rcvd.reason == "service restart"
        assert feed.disconnects == 1
        assert feed.cut_at == len(before) == (feed.total + 1) // 2
        assert not feed.done.is_set()

        async with connect(feed.url) as ws:
            after = await receive(ws, 25 + feed.total - len(before))
            await feed.done.wait()
            assert ws.state is State.OPEN  # the feed keeps the connection open once done

    assert feed.sent == feed.total == len(small_sale.deliveries)
    assert feed.disconnects == 1
    assert feed.replayed == 25
    assert after[:25] == before[-25:]
    assert before + after[25:] == expected
    received = {identity(orjson.loads(message)) for message in before + after}
    assert received == {identity(event) for event in small_sale.events}


@pytest.mark.asyncio
async def test_batched_frames_are_arrays(small_sale: Sale) -> None:
    async with (
        FeedServer(small_sale, speed=0, disconnect_at=None, batch=10) as feed,
        asyncio.timeout(30 * UNIT),
        connect(feed.url) as ws,
    ):
        messages = await receive(ws, -(-feed.total // 10))
        await feed.done.wait()
    chunks = [orjson.loads(message) for message in messages]
    assert all(isinstance(chunk, list) and 1 <= len(chunk) <= 10 for chunk in chunks)
    assert [e for chunk in chunks for e in chunk] == [d.event for d in small_sale.deliveries]
    assert feed.disconnects == 0


@pytest.mark.asyncio
async def test_paced_feed_follows_scenario_time(small_sale: Sale) -> None:
    speed = 1_000.0
    span = small_sale.deliveries[-1].at / speed
    loop = asyncio.get_running_loop()
    async with (
        FeedServer(small_sale, speed=speed, disconnect_at=None) as feed,
        asyncio.timeout(30 * UNIT),
        connect(feed.url) as ws,
    ):
        started = loop.time()
        await receive(ws, feed.total)
        await feed.done.wait()
        elapsed = loop.time() - started
    assert elapsed >= span * 0.9


@pytest.mark.asyncio
async def test_newer_connection_supersedes_older(small_sale: Sale) -> None:
    async with (
        FeedServer(small_sale, speed=0, disconnect_at=None, replay=5) as feed,
        asyncio.timeout(30 * UNIT),
        connect(feed.url) as first,
    ):
        await receive(first, feed.total)
        await feed.done.wait()
        async with connect(feed.url) as second:
            _, closed = await receive_until_closed(first)
            assert closed.rcvd is not None
            assert closed.rcvd.code == SUPERSEDED
            replayed = await receive(second, 5)
    assert replayed == [payload.decode() for payload in frames(small_sale.deliveries[-5:])]


@pytest.mark.asyncio
async def test_other_paths_are_refused(small_sale: Sale) -> None:
    async with FeedServer(small_sale, speed=0) as feed, asyncio.timeout(10 * UNIT):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(feed.url.removesuffix("/feed") + "/nope"):
                pass
        assert refused.value.response.status_code == 404
        assert feed.connections == 0


@pytest.mark.asyncio
async def test_broadcast_feeds_every_subscriber_and_retime_moves_events_to_now() -> None:
    sale = lychee_sale(seed=5, stream="bc", hours=0.05, target_grams=200_000)
    started = datetime.now(UTC)
    async with (
        # paced over ~2 s: the second subscriber joins within the replay window of the first
        FeedServer(sale, speed=90, disconnect_at=None, broadcast=True, retime=True) as feed,
        connect(feed.url) as one,
        connect(feed.url) as two,
    ):

        async def drain(ws: ClientConnection) -> list[dict[str, object]]:
            received: list[dict[str, object]] = []
            while len(received) < feed.total:
                received.append(orjson.loads(await ws.recv()))
            return received

        async with asyncio.timeout(20 * UNIT):
            first, second = await asyncio.gather(drain(one), drain(two))
    assert [e["id"] for e in first] == [d.event["id"] for d in sale.deliveries]
    assert [e["id"] for e in second] == [e["id"] for e in first]

    def key(event: dict[str, object]) -> tuple[str, ...]:
        return str(event["kind"]), str(event["id"]), str(event.get("status", ""))

    stamps = {key(e): datetime.fromisoformat(str(e["ts"])) for e in first}
    assert min(stamps.values()) >= started - timedelta(seconds=1)
    originals = {key(d.event): datetime.fromisoformat(str(d.event["ts"])) for d in sale.deliveries}
    in_original_order = sorted(stamps, key=lambda k: (originals[k], k))
    assert [stamps[k] for k in in_original_order] == sorted(stamps.values())  # order kept
