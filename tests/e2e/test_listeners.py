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

from tests.conftest import UNIT
from tests.e2e.support import SECRET, SECRET_ENV, IngesterProcess, scrape, select, write_config
from tests.waiting import until
from workers.redis_server import free_port

TOKEN = "push-token-0123456789abcdef"
TOKEN_ENV = "LIVESTREAM_TEST_PUSH_TOKEN"


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
    sources = f"""
[[sources]]
name = "push"
type = "websocket-server"
listen = "127.0.0.1:{push}"
path = "/ingest"
token_env = "{TOKEN_ENV}"
stream = "{stream}"

[[sources]]
name = "shop"
type = "http-server"
format = "shopify"
listen = "127.0.0.1:{hook}"
path = "/webhooks/shopify"
secret_env = "{SECRET_ENV}"
stream = "{stream}"
"""
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
    assert len(log.splitlines()) <= 3, log  # one line per listener, the rest suppressed
