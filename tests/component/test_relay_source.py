"""The Social Stream Ninja format behind the websocket client source, against our relay: the
join message, and a new relay run on every connection."""

from __future__ import annotations

import orjson
import pytest

from ingest.adapter import FormatOptions
from ingest.socialstream import SocialStreamFormat
from ingest.sources.websocket import WebsocketClientSettings, WebsocketClientSource
from tests.platforms import RelayServer
from tests.recorders import RecordingHealth, RecordingSink, running
from tests.waiting import until

LINE = {"chatname": "Lan", "chatmessage": "VT01 2kg", "type": "tiktok", "userid": "lan"}


@pytest.mark.asyncio
async def test_join_by_message_and_each_connection_is_a_new_run() -> None:
    fmt = SocialStreamFormat(FormatOptions(default_stream="s", platforms=frozenset({"tiktok"})))
    sink = RecordingSink()
    health = RecordingHealth()
    async with RelayServer().serving() as relay:
        settings = WebsocketClientSettings(
            url=relay.bare_url,
            subscribe=orjson.dumps({"join": "live", "in": 4}).decode(),
            backoff_initial=0.01,
            backoff_max=0.05,
        )
        client = WebsocketClientSource(
            "ssn", fmt, sink, health, settings, on_connect=fmt.new_connection, rng=lambda: 1.0
        )
        async with running(client.run()):
            await until(lambda: relay.listening("live") == 1, 10, "the join message")
            await relay.publish("live", LINE)
            await relay.publish("live", LINE)  # a repeat: a second comment
            await until(lambda: len(sink.events) == 2, 10, "two lines")
            await relay.drop_listeners()
            await until(lambda: relay.joins == 2, 10, "a new join after the reconnect")
            await relay.publish("live", LINE)  # numbered from 1 again: a resend to dedup
            await until(lambda: len(sink.events) == 3, 10, "the line after the reconnect")
    first, second, third = sink.event_ids
    assert first != second
    assert third == first
    assert health.ups == 2
