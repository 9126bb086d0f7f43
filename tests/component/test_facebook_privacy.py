"""Facebook comments that are rejected keep neither the commenter's name nor the message (which
may hold a phone number) in their dead letter or the log: filed in a real Redis, searched whole."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from redis.asyncio import Redis

from ingest.adapter import FormatOptions
from ingest.facebook import FacebookLiveFormat
from ingest.model import Rejection
from tests.component.test_privacy import committer, dead, leaks, masked_out
from tests.waiting import UNIT

SECRETS = ("Nguyễn Thị Lan", "Nguyễn", "chốt 2 hộp", "0912 345 678", "0912345678", "lan@mail.vn")


@pytest.mark.asyncio
async def test_rejected_facebook_comments_keep_no_name_message_or_phone_number(
    redis_url: str, redis: Redis, stream: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fmt = FacebookLiveFormat(
        FormatOptions(default_stream=stream, platforms=frozenset({"facebook"}))
    )
    person = {"name": "Nguyễn Thị Lan", "id": "552524095105158"}
    message = "chốt 2 hộp, gọi 0912 345 678 hoặc lan@mail.vn"
    bad_time = {"id": "1_1", "created_time": "0912345678", "from": person, "message": message}
    bad_id = {"id": 912345678, "from": person, "message": message}
    page = {"data": [bad_time], "paging": {"cursors": {"after": "QVFI"}, "next": ["0912345678"]}}
    decoded = fmt.decode(orjson.dumps(bad_time)) + fmt.decode(orjson.dumps([bad_id]))
    decoded += fmt.page(orjson.dumps(page)).items
    decoded += fmt.decode(("{" + message).encode())  # not JSON: nothing of it is kept
    assert len(decoded) == 4
    assert all(isinstance(item, Rejection) for item in decoded)
    async with committer(redis_url) as sink:
        await asyncio.wait_for(await sink.submit("facebook", decoded), 10 * UNIT)
    entries = await dead(redis, stream)
    assert len(entries) == 4
    assert leaks(entries, SECRETS) == []
    assert masked_out(entries) == []
    raws = [orjson.loads(fields[b"raw"]) for _, fields in entries]
    assert raws[0]["from"] == {"id": "552524095105158"}  # the author id, as given, is kept
    logged = capsys.readouterr()
    assert [s for s in SECRETS if s in logged.out + logged.err] == []
