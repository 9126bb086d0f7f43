"""The Redis key layout: every key, hash tag and TTL the ingester uses is defined here.

Every key of one stream carries the hash tag ``{<stream>}``, so a stream lives in one Redis Cluster
slot and one script can update all of it atomically. Keys of a stream ``s``::

    li:{s}:totals          hash    exact counters, "<metric>|<label>|<label>" -> integer; no TTL
    li:{s}:seen:<gen>:<n>  set     dedup fingerprints, int64 members (Redis intset, 8 B each);
                                   expire once no lookback can reach their generation
    li:{s}:orderstate:<gen>  hash  "<namespace>\x1e<order id>" ->
                                   "platform|country|grams|currency|minor|sku:grams,..." (its
                                   weighed items by SKU label) until cancelled, or "C" for a
                                   cancellation that came first; expire with the seen sets of
                                   their generation, so order state lives exactly as long as
                                   the dedup memory of the order
    li:{s}:orders:<gen>    hash    order id -> "platform|country|grams", as versions before
                                   namespaces wrote it: only read (and settled, cancelled
                                   without a value) within the upgrade window, never written;
                                   expires as it always did
    li:{s}:commentorders:<gen>  hash  comment orders ("chốt đơn") per buyer: "<buyer digest>" ->
                                   "<sku>:<quantity>,..." (the SKUs of the buyer's counted and
                                   not withdrawn comment orders, at most one entry per catalog
                                   product); the digest is BLAKE2b of (platform, user id), never
                                   the id, the text or a phone number. Written to the current
                                   generation on every change (and deleted from an older one):
                                   expires with the seen sets of that generation, so a buyer's
                                   state lives the dedup retention after their last change
    li:{s}:skus            set     SKUs that have their own label (at most ``sku_limit``); no TTL
    li:{s}:viewers         hash    platform -> latest count, "platform|ts" -> its event time (ms)
    li:{s}:commenters      HLL     unique commenters
    li:{s}:buyers          HLL     unique buyers
    li:{s}:dead            stream  rejected inputs, capped with MAXLEN ~; only for a stream the
                                   registry has admitted
    li:{s}:timeline:<n>    hash    the stream's per-minute buckets of ten minutes (n = epoch
                                   minutes of the event time // TIMELINE_SPAN_MINUTES),
                                   "<minute within>|<field>" -> integer (TL_* below): about a
                                   hundred fields, so Redis keeps it a compact listpack (up to
                                   128 fields; a busier one becomes a hash table, still
                                   right); written by the commit script, by event time;
                                   expires the timeline retention (default 30 days) after the
                                   end of its ten minutes or its last write, whichever is
                                   later (longer than the dedup memory: the story of a
                                   sale outlives its ids; a replayed old sale keeps its story)
    li:{s}:session         hash    the stream's current (or last) session: n, open ("1"/"0"),
                                   start and last (seconds, the commit clock: "last" is when
                                   it last counted an event), first and last_minute (the event
                                   minutes it covered); the commit script opens one with the
                                   first counted event; no TTL, one small hash
    li:{s}:sessions        hash    ended sessions, "<n>" -> "start|end|how|first|last minute"
                                   (how: "ended", "idle", "replaced"); no TTL, a few a day

and outside any stream: ``li:streams``, ``li:dead`` and ``li:legacy-until``::

    li:streams             zset    the stream registry: stream -> last commit (epoch seconds);
                                   at most ``max_streams`` members active within the retention;
                                   idle longer leave it (and the scrape); no TTL
    li:dead                stream  rejections whose stream is unknown or not admitted (their
                                   "stream" field names it), capped with MAXLEN ~
    li:legacy-until        string  end of the upgrade window (epoch seconds), set once by the
                                   first start of a version with namespaces: until then commits
                                   also look up what older versions wrote (0: nothing to look
                                   up, a Redis no older version used); no TTL, one small key

Identity namespaces. A source's events are deduplicated and their orders kept under its
namespace (its name unless the config names a shared one): an event's dedup identity is
``"<namespace>\x1e<identity>"`` and its order state field ``"<namespace>\x1e<order id>"``, so one
source can neither claim another's ids nor find (or pre-cancel) its orders. A namespace never
contains a control character and an older identity ("c\x1f...", "shopify-event\x1f...") has
"\x1f" before any "\x1e", so no namespaced identity equals an older one. The empty namespace
(events committed without one: tests and tools, never a configured source) keeps the bare
identity, as older versions wrote it.

A retired stream's own keys stay: its seen sets and order state expire on their own, its totals,
SKU labels, viewers, unique counts and dead letters remain until deleted by hand; if the stream
comes back (and there is room) it is admitted again and its totals continue.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from typing import Final

PREFIX: Final = "li"
STREAMS: Final = f"{PREFIX}:streams"
"""Sorted set, stream -> last commit (seconds). Version 1 kept a plain set here: see
MIGRATE_SCRIPT."""
UNROUTED_DEAD: Final = f"{PREFIX}:dead"
LEGACY_UNTIL: Final = f"{PREFIX}:legacy-until"
"""End of the upgrade window (epoch seconds): see the module docstring."""

NAMESPACE_END: Final = "\x1e"
"""Ends the namespace in a namespaced identity or order field. Namespaces are source names
(``[a-z0-9][a-z0-9_.:-]*``): they never contain it."""
DEFAULT_NAMESPACE: Final = ""
"""Events committed without a namespace keep their bare identity (no configured source has it)."""

DEDUP_SHARDS: Final = 4096
"""Fingerprint sets per generation. Fixed: changing it would forget every remembered id. With
Redis' default ``set-max-intset-entries`` (512) a stream's generation holds ~2 million ids at
8 bytes each before its sets turn into hash tables (still correct, ~60 bytes per id)."""

GENERATION_SECONDS: Final = 24 * 3600
"""Span of one dedup generation. Fixed for the same reason; the retention decides how many past
generations a lookup reads (48 h: 3 sets), so it may change without forgetting anything."""

TEXT_ENCODING: Final = "utf-8"


@dataclasses.dataclass(frozen=True, slots=True)
class StreamKeys:
    """The keys of one stream, in the order the commit script takes them."""

    stream: str

    @property
    def tag(self) -> str:
        return f"{PREFIX}:{{{self.stream}}}"

    @property
    def totals(self) -> str:
        return f"{self.tag}:totals"

    @property
    def orders_prefix(self) -> str:
        """Not a key: the script appends "<gen>". Fields "<namespace>\x1e<order id>"."""
        return f"{self.tag}:orderstate:"

    @property
    def legacy_orders_prefix(self) -> str:
        """Not a key: order state as versions before namespaces wrote it, by order id alone."""
        return f"{self.tag}:orders:"

    @property
    def skus(self) -> str:
        return f"{self.tag}:skus"

    @property
    def comment_orders_prefix(self) -> str:
        """Not a key: the script appends "<gen>". Fields: buyer digests (comment orders)."""
        return f"{self.tag}:commentorders:"

    @property
    def viewers(self) -> str:
        return f"{self.tag}:viewers"

    @property
    def commenters(self) -> str:
        return f"{self.tag}:commenters"

    @property
    def buyers(self) -> str:
        return f"{self.tag}:buyers"

    @property
    def seen_prefix(self) -> str:
        """Not a key: the script appends "<gen>:<shard>". Declared so it carries the hash tag."""
        return f"{self.tag}:seen:"

    @property
    def dead(self) -> str:
        return f"{self.tag}:dead"

    @property
    def timeline_prefix(self) -> str:
        """Not a key: the script appends "<n>" (epoch minutes // TIMELINE_SPAN_MINUTES)."""
        return f"{self.tag}:timeline:"

    def timeline(self, n: int) -> str:
        return f"{self.timeline_prefix}{n}"

    @property
    def session(self) -> str:
        return f"{self.tag}:session"

    @property
    def sessions(self) -> str:
        return f"{self.tag}:sessions"

    def script_keys(self) -> list[str]:
        return [
            self.totals,
            self.orders_prefix,
            self.skus,
            self.viewers,
            self.commenters,
            self.buyers,
            self.seen_prefix,
            self.legacy_orders_prefix,
            self.timeline_prefix,
            self.session,
            self.sessions,
            self.comment_orders_prefix,
        ]


_SHARD_AND_MEMBER: Final = struct.Struct(">Hq").unpack
"""A digest's first two bytes (unsigned) and its last eight (signed), big-endian: one call for
both halves of a fingerprint."""


def fingerprint(identity: str) -> tuple[int, int]:
    """(shard, member) of an event's dedup identity within its stream.

    80 bits of BLAKE2b: 12 pick the shard, 64 are the member. Two distinct ids of one stream
    collide with probability ~n²/2^77 (4e-12 for a million ids); a collision would count the
    second as a duplicate.
    """
    head, member = _SHARD_AND_MEMBER(
        hashlib.blake2b(identity.encode(TEXT_ENCODING), digest_size=10).digest()
    )
    return head % DEDUP_SHARDS, member


def namespace_prefixes(namespace: str) -> tuple[str, str]:
    """What precedes an identity, and an order id, in ``namespace``."""
    field = f"{namespace}{NAMESPACE_END}"
    return (field if namespace else ""), field


def lookback_generations(retention_seconds: int) -> int:
    """How many past generations a lookup must read so an id is remembered for the retention."""
    return -(-retention_seconds // GENERATION_SECONDS)


# Field names inside li:{s}:totals. Label values never contain "|" (validated at the edge).
SEP: Final = "|"
ORDERS: Final = "orders"
GRAMS: Final = "grams"
VALUE: Final = "value"
CANCELLED: Final = "cancelled"
CANCELLED_GRAMS: Final = "cancelled_grams"
SKU_GRAMS: Final = "sku_grams"
CANCELLED_VALUE: Final = "cancelled_value"
CANCELLED_SKU_GRAMS: Final = "cancelled_sku_grams"
UNWEIGHED: Final = "unweighed"
COMMENTS: Final = "comments"
PAID_COMMENTS: Final = "paid_comments"
PAID_VALUE_MICROS: Final = "paid_value_micros"
REGION_ORDERS: Final = "region"
OTHER_SKU: Final = "other"
# Comment orders ("chốt đơn"), counted by the commit script's comment-order block.
COMMENT_ORDERS: Final = "comment_orders"
"""platform|sku: buyers' first order of a SKU (again after a withdrawal)."""
COMMENT_ORDER_GRAMS: Final = "comment_order_grams"
"""sku: grams of those orders (units × the catalog's unit grams; per-kg products their grams)."""
COMMENT_WITHDRAWALS: Final = "comment_withdrawals"
"""platform|sku: withdrawals of a counted comment order."""
COMMENT_WITH_PHONE: Final = "comment_with_phone"
"""platform: counted comment orders whose own comment carried a Vietnamese mobile number."""
COMMENT_CHANGES: Final = "comment_changes"
"""platform: a counted order written again with another quantity (the counters stay)."""
COMMENT_AMBIGUOUS: Final = "comment_ambiguous"
"""No labels (the field is the name alone): comments the team must look at."""
COMMENT_UNKNOWN_CODES: Final = "comment_unknown_codes"
"""platform: orders of a code shaped like the catalog's that names no product (no SKU label)."""

# The timeline (li:{s}:timeline:<n>): fields "<minute within>|<name>", "<minute>|<name>|<label>"
# for those with a label. Short names: a busy minute holds a dozen fields.
DAY_SECONDS: Final = 86400
MINUTES_PER_DAY: Final = 1440
TIMELINE_RETENTION_SECONDS: Final = 30 * 86400
"""Default: how long a timeline hash lives after its last minute."""
TIMELINE_SPAN_MINUTES: Final = 10
"""Minutes per timeline hash. Fixed: changing it would orphan what was written."""
TL_ORDERS: Final = "o"
TL_GRAMS: Final = "g"
TL_VALUE: Final = "v"  # |<currency>, minor units
TL_CANCELLED: Final = "x"
TL_CANCELLED_GRAMS: Final = "xg"
TL_CANCELLED_VALUE: Final = "xv"  # |<currency>
TL_COMMENTS: Final = "c"
TL_COMMENT_ORDERS: Final = "co"  # buyers' comment orders counted (issue 14)
TL_COMMENT_WITHDRAWALS: Final = "cw"  # withdrawals of counted comment orders
TL_VIEWERS: Final = "w"  # |<platform>: the largest count of the minute (by event time)

TOTAL_LIMIT: Final = 9 * 10**18
"""Largest value a total may reach, checked in exact integer arithmetic: below int64's 9.22e18,
so HINCRBY never overflows."""

# One script per batch of one stream: dedup and totals in one atomic step. Idempotent: a retried
# batch finds every event already seen and changes nothing.
#
# Two phases, because Redis does not undo a script's writes when it fails midway: the first
# does every read — dedup, order state, SKU labels, and whether a total would pass
# TOTAL_LIMIT — and decides each event; the second only writes, to keys the first has read or
# that are declared, so none of its writes can fail. (On a cluster, Redis 7 refuses a script's
# access to a key that is not local, e.g. mid-migration: that refusal can only come in phase 1.)
#
# KEYS: the stream's keys (StreamKeys.script_keys(), then, on a cluster, every seen set and order
# state key it may touch, the legacy ones in the upgrade window too), and on a single Redis last
# the registry li:streams: then the script also admits the stream, atomically with the commit
# (ARGV 9-11).
#
# ARGV: now (seconds; "" = Redis TIME), generation span, lookback generations, generations
# ahead (1 on a cluster, where the clock is the ingesters': a replica whose clock runs ahead may
# have written to the next generation), sku limit, total limit, then every event's record in one
# MessagePack array (one argument,
# not seven per event: packing arguments is the client's main cost), each an array:
#   ["c", shard, member, platform, user, orders]              comment; orders: [] if it
#                                                             orders nothing, else its comment
#                                                             orders (see below)
#   ["v", shard, member, platform, count, ts_ms]              viewers
#   ["o", shard, member, order, platform, country, region, buyer, currency, minor, grams,
#    [[sku, grams], ...]]                                     order created (an item's grams
#                                                             "" if unknown: counted unweighed)
#   ["x", shard, member, order]                               order cancelled
#   ["p", shard, member, platform, user, currency, micros]    paid comment (Super Chat): a
#                                                             comment, and its own count and
#                                                             amount in integer micros
# where shard and member are the fingerprint of the event's namespaced identity, and order its
# namespaced order state field ("<namespace>\x1e<order id>").
# A record may end with one more element, the event's aliases: [[shard, member], ...] (maybe
# empty), and within the upgrade window with another, what older versions wrote:
# [[[shard, member], ...], order id or ""]: the fingerprints of the event's identities without
# namespace, only looked up (never marked), and the order id whose state without namespace
# (li:{s}:orders:<gen>) is looked up if none is found in the namespace, and settled if found.
# An event is a duplicate if any of its identities was seen; an event that counts marks them
# all.
# Members, money and grams are decimal strings, passed to HINCRBY as they are: exact whatever
# their size (a Lua number is a double); the checks against the total limit add and compare them
# exactly, as two limbs of base 1e9.
# Viewer counts and times are plain integers, below 2^53.
# ARGV 8, the timeline and session: a MessagePack array [retention seconds, [minute, ...],
# session idle seconds, minutes per timeline hash], with each record's event time in epoch
# minutes, in the order of the records.
# KEYS[9] is the timeline's prefix, KEYS[10] and KEYS[11] the session keys, KEYS[12] the prefix
# of the buyers' comment-order state (li:{s}:commentorders:<gen>).
# A timeline hash expires the retention after its last minute or now, whichever is later.
# ARGV 9-11, with the registry only: the stream, max_streams, and the idle seconds after which a
# stream leaves the registry (the dedup retention). A stream active within that time is admitted;
# another one only while fewer than max_streams are, else the whole batch is refused.
# Comment orders (issue 14), a comment record's `orders`: [buyer, phone, intents], the buyer's
# digest (platform and user id, hashed), 1 if the comment carried a mobile number else 0, and
# its intents in the order written, each [kind, sku, quantity, grams]: "o" an order of `sku`
# (quantity: units, or grams of a per-kg product; grams: a decimal string), "w" a withdrawal
# (sku "" when it names none), "a" ambiguous, "u" a code no product has. Decided against the
# buyer's state in li:{s}:commentorders:<gen>, as this batch leaves it: an order counts if the
# buyer has no counted order of that SKU, else it is the same order (another quantity: a
# change); a withdrawal counts if the buyer has one (a "w" without SKU: if they have exactly
# one, else it is ambiguous), and the SKU may be ordered again.
# Returns one character per event: "1" counted, "0" duplicate, "2" refused (a total would
# overflow), "s" refused (the stream is not admitted: max_streams).
COMMIT_SCRIPT: Final = """
local totals, orders, skus, viewers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local commenters, buyers, seen, legacy_orders = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local comment_orders = KEYS[12]
local now = tonumber(ARGV[1])
if not now then now = tonumber(redis.call('TIME')[1]) end
local span, lookback, ahead = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local sku_limit, limit_text = tonumber(ARGV[5]), ARGV[6]
local gen = math.floor(now / span)
local expire_at = (gen + lookback + 1) * span

-- Phase 1: reads only.
local registry, stream, idle_before = KEYS[#KEYS], ARGV[9], nil
if stream then
  local max_streams = tonumber(ARGV[10])
  idle_before = now - tonumber(ARGV[11])
  local last = tonumber(redis.call('ZSCORE', registry, stream))
  if not (last and last > idle_before)
    and redis.call('ZCOUNT', registry, '(' .. idle_before, '+inf') >= max_streams then
    return string.rep('s', #cmsgpack.unpack(ARGV[7]))
  end
end
local records, outcome = {}, {}
local batch_ids, projected, sku_label, new_skus = {}, {}, {}, {}
local sku_count = nil

local arity = {c = 6, v = 6, o = 12, x = 4, p = 7}

-- The current generation first: a redelivery is most often of a recent event.
local function seen_one(shard, member)
  if batch_ids[shard .. ':' .. member] then return true end
  if redis.call('SISMEMBER', seen .. gen .. ':' .. shard, member) == 1 then return true end
  for g = gen - lookback, gen + ahead do
    if g ~= gen and redis.call('SISMEMBER', seen .. g .. ':' .. shard, member) == 1 then
      return true
    end
  end
  return false
end

local function already_seen(r)
  if seen_one(r[2], r[3]) then return true end
  if r.aliases then
    for _, a in ipairs(r.aliases) do
      if seen_one(a[1], a[2]) then return true end
    end
  end
  if r.legacy then  -- seen by an older version, before namespaces
    for _, a in ipairs(r.legacy[1]) do
      if seen_one(a[1], a[2]) then return true end
    end
  end
  return false
end

-- Only an event that counts marks its identities within the batch, as in Redis.
local function remember(r)
  batch_ids[r[2] .. ':' .. r[3]] = true
  if r.aliases then
    for _, a in ipairs(r.aliases) do batch_ids[a[1] .. ':' .. a[2]] = true end
  end
end

-- The label of a SKU for an order not yet accepted: a SKU that would take a free place is
-- only provisional, in `claims`, until the order is known to fit.
local function label_for(sku, claims)
  local label = sku_label[sku]
  if label then return label end
  if claims.skus[sku] then return sku end
  if redis.call('SISMEMBER', skus, sku) == 1 then
    sku_label[sku] = sku
    return sku
  end
  if not sku_count then sku_count = redis.call('SCARD', skus) end
  if sku_count + claims.n < sku_limit then
    claims.skus[sku] = true
    claims.n = claims.n + 1
    return sku
  end
  if claims.n == 0 then sku_label[sku] = 'other' end  -- else it hangs on this order's claims
  return 'other'
end

local function take(claims)
  for sku in pairs(claims.skus) do
    sku_label[sku] = sku
    new_skus[#new_skus + 1] = sku
  end
  if sku_count then sku_count = sku_count + claims.n end
end

-- Exact big integers as two limbs, {high, low} = high * 1e9 + low: every limb a double holds
-- exactly (a total is below 2^63, so high < 1e10). Lua numbers are doubles, 1,024 apart near
-- the limit: a total is never compared or added as one number.
local BASE = 1000000000
local function big(text)
  text = tostring(text)
  local sign = 1
  if string.sub(text, 1, 1) == '-' then
    sign, text = -1, string.sub(text, 2)
  end
  local high = tonumber(string.sub(text, 1, -10)) or 0
  local low = tonumber(string.sub(text, -9)) or 0
  return {sign * high, sign * low}
end
local function add(a, b)
  local low = a[2] + b[2]
  local carry = math.floor(low / BASE)
  return {a[1] + b[1] + carry, low - carry * BASE}
end
local function above(a, b)
  return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2])
end
local limit = big(limit_text)

-- Add the decimal string `amount` to `field` of a batch's sums: as a plain number in `numbers`
-- while it stays below 2^53 (where doubles are exact integers; an amount of at most 15 digits
-- is read exactly), else as limbs in `limbs`; returns the field's limbs (nil if none yet).
-- Both parts are written, each with its own HINCRBY.
local EXACT = 9007199254740992
local function sum_into(numbers, limbs, field, amount)
  local n = tonumber(amount)
  if n and n < 1e15 then
    local sum = (numbers[field] or 0) + n
    if sum < EXACT then
      numbers[field] = sum
      return limbs[field]
    end
  end
  return add(limbs[field] or {0, 0}, big(amount))
end

-- Whether adding every increment keeps every total under the limit; if so, reserve them.
local function fits(increments)
  for field, inc in pairs(increments) do
    local current = projected[field]
    if current == nil then
      current = add(big(redis.call('HGET', totals, field) or '0'), {0, 0})
      projected[field] = current
    end
    if above(add(current, inc), limit) then return false end
  end
  for field, inc in pairs(increments) do projected[field] = add(projected[field], inc) end
  return true
end

-- An order's state: "platform|country|grams|currency|minor|sku:grams,...", or as written
-- before the order value was kept, "platform|country|grams" (cancelled without a value).
local function parse_state(text)
  local p, c, g, currency, minor, items =
    string.match(text, '^([^|]*)|([^|]*)|(%d+)|([^|]*)|(%d+)|(.*)$')
  if p then
    return {platform = p, country = c, grams = g, currency = currency, minor = minor, items = items}
  end
  p, c, g = string.match(text, '^([^|]*)|([^|]*)|(%d+)$')
  return {platform = p, country = c, grams = g}
end

-- Order state as this batch leaves it, read from Redis once: {state, where, field}, by
-- "n" .. namespaced field, or "l" .. order id for the state an older version wrote.
local order_view = {}
local function lookup(prefix, field, tag)
  local key = tag .. field
  local view = order_view[key]
  if view then return view end
  view = {}
  for g = gen + ahead, gen - lookback, -1 do
    local state = redis.call('HGET', prefix .. g, field)
    if state then
      view = {state = state, where = prefix .. g, field = field, key = key}
      break
    end
  end
  order_view[key] = view
  return view
end
local function order_state(r)
  local view = lookup(orders, r[4], 'n')
  if view.state or not r.legacy or r.legacy[2] == '' then return view end
  return lookup(legacy_orders, r.legacy[2], 'l')
end
-- Settle an order's state (phase 2 deletes it from where it was found).
local function settle(r, view)
  r.settle, r.field = view.where, view.field
  order_view[view.key] = {}
end

-- Comment orders ("chốt đơn"), phase 1 ---------------------------------------------------------
-- A buyer's state as this batch leaves it, read once: {items = {sku -> quantity}, n, where}.
local buyer_view = {}
local function buyer_state(digest)
  local view = buyer_view[digest]
  if view then return view end
  view = {items = {}, n = 0}
  for g = gen + ahead, gen - lookback, -1 do
    local text = redis.call('HGET', comment_orders .. g, digest)
    if text then
      view.where = comment_orders .. g
      for sku, quantity in string.gmatch(text, '([^:,]+):(%d+)') do
        view.items[sku] = quantity
        view.n = view.n + 1
      end
      break
    end
  end
  buyer_view[digest] = view
  return view
end

-- Decide a new comment's orders; false if a total would pass the limit (nothing is decided).
local function decide_comment(r)
  local platform, buyer, phone = r[4], r[6][1], r[6][2]
  local view = buyer_state(buyer)
  local items, n, changed = {}, view.n, false
  for sku, quantity in pairs(view.items) do items[sku] = quantity end
  local inc, writes, claims = {}, {}, {skus = {}, n = 0}
  local function count(field, amount)
    inc[field] = add(inc[field] or {0, 0}, big(amount))
    writes[#writes + 1] = {field, amount}
  end
  for _, intent in ipairs(r[6][3]) do
    local kind, sku, quantity = intent[1], intent[2], tostring(intent[3])
    if kind == 'w' and sku == '' then
      if n == 1 then sku = next(items) else kind = 'a' end  -- "hủy đơn": which order?
    end
    if kind == 'o' then
      if not items[sku] then
        local label = label_for(sku, claims)
        count('comment_orders|' .. platform .. '|' .. label, 1)
        count('comment_order_grams|' .. label, intent[4])
        if phone == 1 then count('comment_with_phone|' .. platform, 1) end
        items[sku], n, changed = quantity, n + 1, true
      elseif items[sku] ~= quantity then
        count('comment_changes|' .. platform, 1)
        items[sku], changed = quantity, true
      end
    elseif kind == 'w' then
      if items[sku] then  -- else nothing to withdraw: not counted
        count('comment_withdrawals|' .. platform .. '|' .. label_for(sku, claims), 1)
        items[sku], n, changed = nil, n - 1, true
      end
    elseif kind == 'a' then
      count('comment_ambiguous', 1)
    elseif kind == 'u' then
      count('comment_unknown_codes|' .. platform, 1)
    end
  end
  if not fits(inc) then return false end
  take(claims)
  r.comment_writes = writes
  if changed then view.items, view.n, view.dirty = items, n, true end
  return true
end
-- (end of comment orders, phase 1) -------------------------------------------------------------

-- Timeline (1 of 3): each record's minute (see "Timeline" below).
local batch = cmsgpack.unpack(ARGV[7])
local timeline_arg = cmsgpack.unpack(ARGV[8])
for i, r in ipairs(batch) do r.minute = timeline_arg[2][i] end

for _, r in ipairs(batch) do
  local tag = r[1]
  if not arity[tag] then return redis.error_reply('unknown record tag ' .. tostring(tag)) end
  r.aliases, r.legacy = r[arity[tag] + 1], r[arity[tag] + 2]
  local state = already_seen(r) and '0' or '1'
  if tag == 'o' and state == '1' then
    local pc = r[5] .. '|' .. r[6]
    local inc = {}
    inc['grams|' .. pc] = big(r[11])
    inc['value|' .. r[5] .. '|' .. r[9]] = big(r[10])
    r.labels = {}
    local claims = {skus = {}, n = 0}
    local weighed = {}
    for j, item in ipairs(r[12]) do
      local label = label_for(item[1], claims)
      r.labels[j] = label
      if item[2] ~= '' then  -- '' is an unknown weight: counted as unweighed, not as 0 g
        local field = 'sku_grams|' .. label
        inc[field] = add(inc[field] or {0, 0}, big(item[2]))
        weighed[#weighed + 1] = label .. ':' .. item[2]
      end
    end
    if not fits(inc) then
      state = '2'
    else
      take(claims)
      r.state = table.concat({pc, r[11], r[9], r[10], table.concat(weighed, ',')}, '|')
      local view = order_state(r)
      if view.state == 'C' then  -- its cancellation came first: count both now
        settle(r, view)
      else
        order_view['n' .. r[4]] = {state = r.state, where = orders .. gen, field = r[4],
          key = 'n' .. r[4]}
      end
    end
  elseif tag == 'c' and state == '1' and r[6][1] then
    if not decide_comment(r) then state = '2' end
  elseif tag == 'p' and state == '1' then  -- a paid comment: its amount must fit
    local inc = {}
    inc['paid_value_micros|' .. r[4] .. '|' .. r[6]] = big(r[7])
    if not fits(inc) then state = '2' end
  elseif tag == 'x' and state == '1' then
    local view = order_state(r)
    if view.state and view.state ~= 'C' then
      r.cancel = parse_state(view.state)
      settle(r, view)
    else  -- before its order: remember it until the order arrives
      order_view['n' .. r[4]] = {state = 'C', where = orders .. gen, field = r[4],
        key = 'n' .. r[4]}
    end
  end
  outcome[#outcome + 1] = state
  if state == '1' then
    remember(r)
    records[#records + 1] = r
  end
end

-- Phase 2: writes, for the events that count.
if stream then  -- admit or touch the stream; the idle ones leave
  redis.call('ZREMRANGEBYSCORE', registry, '-inf', idle_before)
  redis.call('ZADD', registry, 'GT', now, stream)
end
local expiring = {}
local function expire_once(key)
  if not expiring[key] then
    expiring[key] = true
    redis.call('EXPIREAT', key, expire_at)
  end
end

-- Timeline (2 of 3): per-minute buckets by event time, in li:{s}:timeline:<n> (n: ten minutes),
-- fields "<minute within>|<name>[|<label>]" (keys.TL_*). Summed here, written once per field at
-- the end; each bucket is part of a total that fits the limit, so no HINCRBY can fail.
local timeline_prefix, timeline_keep = KEYS[9], tonumber(timeline_arg[1])
local timeline_span = tonumber(timeline_arg[4])
local timeline_sums, timeline_counts, timeline_peaks = {}, {}, {}
local timeline_order, timeline_minutes = {}, {}
local function timeline_field(minute, name)
  local at = timeline_minutes[minute]  -- {key, "<minute within>|"}, once per minute
  if not at then
    local n = math.floor(minute / timeline_span)
    local key = timeline_prefix .. n
    if not timeline_sums[key] then
      timeline_sums[key], timeline_counts[key], timeline_peaks[key] = {}, {}, {}
      timeline_order[#timeline_order + 1] =
        {key, math.max((n + 1) * timeline_span * 60, now) + timeline_keep}
    end
    at = {key, (minute - n * timeline_span) .. '|'}
    timeline_minutes[minute] = at
  end
  return at[1], at[2] .. name
end
-- Grams and money (decimal strings, summed exactly by sum_into), and counts (plain numbers).
local function timeline_add(minute, name, amount)
  local key, field = timeline_field(minute, name)
  local sums = timeline_sums[key]
  sums[field] = sum_into(timeline_counts[key], sums, field, amount)
end
local function timeline_count(minute, name)
  local key, field = timeline_field(minute, name)
  local counts = timeline_counts[key]
  counts[field] = (counts[field] or 0) + 1
end
local function timeline_peak(minute, name, count)
  local key, field = timeline_field(minute, name)
  local peaks = timeline_peaks[key]
  if not peaks[field] or count > peaks[field] then peaks[field] = count end
end
local function timeline_cancel(minute, o)
  timeline_count(minute, 'x')
  timeline_add(minute, 'xg', o.grams)
  if o.currency then timeline_add(minute, 'xv|' .. o.currency, o.minor) end
end
local function timeline_write()
  for _, entry in ipairs(timeline_order) do
    local key = entry[1]
    for field, sum in pairs(timeline_sums[key]) do
      local text = sum[1] == 0 and string.format('%d', sum[2])
        or string.format('%d%09d', sum[1], sum[2])
      redis.call('HINCRBY', key, field, text)
    end
    for field, count in pairs(timeline_counts[key]) do
      redis.call('HINCRBY', key, field, string.format('%d', count))
    end
    for field, count in pairs(timeline_peaks[key]) do
      local last = tonumber(redis.call('HGET', key, field))
      if not last or count > last then redis.call('HSET', key, field, count) end
    end
    redis.call('EXPIREAT', key, entry[2])
  end
end

-- Totals: summed per field over the batch here (counts as plain numbers, grams and money by
-- sum_into), written with one HINCRBY per field at the end; every sum is part of a total that
-- fits the limit (phase 1), so none can fail.
local total_counts, total_sums = {}, {}
local function total_inc(field)
  total_counts[field] = (total_counts[field] or 0) + 1
end
local function total_add(field, amount)
  total_sums[field] = sum_into(total_counts, total_sums, field, amount)
end
local function totals_write()
  for field, count in pairs(total_counts) do
    redis.call('HINCRBY', totals, field, string.format('%d', count))
  end
  for field, sum in pairs(total_sums) do
    local text = sum[1] == 0 and string.format('%d', sum[2])
      or string.format('%d%09d', sum[1], sum[2])
    redis.call('HINCRBY', totals, field, text)
  end
end

-- Each cancelled total is at most its created total (it counts part of what that counted), so
-- none can pass the limit.
local function count_cancel(o)
  local pc = o.platform .. '|' .. o.country
  total_inc('cancelled|' .. pc)
  total_add('cancelled_grams|' .. pc, o.grams)
  if o.currency then
    total_add('cancelled_value|' .. o.platform .. '|' .. o.currency, o.minor)
    for label, grams in string.gmatch(o.items, '([^:,]+):(%d+)') do
      total_add('cancelled_sku_grams|' .. label, grams)
    end
  end
end

-- Viewers: the latest count by event time; a tie keeps the larger count, so arrival order never
-- matters. The batch's latest per platform, then compared with the stored one.
local viewer_best, viewer_platforms = {}, {}
local function later(count, ts, than_count, than_ts)
  return not than_ts or ts > than_ts or (ts == than_ts and count > than_count)
end

for _, sku in ipairs(new_skus) do redis.call('SADD', skus, sku) end
local users, buyer_ids = {}, {}
local function mark(shard, member)
  local key = seen .. gen .. ':' .. shard
  redis.call('SADD', key, member)
  expire_once(key)
end

for _, r in ipairs(records) do
  mark(r[2], r[3])
  if r.aliases then
    for _, a in ipairs(r.aliases) do mark(a[1], a[2]) end
  end
  local tag = r[1]
  -- Timeline (3 of 3): this event's part of its minute. A cancellation that came before its
  -- order is counted with the order, in the order's minute.
  if tag == 'c' or tag == 'p' then  -- a paid comment is a comment of its minute too
    timeline_count(r.minute, 'c')
    if r.comment_writes then  -- the comment orders and withdrawals it counted
      for _, w in ipairs(r.comment_writes) do
        local family = string.match(w[1], '^([^|]*)')
        if family == 'comment_orders' then timeline_count(r.minute, 'co')
        elseif family == 'comment_withdrawals' then timeline_count(r.minute, 'cw') end
      end
    end
  elseif tag == 'v' then
    timeline_peak(r.minute, 'w|' .. r[4], r[5])
  elseif tag == 'o' then
    timeline_count(r.minute, 'o')
    timeline_add(r.minute, 'g', r[11])
    timeline_add(r.minute, 'v|' .. r[9], r[10])
    if r.settle then timeline_cancel(r.minute, parse_state(r.state)) end
  elseif tag == 'x' and r.settle then
    timeline_cancel(r.minute, r.cancel)
  end
  if tag == 'c' then
    total_inc('comments|' .. r[4])
    if r[5] ~= '' then users[#users + 1] = r[5] end
    if r.comment_writes then  -- comment orders
      for _, w in ipairs(r.comment_writes) do total_add(w[1], w[2]) end
    end
  elseif tag == 'p' then  -- a paid comment is a comment too
    local paid = r[4] .. '|' .. r[6]
    total_inc('comments|' .. r[4])
    total_inc('paid_comments|' .. paid)
    total_add('paid_value_micros|' .. paid, r[7])
    if r[5] ~= '' then users[#users + 1] = r[5] end
  elseif tag == 'v' then
    local platform, count, ts = r[4], r[5], r[6]
    local best = viewer_best[platform]
    if not best then
      viewer_platforms[#viewer_platforms + 1] = platform
      viewer_best[platform] = {count, ts}
    elseif later(count, ts, best[1], best[2]) then
      viewer_best[platform] = {count, ts}
    end
  elseif tag == 'o' then
    local id, platform, country, grams = r[4], r[5], r[6], r[11]
    local pc = platform .. '|' .. country
    total_inc('orders|' .. pc)
    total_add('grams|' .. pc, grams)
    total_add('value|' .. platform .. '|' .. r[9], r[10])
    total_inc('region|' .. country .. '|' .. r[7])
    if r[8] ~= '' then buyer_ids[#buyer_ids + 1] = r[8] end
    for j, item in ipairs(r[12]) do
      if item[2] == '' then
        total_inc('unweighed|' .. platform .. '|' .. r.labels[j])
      else
        total_add('sku_grams|' .. r.labels[j], item[2])
      end
    end
    if r.settle then
      count_cancel(parse_state(r.state))
      redis.call('HDEL', r.settle, r.field)
    else
      redis.call('HSET', orders .. gen, id, r.state)
      expire_once(orders .. gen)
    end
  elseif tag == 'x' then
    if r.settle then
      count_cancel(r.cancel)
      redis.call('HDEL', r.settle, r.field)
    else
      redis.call('HSET', orders .. gen, r[4], 'C')
      expire_once(orders .. gen)
    end
  end
end

for _, platform in ipairs(viewer_platforms) do
  local count, ts = viewer_best[platform][1], viewer_best[platform][2]
  local last = redis.call('HMGET', viewers, platform, platform .. '|ts')
  if later(count, ts, tonumber(last[1]), tonumber(last[2])) then
    redis.call('HSET', viewers, platform, count, platform .. '|ts', ts)
  end
end

-- Comment orders, phase 2: each changed buyer's state, in the current generation.
for digest, view in pairs(buyer_view) do
  if view.dirty then
    local key = comment_orders .. gen
    if view.where and view.where ~= key then redis.call('HDEL', view.where, digest) end
    local parts = {}
    for sku, quantity in pairs(view.items) do parts[#parts + 1] = sku .. ':' .. quantity end
    if #parts > 0 then
      table.sort(parts)
      redis.call('HSET', key, digest, table.concat(parts, ','))
      expire_once(key)
    elseif view.where == key then
      redis.call('HDEL', key, digest)
    end
  end
end
-- (end of comment orders, phase 2)

totals_write()
timeline_write()

-- Sessions (issue 15): a batch that counts anything opens a session if none is open, or if the
-- open one has been idle longer than the idle time (which then ends "idle" at its last event).
-- SESSION_SCRIPT below shares the rule.
local function session_touch(session, ended)
  local s = redis.call('HMGET', session, 'n', 'open', 'start', 'last', 'first', 'last_minute')
  local n, open, last = tonumber(s[1]) or 0, s[2] == '1', tonumber(s[4])
  local idle = tonumber(timeline_arg[3])
  if open and last and now - last > idle then
    redis.call('HSET', ended, n, table.concat({s[3], s[4], 'idle', s[5] or '', s[6] or ''}, '|'))
    open = false
  end
  local low, high = nil, nil
  for _, r in ipairs(records) do
    if not low or r.minute < low then low = r.minute end
    if not high or r.minute > high then high = r.minute end
  end
  if not open then
    redis.call('HSET', session, 'n', n + 1, 'open', 1, 'start', now, 'last', now,
      'first', low, 'last_minute', high)
    return
  end
  local first, last_minute = tonumber(s[5]), tonumber(s[6])
  redis.call('HSET', session, 'last', math.max(now, last or now),
    'first', (first and first < low) and first or low,
    'last_minute', (last_minute and last_minute > high) and last_minute or high)
end
if #records > 0 then session_touch(KEYS[10], KEYS[11]) end

for j = 1, #users, 500 do
  redis.call('PFADD', commenters, unpack(users, j, math.min(j + 499, #users)))
end
for j = 1, #buyer_ids, 500 do
  redis.call('PFADD', buyers, unpack(buyer_ids, j, math.min(j + 499, #buyer_ids)))
end
return table.concat(outcome)
"""

# Explicit session commands, on li:{s}:session and li:{s}:sessions (KEYS 1, 2). ARGV: "start"
# or "end", now (seconds; "" = Redis TIME), idle seconds. "start" ends the open session
# ("replaced"; "idle" if it was) and opens the next, empty until an event counts; "end" ends the
# open one ("ended", or "idle" at its last event if it had been idle longer). Returns the
# number of the session opened or ended, 0 if "end" found none open.
SESSION_SCRIPT: Final = """
local session, ended = KEYS[1], KEYS[2]
local action, now, idle = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if not now then now = tonumber(redis.call('TIME')[1]) end
local s = redis.call('HMGET', session, 'n', 'open', 'start', 'last', 'first', 'last_minute')
local n, open, last = tonumber(s[1]) or 0, s[2] == '1', tonumber(s[4]) or now
if open then
  local how, at = (action == 'start') and 'replaced' or 'ended', now
  if now - last > idle then how, at = 'idle', last end
  redis.call('HSET', ended, n, table.concat({s[3], at, how, s[5] or '', s[6] or ''}, '|'))
  redis.call('HSET', session, 'open', 0)
end
if action == 'start' then
  redis.call('HDEL', session, 'first', 'last_minute')
  redis.call('HSET', session, 'n', n + 1, 'open', 1, 'start', now, 'last', now)
  return n + 1
end
return open and n or 0
"""

# The registry on a Redis Cluster, where li:streams lives in a slot of its own: admit (or touch)
# the streams of a batch before their commit scripts, in one atomic step for every replica.
# Same rule as the commit script's. ARGV: now, max_streams, idle seconds, then the streams.
# Returns 1 (admitted) or 0 (refused) per stream.
ADMIT_SCRIPT: Final = """
local registry = KEYS[1]
local now, max_streams = tonumber(ARGV[1]), tonumber(ARGV[2])
local idle_before = now - tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', registry, '-inf', idle_before)
local active = redis.call('ZCARD', registry)
local admitted = {}
for i = 4, #ARGV do
  local stream = ARGV[i]
  if redis.call('ZSCORE', registry, stream) then
    redis.call('ZADD', registry, 'GT', now, stream)
    admitted[#admitted + 1] = 1
  elseif active < max_streams then
    redis.call('ZADD', registry, now, stream)
    active = active + 1
    admitted[#admitted + 1] = 1
  else
    admitted[#admitted + 1] = 0
  end
end
return admitted
"""

# A dead letter on a single Redis: to the stream's own key only if the registry has admitted the
# stream, else to li:dead with the stream named. KEYS: registry, li:{s}:dead, li:dead.
# ARGV: stream, MAXLEN, then the letter's field/value pairs.
LETTER_SCRIPT: Final = """
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
local key = KEYS[2]
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  key = KEYS[3]
  fields[#fields + 1] = 'stream'
  fields[#fields + 1] = ARGV[1]
end
return redis.call('XADD', key, 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
"""

# Converts li:streams from version 1's plain set to the registry's sorted set, every stream
# active as of now, in one atomic step (replicas may run it at once). ARGV: now ("" = TIME).
MIGRATE_SCRIPT: Final = """
local registry = KEYS[1]
if redis.call('TYPE', registry).ok ~= 'set' then return 0 end
local now = tonumber(ARGV[1])
if not now then now = tonumber(redis.call('TIME')[1]) end
local members = redis.call('SMEMBERS', registry)
redis.call('DEL', registry)
for i = 1, #members, 500 do
  local args = {}
  for j = i, math.min(i + 499, #members) do
    args[#args + 1] = now
    args[#args + 1] = members[j]
  end
  redis.call('ZADD', registry, unpack(args))
end
return #members
"""
