"""Redis access: the atomic commit of a batch, dead letters, and reading totals back."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hashlib
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from ingest.model import AuthorRole, Comment, Event, Order, PaidComment, Rejection, Viewers
from workers import keys
from workers.keys import StreamKeys, fingerprint

TOTALS_CHUNK = 200
"""Streams per round trip when reading totals: Redis answers one chunk at a time, and the event
loop sends and receives one at a time, so commits run between the chunks of a long read."""


class Outcome(enum.Enum):
    """What a commit did with one event."""

    NEW = "1"
    DUPLICATE = "0"
    TOTAL_LIMIT = "2"
    """Refused: a total would pass ``keys.TOTAL_LIMIT``."""
    STREAM_LIMIT = "s"
    """Refused: a new stream beyond ``max_streams``."""


_OUTCOMES = {ord(o.value): o for o in Outcome}


@dataclasses.dataclass(frozen=True, slots=True)
class StoreSettings:
    retention_seconds: int = 48 * 3600
    sku_limit: int = 200
    max_streams: int = 1000
    dead_letter_max: int = 10_000
    now_override: int | None = None
    """Seconds since the epoch used instead of the clock for dedup generations (tests only)."""
    timeline_retention_seconds: int = keys.TIMELINE_RETENTION_SECONDS
    """How long a timeline hash is kept after its last minute."""
    session_idle_seconds: int = 30 * 60
    """A session without a counted event this long has ended."""
    read_concurrency: int = 64
    """Cluster mode: calls in flight at once when reading totals (at most the client's
    connections per node)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Legacy:
    """What a commit also looks up as versions before namespaces wrote it."""

    identities: bool = False
    """An event is also a duplicate if its identity without namespace was seen."""
    orders: bool = False
    """An order's state is also looked up by its id without namespace, so any namespace may
    settle an order created before the upgrade."""


NO_LEGACY = Legacy()
UPGRADE_WINDOW = Legacy(identities=True, orders=True)
"""What commits look up in the upgrade window by default (``[dedup] legacy_*``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    source: str
    rejection: Rejection


@dataclasses.dataclass(slots=True)
class StreamTotals:
    """One stream's totals as stored: raw counter fields, viewers and unique counts."""

    stream: str
    counters: dict[str, int]
    viewers: dict[str, int]
    unique_commenters: int
    unique_buyers: int

    def by(self, metric: str) -> dict[tuple[str, ...], int]:
        """Counter values of one metric, keyed by their label values."""
        prefix = metric + keys.SEP
        found = {
            tuple(field[len(prefix) :].split(keys.SEP)): value
            for field, value in self.counters.items()
            if field.startswith(prefix)
        }
        if metric in self.counters:  # a metric without labels: the field is its name
            found[()] = self.counters[metric]
        return found

    def total(self, metric: str) -> int:
        return sum(self.by(metric).values())


_pack = msgspec.msgpack.Encoder().encode

Weigh = Callable[[str, str, int], int | None]
"""(stream, sku, quantity) -> grams of a line item the feed gave no weight, from the stream's
catalog; None if it does not know the SKU (or the stream has no catalog)."""


def _no_catalog(stream: str, sku: str, quantity: int) -> int | None:
    return None


def _items(order: Order, weigh: Weigh) -> tuple[str, list[tuple[str, str]]]:
    """An order's grams and its items' (sku, grams) records; "" is an unknown weight."""
    if all(item.grams is not None for item in order.items):
        return str(order.grams), [(item.sku, str(item.grams)) for item in order.items]
    total = 0
    items = []
    for item in order.items:
        grams = item.grams
        if grams is None:
            grams = weigh(order.stream, item.sku, item.quantity)
        if grams is None:
            items.append((item.sku, ""))
        else:
            total += grams
            items.append((item.sku, str(grams)))
    return str(total), items


Record = tuple[object, ...]


CommentIntent = tuple[str, str, int, str]
"""One intent of a comment as the commit script takes it: (kind, sku, quantity, grams); kind "o"
an order (quantity: units, or grams of a per-kg product; grams: its weight, a decimal string),
"w" a withdrawal (sku "" if it names none), "a" ambiguous, "u" an unknown code."""


@dataclasses.dataclass(frozen=True, slots=True)
class CommentReading:
    """What a comment orders, as its stream's catalog reads it."""

    intents: tuple[CommentIntent, ...]
    has_phone: bool
    """Whether the comment carried a valid Vietnamese mobile number (never the number)."""


ReadComment = Callable[[str, str], CommentReading | None]
"""(stream, text) -> what the comment orders in the stream's catalog; None without a catalog."""


def _no_comment_orders(stream: str, text: str) -> CommentReading | None:
    return None


BUYER_DIGEST_BYTES = 12
"""A comment buyer's digest: 96 bits, so two buyers of one stream collide with probability
~n²/2^97 (1e-17 for a million buyers)."""


def buyer_digest(platform: str, user: str) -> str:
    """What Redis keeps of a comment's buyer: a hash of (platform, user id), never the id (it may
    be a name). A pseudonym, not a secret: whoever knows an id can compute its digest."""
    data = f"{platform}\x1f{user}".encode(keys.TEXT_ENCODING)
    return hashlib.blake2b(data, digest_size=BUYER_DIGEST_BYTES, person=b"li-buyer").hexdigest()


AMBIGUOUS: Final = ("a", "", 0, "0")


def comment_orders(comment: Comment, read: ReadComment) -> list[object]:
    """The ``orders`` part of a comment's record (see ``keys.COMMENT_SCRIPT``): [] when it orders
    nothing (no text, no catalog, no intent, or written by the host or a moderator), else
    [buyer digest, phone (0/1), intents]. A comment without a user id is nobody's order: each
    of its intents is ambiguous."""
    if not comment.text or comment.author_role is not AuthorRole.VIEWER:
        return []
    reading = read(comment.stream, comment.text)
    if reading is None or not reading.intents:
        return []
    intents: Sequence[CommentIntent] = reading.intents
    if not comment.user:
        intents = [AMBIGUOUS] * len(intents)
    buyer = buyer_digest(comment.platform, comment.user or "")
    return [buyer, int(reading.has_phone), [list(intent) for intent in intents]]


def _pair(identity: str) -> tuple[int, str]:
    shard, member = fingerprint(identity)
    return shard, str(member)


def _legacy_part(event: Event, bare: bool, legacy: Legacy) -> tuple[list[tuple[int, str]], str]:
    """What older versions wrote for ``event``: its identities' fingerprints without namespace
    (none if its own are ``bare`` already), and its order id."""
    pairs = []
    if legacy.identities and not bare:
        pairs = [_pair(event.identity), *(_pair(alias) for alias in event.aliases)]
    return pairs, event.id if legacy.orders and isinstance(event, Order) else ""


def _records(
    events: Sequence[Event],
    namespaces: Sequence[str],
    legacy: Legacy = NO_LEGACY,
    shards: set[int] | None = None,
    weigh: Weigh = _no_catalog,
    *,
    read: ReadComment = _no_comment_orders,
) -> list[Record]:
    """The commit script's records (see ``keys.COMMIT_SCRIPT``): each event's identities in its
    namespace (``namespaces[i]`` is that of ``events[i]``). ``shards`` collects every dedup shard
    they name (a cluster declares their sets). Items without grams take ``weigh``'s, decided
    here, before the commit; comments' texts are read by ``read``."""
    records: list[Record] = []
    append = records.append
    prefixes: dict[str, tuple[str, str]] = {}
    for event, namespace in zip(events, namespaces, strict=True):
        prefix = prefixes.get(namespace)
        if prefix is None:
            prefix = prefixes[namespace] = keys.namespace_prefixes(namespace)
        ident, field = prefix
        shard, member = fingerprint(ident + event.identity)
        record = _record(event, shard, str(member), field, weigh=weigh, read=read)
        if event.aliases or legacy is not NO_LEGACY:
            record += _extras(event, ident, legacy, shards)
        if shards is not None:
            shards.add(shard)
        append(record)
    return records


def _record(
    event: Event, shard: int, member: str, field: str, *, weigh: Weigh, read: ReadComment
) -> Record:
    """The record of an event of any kind (see ``keys.COMMIT_SCRIPT``)."""
    record: Record
    match event:
        case Order(cancelled=True):
            record = ("x", shard, member, field + event.id)
        case Order():
            grams, items = _items(event, weigh)
            record = (
                "o",
                shard,
                member,
                field + event.id,
                event.platform,
                event.country,
                event.region,
                event.buyer or "",
                event.currency,
                str(event.amount_minor),
                grams,
                items,
            )
        case PaidComment():
            record = (
                "p",
                shard,
                member,
                event.platform,
                event.user or "",
                event.currency,
                str(event.amount_micros),
            )
        case Comment():
            # no stream has a catalog: nothing to read (and no call per comment)
            orders = [] if read is _no_comment_orders else comment_orders(event, read)
            record = ("c", shard, member, event.platform, event.user or "", orders)
        case Viewers():
            record = ("v", shard, member, event.platform, event.count, event.ts_ms)
    return record


def _extras(event: Event, ident: str, legacy: Legacy, shards: set[int] | None) -> Record:
    """A record's tail: the event's aliases in its namespace (``ident`` precedes them), then in
    the upgrade window what older versions wrote; their shards go to ``shards``."""
    aliases = [_pair(ident + alias) for alias in event.aliases]
    if legacy is NO_LEGACY:
        tail: Record = (aliases,)
    else:
        older = _legacy_part(event, not ident, legacy)
        tail = (aliases, older)
        aliases = aliases + older[0]
    if shards is not None:
        shards.update(pair[0] for pair in aliases)
    return tail


def _minutes(events: Sequence[Event]) -> list[int]:
    """Each event's minute (epoch minutes, by event time): its timeline bucket."""
    return [event.ts_ms // 60_000 for event in events]


def _timeline_arg(events: Sequence[Event], settings: StoreSettings) -> bytes:
    """The commit script's ARGV 8 (see ``keys.COMMIT_SCRIPT``)."""
    minutes = _minutes(events)
    return _pack(
        [
            settings.timeline_retention_seconds,
            minutes,
            settings.session_idle_seconds,
            keys.TIMELINE_SPAN_MINUTES,
        ]
    )


_Batch = tuple[list[Event], list[str]]
"""One stream's events and their namespaces."""


def _batches(
    events: Sequence[Event], namespaces: Sequence[str], by_stream: dict[str, list[int]]
) -> dict[str, _Batch]:
    return {
        stream: ([events[i] for i in indexes], [namespaces[i] for i in indexes])
        for stream, indexes in by_stream.items()
    }


CLUSTER_CALLS = 32
"""On a cluster, script calls of one commit in flight at once: a batch may name a thousand
streams, and the cluster client's pool holds 100 connections per node (beyond them a call fails
with MaxConnectionsError, and the whole commit would be retried for ever)."""

ADMISSION_SECONDS = 60
"""On a cluster, how long this process trusts its own admission of a stream before it asks the
registry again (which also marks the stream active): idle streams leave the registry only after
the retention, far longer."""


class Store:
    """Commits batches atomically per stream and reads totals. Owns no connection lifecycle.

    The registry ``li:streams`` admits at most ``max_streams`` streams active within the
    retention; a batch of a stream it does not admit is refused whole (``STREAM_LIMIT``), and the
    dead letters of such a stream go to ``li:dead``. On a single Redis the commit script admits
    the stream, atomically with the commit; on a cluster a separate script on the registry's slot
    does, atomically across replicas, before the commits.

    On a single Redis, one pipeline carries every stream's script call and the script reads the
    server's clock. On a Redis Cluster, each stream's call goes to its slot's primary, and every
    key the script may touch is declared: while a slot migrates, a call whose keys are split
    between the two nodes is refused (TRYAGAIN) and retried, instead of reading a set that has
    already moved as empty. The generations then come from this process's clock, and lookups
    also read the next generation, in case another replica's clock runs ahead.
    """

    def __init__(
        self,
        redis: Redis | RedisCluster,
        settings: StoreSettings,
        clock: Callable[[], float] = time.time,
        legacy: Legacy = UPGRADE_WINDOW,
        weigh: Weigh = _no_catalog,
        *,
        read_comment: ReadComment = _no_comment_orders,
        reads_comments: bool = True,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.clock = clock
        self.weigh = weigh
        self.read_comment = read_comment
        self.reads_comments = reads_comments and read_comment is not _no_comment_orders
        """Whether any stream may have comment orders (some stream has a catalog)."""
        self.cluster = isinstance(redis, RedisCluster)
        self._script = redis.register_script(keys.COMMIT_SCRIPT)
        self._admit = redis.register_script(keys.ADMIT_SCRIPT)
        self._letter = redis.register_script(keys.LETTER_SCRIPT)
        self._migrate = redis.register_script(keys.MIGRATE_SCRIPT)
        self._registry_ready = False
        self._lookback = keys.lookback_generations(settings.retention_seconds)
        self._ahead = 1 if self.cluster else 0
        self._tail: list[str | int] = [
            keys.GENERATION_SECONDS,
            self._lookback,
            self._ahead,
            settings.sku_limit,
            keys.TOTAL_LIMIT,
        ]
        self._admission = [settings.max_streams, settings.retention_seconds]
        self._admitted: dict[str, int] = {}
        """Cluster: stream -> when this process last had it admitted (seconds)."""
        self._legacy_until: int | None = None
        """End of the upgrade window (``keys.LEGACY_UNTIL``), read at the first commit."""
        self._legacy = NO_LEGACY if legacy == NO_LEGACY else legacy
        """What commits look up in the upgrade window."""

    def orders_from_comments(self, events: Sequence[Event]) -> bool:
        """Whether committing ``events`` may decide comment orders: then their commit must not
        overtake an earlier one (a buyer's "first" is the first committed)."""
        return self.reads_comments and any(
            isinstance(event, Comment) and event.text for event in events
        )

    def _now(self) -> int | None:
        if self.settings.now_override is not None:
            return self.settings.now_override
        return int(self.clock()) if self.cluster else None

    def _generations(self, now: int) -> range:
        gen = now // keys.GENERATION_SECONDS
        return range(gen - self._lookback, gen + self._ahead + 1)

    def _wall(self) -> int:
        """Seconds since the epoch by this process's clock (the test override if set)."""
        if self.settings.now_override is not None:
            return self.settings.now_override
        return int(self.clock())

    async def _window(self) -> Legacy:
        """What commits look up as older versions wrote it: nothing once the upgrade window
        has ended (or on a Redis no older version used)."""
        if self._legacy_until is None:
            self._legacy_until = await self._open_window()
        if self._legacy is NO_LEGACY or self._wall() >= self._legacy_until:
            return NO_LEGACY
        return self._legacy

    async def _open_window(self) -> int:
        """Read the end of the upgrade window; the first start of this version on a Redis sets
        it: when every key an older version could have written has expired (the end of the
        generations a lookup reads now), or 0 if no older version used this Redis (no
        registry: a new version writes the window before its first commit)."""
        now = self._wall()
        end = 0
        if await self.redis.exists(keys.STREAMS):
            gen = now // keys.GENERATION_SECONDS
            end = (gen + self._ahead + self._lookback + 1) * keys.GENERATION_SECONDS
        await self.redis.set(keys.LEGACY_UNTIL, end, nx=True)
        return int(await self.redis.get(keys.LEGACY_UNTIL) or end)

    def _declared(
        self,
        stream: str,
        shards: set[int],
        orders: bool,
        legacy: Legacy,
        now: int,
        *,
        comments: bool = False,
    ) -> list[str]:
        """Every key the script may touch for a batch (cluster mode): the seen sets of
        ``shards``, with ``orders`` the order state (and, in the window, an older
        version's), with ``comments`` the buyers' comment-order state."""
        k = StreamKeys(stream)
        generations = self._generations(now)
        declared = k.script_keys()
        declared += [f"{k.seen_prefix}{g}:{shard}" for shard in shards for g in generations]
        if orders:
            declared += [f"{k.orders_prefix}{g}" for g in generations]
            if legacy.orders:
                declared += [f"{k.legacy_orders_prefix}{g}" for g in generations]
        if comments:
            declared += [f"{k.comment_orders_prefix}{g}" for g in generations]
        return declared

    async def commit(
        self,
        events: Sequence[Event],
        dead: Sequence[DeadLetter] = (),
        namespaces: Sequence[str] | None = None,
    ) -> list[Outcome]:
        """Dedup and count ``events``, file ``dead`` letters; each event's outcome.

        ``namespaces[i]`` is the identity namespace of ``events[i]`` (its source's): identities
        and order state of one namespace are apart from another's. Without it every event is in
        ``keys.DEFAULT_NAMESPACE``.

        One script call per stream, each atomic on its own; on a single Redis all in one
        pipeline round trip (on a cluster, one more to the registry when a stream is new to this
        process, or was admitted more than ``ADMISSION_SECONDS`` ago).
        """
        await self._ensure_registry()
        legacy = await self._window()
        read = await self._read_comments(events)
        by_stream: dict[str, list[int]] = defaultdict(list)
        for index, event in enumerate(events):
            by_stream[event.stream].append(index)
        if namespaces is None:
            namespaces = [keys.DEFAULT_NAMESPACE] * len(events)
        outcomes = [Outcome.STREAM_LIMIT] * len(events)
        now = self._now()
        head: list[str | int] = ["" if now is None else now, *self._tail]
        try:
            if self.cluster:
                assert now is not None
                for stream in await self._refused_streams(list(by_stream), now):
                    del by_stream[stream]
                batches = _batches(events, namespaces, by_stream)
                replies = await self._commit_cluster(batches, dead, head, now, legacy, read=read)
            else:
                batches = _batches(events, namespaces, by_stream)
                replies = await self._commit_single(batches, dead, head, legacy, read=read)
        except ResponseError as exc:
            if "WRONGTYPE" in str(exc):  # li:streams was recreated by an older version
                self._registry_ready = False
            raise
        for indexes, reply in zip(by_stream.values(), replies, strict=True):
            for index, code in zip(indexes, reply, strict=True):
                outcomes[index] = _OUTCOMES[code]
        return outcomes

    async def _read_comments(self, events: Sequence[Event]) -> ReadComment:
        """What each comment of ``events`` that may order orders, read in a worker thread (the
        parser takes a few hundred microseconds a comment: a batch must not hold up the event
        loop); each distinct text of a stream once."""
        if not self.orders_from_comments(events):
            return _no_comment_orders
        texts = {
            (event.stream, event.text)
            for event in events
            if isinstance(event, Comment) and event.text
            if event.author_role is AuthorRole.VIEWER
        }
        read = self.read_comment

        def read_all() -> dict[tuple[str, str], CommentReading | None]:
            return {key: read(*key) for key in texts}

        found = await asyncio.to_thread(read_all)
        return lambda stream, text: found.get((stream, text))

    async def _commit_single(
        self,
        batches: dict[str, _Batch],
        dead: Sequence[DeadLetter],
        head: list[str | int],
        legacy: Legacy,
        *,
        read: ReadComment,
    ) -> list[Any]:
        assert isinstance(self.redis, Redis)
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, (batch, spaces) in batches.items():
                records = _pack(_records(batch, spaces, legacy, weigh=self.weigh, read=read))
                timeline = _timeline_arg(batch, self.settings)
                await self._script(
                    keys=[*StreamKeys(stream).script_keys(), keys.STREAMS],
                    args=[*head, records, timeline, stream, *self._admission],
                    client=pipe,
                )
            for letter in dead:  # after the commits: they may admit the letters' streams
                await self._letter_single(pipe, letter)
            replies: list[Any] = await pipe.execute()
        return replies[: len(batches)]

    async def _commit_cluster(
        self,
        batches: dict[str, _Batch],
        dead: Sequence[DeadLetter],
        head: list[str | int],
        now: int,
        legacy: Legacy,
        *,
        read: ReadComment,
    ) -> list[Any]:
        if dead:
            async with self.redis.pipeline() as pipe:  # other slots than the streams' own
                for letter in dead:
                    self._letter_cluster(pipe, letter)
                await pipe.execute()
        calls = asyncio.Semaphore(CLUSTER_CALLS)

        async def commit_one(stream: str, batch: _Batch) -> Any:
            events, spaces = batch
            shards: set[int] = set()
            records = _pack(_records(events, spaces, legacy, shards, self.weigh, read=read))
            timeline = _timeline_arg(events, self.settings)
            orders = any(isinstance(event, Order) for event in events)
            comments = any(isinstance(event, Comment) and event.text for event in events)
            spans = {m // keys.TIMELINE_SPAN_MINUTES for m in _minutes(events)}
            declared = self._declared(stream, shards, orders, legacy, now, comments=comments)
            declared += [StreamKeys(stream).timeline(n) for n in sorted(spans)]
            async with calls:
                return await self._script(
                    keys=declared,
                    args=[*head, records, timeline],
                    client=self.redis,
                )

        return list(await asyncio.gather(*(commit_one(s, b) for s, b in batches.items())))

    async def _refused_streams(self, streams: list[str], now: int) -> list[str]:
        """Cluster: admit ``streams`` in the registry (those this process admitted less than
        ``ADMISSION_SECONDS`` ago pass without asking); the ones refused."""
        known = self._admitted
        ask = [s for s in streams if s not in known or now - known[s] >= ADMISSION_SECONDS]
        if not ask:
            return []
        admitted = await self._admit(
            keys=[keys.STREAMS], args=[now, *self._admission, *ask], client=self.redis
        )
        if len(self._admitted) > 2 * self.settings.max_streams:  # forget the retired ones
            idle_before = now - self.settings.retention_seconds
            self._admitted = {s: t for s, t in self._admitted.items() if t > idle_before}
        refused = []
        for stream, flag in zip(ask, admitted, strict=True):
            if int(flag):
                self._admitted[stream] = now
            else:
                self._admitted.pop(stream, None)
                refused.append(stream)
        return refused

    async def _ensure_registry(self) -> None:
        """Convert a version 1 registry (a plain set) once per process, or after WRONGTYPE."""
        if not self._registry_ready:
            now = self._now()
            await self._migrate(
                keys=[keys.STREAMS], args=["" if now is None else now], client=self.redis
            )
            self._registry_ready = True

    def _letter_fields(self, letter: DeadLetter) -> dict[str, str | bytes]:
        rejection = letter.rejection
        return {
            "source": letter.source,
            "reason": rejection.reason.value,
            "kind": rejection.kind,
            "detail": rejection.detail,  # both bounded when the rejection was made
            "raw": rejection.raw,
            "at": f"{time.time():.3f}",
        }

    async def _letter_single(self, pipe: Any, letter: DeadLetter) -> None:
        """To the stream's own key if the registry admits the stream (decided in Redis)."""
        fields = self._letter_fields(letter)
        stream = letter.rejection.stream
        if stream is None:
            pipe.xadd(
                keys.UNROUTED_DEAD, fields, maxlen=self.settings.dead_letter_max, approximate=True
            )
            return
        pairs = [item for field in fields.items() for item in field]
        await self._letter(
            keys=[keys.STREAMS, StreamKeys(stream).dead, keys.UNROUTED_DEAD],
            args=[stream, self.settings.dead_letter_max, *pairs],
            client=pipe,
        )

    def _letter_cluster(self, pipe: Any, letter: DeadLetter) -> None:
        """To the stream's own key if this process has had the stream admitted: the registry
        is in another slot, so this is as fresh as ``ADMISSION_SECONDS``, and a key is only
        ever made for a stream the registry admitted."""
        fields = self._letter_fields(letter)
        stream = letter.rejection.stream
        if stream is not None and stream in self._admitted:
            key = StreamKeys(stream).dead
        else:
            key = keys.UNROUTED_DEAD
            if stream is not None:
                fields["stream"] = stream
        pipe.xadd(key, fields, maxlen=self.settings.dead_letter_max, approximate=True)

    async def streams(self) -> list[str]:
        """The streams active within the retention (by this process's clock)."""
        await self._ensure_registry()
        now = self.settings.now_override
        if now is None:
            now = int(self.clock())
        idle_before = now - self.settings.retention_seconds
        members = await self.redis.zrangebyscore(keys.STREAMS, f"({idle_before}", "+inf")
        return sorted(_text(m) for m in members if isinstance(m, bytes | str))

    async def totals(
        self, streams: Sequence[str] | None = None, chunk: int = TOTALS_CHUNK
    ) -> list[StreamTotals]:
        """Every stream's totals, ``chunk`` streams per pipeline round trip."""
        return parse_totals(await self.raw_totals(streams, chunk))

    async def raw_totals(
        self, streams: Sequence[str] | None = None, chunk: int = TOTALS_CHUNK
    ) -> RawTotals:
        """What :meth:`totals` reads, unparsed: :func:`parse_totals` can run off the loop."""
        names = list(streams) if streams is not None else await self.streams()
        replies: list[Any] = []
        for start in range(0, len(names), chunk):
            replies += await self._replies(names[start : start + chunk])
        return RawTotals(names, replies)

    async def _replies(self, names: list[str]) -> list[Any]:
        replies: list[Any]
        if self.cluster:  # a cluster pipeline refuses PFCOUNT: one call per stream, bounded
            limit = asyncio.Semaphore(self.settings.read_concurrency)

            async def bounded(call: Awaitable[Any]) -> Any:
                async with limit:
                    return await call

            calls = []
            for stream in names:
                k = StreamKeys(stream)
                calls += [
                    self.redis.hgetall(k.totals),
                    self.redis.hgetall(k.viewers),
                    self.redis.pfcount(k.commenters),
                    self.redis.pfcount(k.buyers),
                ]
            replies = list(await asyncio.gather(*(bounded(call) for call in calls)))
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream in names:
                    k = StreamKeys(stream)
                    pipe.hgetall(k.totals)
                    pipe.hgetall(k.viewers)
                    pipe.pfcount(k.commenters)
                    pipe.pfcount(k.buyers)
                replies = await pipe.execute()
        return replies

    async def dead_letters(self, stream: str | None, count: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters of a stream (or the unrouted ones), newest first."""
        key = StreamKeys(stream).dead if stream else keys.UNROUTED_DEAD
        entries = await self.redis.xrevrange(key, count=count) or []
        return [{_text(k or ""): v for k, v in (fields or {}).items()} for _, fields in entries]


@dataclasses.dataclass(frozen=True, slots=True)
class RawTotals:
    """Streams and their four replies each (totals, viewers, two unique counts), as read."""

    streams: list[str]
    replies: list[Any]


def parse_totals(raw: RawTotals) -> list[StreamTotals]:
    result = []
    replies = raw.replies
    for n, stream in enumerate(raw.streams):
        counters, viewers, commenters, buyers = replies[4 * n : 4 * n + 4]
        result.append(
            StreamTotals(
                stream=stream,
                counters={_text(f): int(v) for f, v in counters.items()},
                viewers={_text(f): int(v) for f, v in viewers.items() if b"|" not in _bytes(f)},
                unique_commenters=int(commenters),
                unique_buyers=int(buyers),
            )
        )
    return result


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
