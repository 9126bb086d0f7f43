"""The ingester's public listeners under clients' mistakes, over raw sockets.

A client's mistake before authentication (a duplicated header, a body cut off mid-way, a wrong
token) is answered 4xx (or the connection dropped), counted, and logged in at most one
throttled line per listener: never a traceback, never a 5xx.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import (
    PUSH_TOKEN,
    PUSH_TOKEN_ENV,
    SECRET,
    SECRET_ENV,
    IngesterProcess,
    push_and_shop_sources,
    scrape,
    select,
    write_config,
)
from tests.servers import free_port
from tests.waiting import UNIT, until

TOKEN = PUSH_TOKEN
TOKEN_ENV = PUSH_TOKEN_ENV


class Listeners:
    def __init__(self, process: IngesterProcess, push: int, hook: int) -> None:
        self.process, self.push, self.hook = process, push, hook

    def log_since(self, offset: int) -> str:
        return self.process.log.read_bytes()[offset:].decode(errors="replace")

    def counted(self, name: str, **labels: str) -> dict[tuple[str, ...], float]:
        return select(scrape(self.process.http_port), name, **labels)


@pytest.fixture
def listeners(tmp_path: Path, redis_url: str, stream: str) -> Iterator[Listeners]:
    http, push, hook = free_port(), free_port(), free_port()
    sources = push_and_shop_sources(push, hook, stream)
    config = write_config(
        tmp_path / "ears.toml", redis_url=redis_url, http_port=http, sources=sources
    )
    # Refusals are logged at most once a minute per listener, as in production.
    config.write_text(
        config.read_text().replace(
            "rejection_interval_seconds = 0", "rejection_interval_seconds = 60"
        )
    )
    env = {SECRET_ENV: SECRET, TOKEN_ENV: TOKEN}
    with IngesterProcess(config, http, env=env) as process:
        yield Listeners(process, push, hook)


async def exchange(port: int, request: bytes, *, abort: bool = False) -> int | None:
    """Send raw bytes; the answer's status, or None if we hang up first (``abort``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        if abort:
            return None
        line = await asyncio.wait_for(reader.readline(), 5 * UNIT)
        return int(line.split()[1]) if line else None
    finally:
        writer.close()
        await writer.wait_closed()


def upgrade(*authorization: str) -> bytes:
    lines = [
        "GET /ingest HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"Authorization: {value}" for value in authorization),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def truncated_delivery() -> bytes:
    head = (
        "POST /webhooks/shopify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "X-Shopify-Topic: orders/create\r\nX-Shopify-Hmac-Sha256: AAAA\r\n"
        "Content-Length: 1000\r\n\r\n"
    )
    return head.encode() + b'{"id": 1, "line_items": ['


def broken_chunks() -> bytes:
    head = (
        "POST /webhooks/shopify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "X-Shopify-Topic: orders/create\r\nX-Shopify-Hmac-Sha256: AAAA\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    return head.encode() + b'4\r\n{"id\r\nzz\r\n": 1}\r\n0\r\n\r\n'


@pytest.mark.asyncio
async def test_client_mistakes_are_4xx_counted_and_logged_once_without_traceback(
    listeners: Listeners,
) -> None:
    offset = listeners.process.log.stat().st_size
    statuses = []
    for _ in range(5):
        statuses.append(await exchange(listeners.push, upgrade(f"Bearer {TOKEN}", "Bearer x")))
        statuses.append(await exchange(listeners.push, upgrade("Bearer wrong")))
        statuses.append(await exchange(listeners.push, upgrade("Bearer \xff")))
        await exchange(listeners.hook, truncated_delivery(), abort=True)
        statuses.append(await exchange(listeners.hook, broken_chunks()))
        bad_line = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Broken\r\n\r\n"
        statuses.append(await exchange(listeners.process.http_port, bad_line))
    assert all(status is not None and 400 <= status < 500 for status in statuses), statuses

    def counted() -> tuple[dict[tuple[str, ...], float], ...]:
        return (
            listeners.counted("livestream_ingest_unauthorized_requests_total", source="push"),
            listeners.counted("livestream_ingest_bad_requests_total", listener="shop"),
            listeners.counted("livestream_ingest_bad_requests_total", listener="http"),
        )

    expected = (
        {(): 15},
        {("incomplete_body",): 5, ("malformed_request",): 5},
        {("malformed_request",): 5},
    )
    try:
        await until(lambda: counted() == expected, 10, "counts")
    finally:
        log = listeners.log_since(offset)
    assert "Traceback" not in log, log
    lines = log.splitlines()
    # One line per listener and kind of refusal, and one per library line a refusal makes
    # (websockets' "connection closed"...): throttled, never one per request.
    assert len(lines) <= 6, log
    assert sum("request refused" in line for line in lines) <= 3, log


CAP = 6
"""Connections each listener takes at once in the slow-client test."""


@pytest.fixture
def bounded(tmp_path: Path, redis_url: str, stream: str) -> Iterator[Listeners]:
    http, hook = free_port(), free_port()
    limits = f"""
max_connections = {CAP}
header_timeout_seconds = {1.0 * UNIT}
body_timeout_seconds = {1.0 * UNIT}
keepalive_timeout_seconds = {1.0 * UNIT}
"""
    sources = f"""
[[sources]]
name = "shop"
type = "http-server"
format = "shopify"
listen = "127.0.0.1:{hook}"
secret_env = "{SECRET_ENV}"
stream = "{stream}"
{limits}"""
    config = write_config(tmp_path / "slow.toml", redis_url=redis_url, http_port=http, sources="")
    text = config.read_text().replace(
        f'listen = "127.0.0.1:{http}"\n', f'listen = "127.0.0.1:{http}"\n{limits}'
    )
    config.write_text(text + sources)
    with IngesterProcess(config, http, env={SECRET_ENV: SECRET}) as process:
        yield Listeners(process, 0, hook)


async def hang_up_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed the connection (EOF, or a reset), reading whatever it sent."""
    try:
        while await reader.read(4096):
            pass
    except ConnectionError:
        pass
    return True


@pytest.mark.asyncio
async def test_slow_clients_are_dropped_and_a_full_listener_refuses_and_counts(
    bounded: Listeners,
) -> None:
    port, http = bounded.hook, bounded.process.http_port
    slow: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for target in [port] * CAP + [http] * CAP:  # half a header each, then nothing
            reader, writer = await asyncio.open_connection("127.0.0.1", target)
            writer.write(b"POST /webhooks/shopify HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Shop")
            slow.append((reader, writer))
        # Both listeners are full: one more connection is closed at once, and counted.
        for target in (port, http):
            reader, writer = await asyncio.open_connection("127.0.0.1", target)
            async with asyncio.timeout(5 * UNIT):
                assert await hang_up_by_server(reader)
            writer.close()
        # Every slow client is dropped once its head is late; nothing is answered to them.
        async with asyncio.timeout(10 * UNIT):
            await asyncio.gather(*(hang_up_by_server(reader) for reader, _ in slow))
    finally:
        for _, writer in slow:
            writer.close()
    # A body that never comes: 408 once the body timeout passes, and the connection closed.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /webhooks/shopify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{"
    )
    async with asyncio.timeout(10 * UNIT):
        status = await reader.readline()
        assert await hang_up_by_server(reader)
    writer.close()
    assert status.split()[1] == b"408"
    # The listeners answer again.
    assert await exchange(http, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == 200
    delivery = b"POST /webhooks/shopify HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    assert await exchange(port, delivery) == 401

    def counted(name: str, listener: str) -> dict[tuple[str, ...], float]:
        return bounded.counted(name, listener=listener)

    await until(
        lambda: (
            counted("livestream_ingest_bad_requests_total", "shop")
            == {("header_timeout",): CAP, ("body_timeout",): 1}
        ),
        10,
        "the webhook's timeouts to be counted",
    )
    assert counted("livestream_ingest_bad_requests_total", "http") == {("header_timeout",): CAP}
    refused = {("listener",): 1, ("client",): 0}  # scope: the listener's cap, not a client's
    assert counted("livestream_ingest_connections_refused_total", "shop") == refused
    assert counted("livestream_ingest_connections_refused_total", "http") == refused
