"""The two yardsticks the benchmark runs beside the ingester, each as its own process, and the
scrape flood it turns on an ingester (a process of its own, so the bench's clock stays free).

``ceiling``: a plain websockets client that only receives and parses frames (no validation, no
Redis): the transport limit of our stack. ``naive``: the design many would write, and generic
pipelines use: per event one awaited ``SET NX EX`` round trip, then the ``HINCRBY``s, with
per-process prometheus counters. Both print one JSON line: events, seconds, events/s.

    python -m bench.peers ceiling URL N
    python -m bench.peers ceiling-picows URL N   # the same through picows
    python -m bench.peers naive URL N REDIS_URL
    python -m bench.peers scrapers URL N SECONDS    # N clients scraping URL back to back
    python -m bench.peers mqtt-bare PORT N CLIENT_ID [RECEIVE_MAXIMUM]

    python -m bench.peers mqtt-bare-gmqtt PORT N CLIENT_ID [RECEIVE_MAXIMUM]
    python -m bench.peers mqtt-bare-aiomqtt PORT N CLIENT_ID [RECEIVE_MAXIMUM]

``mqtt-bare``: a bare paho-mqtt subscriber that resumes the persistent MQTT 5 session
``CLIENT_ID`` on the broker at 127.0.0.1:``PORT`` and only receives and acknowledges (paho's own
QoS 1 acknowledgement, sent once ``on_message`` has returned) until ``N`` messages have arrived:
the client library's own drain rate, the yardstick of the ingester's. It also prepares a session
(``N`` = 0: connect, subscribe ``bench/+/events`` at QoS 1, leave).

``mqtt-bare-gmqtt`` and ``mqtt-bare-aiomqtt`` do the same with another client, on uvloop as the
ingester runs: gmqtt (its own asyncio protocol, no paho) and aiomqtt 2 (paho's packet handling
under asyncio, as the ingester's source). Each acknowledges a message only after handling it, as
a source that acknowledges after its commit would: gmqtt with ``optimistic_acknowledgement=False``
and a coroutine ``on_message`` (gmqtt sends the PUBACK when the coroutine returns; it sends none
for a plain function), aiomqtt with paho's manual acknowledgement, as ``ingest/sources/mqtt.py``
does.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING, Any

import aiomqtt
import gmqtt
import orjson
import paho.mqtt.client as paho
import uvloop
from gmqtt.mqtt.constants import MQTTv50
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

if TYPE_CHECKING:
    import aiohttp
    from prometheus_client import Counter
    from redis.asyncio import Redis

# The websocket, Redis, HTTP and metrics clients are imported where used: each peer is a process
# of its own, and an MQTT peer that imported them all took ~0.4 s of CPU before its first packet.


async def ceiling(url: str, n: int) -> dict[str, float]:
    from websockets.asyncio.client import connect

    async with connect(url, max_size=None, compression=None, ping_interval=None) as ws:
        count = 0
        start = 0.0
        async for frame in ws:
            if count == 0:
                start = time.perf_counter()
            orjson.loads(frame)
            count += 1
            if count == n:
                break
        return _result(n, time.perf_counter() - start)


async def ceiling_picows(url: str, n: int) -> dict[str, float]:
    """``ceiling`` through picows, the transport a source may use instead (``transport =
    "picows"``): frames parsed in C, handed over in a callback."""
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    text, binary = WSMsgType.TEXT, WSMsgType.BINARY

    class Receiver(WSListener):
        count = 0
        start = 0.0

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type is not text and frame.msg_type is not binary:
                return
            if self.count == 0:
                self.start = time.perf_counter()
            orjson.loads(frame.get_payload_as_bytes())
            self.count += 1
            if self.count == n:
                done.set_result(time.perf_counter() - self.start)

    transport, _ = await ws_connect(
        Receiver, url, max_frame_size=1 << 30, use_aiofastnet=False, max_redirects=0
    )
    try:
        return _result(n, await done)
    finally:
        transport.disconnect()


async def naive(url: str, n: int, redis_url: str) -> dict[str, float]:
    from prometheus_client import CollectorRegistry, Counter
    from redis.asyncio import Redis
    from websockets.asyncio.client import connect

    registry = CollectorRegistry()
    events = Counter("naive_events", "events", ["kind", "outcome"], registry=registry)
    redis = Redis.from_url(redis_url)
    try:
        async with connect(url, max_size=None, compression=None, ping_interval=None) as ws:
            count = 0
            start = 0.0
            async for frame in ws:
                if count == 0:
                    start = time.perf_counter()
                parsed = orjson.loads(frame)
                for event in parsed if isinstance(parsed, list) else [parsed]:
                    await _handle(redis, event, events)
                count += 1
                if count == n:
                    break
            return _result(n, time.perf_counter() - start)
    finally:
        await redis.aclose()


async def _handle(redis: Redis, event: dict[str, Any], events: Counter) -> None:
    stream, kind = event["stream"], event["kind"]
    key = f"naive:{stream}:{kind}:{event['id']}:{event.get('status', '')}"
    if not await redis.set(key, 1, nx=True, ex=48 * 3600):
        events.labels(kind, "duplicate").inc()
        return
    totals = f"naive:{stream}:totals"
    if kind == "comment":
        await redis.hincrby(totals, f"comments|{event['platform']}", 1)
    elif kind == "viewers":
        await redis.hset(f"naive:{stream}:viewers", event["platform"], event["count"])
    elif event["status"] == "created":
        grams = sum(item["grams"] * item["qty"] for item in event["items"])
        where = f"{event['platform']}|{event.get('country', 'unknown')}"
        await redis.hincrby(totals, f"orders|{where}", 1)
        await redis.hincrby(totals, f"grams|{where}", grams)
        await redis.hincrby(totals, f"value|{event['platform']}|VND", int(event["amount"]))
        if "region" in event:
            await redis.hincrby(totals, f"region|{event['country']}|{event['region']}", 1)
    else:
        await redis.hincrby(totals, f"cancelled|{event['platform']}", 1)
    events.labels(kind, "accepted").inc()


async def scrapers(url: str, n: int, seconds: float) -> dict[str, Any]:
    """``n`` clients scraping ``url`` back to back for ``seconds``: each scrape's duration."""
    import aiohttp

    durations: list[float] = []
    size = 0
    end = time.perf_counter() + seconds

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal size
        while time.perf_counter() < end:
            start = time.perf_counter()
            async with session.get(url) as reply:
                size = len(await reply.read())
            durations.append(time.perf_counter() - start)

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(one(session) for _ in range(n)))
    return {"durations": durations, "body_bytes": size}


def mqtt_bare(port: int, n: int, client_id: str, receive_maximum: int = 1000) -> dict[str, float]:
    """Receive + acknowledge only, with paho's own network loop (see the module's docstring)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 86_400
    properties.ReceiveMaximum = receive_maximum
    count = 0
    times = [0.0, 0.0]

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        nonlocal count
        count += 1
        if count == 1:
            times[0] = time.perf_counter()
        if count >= n:
            times[1] = time.perf_counter()
            client.disconnect()

    def on_connect(client: paho.Client, userdata: Any, *args: Any) -> None:
        if n == 0:
            client.subscribe("bench/+/events", qos=1)

    def on_subscribe(client: paho.Client, userdata: Any, *args: Any) -> None:
        if n == 0:
            client.disconnect()

    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.connect("127.0.0.1", port, clean_start=False, properties=properties)
    cpu0 = time.process_time()
    client.loop_forever()
    if not n:
        return {"events": 0}
    cpu = time.process_time() - cpu0
    return _result(n, times[1] - times[0]) | {"cpu_us_per_event": cpu / n * 1e6}


async def mqtt_bare_gmqtt(
    port: int, n: int, client_id: str, receive_maximum: int = 1000
) -> dict[str, float]:
    """Receive + acknowledge only, with gmqtt, each PUBACK after its message was handled."""
    client = gmqtt.Client(
        client_id,
        clean_session=False,
        optimistic_acknowledgement=False,
        session_expiry_interval=86_400,
        receive_maximum=receive_maximum,
    )
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    count = 0
    times = [0.0, 0.0]

    async def on_message(client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        nonlocal count
        count += 1
        if count == 1:
            times[0] = time.perf_counter()
        if count == n:
            times[1] = time.perf_counter()
            loop.call_soon(done.set)  # after this message's PUBACK, sent when we return
        return 0  # PUBACK reason code: success

    def on_subscribe(client: Any, mid: int, qos: Any, properties: Any) -> None:
        done.set()

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    cpu0 = time.process_time()
    await client.connect("127.0.0.1", port, version=MQTTv50)
    if not n:
        client.subscribe("bench/+/events", qos=1)
    await done.wait()
    await client.disconnect()
    if not n:
        return {"events": 0}
    cpu = time.process_time() - cpu0
    return _result(n, times[1] - times[0]) | {"cpu_us_per_event": cpu / n * 1e6}


async def mqtt_bare_aiomqtt(
    port: int, n: int, client_id: str, receive_maximum: int = 1000
) -> dict[str, float]:
    """Receive + acknowledge only, with aiomqtt 2: its message iterator, and paho's manual
    acknowledgement after each message was handled (aiomqtt 2 has no API for it)."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 86_400
    properties.ReceiveMaximum = receive_maximum
    client = aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=properties,
    )
    client._client.manual_ack_set(True)  # before connecting: the backlog follows the CONNACK
    count = 0
    times = [0.0, 0.0]
    cpu0 = time.process_time()
    async with client:
        if not n:
            await client.subscribe("bench/+/events", qos=1)
            return {"events": 0}
        async for message in client.messages:
            count += 1
            if count == 1:
                times[0] = time.perf_counter()
            client._client.ack(message.mid, message.qos)
            if count == n:
                times[1] = time.perf_counter()
                break
    cpu = time.process_time() - cpu0
    return _result(n, times[1] - times[0]) | {"cpu_us_per_event": cpu / n * 1e6}


def _result(n: int, seconds: float) -> dict[str, float]:
    return {"events": n, "seconds": seconds, "rate": n / seconds}


def main() -> None:
    mode, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    result: dict[str, Any]
    if mode == "ceiling":
        result = asyncio.run(ceiling(url, n))
    elif mode == "ceiling-picows":
        result = asyncio.run(ceiling_picows(url, n))
    elif mode == "mqtt-bare":
        receive_maximum = int(sys.argv[5]) if len(sys.argv) > 5 else 1000
        result = mqtt_bare(int(url), n, sys.argv[4], receive_maximum)
    elif mode in ("mqtt-bare-gmqtt", "mqtt-bare-aiomqtt"):
        receive_maximum = int(sys.argv[5]) if len(sys.argv) > 5 else 1000
        bare = mqtt_bare_gmqtt if mode == "mqtt-bare-gmqtt" else mqtt_bare_aiomqtt
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(bare(int(url), n, sys.argv[4], receive_maximum))
    elif mode == "scrapers":
        result = asyncio.run(scrapers(url, n, float(sys.argv[4])))
    else:
        result = asyncio.run(naive(url, n, sys.argv[4]))
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")


if __name__ == "__main__":
    main()
