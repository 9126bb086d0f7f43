"""Comment orders ("chốt đơn") in the commit script, against a real Redis: each counting rule of
issue 14, decided inside the atomic commit, exact under duplicates, replays and two replicas;
what Redis keeps of a buyer, and for how long."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from ingest.catalog import Catalog, Product
from ingest.comment_orders import CommentParser
from ingest.model import AuthorRole, Comment
from tests.clusters import Cluster
from tests.component.test_store import NOW, flags
from workers import keys
from workers.catalogs import comment_intents
from workers.keys import StreamKeys
from workers.runtime import redis_client
from workers.store import CommentReading, Outcome, Store, StoreSettings, buyer_digest
from workers.timeline import read_timeline, sum_minutes

CATALOG = Catalog(
    (
        Product("VT05", "Vải thiều thùng 5 kg", ("vt 05", "thùng 5 ký"), 5000),
        Product("VT01", "Vải thiều hộp 1 kg", ("vt1",), 1000),
        Product("VT02", "Vải thiều hộp 2 kg", (), 2000),
        Product("VK", "Vải cân ký", ("vải cân",), None),
    )
)
PARSER = CommentParser(CATALOG)
PHONE = "0912 345 678"


def read(stream: str, text: str) -> CommentReading | None:
    return comment_intents(PARSER.parse(text), CATALOG)


def comment_store(redis: Redis, now: int = NOW, **kw: int) -> Store:
    return Store(redis, StoreSettings(now_override=now, **kw), read_comment=read)


class Chat:
    """Comments of one stream, each with a fresh id unless told."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.n = 0

    def __call__(
        self,
        text: str,
        user: str | None = "Nguyễn Thị Lan",
        *,
        platform: str = "tiktok",
        role: AuthorRole = AuthorRole.VIEWER,
        cid: str | None = None,
    ) -> Comment:
        self.n += 1
        return Comment(
            self.stream,
            platform,
            cid or f"c{self.n}",
            1_750_000_000_000 + self.n,
            user,
            author_role=role,
            text=text,
        )


def counters(totals_counters: dict[str, int]) -> dict[str, int]:
    """The comment-order fields of a stream's totals."""
    return {f: v for f, v in totals_counters.items() if f.startswith("comment_")}


async def comment_totals(s: Store, stream: str) -> dict[str, int]:
    (totals,) = await s.totals([stream])
    return counters(totals.counters)


@pytest.mark.asyncio
async def test_the_first_order_of_a_buyer_counts_a_repeat_is_the_same_and_another_quantity_a_change(
    redis: Redis, stream: str
) -> None:
    s = comment_store(redis)
    say = Chat(stream)
    batches = [
        [say(f"VT05 x2 {PHONE}")],  # counted: 2 boxes, 10 kg, with a phone
        [say("VT05 x2"), say("chốt VT05 x2")],  # the same order, said again
        [say("VT05 x3")],  # another quantity: a change, the counters stay
        [say("VT05 x3"), say("VT05 x2")],  # the same as the last, then a change back
        [say("vt 05", user="Trần Văn Bình")],  # another buyer: an order of 1
    ]
    for batch in batches:
        assert flags(await s.commit(batch)) == [True] * len(batch)
    assert await comment_totals(s, stream) == {
        "comment_orders|tiktok|VT05": 2,
        "comment_order_grams|VT05": 15_000,
        "comment_with_phone|tiktok": 1,
        "comment_changes|tiktok": 2,
    }
    (totals,) = await s.totals([stream])
    assert totals.by(keys.COMMENTS) == {("tiktok",): 7}  # every comment is still a comment


@pytest.mark.asyncio
async def test_a_withdrawal_counts_once_only_for_a_counted_order_and_the_sku_may_be_ordered_again(
    redis: Redis, stream: str
) -> None:
    s = comment_store(redis)
    say = Chat(stream)
    await s.commit([say("hủy VT01")])  # nothing to withdraw: not counted
    await s.commit([say("VT01 x2"), say("VK 1,5kg")])
    await s.commit([say("huỷ VT01")])  # counted
    await s.commit([say("hủy VT01"), say("cancel VT01")])  # already withdrawn: nothing
    await s.commit([say("VT01 x1")])  # a new order after the withdrawal counts again
    await s.commit([say("hủy VT02")])  # never ordered
    assert await comment_totals(s, stream) == {
        "comment_orders|tiktok|VT01": 2,
        "comment_orders|tiktok|VK": 1,
        "comment_order_grams|VT01": 3000,
        "comment_order_grams|VK": 1500,
        "comment_withdrawals|tiktok|VT01": 1,
    }


@pytest.mark.asyncio
async def test_a_withdrawal_without_a_product_takes_the_buyers_only_order_else_it_is_ambiguous(
    redis: Redis, stream: str
) -> None:
    s = comment_store(redis)
    say = Chat(stream)
    await s.commit([say("hủy đơn", user="none")])  # no order: ambiguous
    await s.commit([say("VT05", user="one"), say("VT01 x2", user="two"), say("VT02", user="two")])
    await s.commit([say("hủy đơn", user="one"), say("hủy đơn", user="two")])  # one: withdrawn
    await s.commit([say("hủy đơn", user="one")])  # nothing left: ambiguous
    assert await comment_totals(s, stream) == {
        "comment_orders|tiktok|VT05": 1,
        "comment_orders|tiktok|VT01": 1,
        "comment_orders|tiktok|VT02": 1,
        "comment_order_grams|VT05": 5000,
        "comment_order_grams|VT01": 2000,
        "comment_order_grams|VT02": 2000,
        "comment_withdrawals|tiktok|VT05": 1,
        "comment_ambiguous": 3,
    }


@pytest.mark.asyncio
async def test_within_one_batch_the_rules_apply_in_order(redis: Redis, stream: str) -> None:
    s = comment_store(redis)
    say = Chat(stream)
    batch = [say("VT02"), say("hủy VT02"), say("hủy VT02"), say("VT02 x2"), say("VT02 x3")]
    assert flags(await s.commit(batch)) == [True] * 5
    assert await comment_totals(s, stream) == {
        "comment_orders|tiktok|VT02": 2,
        "comment_order_grams|VT02": 2000 + 4000,
        "comment_withdrawals|tiktok|VT02": 1,
        "comment_changes|tiktok": 1,
    }


@pytest.mark.asyncio
async def test_host_and_moderator_comments_never_count_and_the_buyer_is_platform_and_user(
    redis: Redis, stream: str
) -> None:
    s = comment_store(redis)
    say = Chat(stream)
    await s.commit(
        [
            say("VT05 x2", user="shop", role=AuthorRole.HOST),
            say("chốt VT05 x1", user="mod", role=AuthorRole.MODERATOR),
            say("VT01", user="lan", platform="tiktok"),
            say("VT01", user="lan", platform="facebook"),  # another buyer: another platform
        ]
    )
    assert await comment_totals(s, stream) == {
        "comment_orders|tiktok|VT01": 1,
        "comment_orders|facebook|VT01": 1,
        "comment_order_grams|VT01": 2000,
    }


@pytest.mark.asyncio
async def test_ambiguous_and_unknown_codes_are_counted_without_a_sku_label(
    redis: Redis, stream: str
) -> None:
    s = comment_store(redis)
    say = Chat(stream)
    await s.commit(
        [
            say("VT02 5kg"),  # not a whole number of 2 kg boxes
            say("mỗi loại 1"),
            say("bớt 1 hộp"),  # a partial withdrawal
            say("VT07 x2"),  # a code no product has
            say("VT05 x2", user=None),  # nobody's order: ambiguous
            say("vải ngon quá"),
            say("còn VT05 không shop"),
        ]
    )
    assert await comment_totals(s, stream) == {
        "comment_ambiguous": 4,
        "comment_unknown_codes|tiktok": 1,
    }
    (totals,) = await s.totals([stream])
    assert totals.by(keys.COMMENT_AMBIGUOUS) == {(): 4}


@pytest.mark.asyncio
async def test_duplicate_deliveries_and_replays_decide_nothing_twice(
    redis: Redis, stream: str
) -> None:
    s = comment_store(redis)
    say = Chat(stream)
    sale = [
        say("VT05 x2", user="a"),
        say("hủy VT05", user="a"),
        say("VT05 x1", user="a"),
        say("hủy đơn", user="a"),
        say(f"VT01 {PHONE}", user="b"),
        say("VT01 x4", user="b"),
    ]
    assert flags(await s.commit(sale + sale)) == [True] * 6 + [False] * 6
    once = await comment_totals(s, stream)
    for event in sale:  # every delivery again, one at a time
        assert flags(await s.commit([event])) == [False]
    assert (
        await comment_totals(s, stream)
        == once
        == {
            "comment_orders|tiktok|VT05": 2,
            "comment_orders|tiktok|VT01": 1,
            "comment_order_grams|VT05": 15_000,
            "comment_order_grams|VT01": 1000,
            "comment_withdrawals|tiktok|VT05": 2,
            "comment_with_phone|tiktok": 1,
            "comment_changes|tiktok": 1,
        }
    )
    # The timeline counts each in its comment's minute, once (issue 15's buckets).
    first = sale[0].ts_ms // 60_000
    minutes = await read_timeline(redis, stream, first - 1, first + 1)
    day = sum_minutes(minutes)
    assert (day.comments, day.comment_orders, day.comment_withdrawals) == (6, 3, 2)


@pytest.mark.asyncio
async def test_first_is_decided_inside_the_commit_between_two_replicas(
    redis: Redis, stream: str
) -> None:
    """Two replicas commit, at once, each buyer's two comments with different quantities (and
    each other's, as duplicate deliveries): one is the order, the other a change, whichever
    commits first; never two orders."""
    one, two = comment_store(redis), comment_store(redis)
    say = Chat(stream)
    buyers = [f"buyer-{n}" for n in range(40)]
    first = [say("VT05 x1", user=b, cid=f"{b}-1") for b in buyers]
    second = [say("VT05 x2", user=b, cid=f"{b}-2") for b in buyers]
    results = await asyncio.gather(
        one.commit(first), two.commit(second), one.commit(second), two.commit(first)
    )
    counted = [o for outcomes in results for o in outcomes if o is Outcome.NEW]
    assert len(counted) == 2 * len(buyers)
    found = await comment_totals(one, stream)
    assert found["comment_orders|tiktok|VT05"] == len(buyers)
    assert found["comment_changes|tiktok"] == len(buyers)
    assert 5000 * len(buyers) <= found["comment_order_grams|VT05"] <= 10_000 * len(buyers)


@pytest.mark.asyncio
async def test_redis_keeps_only_a_digest_of_the_buyer_never_the_id_text_or_phone(
    redis: Redis, stream: str
) -> None:
    s = comment_store(redis)
    say = Chat(stream)
    await s.commit([say(f"VT05 x2 {PHONE}", user="Nguyễn Thị Lan"), say("VT01", user="lan99")])
    k = StreamKeys(stream)
    state = f"{k.comment_orders_prefix}{NOW // keys.GENERATION_SECONDS}"
    assert await redis.hgetall(state) == {
        buyer_digest("tiktok", "Nguyễn Thị Lan").encode(): b"VT05:2",
        buyer_digest("tiktok", "lan99").encode(): b"VT01:1",
    }
    assert await redis.ttl(state) > 0
    everything = ""
    async for key in redis.scan_iter(match=f"{k.tag}:*"):
        everything += repr(key)
        if await redis.type(key) == b"hash":
            everything += repr(await redis.hgetall(key))
    assert "b'VT05:2'" in everything  # what is there is read
    for clear in ["Nguyễn".encode(), b"Lan", b"lan99", b"912345678", b"912 345", b"VT05 x2"]:
        assert repr(clear)[2:-1] not in everything


@pytest.mark.asyncio
async def test_a_buyers_state_lives_the_retention_after_their_last_change(
    redis: Redis, stream: str
) -> None:
    """The state moves to the current generation on every change and is read as far back as
    dedup: a buyer silent for longer than the retention orders anew."""
    day = keys.GENERATION_SECONDS
    say = Chat(stream)
    retention = 2 * day
    await comment_store(redis, NOW, retention_seconds=retention).commit([say("VT05")])
    later = comment_store(redis, NOW + retention, retention_seconds=retention)
    await later.commit([say("VT05 x2")])  # still known: a change, moved to this generation
    k = StreamKeys(stream)
    assert not await redis.hexists(
        f"{k.comment_orders_prefix}{NOW // day}", buyer_digest("tiktok", "Nguyễn Thị Lan")
    )
    still = comment_store(redis, NOW + 2 * retention, retention_seconds=retention)
    await still.commit([say("VT05 x2")])  # the retention after the change: the same order
    gone = comment_store(redis, NOW + 3 * retention + day, retention_seconds=retention)
    await gone.commit([say("VT05 x2")])  # longer: forgotten, counted again
    assert await comment_totals(gone, stream) == {
        "comment_orders|tiktok|VT05": 2,
        "comment_order_grams|VT05": 5000 + 10_000,
        "comment_changes|tiktok": 1,
    }
    moved = f"{k.comment_orders_prefix}{(NOW + retention) // day}"
    assert await redis.expiretime(moved) == NOW + retention + 3 * day  # + lookback + 1


@pytest.mark.asyncio
async def test_on_a_cluster_the_buyers_state_keys_are_declared_and_the_rules_hold(
    stream: str,
) -> None:
    """On a cluster the generations come from the process's clock and lookups read one ahead;
    the state keys of every generation a lookup reads are declared (a slot mid-migration
    refuses an undeclared one), so a commit never touches a key it did not name."""
    cluster = Cluster()
    cluster.start()
    try:
        client = redis_client(cluster.url, socket_timeout=5.0, cluster=True)
        try:
            s = Store(client, StoreSettings(now_override=NOW), read_comment=read)
            say = Chat(stream)
            await s.commit([say("VT05 x2"), say("VT05 x3")])
            await s.commit([say("hủy đơn"), say("VT05")])
            k = StreamKeys(stream)
            gen = NOW // keys.GENERATION_SECONDS
            declared = s._declared(stream, set(), False, s._legacy, NOW, comments=True)
            state = [f"{k.comment_orders_prefix}{g}" for g in range(gen - 2, gen + 2)]
            assert set(state) <= set(declared)
            assert not set(state) & set(s._declared(stream, set(), False, s._legacy, NOW))
            assert await comment_totals(s, stream) == {
                "comment_orders|tiktok|VT05": 2,
                "comment_order_grams|VT05": 15_000,
                "comment_changes|tiktok": 1,
                "comment_withdrawals|tiktok|VT05": 1,
            }
        finally:
            await client.aclose()
    finally:
        cluster.close()
