"""End to end: bad input pushed to the websocket server source is rejected, dead-lettered and
never counted, while the same connection keeps delivering valid events. The scrape passes
``promtool check metrics``."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.e2e.support import IngesterProcess, scrape, scrape_text, select, write_config
from tests.servers import free_port
from tests.waiting import until
from workers.store import Store, StoreSettings

TOKEN = "s3cret-token-for-tests"


def comment(n: int) -> bytes:
    return orjson.dumps(
        {
            "kind": "comment",
            "id": f"c-{n}",
            "platform": "tiktok",
            "ts": "2025-06-14T09:05:07+07:00",
            "user": f"u-{n}",
            "text": "chốt VT01",
        }
    )


ORDER: dict[str, Any] = {
    "kind": "order",
    "id": "ord-1",
    "status": "created",
    "platform": "shopee",
    "ts": "2025-06-14T09:05:08+07:00",
    "buyer": "u-77",
    "country": "VN",
    "region": "Ha Noi",
    "currency": "VND",
    "amount": "240000",
    "items": [{"sku": "VT01", "qty": 2, "grams": 1000, "price": "120000"}],
}

BAD: list[tuple[str, bytes | str]] = [
    ("malformed_json", '{"kind": "comment", "id": '),
    ("unknown_kind", '{"kind": "like", "id": "l1", "platform": "tiktok"}'),
    (
        "out_of_range",
        orjson.dumps({**ORDER, "id": "neg", "items": [{**ORDER["items"][0], "qty": -2}]}),
    ),
    (
        "out_of_range",
        orjson.dumps({**ORDER, "id": "heavy", "items": [{**ORDER["items"][0], "grams": 10**9}]}),
    ),
    ("invalid_amount", orjson.dumps({**ORDER, "id": "amt", "amount": "-5"})),
    ("invalid_type", orjson.dumps({**ORDER, "id": "typ", "amount": 12.5})),
    ("missing_field", '{"kind": "comment", "platform": "tiktok", "ts": "2025-06-14T09:05:07Z"}'),
    (
        "invalid_timestamp",
        '{"kind": "comment", "id": "n", "platform": "tiktok", "ts": "2025-06-14 09:05"}',
    ),
    (
        "oversize",
        orjson.dumps(
            {
                "kind": "comment",
                "id": "big",
                "platform": "tiktok",
                "ts": "2025-06-14T09:05:07Z",
                "text": "x" * 3000,
            }
        ),
    ),
    (
        "invalid_utf8",
        b'{"kind": "comment", "id": "\xff\xfe", "platform": "tiktok", '
        b'"ts": "2025-06-14T09:05:07Z"}',
    ),
    ("not_an_object", "42"),
]


@pytest.mark.asyncio
async def test_bad_input_is_rejected_dead_lettered_and_never_counted(
    tmp_path: Path, redis_url: str, redis: Redis, stream: str
) -> None:
    http, push = free_port(), free_port()
    source = f"""
[[sources]]
name = "push"
type = "websocket-server"
listen = "127.0.0.1:{push}"
path = "/ingest"
token_env = "PUSH_TOKEN"
stream = "{stream}"
max_frame_bytes = 2048
"""
    config = write_config(
        tmp_path / "push.toml", redis_url=redis_url, http_port=http, sources=source
    )
    url = f"ws://127.0.0.1:{push}/ingest"
    with IngesterProcess(config, http, env={"PUSH_TOKEN": TOKEN}):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, additional_headers={"Authorization": "Bearer wrong"}):
                pass
        assert refused.value.response.status_code == 401

        async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            await ws.send(comment(1).decode())
            for _, frame in BAD:
                await ws.send(frame)  # bytes go as binary frames, str as text
            await ws.send(orjson.dumps(ORDER).decode())
            await ws.send(comment(2).decode())

            def counted() -> bool:
                samples = scrape(http)
                comments = select(samples, "livestream_comments_total", stream=stream)
                orders = select(samples, "livestream_orders_total", stream=stream)
                return comments == {("tiktok",): 2.0} and orders == {("VN", "shopee"): 1.0}

            await until(counted, 20, "the valid events around the bad ones")
            await ws.send(comment(3).decode())  # the connection is still open and served
            await until(
                lambda: (
                    select(scrape(http), "livestream_comments_total", stream=stream)
                    == {("tiktok",): 3.0}
                ),
                20,
                "an event sent after the bad ones",
            )

        samples = scrape(http)
        rejections = select(samples, "livestream_ingest_rejections_total", source="push")
        expected: dict[tuple[str, ...], float] = {}
        for reason, _ in BAD:
            expected[(reason,)] = expected.get((reason,), 0) + 1
        assert {k: v for k, v in rejections.items() if v} == expected
        grams = select(samples, "livestream_sold_grams_total", stream=stream)
        assert grams == {("VN", "shopee"): 2000.0}

        letters = await Store(redis, StoreSettings()).dead_letters(stream, count=100)
        assert sorted(f["reason"].decode() for f in letters) == sorted(r for r, _ in BAD)
        raw = {f["reason"]: f["raw"] for f in letters}
        assert raw[b"invalid_utf8"].startswith(b'{"kind": "comment", "id": "\xff')

        promtool = shutil.which("promtool")
        assert promtool, "promtool (Debian package prometheus) is required"
        check = await asyncio.to_thread(
            subprocess.run,
            [promtool, "check", "metrics"],
            input=scrape_text(http).encode(),
            capture_output=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
