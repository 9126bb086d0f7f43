"""End to end over MQTT: a real Mosquitto owned by the test, ingesters as users run them.

QoS 1 is at least once; these tests show it is counted exactly once through duplicates, a broker
restart, an ingester SIGKILLed while messages keep coming, and two ingesters sharing or not
sharing a subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from ingest.sources.mqtt import Publisher
from tests.brokers import Mosquitto
from tests.brokers import publisher as make_publisher
from tests.e2e.support import IngesterProcess, exact, scrape, select, small_sale, write_config
from tests.servers import free_port
from tests.waiting import UNIT, until
from workers.demo.sale import Sale, lychee_sale
from workers.keys import StreamKeys
from workers.store import Store, StoreSettings

TOPIC = "livestream/{stream}/events"


def mqtt_source(
    port: int,
    client_id: str,
    shared_group: str | None = None,
    protocol: str = "5",
    keepalive: int = 30,
) -> str:
    group = f'shared_group = "{shared_group}"' if shared_group else ""
    return f"""
[[sources]]
name = "mqtt"
type = "mqtt"
url = "mqtt://127.0.0.1:{port}"
client_id = "{client_id}"
protocol = "{protocol}"
keepalive = {keepalive}
{group}
backoff_initial = 0.05
backoff_max = 0.5

[[sources.topics]]
pattern = "{TOPIC}"
"""


def messages(sale: Sale) -> list[tuple[str, bytes]]:
    topic = TOPIC.format(stream=sale.stream)
    return [(topic, orjson.dumps(delivery.event)) for delivery in sale.deliveries]


def ingester(
    tmp_path: Path, redis_url: str, broker: Mosquitto, client_id: str, **kw: Any
) -> IngesterProcess:
    port = free_port()
    config = write_config(
        tmp_path / f"{client_id}.toml",
        redis_url=redis_url,
        http_port=port,
        sources=mqtt_source(
            broker.port,
            client_id,
            kw.get("shared_group"),
            kw.get("protocol", "5"),
            kw.get("keepalive", 30),
        ),
    )
    return IngesterProcess(config, port)


async def subscribed(process: IngesterProcess) -> None:
    await until(
        lambda: (
            select(scrape(process.http_port), "livestream_ingest_source_connected", source="mqtt")
            == {(): 1.0}
        ),
        20,
        "the MQTT source to subscribe",
    )


@contextlib.asynccontextmanager
async def publishing(publisher: Publisher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(publisher.run(), name="test.publisher")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def handled(process: IngesterProcess) -> dict[str, float]:
    events = select(scrape(process.http_port), "livestream_ingest_events_total", source="mqtt")
    outcome: dict[str, float] = {}
    for labels, value in events.items():
        outcome[labels[-1]] = outcome.get(labels[-1], 0) + value
    return outcome


@pytest.mark.asyncio
async def test_qos1_with_duplicates_counts_exactly(
    tmp_path: Path, redis_url: str, broker: Mosquitto, stream: str
) -> None:
    sale = small_sale(stream)
    with ingester(tmp_path, redis_url, broker, "exact") as process:
        await subscribed(process)
        publisher = make_publisher(broker.port, messages(sale))
        async with publishing(publisher) as task:
            await asyncio.wait_for(task, 60 * UNIT)
        await exact(process.http_port, sale)
        outcome = handled(process)
        assert outcome["accepted"] == len(sale.events)
        assert outcome["duplicate"] == len(sale.deliveries) - len(sale.events)


@pytest.mark.asyncio
async def test_broker_restart_mid_run_loses_nothing_and_counts_once(
    tmp_path: Path, redis_url: str, broker: Mosquitto, stream: str
) -> None:
    sale = small_sale(stream)
    data = messages(sale)
    with ingester(tmp_path, redis_url, broker, "restart") as process:
        await subscribed(process)
        publisher = make_publisher(broker.port, data, pause=0.0005)
        async with publishing(publisher) as task:
            await until(lambda: publisher.position > len(data) // 3, 30, "a third published")
            broker.stop()
            await asyncio.sleep(0.5)  # a real outage: both sides see the broker gone
            broker.start()
            await asyncio.wait_for(task, 60 * UNIT)
        assert publisher.reconnects >= 1
        await exact(process.http_port, sale)
        reconnects = select(scrape(process.http_port), "livestream_ingest_source_reconnects_total")
        assert reconnects[("mqtt",)] >= 1


def long_sale(stream: str) -> Sale:
    """About 15,000 deliveries (10,000 events), unique events all along: a drain of them lasts
    seconds, and the totals are exact only once it has gone past any restart."""
    return lychee_sale(
        seed=11, stream=stream, hours=1.2, target_grams=6_000_000, duplicate_share=0.35
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_broker_restart_while_draining_a_resumed_session_recovers_quickly(
    tmp_path: Path, redis_url: str, broker: Mosquitto, stream: str, protocol: str
) -> None:
    """The sale is queued for the ingester's session while it is away; the broker restarts
    while the ingester drains that backlog. Under uvloop the socket's error event used to end
    the loop's watch on the socket after one read, so the session hung, still "connected",
    until the keepalive (30 s, then a ping timeout) gave up."""
    sale = long_sale(stream)
    process = ingester(tmp_path, redis_url, broker, f"drain-{protocol}", protocol=protocol)
    async with broker_restarted_while_draining(process, broker, messages(sale), redis_url, stream):
        # Recovery must not wait for the keepalive (30 s, then a ping timeout): the source
        # reconnects well within it. The rest of the drain then takes what the machine gives it
        # (8 s were too few beside other tests and benchmarks), so its wait is the default one.
        def reconnects() -> float:
            samples = scrape(process.http_port)
            return select(samples, "livestream_ingest_source_reconnects_total").get(("mqtt",), 0)

        await until(lambda: reconnects() >= 1, 15, "a reconnection to the restarted broker")
        await exact(process.http_port, sale)


@pytest.mark.asyncio
async def test_a_resumed_backlog_drains_in_large_commits_and_counts_exactly(
    tmp_path: Path, redis_url: str, broker: Mosquitto, stream: str
) -> None:
    """The sale is queued for the ingester's session while it is away. The source hands what
    paho has read to the buffer in bursts, so the backlog is committed in batches of many
    events; it used to submit message by message, yielding to the loop between two, and the
    committer then committed every message or two on its own (5-10 events per commit)."""
    sale = small_sale(stream)
    data = messages(sale)
    process = ingester(tmp_path, redis_url, broker, "backlog")
    with process:
        await subscribed(process)
        assert process.terminate() == 0
    await asyncio.wait_for(make_publisher(broker.port, data).run(), 120 * UNIT)
    with process:
        await exact(process.http_port, sale)
        samples = scrape(process.http_port)
        commits = select(samples, "livestream_ingest_commit_batch_events_count")[()]
        committed = select(samples, "livestream_ingest_commit_batch_events_sum")[()]
    assert committed / commits >= 50, (committed, commits)


@contextlib.asynccontextmanager
async def broker_restarted_while_draining(
    process: IngesterProcess,
    broker: Mosquitto,
    data: list[tuple[str, bytes]],
    redis_url: str,
    stream: str,
) -> AsyncIterator[None]:
    """``data`` queued for the ingester's session while it is away, the ingester started
    again, and the broker restarted while it drains that backlog (a :func:`long_sale`, so the
    drain cannot end before the restart on a fast machine). The start of the drain is watched
    in Redis, not on /metrics: a scrape can wait behind a burst of commits while the drain runs
    on (a whole backlog was once drained before a scrape answered)."""
    totals = StreamKeys(stream).totals

    async def started() -> bool:
        redis = Redis.from_url(redis_url, decode_responses=True)
        try:
            fields = await redis.hgetall(totals)
        finally:
            await redis.aclose()
        kinds = ("comments", "orders")
        return sum(int(v) for f, v in fields.items() if str(f).split("|")[0] in kinds) >= 300

    with process:
        await subscribed(process)
        assert process.terminate() == 0
    await asyncio.wait_for(make_publisher(broker.port, data).run(), 120 * UNIT)
    with process:
        await until(started, 30, "the drain to start")
        broker.stop()
        assert sum(handled(process).values()) < len(data), "restarted after the drain ended"
        broker.start()
        yield


@pytest.mark.asyncio
async def test_sigterm_after_a_broker_restart_mid_drain_exits_0(
    tmp_path: Path, redis_url: str, broker: Mosquitto, stream: str
) -> None:
    """Was: the session hung (see above), its DISCONNECT never went out, aiomqtt's
    ``__aexit__`` raised after 10 s and the source reconnected instead of stopping."""
    process = ingester(tmp_path, redis_url, broker, "drain-term")
    sale = messages(long_sale(stream))
    async with broker_restarted_while_draining(process, broker, sale, redis_url, stream):
        assert process.process is not None
        process.process.terminate()
        # Ingester(shutdown_deadline=10) and the DISCONNECT's 2 s, with room for a slow machine
        assert process.process.wait(15 * UNIT) == 0


@contextlib.contextmanager
def frozen(broker: Mosquitto) -> Iterator[None]:
    """The broker stops answering (SIGSTOP) with its connections still open; SIGCONT after."""
    assert broker.process is not None
    os.kill(broker.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)


def connected(process: IngesterProcess) -> float:
    return select(scrape(process.http_port), "livestream_ingest_source_connected")[("mqtt",)]


@pytest.mark.asyncio
async def test_a_broker_that_stops_answering_ends_the_session_as_stalled(
    tmp_path: Path, redis_url: str, broker: Mosquitto
) -> None:
    """The connected gauge says 1 only while something arrives: nothing for 1.5 × keepalive
    (no message, no PINGRESP) ends the session, counted as a reconnect "stalled"."""
    with ingester(tmp_path, redis_url, broker, "frozen", keepalive=5) as process:
        await subscribed(process)
        with frozen(broker):
            await until(lambda: connected(process) == 0, 12, "the silent session to end")
            reconnects = select(
                scrape(process.http_port), "livestream_ingest_source_reconnects_total"
            )
            assert reconnects[("mqtt",)] >= 1
            assert "reason=stalled" in process.log.read_text()
        await subscribed(process)


@pytest.mark.asyncio
async def test_sigterm_while_the_broker_hangs_exits_0_within_the_deadline(
    tmp_path: Path, redis_url: str, broker: Mosquitto
) -> None:
    """A stop wins: the DISCONNECT that cannot complete waits ``stop_timeout`` (2 s), and the
    error it ends with does not make the source reconnect instead of stopping."""
    process = ingester(tmp_path, redis_url, broker, "term-frozen")
    with process, frozen(broker):
        await subscribed(process)
        assert process.process is not None
        started = time.monotonic()
        process.process.terminate()
        # stop_timeout + Ingester(shutdown_deadline=10), with room for a slow machine
        assert process.process.wait(15 * UNIT) == 0
        print(f"SIGTERM to exit: {time.monotonic() - started:.2f} s")


@pytest.mark.asyncio
async def test_ingester_sigkilled_and_restarted_gets_what_was_published_meanwhile(
    tmp_path: Path, redis_url: str, redis: Redis, broker: Mosquitto, stream: str
) -> None:
    """Killed while Redis stalls its commits, so hundreds of messages were received and not yet
    committed: only acknowledging after the commit makes the broker deliver them again."""
    sale = small_sale(stream)
    data = messages(sale)
    process = ingester(tmp_path, redis_url, broker, "killed")
    with process:
        await subscribed(process)
        # Paced over 40 s, so publishing goes on while the ingester is down: a scrape waits up
        # to its 5 s timeout for the paused Redis.
        publisher = Publisher(
            "127.0.0.1", broker.port, data, at=[40 * n / len(data) for n in range(len(data))]
        )
        async with publishing(publisher) as task:
            await until(lambda: publisher.position > len(data) // 4, 30, "a quarter published")
            await redis.client_pause(30_000, all=False)
            try:

                async def backlog() -> bool:  # a scrape waits for the paused Redis: off the loop
                    samples = await asyncio.to_thread(scrape, process.http_port)
                    return select(samples, "livestream_ingest_buffered_events")[()] >= 100

                await until(backlog, 20, "received but uncommitted messages")
                process.kill()
            finally:
                await redis.client_unpause()
            down_at = publisher.position
            await until(lambda: publisher.position > down_at + 200, 30, "publishing while down")
            process.start()
            await asyncio.wait_for(task, 60 * UNIT)
        await exact(process.http_port, sale)


async def publish_to_both(
    one: IngesterProcess, two: IngesterProcess, broker: Mosquitto, sale: Sale
) -> None:
    """Once both ingesters are subscribed, the whole sale, published at QoS 1."""
    await subscribed(one)
    await subscribed(two)
    publisher = make_publisher(broker.port, messages(sale))
    async with publishing(publisher) as task:
        await asyncio.wait_for(task, 60 * UNIT)


@pytest.mark.asyncio
async def test_shared_subscription_splits_the_load_and_counts_exactly(
    tmp_path: Path, redis_url: str, broker: Mosquitto, stream: str
) -> None:
    sale = small_sale(stream)
    one = ingester(tmp_path, redis_url, broker, "member-1", shared_group="ingesters")
    two = ingester(tmp_path, redis_url, broker, "member-2", shared_group="ingesters")
    with one, two:
        await publish_to_both(one, two, broker, sale)
        await exact(one.http_port, sale)
        await exact(two.http_port, sale)
        first, second = handled(one), handled(two)
        total = sum(first.values()) + sum(second.values())
        assert total == len(sale.deliveries), "each message goes to one member of the group"
        assert min(sum(first.values()), sum(second.values())) > 0.2 * total, (first, second)
        assert first.get("accepted", 0) + second.get("accepted", 0) == len(sale.events)


@pytest.mark.asyncio
async def test_without_sharing_every_ingester_gets_everything_and_dedup_keeps_it_exact(
    tmp_path: Path, redis_url: str, broker: Mosquitto, stream: str
) -> None:
    sale = small_sale(stream)
    one = ingester(tmp_path, redis_url, broker, "replica-1")
    two = ingester(tmp_path, redis_url, broker, "replica-2")
    with one, two:
        await publish_to_both(one, two, broker, sale)
        await exact(one.http_port, sale)
        await until(
            lambda: (
                sum(handled(one).values()) == sum(handled(two).values()) == len(sale.deliveries)
            ),
            30,
            "both replicas to handle every delivery",
        )
        assert handled(one).get("accepted", 0) + handled(two).get("accepted", 0) == len(sale.events)


@pytest.mark.asyncio
async def test_malformed_payloads_are_dead_lettered_and_never_stall_the_subscription(
    tmp_path: Path, redis_url: str, broker: Mosquitto, stream: str
) -> None:
    topic = TOPIC.format(stream=stream)
    # Finds the letter below: the stream's name in letters only, as a run of its hex digits
    # could be taken for a phone number and masked (one name in 25 was).
    marker = stream.translate(str.maketrans("0123456789", "ghijklmnop"))
    good = {"kind": "comment", "platform": "tiktok", "ts": "2025-06-14T09:05:07Z", "user": "u"}
    data = [
        (topic, orjson.dumps({**good, "id": "c1"})),
        (topic, b"{not json"),
        (topic, b'{"kind": "order", "id": "o", "status": "created"}'),
        (topic, b"\xff\xfe"),
        (topic, orjson.dumps({**good, "id": "c2", "stream": "someone-else"})),
        (  # its frame is kept under li:dead, without the phone number in its text
            "livestream/bad{tag}/events",
            orjson.dumps({**good, "id": "c3", "text": f"{marker} VT01 sdt 0912 345 678"}),
        ),
        (topic, orjson.dumps({**good, "id": "c4"})),
    ]
    with ingester(tmp_path, redis_url, broker, "bad") as process:
        await subscribed(process)
        publisher = make_publisher(broker.port, data)
        async with publishing(publisher) as task:
            await asyncio.wait_for(task, 30 * UNIT)

        def counted() -> bool:
            comments = select(scrape(process.http_port), "livestream_comments_total", stream=stream)
            return comments == {("tiktok",): 2.0}

        await until(counted, 20, "the two valid comments")
        rejections = select(scrape(process.http_port), "livestream_ingest_rejections_total")
        assert {k: v for k, v in rejections.items() if v} == {
            ("malformed_json", "mqtt"): 2.0,
            ("missing_field", "mqtt"): 1.0,
            ("stream_not_allowed", "mqtt"): 1.0,
            ("invalid_value", "mqtt"): 1.0,
        }
        assert handled(process) == {"accepted": 2.0, "rejected": 5.0}
    client = Redis.from_url(redis_url)
    try:
        letters = await Store(client, StoreSettings()).dead_letters(None, count=1000)
    finally:
        await client.aclose()
    (kept,) = [f["raw"] for f in letters if marker.encode() in f["raw"]]
    assert b"VT01 sdt #### ### ###" in kept


def certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1, made with openssl."""
    ca_key, ca, key, csr, crt = (
        folder / n for n in ("ca.key", "ca.crt", "s.key", "s.csr", "s.crt")
    )
    ext = folder / "san.ext"
    ext.write_text("subjectAltName = IP:127.0.0.1\n", encoding="utf-8")
    for command in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
         "-days", "1", "-subj", "/CN=livestream test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", crt, "-days", "1", "-extfile", ext],
    ):  # fmt: skip
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
    return ca, crt, key


@pytest.mark.asyncio
async def test_mqtts_with_a_private_ca(tmp_path: Path, redis_url: str, stream: str) -> None:
    ca, crt, key = certificates(tmp_path)
    broker = Mosquitto(f"cafile {ca}\ncertfile {crt}\nkeyfile {key}")
    broker.start()
    try:
        port = free_port()
        source = mqtt_source(broker.port, "tls").replace("mqtt://", "mqtts://")
        config = write_config(
            tmp_path / "tls.toml",
            redis_url=redis_url,
            http_port=port,
            sources=source.replace('client_id = "tls"', f'client_id = "tls"\nca_file = "{ca}"'),
        )
        with IngesterProcess(config, port) as process:
            await subscribed(process)
            topic = TOPIC.format(stream=stream)
            good = {"kind": "comment", "platform": "tiktok", "ts": "2025-06-14T09:05:07Z"}
            data = [(topic, orjson.dumps({**good, "id": f"c{n}"})) for n in range(5)]
            context = ssl.create_default_context(cafile=str(ca))
            await asyncio.wait_for(
                Publisher("127.0.0.1", broker.port, data, tls=context).run(), 20 * UNIT
            )
            await until(
                lambda: (
                    select(scrape(port), "livestream_comments_total", stream=stream)
                    == {("tiktok",): 5.0}
                ),
                20,
                "five comments over TLS",
            )
    finally:
        broker.close()
