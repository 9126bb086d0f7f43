"""End to end, through ``livestream-ingester run``: TLS on every listener, certificates renewed
without a restart (SIGHUP and the file watch), credentials on /metrics, and exact totals from a
producer speaking TLS while other clients hammer the same port in plain text.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.certs import HOST, Certificates, peer_serial
from tests.e2e.support import (
    SECRET,
    SECRET_ENV,
    IngesterProcess,
    Scraper,
    exact,
    sale_frames,
    select,
    small_sale,
    write_config,
)
from tests.servers import free_port
from tests.waiting import UNIT, until

TOKEN = "push-token-0123456789abcdef"
TOKEN_ENV = "LIVESTREAM_TEST_PUSH_TOKEN"
METRICS_TOKEN = "metrics-token-0123456789abcdef"
METRICS_TOKEN_ENV = "LIVESTREAM_TEST_METRICS_TOKEN"
LISTENERS = ("http", "push", "shop")


class Secured:
    def __init__(self, process: IngesterProcess, certificates: Certificates, ports: dict[str, int]):
        self.process, self.certificates, self.ports = process, certificates, ports
        self.scraper = process.scraper

    def counted(self, name: str, **labels: str) -> dict[tuple[str, ...], float]:
        return select(self.scraper.scrape(self.process.http_port), name, **labels)

    async def serials(self) -> dict[str, int]:
        context = self.certificates.client()
        return {name: await peer_serial(port, context) for name, port in self.ports.items()}


@pytest.fixture
def secured(tmp_path: Path, redis_url: str, stream: str) -> Iterator[Secured]:
    """Every listener on TLS with the same files: /metrics reloads on SIGHUP only, the sources
    also look at the files every 0.2 s; /metrics wants a bearer token."""
    certificates = Certificates(tmp_path)
    http, push, hook = free_port(), free_port(), free_port()
    watched = certificates.toml(interval=0.2 * UNIT)
    sources = f"""
[[sources]]
name = "push"
type = "websocket-server"
listen = "127.0.0.1:{push}"
token_env = "{TOKEN_ENV}"
stream = "{stream}"
tls = {watched}

[[sources]]
name = "shop"
type = "http-server"
listen = "127.0.0.1:{hook}"
secret_env = "{SECRET_ENV}"
stream = "{stream}"
tls = {watched}
"""
    config = write_config(tmp_path / "tls.toml", redis_url=redis_url, http_port=http, sources="")
    http_tls = f'metrics_token_env = "{METRICS_TOKEN_ENV}"\ntls = {certificates.toml(interval=0)}'
    text = config.read_text().replace(
        f'listen = "127.0.0.1:{http}"\n', f'listen = "127.0.0.1:{http}"\n{http_tls}\n'
    )
    # Refusals are logged at most once a minute per listener, as in production.
    text = text.replace("rejection_interval_seconds = 0", "rejection_interval_seconds = 60")
    config.write_text(text + sources)
    env = {SECRET_ENV: SECRET, TOKEN_ENV: TOKEN, METRICS_TOKEN_ENV: METRICS_TOKEN}
    scraper = Scraper(certificates.client(), f"Bearer {METRICS_TOKEN}")
    with IngesterProcess(config, http, env=env, scraper=scraper) as process:
        yield Secured(process, certificates, {"http": http, "push": push, "shop": hook})


def status(scraper: Scraper, port: int, path: str) -> tuple[int, str]:
    try:
        scraper.text(port, path)
    except urllib.error.HTTPError as refused:
        return refused.code, refused.headers.get("WWW-Authenticate", "")
    return 200, ""


async def plain_attempt(port: int, payload: bytes) -> None:
    """A client that does not speak TLS: whatever it sends, the server hangs up on it."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(payload)
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(reader.read(), 5 * UNIT)
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


PLAIN = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
GARBAGE = b"\x16\x03\x01\x02\x00" + bytes(range(256)) * 2


@pytest.mark.asyncio
async def test_metrics_need_the_token_over_tls_and_the_probes_stay_open(
    secured: Secured,
) -> None:
    port, offset = secured.process.http_port, secured.process.log.stat().st_size
    tls = secured.certificates.client()
    assert status(Scraper(tls), port, "/metrics") == (401, 'Bearer realm="livestream-ingester"')
    assert status(Scraper(tls, "Bearer wrong-token-0123456789"), port, "/metrics")[0] == 401
    assert status(Scraper(tls, f"Basic {METRICS_TOKEN}"), port, "/metrics")[0] == 401
    assert status(Scraper(tls), port, "/healthz") == (200, "")
    assert status(Scraper(tls), port, "/readyz") == (200, "")
    assert status(secured.scraper, port, "/metrics") == (200, "")
    # reports carry what /metrics does: the same credentials (404: no such stream here)
    assert status(Scraper(tls), port, "/streams/s1/report")[0] == 401
    assert status(secured.scraper, port, "/streams/s1/report")[0] == 404
    for name, listener in secured.ports.items():
        for payload in (PLAIN, GARBAGE):
            await plain_attempt(listener, payload)
        assert await peer_serial(listener, tls) == secured.certificates.served.serial_number, name
    assert secured.counted("livestream_ingest_unauthorized_requests_total", source="http") == {
        (): 4
    }
    log = secured.process.log.read_bytes()[offset:].decode(errors="replace")
    assert "Traceback" not in log, log
    assert sum("request refused: unauthorized" in line for line in log.splitlines()) == 1, log


@pytest.mark.asyncio
async def test_renewed_certificates_are_served_after_the_watch_or_sighup_and_a_bad_one_is_kept_out(
    secured: Secured,
) -> None:
    certificates, process = secured.certificates, secured.process
    first = certificates.served
    expiry = "livestream_ingest_tls_certificate_expiry_timestamp_seconds"
    assert secured.counted(expiry) == {
        (name,): first.not_valid_after_utc.timestamp() for name in LISTENERS
    }
    renewed = certificates.renew(days=400)
    watched = {"push": renewed.serial_number, "shop": renewed.serial_number}
    # The sources look at the files; /metrics waits for SIGHUP.
    await until(lambda: _serials_are(secured, {**watched, "http": first.serial_number}), 10)
    assert process.process is not None
    process.process.send_signal(signal.SIGHUP)
    await until(lambda: _serials_are(secured, {**watched, "http": renewed.serial_number}), 10)
    assert secured.counted(expiry) == {
        (name,): renewed.not_valid_after_utc.timestamp() for name in LISTENERS
    }
    # SIGHUP reloads every listener: the sources load their (same) files once more.
    loads = "livestream_ingest_tls_certificate_loads_total"
    assert secured.counted(loads) == {("http",): 2, ("push",): 3, ("shop",): 3}

    offset = process.log.stat().st_size
    certificates.break_key()
    failures = "livestream_ingest_tls_reload_failures_total"
    await until(lambda: secured.counted(failures) == {("http",): 0, ("push",): 1, ("shop",): 1})
    process.process.send_signal(signal.SIGHUP)
    await until(lambda: secured.counted(failures) == {("http",): 1, ("push",): 2, ("shop",): 2})
    assert await secured.serials() == dict.fromkeys(LISTENERS, renewed.serial_number)
    lines = process.log.read_bytes()[offset:].decode(errors="replace").splitlines()
    failed = [line for line in lines if "tls certificate reload failed" in line]
    assert len(failed) == 5, lines  # the watch's two, then SIGHUP's three
    assert all("KEY_VALUES_MISMATCH" in line for line in failed), failed
    assert process.process.poll() is None


async def _serials_are(secured: Secured, expected: dict[str, int]) -> bool:
    return await secured.serials() == expected


@pytest.mark.asyncio
async def test_totals_stay_exact_over_tls_while_plaintext_clients_hammer_the_port(
    tmp_path: Path, redis_url: str, stream: str
) -> None:
    certificates = Certificates(tmp_path)
    http, push = free_port(), free_port()
    sources = f"""
[[sources]]
name = "push"
type = "websocket-server"
listen = "127.0.0.1:{push}"
token_env = "{TOKEN_ENV}"
stream = "{stream}"
tls = {certificates.toml()}
"""
    config = write_config(
        tmp_path / "hammer.toml", redis_url=redis_url, http_port=http, sources=sources
    )
    sale = small_sale(stream)
    frames = sale_frames(sale)
    hammered = 0

    async def hammer() -> None:
        nonlocal hammered
        for n in range(150):
            await plain_attempt(push, GARBAGE if n % 2 else PLAIN.replace(b"/metrics", b"/ingest"))
            hammered += 1

    with IngesterProcess(config, http, env={TOKEN_ENV: TOKEN}) as process:
        url = f"wss://{HOST}:{push}/ingest"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with asyncio.timeout(120 * UNIT), asyncio.TaskGroup() as group:
            hammers = [group.create_task(hammer()) for _ in range(3)]
            async with connect(
                url, additional_headers=headers, ssl=certificates.client(), proxy=None
            ) as ws:
                for index, frame in enumerate(frames):
                    await ws.send(frame.decode())
                    if index % 50 == 0:
                        await asyncio.sleep(0)  # let the hammers in between
            await asyncio.gather(*hammers)
        assert hammered == 450
        await exact(http, sale)
        log = process.log.read_text(errors="replace")
    assert "Traceback" not in log, log


async def _stall(port: int, source: str, writers: list[asyncio.StreamWriter]) -> None:
    """A TCP connection that never starts its TLS handshake, kept open."""
    _, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
    writers.append(writer)


def _stall_config(
    tmp_path: Path, redis_url: str, stream: str, http: int, push: tuple[int, Certificates]
) -> Path:
    """A websocket server on TLS for 6 connections, 5 per client, handshakes within 2 s."""
    port, certificates = push
    sources = f"""
[[sources]]
name = "push"
type = "websocket-server"
listen = "127.0.0.1:{port}"
token_env = "{TOKEN_ENV}"
stream = "{stream}"
max_connections = 6
max_connections_per_client = 5
open_timeout = {2 * UNIT}
tls = {certificates.toml()}
"""
    config = write_config(
        tmp_path / "stall.toml", redis_url=redis_url, http_port=http, sources=sources
    )
    text = config.read_text()  # refusals logged at most once a minute per kind, as in production
    config.write_text(
        text.replace("rejection_interval_seconds = 0", "rejection_interval_seconds = 60")
    )
    return config


@pytest.mark.asyncio
async def test_stalled_tls_handshakes_are_capped_while_a_producer_sends_a_sale_over_wss(
    tmp_path: Path, redis_url: str, stream: str
) -> None:
    """Connections stalled before their TLS handshake hold places like any other: 127.0.0.2
    fills its share and then the listener's; one more of each is refused at once; the
    producer on 127.0.0.1 had its place first, and its sale's totals are exact."""
    certificates = Certificates(tmp_path)
    http, push = free_port(), free_port()
    config = _stall_config(tmp_path, redis_url, stream, http, (push, certificates))
    sale = small_sale(stream)
    writers: list[asyncio.StreamWriter] = []
    refused = "livestream_ingest_connections_refused_total"
    with IngesterProcess(config, http, env={TOKEN_ENV: TOKEN}) as process:
        url = f"wss://{HOST}:{push}/ingest"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            asyncio.timeout(60 * UNIT),
            connect(url, additional_headers=headers, ssl=certificates.client(), proxy=None) as ws,
        ):
            for _ in range(7):  # five fill the client's share, then one is refused for it
                await _stall(push, "127.0.0.2", writers)

            def counted() -> dict[tuple[str, ...], float]:
                return select(process.scraper.scrape(http), refused, listener="push")

            await until(lambda: counted() == {("client",): 2, ("listener",): 0}, 10)
            await _stall(push, HOST, writers)  # the producer's and five: the listener is full
            await until(lambda: counted() == {("client",): 2, ("listener",): 1}, 10)
            for frame in sale_frames(sale):
                await ws.send(frame.decode())
        await exact(http, sale)
        timeouts = "livestream_ingest_bad_requests_total"
        await until(
            lambda: (
                select(process.scraper.scrape(http), timeouts, listener="push")
                == {("tls_handshake_timeout",): 5}
            ),
            10,
        )
        for writer in writers:
            writer.close()
        log = process.log.read_text(errors="replace")
    assert "Traceback" not in log, log
    refusals = [line for line in log.splitlines() if "request refused" in line]
    assert len(refusals) == 2, refusals  # one "connection refused", one "bad request"
    assert "SSL handshake" not in log, log
