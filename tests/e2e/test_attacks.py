"""Legitimate traffic is counted exactly while the listeners are attacked.

The ingester runs as a user runs it, with a websocket push source, a Shopify webhook source and
``/metrics``. A legitimate producer on 127.0.0.1 pushes a known sale with the right token, and a
shop delivers signed orders (retrying what is not answered 200, as Shopify does); attackers
connect from other loopback addresses (Linux routes all of 127.0.0.0/8 to lo), so the limits per
client address apply to them and not to the producer. After each attack both streams' totals
must be exact, every refusal counted, and the log bounded: no traceback, at most one line per
listener and kind of refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from ingest.shopify import signature
from tests.e2e.support import (
    SECRET,
    SECRET_ENV,
    IngesterProcess,
    exact,
    sale_frames,
    scrape,
    select,
    small_sale,
    write_config,
)
from tests.e2e.test_shopify import cancelled, expected_totals, make_order
from tests.platforms import Shop
from tests.servers import free_port
from tests.waiting import UNIT, until

TOKEN = "push-token-0123456789abcdef"
TOKEN_ENV = "LIVESTREAM_TEST_PUSH_TOKEN"
CAP, PER_CLIENT = 20, 4
"""Connections the push and webhook listeners take at once, and from one address."""
PUSH_BURST, SHOP_BURST, HTTP_BURST = 5, 40, 200
"""Requests (handshakes) one address may send at once to each listener."""
TIMEOUT = 3.0
"""Header, body, keep-alive and handshake timeouts, in UNIT seconds: long enough for the
attackers to fill a listener before the first of them is dropped, on a busy machine too."""


def attacker(n: int) -> str:
    return f"127.0.0.{n}"


class Target:
    def __init__(self, process: IngesterProcess, push: int, hook: int, stream: str) -> None:
        self.process, self.push, self.hook = process, push, hook
        self.http = process.http_port
        self.stream, self.shop_stream = stream, f"{stream}-shop"
        self.shop = Shop(f"http://127.0.0.1:{hook}/webhooks/shopify", SECRET)
        self.offset = process.log.stat().st_size

    def counted(self, name: str, **labels: str) -> dict[tuple[str, ...], float]:
        return select(scrape(self.http), name, **labels)

    def log(self) -> str:
        return self.process.log.read_bytes()[self.offset :].decode(errors="replace")


def limits(*, max_connections: int, per_client: int, rate: float, burst: int, client: float,
           client_burst: int) -> str:  # fmt: skip
    return f"""max_connections = {max_connections}
max_connections_per_client = {per_client}
requests_per_second = {rate}
requests_burst = {burst}
client_requests_per_second = {client}
client_requests_burst = {client_burst}
"""


def timeouts() -> str:
    return "\n".join(
        f"{key}_timeout_seconds = {TIMEOUT * UNIT}" for key in ("header", "body", "keepalive")
    )


@pytest.fixture
def target(tmp_path: Path, redis_url: str, stream: str) -> Iterator[Target]:
    http, push, hook = free_port(), free_port(), free_port()
    push_limits = limits(
        max_connections=CAP, per_client=PER_CLIENT, rate=1, burst=50, client=1,
        client_burst=PUSH_BURST,
    )  # fmt: skip
    shop_limits = limits(
        max_connections=CAP, per_client=PER_CLIENT, rate=200, burst=200, client=20,
        client_burst=SHOP_BURST,
    )  # fmt: skip
    http_limits = limits(
        max_connections=16, per_client=PER_CLIENT, rate=1000, burst=1000, client=100,
        client_burst=HTTP_BURST,
    )  # fmt: skip
    sources = f"""
[[sources]]
name = "push"
type = "websocket-server"
listen = "127.0.0.1:{push}"
token_env = "{TOKEN_ENV}"
stream = "{stream}"
open_timeout = {TIMEOUT * UNIT}
{push_limits}
[[sources]]
name = "shop"
type = "http-server"
format = "shopify"
listen = "127.0.0.1:{hook}"
secret_env = "{SECRET_ENV}"
stream = "{stream}-shop"
{shop_limits}{timeouts()}
"""
    config = write_config(
        tmp_path / "attacked.toml", redis_url=redis_url, http_port=http, sources=""
    )
    text = config.read_text().replace(
        f'listen = "127.0.0.1:{http}"\n',
        f'listen = "127.0.0.1:{http}"\n{http_limits}{timeouts()}\n',
    )
    # Refusals are logged at most once a minute per listener and kind, as in production.
    text = text.replace("rejection_interval_seconds = 0", "rejection_interval_seconds = 60")
    config.write_text(text + sources)
    with IngesterProcess(config, http, env={SECRET_ENV: SECRET, TOKEN_ENV: TOKEN}) as process:
        yield Target(process, push, hook, stream)


# --- the legitimate side ----------------------------------------------------------------------


class Producer:
    """Pushes a sale over one authenticated connection from 127.0.0.1, in two halves."""

    def __init__(self, target: Target) -> None:
        self.sale = small_sale(target.stream)
        self.frames = sale_frames(self.sale)
        self.url = f"ws://127.0.0.1:{target.push}/ingest"

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[ClientConnection]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with connect(
            self.url, additional_headers=headers, proxy=None, open_timeout=5 * UNIT
        ) as ws:
            yield ws

    async def send(self, ws: ClientConnection, half: int) -> None:
        middle = len(self.frames) // 2
        for frame in self.frames[middle:] if half else self.frames[:middle]:
            await ws.send(frame.decode())


class Orders:
    """Signed Shopify deliveries from 127.0.0.1, each delivered until it is answered 200."""

    def __init__(self, target: Target, seed: int) -> None:
        self.target = target
        rng = random.Random(seed)
        self.orders = [make_order(rng, seed * 1000 + n) for n in range(8)]
        self.cancels = self.orders[::4]
        self.statuses: list[int] = []

    async def deliver(self, http: aiohttp.ClientSession, topic: str, body: bytes, eid: str) -> None:
        async def answered() -> bool:
            try:
                status = await self.target.shop.deliver(http, topic, body, event_id=eid)
            except aiohttp.ClientError:  # refused at the connection cap: Shopify retries
                status = 0
            self.statuses.append(status)
            return status == 200

        await until(answered, 20, f"delivery {eid} to be answered 200")

    async def send(self) -> None:
        async with aiohttp.ClientSession() as http:
            for order in self.orders:
                await self.deliver(http, "orders/create", orjson.dumps(order.body), f"c{order.id}")
            for order in self.cancels:
                body = orjson.dumps(cancelled(order))
                await self.deliver(http, "orders/cancelled", body, f"x{order.id}")

    def expected(self) -> dict[str, dict[tuple[str, ...], float]]:
        return expected_totals(self.orders, self.cancels)


async def legitimate_traffic_during(
    target: Target, attack: Callable[[], Awaitable[None]], orders: Orders | None = None
) -> None:
    """The sale's first half, then ``attack`` while the second half and the shop's orders go
    in; then both streams' totals must be exact."""
    producer = Producer(target)
    orders = orders or Orders(target, random.randrange(1, 10**6))
    async with producer.connected() as ws:
        await producer.send(ws, 0)
        await attack()
        await asyncio.gather(producer.send(ws, 1), orders.send())
    await exact(target.http, producer.sale, 30)
    await shop_exact(target, orders)


async def shop_exact(target: Target, orders: Orders) -> None:
    expected = orders.expected()

    def counted() -> dict[str, dict[tuple[str, ...], float]]:
        samples = scrape(target.http)
        return {name: select(samples, name, stream=target.shop_stream) for name in expected}

    await until(lambda: counted() == expected, 20, "the shop's exact totals")


def assert_log_bounded(target: Target, kinds: int) -> None:
    """No traceback; one line per listener and kind of refusal (and a few of the libraries')."""
    log = target.log()
    assert "Traceback" not in log, log
    refused = [line for line in log.splitlines() if "request refused" in line]
    assert len(refused) <= kinds, log
    assert len(log.splitlines()) <= kinds + 6, log


# --- the attackers ------------------------------------------------------------------------------

Held = list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]


async def open_from(address: str, port: int, data: bytes) -> tuple[
    asyncio.StreamReader, asyncio.StreamWriter
]:  # fmt: skip
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
    writer.write(data)
    return reader, writer


async def dropped(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent until it closed the connection (EOF or reset)."""
    received = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            received += chunk
    return received


async def exchange(address: str, port: int, data: bytes, answers: int = 1) -> bytes:
    """Send ``data`` from ``address``; read until ``answers`` status lines came or it closed."""
    reader, writer = await open_from(address, port, data)
    received = b""
    try:
        async with asyncio.timeout(10 * UNIT):
            with contextlib.suppress(ConnectionError):
                while len(statuses(received)) < answers:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    received += chunk
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return received


def statuses(answers: bytes) -> list[int]:
    """The status of each answer (pipelined answers follow each other's bodies directly)."""
    return [int(status) for status in re.findall(rb"HTTP/1\.[01] (\d{3}) ", answers)]


def upgrade(authorization: Sequence[str] = ("Bearer wrong",)) -> bytes:
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


def delivery(body: bytes, hmac: str = "AAAA", topic: str = "orders/create") -> bytes:
    head = (
        f"POST /webhooks/shopify HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Shopify-Topic: {topic}\r\n"
        f"X-Shopify-Hmac-Sha256: {hmac}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


SLOW_HEADS = {
    "push": b"GET /ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr",
    "shop": b"POST /webhooks/shopify HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Shop",
    "http": b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAcc",
}


async def fill(port: int, head: bytes, addresses: range, each: int) -> Held:
    """``each`` connections from every address, sending half a request head, then nothing."""
    return [await open_from(attacker(n), port, head) for n in addresses for _ in range(each)]


# --- the attacks --------------------------------------------------------------------------------

REFUSED = "livestream_ingest_connections_refused_total"
LIMITED = "livestream_ingest_rate_limited_requests_total"
UNAUTHORIZED = "livestream_ingest_unauthorized_requests_total"
BAD = "livestream_ingest_bad_requests_total"


@pytest.mark.asyncio
async def test_slow_and_idle_connections_up_to_and_past_the_caps(target: Target) -> None:
    """Attackers send half a request head and wait. Four addresses (and a fifth, partly) take
    every place of the push and webhook listeners, one more each refused for its address; a
    further address is refused for the listener; one address tries /metrics past its share.
    The producer's open connection delivers; the shop's deliveries get in once the slow
    connections are dropped at the head timeout (until then its connections are refused for
    the full listener: it retries, as Shopify does)."""
    held: Held = []

    async def attack() -> None:
        push, hook, http = target.push, target.hook, target.http
        # 4 x 4 places, 4 refused for their address; 3 more: the push listener is full (the
        # producer has a place); 2 refused for the listener.
        held.extend(await fill(push, SLOW_HEADS["push"], range(2, 6), PER_CLIENT + 1))
        held.extend(await fill(push, SLOW_HEADS["push"], range(6, 7), CAP - 1 - 4 * PER_CLIENT))
        held.extend(await fill(push, SLOW_HEADS["push"], range(7, 8), 2))
        # 5 x 4 places, 5 refused for their address; 2 refused for the listener.
        held.extend(await fill(hook, SLOW_HEADS["shop"], range(2, 7), PER_CLIENT + 1))
        held.extend(await fill(hook, SLOW_HEADS["shop"], range(7, 8), 2))
        held.extend(await fill(http, SLOW_HEADS["http"], range(2, 3), PER_CLIENT + 2))

    try:
        await legitimate_traffic_during(target, attack)
        async with asyncio.timeout(10 * UNIT):  # every slow client is dropped, unanswered
            answers = await asyncio.gather(*(dropped(reader) for reader, _ in held))
        assert set(answers) == {b""}
    finally:
        for _, writer in held:
            writer.close()

    expected = {
        ("push", "client"): 4,
        ("push", "listener"): 2,
        ("shop", "client"): 5,
        ("http", "client"): 2,
        ("http", "listener"): 0,
    }

    def refused() -> dict[tuple[str, ...], float]:
        return {key: value for key, value in target.counted(REFUSED).items() if key in expected}

    await until(lambda: refused() == expected, 10, "the refused connections")
    # The attacker's 2, and the shop's retries while the listener was full.
    assert target.counted(REFUSED, listener="shop", scope="listener")[()] >= 2
    timeouts = target.counted(BAD, reason="header_timeout")
    assert timeouts == {("shop",): CAP, ("http",): PER_CLIENT}
    assert_log_bounded(target, kinds=5)


def assert_retry_after(answers: bytes) -> None:
    """Every 429 says when to come back, in whole seconds (RFC 9110)."""
    values = re.findall(rb"\r\nRetry-After: ([^\r]*)\r\n", answers)
    assert len(values) == statuses(answers).count(429)
    assert all(value.isdigit() and int(value) >= 1 for value in values), values


@pytest.mark.asyncio
async def test_a_flood_over_the_rate_limits_is_answered_429(target: Target) -> None:
    """Pipelined requests on one connection to each HTTP listener, and handshakes one after
    another to the push listener (from one address, then from ten: past the listener's
    burst). Each client's share is taken, the rest answered 429 with Retry-After."""
    floods: dict[str, bytes] = {}

    async def attack() -> None:
        healthz = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        floods["http"] = await exchange(attacker(2), target.http, healthz * 300, 300)
        floods["shop"] = await exchange(attacker(2), target.hook, delivery(b"{}") * 100, 100)
        one = [await exchange(attacker(2), target.push, upgrade()) for _ in range(20)]
        many = [
            await exchange(attacker(n), target.push, upgrade())
            for n in range(3, 13)
            for _ in range(PUSH_BURST)
        ]
        floods["push"], floods["push-many"] = b"".join(one), b"".join(many)

    await legitimate_traffic_during(target, attack)
    http, shop = statuses(floods["http"]), statuses(floods["shop"])
    assert len(http) == 300
    assert set(http) == {200, 429}
    assert http.count(429) >= 300 - HTTP_BURST - 30
    assert len(shop) == 100
    assert set(shop) == {401, 429}
    assert shop.count(429) >= 100 - SHOP_BURST - 10
    assert_retry_after(floods["shop"] + floods["push"])
    push = statuses(floods["push"])
    assert len(push) == 20
    assert push[:PUSH_BURST] == [401] * PUSH_BURST
    assert push.count(429) >= 20 - PUSH_BURST - 1
    # Ten addresses within their own share: the listener's burst (50) runs out.
    many = statuses(floods["push-many"])
    assert len(many) == 10 * PUSH_BURST
    assert many.count(429) >= 1
    limited = target.counted(LIMITED)
    assert limited == {
        ("http", "client"): http.count(429),
        ("http", "listener"): 0,
        ("shop", "client"): shop.count(429),
        ("shop", "listener"): 0,
        ("push", "client"): push.count(429),
        ("push", "listener"): many.count(429),
    }
    unauthorized = target.counted(UNAUTHORIZED)
    assert unauthorized == {
        ("shop",): shop.count(401),
        ("push",): push.count(401) + many.count(401),
    }
    assert_log_bounded(target, kinds=5)


@pytest.mark.asyncio
async def test_a_flood_of_failed_authentications(target: Target) -> None:
    """Wrong, missing and doubled tokens from six addresses; deliveries with a bad signature
    from three, each within its address's share: every one refused 401 and counted."""
    answers: dict[str, list[int]] = {"push": [], "shop": []}
    tokens = [("Bearer wrong",), (), ("Basic dXNlcjpwYXNz",), (f"Bearer {TOKEN}", "Bearer x")]

    async def attack() -> None:
        for n in range(2, 8):
            for authorization in tokens:
                reply = await exchange(attacker(n), target.push, upgrade(authorization))
                answers["push"] += statuses(reply)
        for n in range(2, 5):
            forged = b"".join(
                delivery(orjson.dumps({"id": n * 100 + k}), hmac="c2lnbmVk") for k in range(30)
            )
            answers["shop"] += statuses(await exchange(attacker(n), target.hook, forged, 30))

    await legitimate_traffic_during(target, attack)
    assert answers == {"push": [401] * 24, "shop": [401] * 90}
    assert target.counted(UNAUTHORIZED) == {("push",): 24, ("shop",): 90}
    assert set(target.counted(LIMITED).values()) == {0}
    assert_log_bounded(target, kinds=2)


def truncated_delivery() -> bytes:
    head = (
        "POST /webhooks/shopify HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Shopify-Topic: orders/create\r\n"
        "X-Shopify-Hmac-Sha256: AAAA\r\nContent-Length: 1000\r\n\r\n"
    )
    return head.encode() + b'{"id": 1, "line_items": ['


def broken_chunks() -> bytes:
    head = (
        "POST /webhooks/shopify HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Shopify-Topic: orders/create\r\n"
        "X-Shopify-Hmac-Sha256: AAAA\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    return head.encode() + b'4\r\n{"id\r\nzz\r\n": 1}\r\n0\r\n\r\n'


async def hang_up(address: str, port: int, data: bytes) -> None:
    """Send ``data`` and hang up at once (a body cut off mid-way)."""
    _, writer = await open_from(address, port, data)
    await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


@pytest.mark.asyncio
async def test_malformed_requests_and_bodies_cut_off(target: Target) -> None:
    """Bodies cut off mid-way, broken chunks, a broken header line, bytes that are not HTTP at
    all: each a 4xx (or the connection dropped), counted."""
    answers: dict[str, list[int]] = {"shop": [], "http": [], "push": []}
    bad_line = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Broken\r\n\r\n"

    async def attack() -> None:
        for _ in range(5):
            await hang_up(attacker(2), target.hook, truncated_delivery())
            answers["shop"] += statuses(await exchange(attacker(3), target.hook, broken_chunks()))
            answers["http"] += statuses(await exchange(attacker(4), target.http, bad_line))
        for n in range(6, 9):
            noise = b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n"
            answers["push"] += statuses(await exchange(attacker(n), target.push, noise))

    await legitimate_traffic_during(target, attack)
    assert answers["shop"] == [400] * 5
    assert answers["http"] == [400] * 5
    assert set(answers["push"]) <= {400}  # answered 400, or dropped unanswered
    expected = {
        ("shop", "incomplete_body"): 5,
        ("shop", "malformed_request"): 5,
        ("http", "malformed_request"): 5,
    }
    await until(lambda: target.counted(BAD) == expected, 10, "the bad requests")
    assert_log_bounded(target, kinds=2)


@pytest.mark.asyncio
async def test_forged_topic_replays_of_captured_deliveries(target: Target) -> None:
    """An attacker who captured signed deliveries re-posts them under the other topic (a new
    order as a cancellation, a cancellation as a new order): answered 200 (never retried),
    refused as topic_mismatch, and the shop's totals stay exact."""
    orders = Orders(target, random.randrange(1, 10**6))
    answers: list[int] = []

    async def attack() -> None:
        for order in orders.orders[:4]:
            body = orjson.dumps(order.body)
            signed = signature(SECRET.encode(), body)
            replays = b"".join(
                delivery(body, hmac=signed, topic="orders/cancelled") for _ in range(3)
            )
            answers.extend(statuses(await exchange(attacker(2), target.hook, replays, 3)))
        body = orjson.dumps(cancelled(orders.orders[1]))  # not cancelled: forged as created
        replay = delivery(body, hmac=signature(SECRET.encode(), body), topic="orders/create")
        answers.extend(statuses(await exchange(attacker(3), target.hook, replay)))

    await legitimate_traffic_during(target, attack, orders)
    assert answers == [200] * 13
    rejections = target.counted("livestream_ingest_rejections_total", source="shop")
    assert rejections == {("topic_mismatch",): 13}
    assert_log_bounded(target, kinds=1)
