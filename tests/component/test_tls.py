"""TLS on the listening sources over real connections on 127.0.0.1: certificates made by a
private CA (trustme), renewed by replacing the files, picked up by a reload or the file watch.

No Redis: a recording Sink and Health stand in for the runtime (as in test_websocket_sources).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidMessage

from ingest.adapter import FormatOptions
from ingest.native import NativeFormat
from ingest.shopify import ShopifyFormat, signature
from ingest.sources.http import Limits
from ingest.sources.tls import Loaded, ServerTls, TlsError, TlsSettings, load
from ingest.sources.webhook import ShopifyWebhookSettings, ShopifyWebhookSource
from ingest.sources.websocket import WebsocketServerSettings, WebsocketServerSource
from tests.certs import HOST, Certificates, peer_serial, served
from tests.recorders import RecordingHealth, RecordingSink, running
from tests.waiting import UNIT, until

TOKEN = "s3cret-producer-token"
STREAM = "live-1"
WAIT = 5.0
HANDSHAKE_FAILURES = (ssl.SSLError, OSError, InvalidMessage, ConnectionClosed)
"""How a client sees a refused TLS handshake (an alert, a reset, or the server hanging up)."""


def frame(event_id: str) -> str:
    return (
        f'{{"kind":"comment","id":"{event_id}","ts":"2024-05-01T12:00:00Z",'
        f'"platform":"tiktok","user":"u1"}}'
    )


class Reloads:
    """The ``on_loaded``/``on_failed`` hooks of a ServerTls, recorded."""

    def __init__(self) -> None:
        self.loaded: list[Loaded] = []
        self.failed: list[list[str]] = []

    def tls(self, certificates: Certificates, *, mutual: bool = False) -> ServerTls:
        settings = TlsSettings(
            cert_file=str(certificates.cert_file),
            key_file=str(certificates.key_file),
            client_ca_file=str(certificates.client_ca_file) if mutual else None,
        )
        return ServerTls(settings, on_loaded=self.loaded.append, on_failed=self.failed.append)


@contextlib.asynccontextmanager
async def push_source(sink: RecordingSink, tls: ServerTls) -> AsyncIterator[WebsocketServerSource]:
    fmt = NativeFormat(FormatOptions(default_stream=STREAM, platforms=frozenset({"tiktok"})))
    settings = WebsocketServerSettings(listen=f"{HOST}:0", token=TOKEN)
    source = WebsocketServerSource("push", fmt, sink, RecordingHealth(), settings, tls=tls)
    async with asyncio.timeout(30 * UNIT), running(source.run()):
        await asyncio.wait_for(source.ready.wait(), WAIT * UNIT)
        yield source


def producer(
    source: WebsocketServerSource, context: ssl.SSLContext | None, scheme: str = "wss"
) -> connect:
    return connect(
        f"{scheme}://{HOST}:{source.port}/ingest",
        additional_headers={"Authorization": f"Bearer {TOKEN}"},
        ssl=context,
        open_timeout=WAIT * UNIT,
        proxy=None,
    )


async def push_one(
    source: WebsocketServerSource, context: ssl.SSLContext | None, text: str
) -> None:
    """Connect, send a frame and wait for an answer that never comes (TLS 1.3: a refused
    client certificate is told after the client's Finished, so at the first read)."""
    scheme = "ws" if context is None else "wss"
    async with producer(source, context, scheme) as ws:
        await ws.send(text)
        await asyncio.wait_for(ws.recv(), WAIT * UNIT)


def serial(ws: ClientConnection) -> int:
    return served(ws.transport.get_extra_info("ssl_object")).serial_number


def no_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.levelno >= logging.WARNING or record.exc_info
    ]


def test_load_reports_every_problem_with_its_key_and_file(tmp_path: Path) -> None:
    certificates = Certificates(tmp_path)
    missing = TlsSettings(
        cert_file=str(tmp_path / "none.crt"),
        key_file=str(tmp_path / "none.key"),
        client_ca_file=str(tmp_path / "none-ca.crt"),
    )
    with pytest.raises(TlsError) as unreadable:
        load(missing)
    assert [problem.split(":")[0] for problem in unreadable.value.problems] == [
        "cert_file",
        "key_file",
        "client_ca_file",
    ]
    assert all("cannot read" in problem for problem in unreadable.value.problems)

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    good = TlsSettings(cert_file=str(certificates.cert_file), key_file=str(certificates.key_file))
    for settings, expected in [
        (dataclasses.replace(good, cert_file=str(garbage)), "cert_file: "),
        (dataclasses.replace(good, key_file=str(garbage)), "key_file: "),
        (dataclasses.replace(good, client_ca_file=str(garbage)), "client_ca_file: "),
    ]:
        with pytest.raises(TlsError) as bad:
            load(settings)
        assert len(bad.value.problems) == 1, bad.value.problems
        assert bad.value.problems[0].startswith(f"{expected}{garbage}: "), bad.value.problems

    certificates.break_key()
    with pytest.raises(TlsError) as mismatch:
        load(good)
    assert mismatch.value.problems == [
        f"key_file: {certificates.key_file}: [X509: KEY_VALUES_MISMATCH] key values mismatch"
    ]


@pytest.mark.asyncio
async def test_websocket_server_speaks_tls_only_and_a_plaintext_client_leaves_no_trace(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    certificates, reloads, sink = Certificates(tmp_path), Reloads(), RecordingSink()
    caplog.set_level(logging.DEBUG, logger="asyncio")
    async with push_source(sink, reloads.tls(certificates)) as source:
        for _ in range(3):
            with pytest.raises(HANDSHAKE_FAILURES):
                await push_one(source, None, frame("plain"))
            reader, writer = await asyncio.open_connection(HOST, source.port)
            writer.write(b"\x16\x03\x01\x00\x05garbage" * 10)
            with contextlib.suppress(ConnectionError):  # the server hangs up (maybe an alert)
                await asyncio.wait_for(reader.read(), WAIT * UNIT)
            writer.close()
        async with producer(source, certificates.client()) as ws:
            assert serial(ws) == certificates.served.serial_number
            await ws.send(frame("e1"))
            await until(lambda: sink.event_ids == ["e1"], WAIT, "the event over TLS")
    assert no_warnings(caplog) == []
    assert [loaded.serial for loaded in reloads.loaded] == [certificates.served.serial_number]


@pytest.mark.asyncio
async def test_a_renewed_certificate_is_served_after_a_reload_and_open_connections_keep_going(
    tmp_path: Path,
) -> None:
    certificates, reloads, sink = Certificates(tmp_path), Reloads(), RecordingSink()
    first = certificates.served
    tls = reloads.tls(certificates)
    async with push_source(sink, tls) as source, producer(source, certificates.client()) as old:
        renewed = certificates.renew(days=365)
        # What the file watch does (SIGHUP calls tls.reload()): a change is loaded once it has
        # held for one look, so a key and a certificate written one after the other load whole.
        assert tls.check() is None
        assert tls.check() is True
        async with producer(source, certificates.client()) as new:
            assert serial(new) == renewed.serial_number != first.serial_number
            await new.send(frame("new"))
        await old.send(frame("old"))  # opened before the renewal: still served
        await until(lambda: sorted(sink.event_ids) == ["new", "old"], WAIT, "both events")
        assert serial(old) == first.serial_number

        certificates.break_key()  # a renewal gone wrong: the previous certificate stays
        assert tls.reload() is False
        async with producer(source, certificates.client()) as after:
            assert serial(after) == renewed.serial_number
            await after.send(frame("after"))
        await until(lambda: "after" in sink.event_ids, WAIT, "an event after the bad renewal")
    assert [loaded.serial for loaded in reloads.loaded] == [
        first.serial_number,
        renewed.serial_number,
    ]
    assert reloads.loaded[1].not_after == renewed.not_valid_after_utc.timestamp()
    assert len(reloads.failed) == 1
    assert reloads.failed[0][0].startswith(f"key_file: {certificates.key_file}: ")
    assert [tls.check(), tls.check()] == [None, None], "a failure is not repeated until a change"


@pytest.mark.asyncio
async def test_the_file_watch_picks_up_a_renewal_without_a_signal(tmp_path: Path) -> None:
    certificates, reloads, sink = Certificates(tmp_path), Reloads(), RecordingSink()
    tls = reloads.tls(certificates)
    async with push_source(sink, tls) as source, running(tls.watch(0.05 * UNIT)):
        renewed = certificates.renew(days=30)
        await until(lambda: len(reloads.loaded) == 2, WAIT, "the watch to reload")
        async with producer(source, certificates.client()) as ws:
            assert serial(ws) == renewed.serial_number


@pytest.mark.asyncio
async def test_mutual_tls_refuses_a_client_without_a_certificate_also_after_a_reload(
    tmp_path: Path,
) -> None:
    certificates, reloads, sink = Certificates(tmp_path), Reloads(), RecordingSink()
    tls = reloads.tls(certificates, mutual=True)
    async with push_source(sink, tls) as source:
        for attempt in range(2):
            with pytest.raises(HANDSHAKE_FAILURES):
                await push_one(source, certificates.client(), frame(f"anonymous-{attempt}"))
            async with producer(source, certificates.client(with_certificate=True)) as ws:
                await ws.send(frame(f"known-{attempt}"))
            certificates.renew(days=10)
            assert tls.reload() is True
        await until(lambda: len(sink.event_ids) == 2, WAIT, "the identified producer's events")
    assert sink.event_ids == ["known-0", "known-1"]


@pytest.mark.asyncio
async def test_webhook_speaks_tls_only(tmp_path: Path) -> None:
    certificates, reloads, sink = Certificates(tmp_path), Reloads(), RecordingSink()
    secret = "shpss_component_secret_0123456789"
    settings = ShopifyWebhookSettings(secret=secret, listen=f"{HOST}:0")
    fmt = ShopifyFormat(FormatOptions(default_stream=STREAM, platforms=frozenset({"shopify"})))
    source = ShopifyWebhookSource(
        "shop", fmt, sink, RecordingHealth(), settings, tls=reloads.tls(certificates)
    )
    body = b'{"id": 1, "created_at": "2024-05-01T12:00:00Z", "line_items": []}'
    headers = {
        "X-Shopify-Topic": "shop/update",
        "X-Shopify-Hmac-Sha256": signature(secret.encode(), body),
    }
    async with asyncio.timeout(30 * UNIT), running(source.run()):
        await until(lambda: source._runner is not None, WAIT, "the webhook to listen")
        url = f"https://{HOST}:{source.port}{settings.path}"
        async with aiohttp.ClientSession() as session:
            async with session.post(
                url, data=body, headers=headers, ssl=certificates.client()
            ) as r:
                assert (r.status, await r.text()) == (200, "ignored\n")
            assert await peer_serial(source.port, certificates.client()) == (
                certificates.served.serial_number
            )
            plain = url.replace("https://", "http://")
            with pytest.raises(aiohttp.ClientError):
                await session.post(plain, data=body, headers=headers)


@pytest.mark.asyncio
async def test_why_a_new_context_loading_a_bad_renewal_into_the_live_one_breaks_it(
    tmp_path: Path,
) -> None:
    """The design's reason (ingest.sources.tls): OpenSSL installs the certificate before it
    checks the key, so ``load_cert_chain`` of a mismatched renewal on the serving context
    leaves it unable to complete any handshake. ServerTls never loads into a live context."""
    certificates = Certificates(tmp_path)
    live = load(
        TlsSettings(cert_file=str(certificates.cert_file), key_file=str(certificates.key_file))
    )
    old_key = tmp_path / "old.key"
    old_key.write_bytes(certificates.key_file.read_bytes())
    certificates.renew(days=30)
    with pytest.raises(ssl.SSLError, match="KEY_VALUES_MISMATCH"):
        live.context.load_cert_chain(certificates.cert_file, old_key)
    server = await asyncio.start_server(lambda r, w: w.close(), HOST, 0, ssl=live.context)
    async with server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(HANDSHAKE_FAILURES):
            await peer_serial(port, certificates.client())


LOOPS = ["asyncio", "uvloop"]
"""The stalled-handshake tests run on both event loops: the CLI runs on uvloop."""


def run_on(loop: str, test: Coroutine[Any, Any, None]) -> None:
    if loop == "uvloop":
        uvloop.run(test)
    else:
        asyncio.run(test)


STALLER = "127.0.0.2"
"""The address the stalled handshakes come from (the legitimate client is on 127.0.0.1)."""
HALF_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
"""The first bytes of a ClientHello, and then nothing."""


@dataclasses.dataclass
class Told:
    """A listener's ``on_refused`` and bad-request hooks, recorded."""

    refused: list[str] = dataclasses.field(default_factory=list)
    bad: list[str] = dataclasses.field(default_factory=list)


class Stalls:
    """Raw TCP connections to a TLS port that never finish their handshake (their writers are
    kept: a writer collected closes its connection)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.writers: list[asyncio.StreamWriter] = []

    async def open(self, source: str, hello: bytes = b"") -> asyncio.StreamReader:
        reader, writer = await asyncio.open_connection(HOST, self.port, local_addr=(source, 0))
        self.writers.append(writer)
        if hello:
            writer.write(hello)
        return reader

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


async def closed_at_once(reader: asyncio.StreamReader) -> bool:
    with contextlib.suppress(ConnectionError):
        return await asyncio.wait_for(reader.read(), 0.5 * UNIT) == b""
    return True


async def stalled_handshakes_are_capped(
    port: int, told: Told, limit: float, held: Callable[[], int]
) -> Stalls:
    """With ``max_connections=4`` and 3 per client: three stalled handshakes from 127.0.0.2
    (a fourth is refused for its client at once), one half ClientHello from 127.0.0.1 (one more
    is refused for the listener); each is dropped by the handshake timeout and gives its place
    back (three from 127.0.0.2 fit again, left open: returned), and a plain HTTP client is
    counted as a failed handshake. ``held``: the places the listener counts as taken."""
    stalls = Stalls(port)
    try:
        stalled = [await stalls.open(STALLER) for _ in range(3)]
        assert await closed_at_once(await stalls.open(STALLER))
        await until(lambda: told.refused == ["client"], WAIT, "the client's cap to refuse")
        stalled.append(await stalls.open(HOST, HALF_HELLO))
        assert await closed_at_once(await stalls.open(HOST))
        await until(lambda: told.refused == ["client", "listener"], WAIT, "the listener's cap")
        for reader in stalled:
            assert await asyncio.wait_for(reader.read(), (limit + WAIT) * UNIT) == b""
        timeouts = ["tls_handshake_timeout"] * 4
        await until(lambda: told.bad == timeouts, WAIT, "the timeouts counted")
    finally:
        stalls.close()
    # A client sees the server hang up before the server has given the place back.
    await until(lambda: held() == 0, WAIT, "every stalled place given back")
    again = Stalls(port)
    try:
        for _ in range(3):
            await again.open(STALLER)
    except BaseException:
        again.close()
        raise
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with contextlib.suppress(ConnectionError):  # an alert, then the server hangs up
        await asyncio.wait_for(reader.read(), WAIT * UNIT)
    writer.close()
    await until(lambda: told.bad == [*timeouts, "tls_handshake"], WAIT, "the failed handshake")
    assert told.refused == ["client", "listener"]
    return again


@pytest.mark.parametrize("loop", LOOPS)
def test_websocket_tls_handshakes_are_counted_against_the_caps_from_the_accept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, loop: str
) -> None:
    run_on(loop, websocket_caps(tmp_path))
    assert no_warnings(caplog) == []


async def websocket_caps(tmp_path: Path) -> None:
    certificates, reloads, sink, told = Certificates(tmp_path), Reloads(), RecordingSink(), Told()
    fmt = NativeFormat(FormatOptions(default_stream=STREAM, platforms=frozenset({"tiktok"})))
    timeout = 1.0 * UNIT
    settings = WebsocketServerSettings(
        listen=f"{HOST}:0",
        token=TOKEN,
        max_connections=4,
        max_connections_per_client=3,
        open_timeout=timeout,
    )
    source = WebsocketServerSource(
        "push",
        fmt,
        sink,
        RecordingHealth(),
        settings,
        on_refused=told.refused.append,
        on_bad_request=told.bad.append,
        tls=reloads.tls(certificates),
    )
    async with asyncio.timeout(30 * UNIT), running(source.run()):
        await asyncio.wait_for(source.ready.wait(), WAIT * UNIT)
        stalls = await stalled_handshakes_are_capped(
            source.port, told, timeout, lambda: source.caps.open
        )
        await until(lambda: source.caps.open == 3, WAIT, "the plain client's place given back")
        async with producer(source, certificates.client()) as ws:
            await ws.send(frame("e1"))
            await until(lambda: sink.event_ids == ["e1"], WAIT, "the event over TLS")
            assert source.caps.per_client == {STALLER: 3, HOST: 1}
        await until(lambda: source.caps.per_client == {STALLER: 3}, WAIT, "the producer gone")
        stalls.close()
        await until(lambda: source.caps.open == 0, WAIT, "every place given back")
    assert source.caps.open == 0


@pytest.mark.parametrize("loop", LOOPS)
def test_webhook_tls_handshakes_are_counted_against_the_caps_from_the_accept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, loop: str
) -> None:
    run_on(loop, webhook_caps(tmp_path))
    assert no_warnings(caplog) == []


async def webhook_caps(tmp_path: Path) -> None:
    certificates, reloads, sink, told = Certificates(tmp_path), Reloads(), RecordingSink(), Told()
    secret = "shpss_component_secret_0123456789"
    timeout = 1.0 * UNIT
    limits = Limits(max_connections=4, max_connections_per_client=3, header_timeout=timeout)
    settings = ShopifyWebhookSettings(secret=secret, listen=f"{HOST}:0", limits=limits)
    fmt = ShopifyFormat(FormatOptions(default_stream=STREAM, platforms=frozenset({"shopify"})))
    source = ShopifyWebhookSource(
        "shop",
        fmt,
        sink,
        RecordingHealth(),
        settings,
        on_refused=told.refused.append,
        on_bad_request=told.bad.append,
        tls=reloads.tls(certificates),
    )
    body = b'{"id": 1, "created_at": "2024-05-01T12:00:00Z", "line_items": []}'
    headers = {
        "X-Shopify-Topic": "shop/update",
        "X-Shopify-Hmac-Sha256": signature(secret.encode(), body),
    }
    async with asyncio.timeout(30 * UNIT), running(source.run()):
        await until(lambda: source._runner is not None, WAIT, "the webhook to listen")
        guard = source.guard
        assert guard is not None
        stalls = await stalled_handshakes_are_capped(
            source.port, told, timeout, lambda: guard.caps.open
        )
        url = f"https://{HOST}:{source.port}{settings.path}"
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=body, headers=headers, ssl=certificates.client()) as r,
        ):
            assert (r.status, await r.text()) == (200, "ignored\n")
        assert told.refused == ["client", "listener"]
        stalls.close()
