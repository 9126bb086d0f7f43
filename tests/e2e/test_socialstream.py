"""Social Stream Ninja relay end to end: two ingester replicas joined to one relay session.

The relay's ``id`` is a per-instance counter: after the extension restarts, new lines carry
ids that earlier lines had, and lines still on screen may be sent again. The comment totals
must count every distinct line once — both replicas reading everything, neither doubling it.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.support import IngesterProcess, client_source, scrape, select, write_config
from tests.platforms import RelayServer
from tests.servers import free_port
from tests.waiting import until

SESSION = "lucngan-live"


@pytest_asyncio.fixture
async def relay() -> AsyncIterator[RelayServer]:
    async with RelayServer(first_id=50_000).serving() as running:
        yield running


@pytest.fixture
def replicas(
    relay: RelayServer, tmp_path: Path, redis_url: str, stream: str
) -> Iterator[list[IngesterProcess]]:
    """Two replicas of one relay, one reading through each websocket library: the relay's
    stateful ids must come out the same through both."""
    processes = []
    for n, transport in enumerate(("websockets", "picows")):
        port = free_port()
        source = client_source(
            "ssn", relay.url(SESSION), stream, "socialstream", transport=transport
        )
        config = write_config(
            tmp_path / f"ssn-{n}.toml", redis_url=redis_url, http_port=port, sources=source
        )
        processes.append(IngesterProcess(config, port))
    with processes[0], processes[1]:
        yield processes


class Chat:
    """Lines of a multi-platform live chat, and what they should add up to."""

    def __init__(self) -> None:
        self.expected: Counter[str] = Counter()
        self.users: set[tuple[str, str]] = set()
        self._n = itertools.count()

    def line(self, platform: str, user: str, text: str, **extra: Any) -> dict[str, Any]:
        message = {
            "chatname": user,
            "chatmessage": text,
            "type": platform,
            "chatimg": "https://example.invalid/a.png",
            "hasDonation": "",
            "event": False,
            **extra,
        }
        self.expected[platform] += 1
        self.users.add((platform, str(extra.get("userid", user))))
        return message

    def many(self, count: int) -> list[dict[str, Any]]:
        lines = []
        for _ in range(count):
            n = next(self._n)
            platform = ("tiktok", "youtube", "facebook")[n % 3]
            user = f"buyer{n % 11}"
            text = f'Chốt VT0{n % 3 + 1} {n % 5 + 1}kg <img src="x.png" alt=":lychee:"> #{n}'
            extra = {"userid": f"{platform}-{n % 11}"} if platform != "facebook" else {}
            lines.append(self.line(platform, user, text, **extra))
        return lines


@pytest.mark.asyncio
async def test_relay_restarts_reset_ids_but_not_the_totals(
    relay: RelayServer, replicas: list[IngesterProcess], stream: str
) -> None:
    await until(lambda: relay.listening(SESSION) == 2, 10, "both replicas to join")
    chat = Chat()
    for message in chat.many(150):
        await relay.publish(SESSION, message)
    # A buyer repeating a line is two comments; HTML markup is read as its text.
    repeat = chat.line("tiktok", "Lan_HN", "VT01 2kg", userid="tt-77")
    assert chat.line("tiktok", "Lan_HN", "VT01 2kg", userid="tt-77") == repeat
    await relay.publish(SESSION, repeat)
    await relay.publish(SESSION, repeat)
    html = chat.line("youtube", "Minh", "<b>VT02</b> &amp; VT03", userid="yt-5")
    await relay.publish(SESSION, html)
    # Not chat: an event, a command's callback, viewer counts.
    await relay.publish(SESSION, {"chatname": "x", "type": "tiktok", "event": "new_follower"})
    await relay.publish(SESSION, {"callback": {"get": "q-1", "result": True}})
    await relay.publish(
        SESSION, {"event": "viewer_updates", "meta": {"tiktok": 812, "youtube": 95}}
    )

    # The extension restarts: its counter starts again at the same value, so new lines reuse
    # the ids of earlier ones; and the lines still on screen are sent again, under new ids.
    relay.restart_extension(first_id=50_000)
    await relay.publish(SESSION, repeat)
    await relay.publish(SESSION, {**html, "chatmessage": "<i>VT02</i> &amp; VT03"})
    for message in chat.many(100):
        await relay.publish(SESSION, message)
    # The hosted relay drops every listener; they reconnect and join again.
    joins = relay.joins
    await relay.drop_listeners()
    await until(lambda: relay.joins == joins + 2, 10, "both replicas to rejoin")
    for message in chat.many(50):
        await relay.publish(SESSION, message)
    for bad in (b"not json", b"[1, 2]", b'{"chatname": 5, "chatmessage": "x"}'):
        for ws in list(relay.listeners[SESSION]):
            await ws.send(bad)

    total = sum(chat.expected.values())
    for replica in replicas:
        port = replica.http_port

        def comments(port: int = port) -> float:
            return sum(select(scrape(port), "livestream_comments_total", stream=stream).values())

        await until(lambda comments=comments: comments() >= total, 20, f"{total} comments")
        samples = scrape(port)
        assert select(samples, "livestream_comments_total", stream=stream) == {
            (platform,): n for platform, n in chat.expected.items()
        }
        assert select(samples, "livestream_viewers", stream=stream) == {
            ("tiktok",): 812,
            ("youtube",): 95,
        }
        assert select(samples, "livestream_unique_commenters", stream=stream) == {
            (): len(chat.users)
        }
        assert select(samples, "livestream_ingest_ignored_total", source="ssn") == {
            ("other_event",): 1,
            ("not_chat",): 1,
        }
        assert select(samples, "livestream_ingest_rejections_total", source="ssn") == {
            ("malformed_json",): 1,
            ("not_an_object",): 1,
            ("invalid_type",): 1,
        }
