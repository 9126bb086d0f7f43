"""End to end: comment orders ("chốt đơn") as a user runs the ingester. A sale's comments, each
delivered twice and partly replayed, read by two replicas from their stream's catalog (with the
default two commits in flight: batches that may decide comment orders still commit in order): the
comment order counters are exact (the counting rules, modelled here apart from the commit
script), and no buyer's name, text or phone number reaches Redis."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from tests.e2e.support import ReplayFeed, client_source, scrape, select
from tests.e2e.test_catalog import catalog_ingester
from tests.waiting import until

CATALOG = """\
sku,name,unit_grams,aliases
VT05,Vải thiều thùng 5 kg,5000,vt 05;thùng 5 ký
VT01,Vải thiều hộp 1 kg,1000,vt1
VK,Vải cân ký,kg,vải cân
"""
UNIT_GRAMS = {"VT05": 5000, "VT01": 1000}
TS = "2025-06-14T09:05:08+07:00"
PHONE = "0912 345 678"


class Model:
    """The counting rules of issue 14, as a seller would apply them, one comment at a time."""

    def __init__(self) -> None:
        self.held: dict[tuple[str, str], dict[str, int]] = {}
        self.counts: dict[str, Counter[tuple[str, ...]]] = {
            name: Counter()
            for name in (
                "orders",
                "grams",
                "withdrawals",
                "with_phone",
                "changes",
                "ambiguous",
                "unknown",
            )
        }

    def order(self, buyer: tuple[str, str], sku: str, quantity: int, phone: bool) -> None:
        items = self.held.setdefault(buyer, {})
        platform = buyer[0]
        if sku not in items:
            self.counts["orders"][platform, sku] += 1
            self.counts["grams"][sku,] += quantity * UNIT_GRAMS.get(sku, 1)
            if phone:
                self.counts["with_phone"][platform,] += 1
        elif items[sku] != quantity:
            self.counts["changes"][platform,] += 1
        items[sku] = quantity

    def withdraw(self, buyer: tuple[str, str], sku: str | None) -> None:
        items = self.held.setdefault(buyer, {})
        if sku is None:
            if len(items) != 1:
                self.counts["ambiguous"][()] += 1
                return
            (sku,) = items
        if sku in items:
            del items[sku]
            self.counts["withdrawals"][buyer[0], sku] += 1


def sale(stream: str, buyers: int = 60, seed: int = 14) -> tuple[list[bytes], Model]:
    """Native comment frames (every one delivered twice, some much later) and the model's
    counters for them, in the order the frames are sent."""
    rng = random.Random(seed)
    model = Model()
    steps: list[tuple[str, str, str]] = []  # (platform, user, text), each buyer's in order
    plans: list[list[tuple[str, str, str]]] = []
    for n in range(buyers):
        platform = "tiktok" if n % 3 else "facebook"
        user = f"Nguyễn Thị Lan {n}"
        plan = []
        for _ in range(rng.randint(1, 6)):
            plan.append((platform, user, rng.choice(ACTIONS)(rng)))
        plans.append(plan)
    while any(plans):  # interleave the buyers, each in order
        plan = rng.choice([p for p in plans if p])
        steps.append(plan.pop(0))
    frames: list[bytes] = []
    late: list[bytes] = []
    for n, (platform, user, text) in enumerate(steps):
        role = "host" if text.startswith("HOST ") else "viewer"
        body = text.removeprefix("HOST ")
        frame = orjson.dumps(
            {
                "kind": "comment",
                "id": f"c-{n}",
                "stream": stream,
                "platform": platform,
                "ts": TS,
                "user": user,
                "text": body,
                "author_role": role,
            }
        )
        apply(model, (platform, user), text)
        frames.append(frame)
        if n % 4 == 0:
            late.append(frame)  # delivered again much later, after newer comments
        else:
            frames.append(frame)
    return frames + late, model


def _order(rng: random.Random) -> str:
    sku = rng.choice(["VT05", "VT01", "vt 05", "thùng 5 ký", "vt1"])
    quantity = rng.randint(1, 3)
    phone = f" {PHONE}" if rng.random() < 0.4 else ""
    return f"chốt {sku} x{quantity}{phone}"


def _weighed(rng: random.Random) -> str:
    return f"VK {rng.randint(1, 3)}kg"


ACTIONS: list[Callable[[random.Random], str]] = [
    _order,
    _order,
    _order,
    _weighed,
    lambda rng: f"hủy {rng.choice(['VT05', 'VT01', 'VK'])}",
    lambda rng: "hủy đơn",
    lambda rng: "mỗi loại 1",
    lambda rng: "VT07 x2",
    lambda rng: "vải ngon quá",
    lambda rng: "HOST VT05 x2",
]
CODES = {"vt 05": "VT05", "thùng 5 ký": "VT05", "vt1": "VT01"}


def apply(model: Model, buyer: tuple[str, str], text: str) -> None:
    """What one comment of ``ACTIONS`` does, by the rules (not by the parser)."""
    words = text.split()
    if text.startswith("HOST ") or text == "vải ngon quá":
        return
    if text.startswith("chốt "):
        body = text.removeprefix("chốt ").removesuffix(f" {PHONE}")
        code, quantity = body.rsplit(" x", 1)
        model.order(buyer, CODES.get(code, code), int(quantity), text.endswith(PHONE))
    elif words[0] == "VK":
        model.order(buyer, "VK", int(words[1].removesuffix("kg")) * 1000, False)
    elif text == "hủy đơn":
        model.withdraw(buyer, None)
    elif words[0] == "hủy":
        model.withdraw(buyer, words[1])
    elif text == "mỗi loại 1":
        model.counts["ambiguous"][()] += 1
    elif text == "VT07 x2":
        model.counts["unknown"][buyer[0],] += 1


METRICS = {
    "orders": "livestream_comment_orders_total",
    "grams": "livestream_comment_order_grams_total",
    "withdrawals": "livestream_comment_order_withdrawals_total",
    "with_phone": "livestream_comment_orders_with_phone_total",
    "changes": "livestream_comment_order_changes_total",
    "ambiguous": "livestream_comment_ambiguous_total",
    "unknown": "livestream_comment_unknown_codes_total",
}


def observed(port: int, stream: str) -> dict[str, dict[tuple[str, ...], float]]:
    samples = scrape(port)
    return {key: select(samples, name, stream=stream) for key, name in METRICS.items()}


def expected(model: Model) -> dict[str, dict[tuple[str, ...], float]]:
    return {key: {k: float(v) for k, v in model.counts[key].items() if v} for key in METRICS}


@pytest.mark.asyncio
async def test_two_replicas_count_comment_orders_exactly_through_duplicates_and_replay(
    tmp_path: Path, redis_url: str, stream: str
) -> None:
    (tmp_path / "catalog.csv").write_text(CATALOG, encoding="utf-8")
    frames, model = sale(stream)
    want = expected(model)
    assert all(want[key] for key in METRICS), want  # the sale exercises every rule
    feed = ReplayFeed(frames, cut_after=len(frames) // 3, replay=50)
    processes = [
        catalog_ingester(
            tmp_path,
            f"r{n}",
            redis_url,
            client_source("feed", feed.url(f"r{n}")),
            stream,
            interval=0,
        )
        for n in range(2)
    ]
    async with feed.serving():
        with processes[0], processes[1]:
            for process in processes:
                try:
                    await until(
                        lambda p=process: observed(p.http_port, stream) == want,
                        60,
                        "exact comment order counters",
                    )
                except AssertionError:  # show what differs
                    assert observed(process.http_port, stream) == want
                    raise
    redis = Redis.from_url(redis_url)
    try:
        dump = ""
        async for key in redis.scan_iter(match=f"li:{{{stream}}}:*"):
            dump += repr(key)
            if await redis.type(key) == b"hash":
                dump += repr(await redis.hgetall(key))
        assert "commentorders" in dump
        for clear in ["Nguyễn", "Lan 1", "912345678", "912 345", "chốt", "VT05 x"]:
            assert repr(clear.encode())[2:-1] not in dump
    finally:
        await redis.aclose()
