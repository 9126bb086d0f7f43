"""The Redis key layout: every key, hash tag and TTL the ingester uses is defined here.

Every key of one stream carries the hash tag ``{<stream>}``, so a stream lives in one Redis Cluster
slot and one script can update all of it atomically. Keys of a stream ``s``::

    li:{s}:totals          hash    exact counters, "<metric>|<label>|<label>" -> integer; no TTL
    li:{s}:seen:<gen>:<n>  set     dedup fingerprints, int64 members (Redis intset, 8 B each);
                                   expire once no lookback can reach their generation
    li:{s}:orders          hash    order id -> "platform|country|grams" until cancelled, or "C" for
                                   a cancellation that came first; TTL refreshed to the retention
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

DEDUP_SHARDS: Final = 1024
"""Fingerprint sets per generation. Fixed: changing it would forget every remembered id. With
Redis' default ``set-max-intset-entries`` (512) a generation holds ~500k ids per stream at 8 bytes
each before sets convert to hash tables (still correct, ~60 bytes per id)."""

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
    def orders(self) -> str:
        return f"{self.tag}:orders"

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
            self.orders,
            self.skus,
            self.viewers,
            self.commenters,
            self.buyers,
            self.seen_prefix,
        ]


def fingerprint(identity: str) -> tuple[int, int]:
    """(shard, member) of an event's dedup identity within its stream.

    80 bits of BLAKE2b: 10 pick the shard, 64 are the member. Two distinct ids of one stream
    collide with probability ~n²/2^75 (1e-11 for a million ids); a collision would count the
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

# One script per batch of one stream: dedup and totals in one atomic step. Idempotent: a retried
# batch finds every event already seen and changes nothing.
#
# ARGV: now override (seconds, "" = Redis TIME), generation span, lookback generations,
# sku limit, order-state TTL, then one record per event:
#   c shard member platform user                     comment
#   v shard member platform count ts_ms              viewers
#   o shard member order platform country region buyer currency minor grams n (sku grams)*n
#   x shard member order                             cancellation
# Returns one character per event: "1" counted, "0" duplicate.
COMMIT_SCRIPT: Final = """
local totals, orders, skus, viewers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local commenters, buyers, seen = KEYS[5], KEYS[6], KEYS[7]
local now = tonumber(ARGV[1])
if not now then now = tonumber(redis.call('TIME')[1]) end
local span, lookback = tonumber(ARGV[2]), tonumber(ARGV[3])
local sku_limit, order_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local gen = math.floor(now / span)
local touched, sku_label = {}, {}
local users, buyer_ids = {}, {}
local outcome = {}

local function fresh(shard, member)
  for g = gen - lookback, gen - 1 do
    if redis.call('SISMEMBER', seen .. g .. ':' .. shard, member) == 1 then return false end
  end
  local key = seen .. gen .. ':' .. shard
  if redis.call('SADD', key, member) == 0 then return false end
  if not touched[key] then
    touched[key] = true
    redis.call('EXPIREAT', key, (gen + lookback + 1) * span)
  end
  return true
end

local function label_for(sku)
  local label = sku_label[sku]
  if label then return label end
  if redis.call('SISMEMBER', skus, sku) == 1 then
    label = sku
  elseif redis.call('SCARD', skus) < sku_limit then
    redis.call('SADD', skus, sku)
    label = sku
  else
    label = 'other'
  end
  sku_label[sku] = label
  return label
end

local function count_cancel(platform, country, grams)
  redis.call('HINCRBY', totals, 'cancelled|' .. platform .. '|' .. country, 1)
  redis.call('HINCRBY', totals, 'cancelled_grams|' .. platform .. '|' .. country, grams)
end

local i = 6
while i <= #ARGV do
  local tag = ARGV[i]
  local new = fresh(ARGV[i + 1], ARGV[i + 2])
  outcome[#outcome + 1] = new and '1' or '0'
  if tag == 'c' then
    if new then
      redis.call('HINCRBY', totals, 'comments|' .. ARGV[i + 3], 1)
      if ARGV[i + 4] ~= '' then users[#users + 1] = ARGV[i + 4] end
    end
    i = i + 5
  elseif tag == 'v' then
    if new then
      local platform, count, ts = ARGV[i + 3], tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
      local last = redis.call('HMGET', viewers, platform, platform .. '|ts')
      local last_count, last_ts = tonumber(last[1]), tonumber(last[2])
      -- latest by event time; a tie keeps the larger count, so arrival order never matters
      if not last_ts or ts > last_ts or (ts == last_ts and count > last_count) then
        redis.call('HSET', viewers, platform, ARGV[i + 4], platform .. '|ts', ARGV[i + 5])
      end
    end
    i = i + 6
  elseif tag == 'o' then
    local n = tonumber(ARGV[i + 11])
    if new then
      local id, platform, country = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
      local grams = ARGV[i + 10]
      local pc = platform .. '|' .. country
      redis.call('HINCRBY', totals, 'orders|' .. pc, 1)
      redis.call('HINCRBY', totals, 'grams|' .. pc, grams)
      redis.call('HINCRBY', totals, 'value|' .. platform .. '|' .. ARGV[i + 8], ARGV[i + 9])
      redis.call('HINCRBY', totals, 'region|' .. country .. '|' .. ARGV[i + 6], 1)
      if ARGV[i + 7] ~= '' then buyer_ids[#buyer_ids + 1] = ARGV[i + 7] end
      for j = 0, n - 1 do
        local sku = label_for(ARGV[i + 12 + 2 * j])
        redis.call('HINCRBY', totals, 'sku_grams|' .. sku, ARGV[i + 13 + 2 * j])
      end
      if redis.call('HGET', orders, id) == 'C' then
        count_cancel(platform, country, grams)
        redis.call('HDEL', orders, id)
      else
        redis.call('HSET', orders, id, pc .. '|' .. grams)
      end
    end
    i = i + 12 + 2 * n
  elseif tag == 'x' then
    if new then
      local id = ARGV[i + 3]
      local state = redis.call('HGET', orders, id)
      if state and state ~= 'C' then
        local platform, country, grams = string.match(state, '^([^|]*)|([^|]*)|(%d+)$')
        count_cancel(platform, country, grams)
        redis.call('HDEL', orders, id)
      else
        redis.call('HSET', orders, id, 'C')
      end
    end
    i = i + 4
  else
    return redis.error_reply('unknown record tag ' .. tostring(tag))
  end
end

for j = 1, #users, 500 do
  redis.call('PFADD', commenters, unpack(users, j, math.min(j + 499, #users)))
end
for j = 1, #buyer_ids, 500 do
  redis.call('PFADD', buyers, unpack(buyer_ids, j, math.min(j + 499, #buyer_ids)))
end
if redis.call('EXISTS', orders) == 1 then redis.call('EXPIRE', orders, order_ttl) end
return table.concat(outcome)
"""
