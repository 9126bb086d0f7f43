"""Push tokens rotated without a restart, end to end: the ingester as a user runs it, its tokens
file rewritten and SIGHUP sent, producers pushing over real websocket connections, totals read
from Redis through /metrics."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from tests.e2e.support import IngesterProcess, scrape, select, write_config
from tests.servers import free_port
from tests.waiting import UNIT, until

TOKEN_A = "studio-a-0123456789abcdef"
TOKEN_B = "studio-b-0123456789abcdef"


def write_tokens(path: Path, text: str) -> None:
    staged = path.with_suffix(".new")
    staged.write_text(text)
    staged.chmod(0o600)
    os.replace(staged, path)


def comments(producer: str, first: int, count: int) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "kind": "comment",
                "id": f"{producer}-{n}",
                "platform": "tiktok",
                "ts": "2025-06-14T09:05:07+07:00",
                "user": f"u-{n}",
            }
        )
        for n in range(first, first + count)
    ]


class Push:
    def __init__(self, process: IngesterProcess, port: int, tokens: Path) -> None:
        self.process, self.port, self.tokens = process, port, tokens

    def connect(self, token: str) -> connect:
        return connect(
            f"ws://127.0.0.1:{self.port}/ingest",
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=5 * UNIT,
            proxy=None,
        )

    def metric(self, name: str, **labels: str) -> dict[tuple[str, ...], float]:
        return select(scrape(self.process.http_port), name, source="push", **labels)

    async def reload(self, text: str, outcome: str, times: int) -> None:
        """Rewrite the file, send SIGHUP, and wait for the ingester to have read it."""
        write_tokens(self.tokens, text)
        assert self.process.process is not None
        self.process.process.send_signal(signal.SIGHUP)
        reloads = "livestream_ingest_secrets_reloads_total"
        await until(
            lambda: self.metric(reloads, outcome=outcome) == {(): times}, 10, f"{outcome} x{times}"
        )


async def send(ws: ClientConnection, frames: list[bytes]) -> None:
    for frame in frames:
        await ws.send(frame.decode())


@pytest.mark.asyncio
async def test_a_token_is_rolled_out_and_revoked_without_a_restart(
    tmp_path: Path, redis_url: str, stream: str
) -> None:
    http, port = free_port(), free_port()
    tokens = tmp_path / "push.tokens"
    write_tokens(tokens, f"studio-a {TOKEN_A}\n")
    sources = f"""
[[sources]]
name = "push"
type = "websocket-server"
listen = "127.0.0.1:{port}"
tokens_file = "{tokens}"
tokens_poll_seconds = 3600  # SIGHUP only, here
stream = "{stream}"
"""
    config = write_config(
        tmp_path / "push.toml", redis_url=redis_url, http_port=http, sources=sources
    )
    with IngesterProcess(config, http) as process:
        push = Push(process, port, tokens)
        assert push.metric("livestream_ingest_secrets_file_valid") == {(): 1}
        async with push.connect(TOKEN_A) as a:
            await send(a, comments("a", 0, 10))
            await push.reload(f"studio-a {TOKEN_A}\nstudio-b {TOKEN_B}\n", "ok", 1)
            async with push.connect(TOKEN_B) as b:
                await send(b, comments("b", 0, 10))
                await send(a, comments("a", 10, 10))
                # A bad file (a short token): the previous tokens stay, old and new work.
                await push.reload(f"studio-a {TOKEN_A}\nstudio-b short\n", "error", 1)
                assert push.metric("livestream_ingest_secrets_file_valid") == {(): 0}
                async with push.connect(TOKEN_A) as again:
                    await send(again, comments("a", 20, 1))
                # The old token revoked: its open connection closed, its handshakes refused.
                await push.reload(f"studio-b {TOKEN_B}\n", "ok", 2)
                with pytest.raises(ConnectionClosedError) as closed:
                    await asyncio.wait_for(a.recv(), 10 * UNIT)
                with pytest.raises(InvalidStatus) as refused:
                    async with push.connect(TOKEN_A):
                        pass
                await send(b, comments("b", 10, 10))

                def total() -> dict[tuple[str, ...], float]:
                    samples = scrape(http)
                    return select(samples, "livestream_comments_total", stream=stream)

                await until(lambda: total() == {("tiktok",): 41}, 10, "41 comments")
        assert push.metric("livestream_ingest_secrets_file_valid") == {(): 1}
        assert push.metric("livestream_ingest_push_connections_total") == {
            ("studio-a",): 2,
            ("studio-b",): 1,
        }
        assert push.metric("livestream_ingest_revoked_connections_total") == {(): 1}
        assert push.metric("livestream_ingest_unauthorized_requests_total") == {(): 1}
        assert push.metric("livestream_ingest_events_total", outcome="accepted") == {
            ("comment",): 41
        }
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "token revoked")
    assert refused.value.response.status_code == 401
    log = process.log.read_text()
    assert "Traceback" not in log
    assert TOKEN_A not in log
    assert TOKEN_B not in log
    refusals = [line for line in log.splitlines() if "tokens file" in line and "refused" in line]
    assert len(refusals) == 1, log
    assert "line 2: token shorter than 16 bytes" in refusals[0]
