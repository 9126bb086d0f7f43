"""Several ingester processes on one box sharing the push listeners' ports (``reuse_port``).

Two ``livestream-ingester run`` processes listen on the same websocket-server and http-server
addresses; the kernel spreads the producers' connections over them, and each event is counted
once whichever process took it. A process that does not ask to share the port cannot take it.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.e2e.support import (
    PUSH_TOKEN,
    PUSH_TOKEN_ENV,
    SECRET,
    SECRET_ENV,
    IngesterProcess,
    exact,
    push_and_shop_sources,
    sale_frames,
    scrape,
    select,
    small_sale,
    write_config,
)
from tests.e2e.test_cli import run_cli
from tests.e2e.test_shopify import expected_totals, make_order
from tests.platforms import Shop
from tests.servers import free_port
from tests.waiting import until

CONNECTIONS = 32
"""Producers' connections: the kernel picks a process for each by a hash of its addresses, so
one process gets all of them with a probability of 2 ** -31."""
ORDERS = 20


def per_process(ports: list[int], name: str, **labels: str) -> list[float]:
    """The sum of a health metric's samples (matching ``labels``) in each process."""
    return [sum(select(scrape(port), name, **labels).values()) for port in ports]


async def push(port: int, frames: list[bytes]) -> None:
    """Send ``frames`` round robin over ``CONNECTIONS`` connections, each its own socket."""
    url = f"ws://127.0.0.1:{port}/ingest"
    headers = {"Authorization": f"Bearer {PUSH_TOKEN}"}
    connections: list[ClientConnection] = [
        await connect(url, additional_headers=headers, proxy=None) for _ in range(CONNECTIONS)
    ]
    try:
        for index, frame in enumerate(frames):
            await connections[index % CONNECTIONS].send(frame.decode())
    finally:
        await asyncio.gather(*(ws.close() for ws in connections))


@pytest.mark.asyncio
async def test_two_processes_share_the_push_ports_and_count_each_event_once(
    tmp_path: Path, redis_url: str, stream: str
) -> None:
    push_port, hook_port = free_port(), free_port()
    shop_stream = f"{stream}-shop"
    sources = push_and_shop_sources(
        push_port, hook_port, stream, shop_stream=shop_stream, reuse_port=True
    )
    env = {SECRET_ENV: SECRET, PUSH_TOKEN_ENV: PUSH_TOKEN}
    processes = []
    for n in range(2):
        http_port = free_port()  # each process its own: its health metrics are its own
        config = write_config(
            tmp_path / f"p{n}.toml", redis_url=redis_url, http_port=http_port, sources=sources
        )
        processes.append(IngesterProcess(config, http_port, env=env))
    ports = [process.http_port for process in processes]
    sale = small_sale(stream)
    frames = sale_frames(sale)  # a third of the deliveries are duplicates
    rng = random.Random(17)
    orders = [make_order(rng, 7_000_000 + n) for n in range(ORDERS)]
    shop = Shop(f"http://127.0.0.1:{hook_port}/webhooks/shopify", SECRET)
    with processes[0], processes[1]:
        await push(push_port, frames)
        # Every delivery twice (a retry), each on a connection of its own.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            for order in orders * 2:
                body = orjson.dumps(order.body)
                status = await shop.deliver(http, "orders/create", body, event_id=f"e{order.id}")
                assert status == 200

        for port in ports:  # the totals are Redis': both processes show them, exact
            await exact(port, sale)
            samples = scrape(port)
            want = expected_totals(orders, [])
            assert {name: select(samples, name, stream=shop_stream) for name in want} == want

        # The kernel spread the connections: each process took some, none was taken twice.
        accepted = per_process(ports, "livestream_ingest_push_connections_total", source="push")
        assert sum(accepted) == CONNECTIONS
        assert all(n > 0 for n in accepted), accepted
        signed = per_process(ports, "livestream_ingest_webhook_signatures_total", source="shop")
        assert sum(signed) == 2 * ORDERS
        assert all(n > 0 for n in signed), signed

        def outcome(what: str, source: str) -> list[float]:
            name = "livestream_ingest_events_total"
            return per_process(ports, name, source=source, outcome=what)

        # Each process took some of the events; together they counted each exactly once.
        await until(
            lambda: sum(outcome("accepted", "push")) == len(sale.events), 10, "all committed"
        )
        assert sum(outcome("duplicate", "push")) == len(sale.deliveries) - len(sale.events)
        assert all(n > 0 for n in outcome("accepted", "push"))
        assert sum(outcome("accepted", "shop")) == ORDERS
        assert sum(outcome("duplicate", "shop")) == ORDERS

        # A third process that does not ask to share the port is refused it, in one line.
        config = write_config(
            tmp_path / "alone.toml",
            redis_url=redis_url,
            http_port=free_port(),
            sources=push_and_shop_sources(push_port, free_port(), stream),
        )
        result = await asyncio.to_thread(run_cli, config, env)
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines()[-1] == (
            f"error: sources[0].listen: cannot listen on 127.0.0.1:{push_port}: "
            "address already in use"
        )
        assert "Traceback" not in result.stderr

        for process in processes:
            assert process.terminate() == 0
