"""The Redis key layout: every key, hash tag and TTL the ingester uses is defined here.

Every key of one stream carries the hash tag ``{<stream>}``, so a stream lives in one Redis Cluster
slot and one script can update all of it atomically. Keys of a stream ``s``::

    li:{s}:totals          hash    exact counters, "<metric>|<label>|<label>" -> integer; no TTL
    li:{s}:seen:<gen>:<n>  set     dedup fingerprints, int64 members (Redis intset, 8 B each);
                                   expire once no lookback can reach their generation
    li:{s}:orders:<gen>    hash    order id -> "platform|country|grams" until cancelled, or "C" for
                                   a cancellation that came first; expire with the seen sets of
                                   their generation, so order state lives exactly as long as
                                   the dedup memory of the order
    li:{s}:skus            set     SKUs that have their own label (at most ``sku_limit``); no TTL
    li:{s}:viewers         hash    platform -> latest count, "platform|ts" -> its event time (ms)
    li:{s}:commenters      HLL     unique commenters
    li:{s}:buyers          HLL     unique buyers
    li:{s}:dead            stream  rejected inputs, capped with MAXLEN ~

and outside any stream: ``li:streams`` (set of stream names, for the collector) and ``li:dead``
(rejections whose stream is unknown).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Final

PREFIX: Final = "li"
STREAMS: Final = f"{PREFIX}:streams"
UNROUTED_DEAD: Final = f"{PREFIX}:dead"

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
        """Not a key: the script appends "<gen>"."""
        return f"{self.tag}:orders:"

    @property
    def skus(self) -> str:
        return f"{self.tag}:skus"

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

    def script_keys(self) -> list[str]:
        return [
            self.totals,
            self.orders_prefix,
            self.skus,
            self.viewers,
            self.commenters,
            self.buyers,
            self.seen_prefix,
        ]


def fingerprint(identity: str) -> tuple[int, int]:
    """(shard, member) of an event's dedup identity within its stream.

    80 bits of BLAKE2b: 12 pick the shard, 64 are the member. Two distinct ids of one stream
    collide with probability ~n²/2^77 (4e-12 for a million ids); a collision would count the
    second as a duplicate.
    """
    digest = hashlib.blake2b(identity.encode(TEXT_ENCODING), digest_size=10).digest()
    shard = int.from_bytes(digest[:2], "big") % DEDUP_SHARDS
    return shard, int.from_bytes(digest[2:], "big", signed=True)


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
COMMENTS: Final = "comments"
REGION_ORDERS: Final = "region"
OTHER_SKU: Final = "other"

TOTAL_LIMIT: Final = 9 * 10**18
"""Largest value a total may reach: below int64's 9.22e18, with room for the approximate
(double) arithmetic the script uses to check it."""

# One script per batch of one stream: dedup and totals in one atomic step. Idempotent: a retried
# batch finds every event already seen and changes nothing.
#
# Two phases, because Redis does not undo a script's writes when it fails midway: the first
# only reads, decides every event's outcome and checks that no total would pass TOTAL_LIMIT;
# the second writes, and none of its writes can fail.
#
# ARGV: now override (seconds, "" = Redis TIME), generation span, lookback generations,
# sku limit, total limit, then one record per event:
#   c shard member platform user                     comment
#   v shard member platform count ts_ms              viewers
#   o shard member order platform country region buyer currency minor grams n (sku grams)*n
#   x shard member order                             cancellation
# Returns one character per event: "1" counted, "0" duplicate, "2" refused (a total would
# overflow).
COMMIT_SCRIPT: Final = """
local totals, orders, skus, viewers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local commenters, buyers, seen = KEYS[5], KEYS[6], KEYS[7]
local now = tonumber(ARGV[1])
if not now then now = tonumber(redis.call('TIME')[1]) end
local span, lookback = tonumber(ARGV[2]), tonumber(ARGV[3])
local sku_limit, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local gen = math.floor(now / span)
local expire_at = (gen + lookback + 1) * span

-- Phase 1: reads only.
local records, outcome = {}, {}
local batch_ids, projected, sku_label, new_skus = {}, {}, {}, {}
local sku_count = nil

local function already_seen(shard, member)
  local id = shard .. ':' .. member
  if batch_ids[id] then return true end
  batch_ids[id] = true
  for g = gen - lookback, gen do
    if redis.call('SISMEMBER', seen .. g .. ':' .. shard, member) == 1 then return true end
  end
  return false
end

local function label_for(sku)
  local label = sku_label[sku]
  if label then return label end
  if redis.call('SISMEMBER', skus, sku) == 1 then
    label = sku
  else
    if not sku_count then sku_count = redis.call('SCARD', skus) end
    if sku_count < sku_limit then
      sku_count = sku_count + 1
      new_skus[#new_skus + 1] = sku
      label = sku
    else
      label = 'other'
    end
  end
  sku_label[sku] = label
  return label
end

-- Whether adding every increment keeps every total under the limit; if so, reserve them.
local function fits(increments)
  for field, inc in pairs(increments) do
    local current = projected[field]
    if current == nil then
      current = tonumber(redis.call('HGET', totals, field) or '0')
      projected[field] = current
    end
    if current + inc > limit then return false end
  end
  for field, inc in pairs(increments) do projected[field] = projected[field] + inc end
  return true
end

local i = 6
while i <= #ARGV do
  local tag = ARGV[i]
  local r = {tag = tag, shard = ARGV[i + 1], member = ARGV[i + 2], at = i}
  local state = already_seen(r.shard, r.member) and '0' or '1'
  if tag == 'c' then
    i = i + 5
  elseif tag == 'v' then
    i = i + 6
  elseif tag == 'x' then
    i = i + 4
  elseif tag == 'o' then
    local n = tonumber(ARGV[i + 11])
    if state == '1' then
      local pc = ARGV[i + 4] .. '|' .. ARGV[i + 5]
      local inc = {}
      inc['grams|' .. pc] = tonumber(ARGV[i + 10])
      inc['value|' .. ARGV[i + 4] .. '|' .. ARGV[i + 8]] = tonumber(ARGV[i + 9])
      r.labels = {}
      for j = 0, n - 1 do
        local field = 'sku_grams|' .. label_for(ARGV[i + 12 + 2 * j])
        r.labels[j] = field
        inc[field] = (inc[field] or 0) + tonumber(ARGV[i + 13 + 2 * j])
      end
      if not fits(inc) then state = '2' end
    end
    i = i + 12 + 2 * n
  else
    return redis.error_reply('unknown record tag ' .. tostring(tag))
  end
  outcome[#outcome + 1] = state
  if state == '1' then records[#records + 1] = r end
end

-- Phase 2: writes, for the events that count.
local expiring = {}
local function expire_once(key)
  if not expiring[key] then
    expiring[key] = true
    redis.call('EXPIREAT', key, expire_at)
  end
end

local function order_state(id)
  for g = gen, gen - lookback, -1 do
    local state = redis.call('HGET', orders .. g, id)
    if state then return state, orders .. g end
  end
  return nil, nil
end

local function count_cancel(platform, country, grams)
  redis.call('HINCRBY', totals, 'cancelled|' .. platform .. '|' .. country, 1)
  redis.call('HINCRBY', totals, 'cancelled_grams|' .. platform .. '|' .. country, grams)
end

for _, sku in ipairs(new_skus) do redis.call('SADD', skus, sku) end
local users, buyer_ids = {}, {}
for _, r in ipairs(records) do
  local key = seen .. gen .. ':' .. r.shard
  redis.call('SADD', key, r.member)
  expire_once(key)
  local a = r.at
  if r.tag == 'c' then
    redis.call('HINCRBY', totals, 'comments|' .. ARGV[a + 3], 1)
    if ARGV[a + 4] ~= '' then users[#users + 1] = ARGV[a + 4] end
  elseif r.tag == 'v' then
    local platform, count, ts = ARGV[a + 3], tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
    local last = redis.call('HMGET', viewers, platform, platform .. '|ts')
    local last_count, last_ts = tonumber(last[1]), tonumber(last[2])
    -- latest by event time; a tie keeps the larger count, so arrival order never matters
    if not last_ts or ts > last_ts or (ts == last_ts and count > last_count) then
      redis.call('HSET', viewers, platform, ARGV[a + 4], platform .. '|ts', ARGV[a + 5])
    end
  elseif r.tag == 'o' then
    local id, platform, country, grams = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 10]
    local pc = platform .. '|' .. country
    redis.call('HINCRBY', totals, 'orders|' .. pc, 1)
    redis.call('HINCRBY', totals, 'grams|' .. pc, grams)
    redis.call('HINCRBY', totals, 'value|' .. platform .. '|' .. ARGV[a + 8], ARGV[a + 9])
    redis.call('HINCRBY', totals, 'region|' .. country .. '|' .. ARGV[a + 6], 1)
    if ARGV[a + 7] ~= '' then buyer_ids[#buyer_ids + 1] = ARGV[a + 7] end
    for j = 0, tonumber(ARGV[a + 11]) - 1 do
      redis.call('HINCRBY', totals, r.labels[j], ARGV[a + 13 + 2 * j])
    end
    local state, where = order_state(id)
    if state == 'C' then
      count_cancel(platform, country, grams)
      redis.call('HDEL', where, id)
    else
      redis.call('HSET', orders .. gen, id, pc .. '|' .. grams)
      expire_once(orders .. gen)
    end
  elseif r.tag == 'x' then
    local id = ARGV[a + 3]
    local state, where = order_state(id)
    if state and state ~= 'C' then
      local platform, country, grams = string.match(state, '^([^|]*)|([^|]*)|(%d+)$')
      count_cancel(platform, country, grams)
      redis.call('HDEL', where, id)
    else
      redis.call('HSET', orders .. gen, id, 'C')
      expire_once(orders .. gen)
    end
  end
end

for j = 1, #users, 500 do
  redis.call('PFADD', commenters, unpack(users, j, math.min(j + 499, #users)))
end
for j = 1, #buyer_ids, 500 do
  redis.call('PFADD', buyers, unpack(buyer_ids, j, math.min(j + 499, #buyer_ids)))
end
return table.concat(outcome)
"""
