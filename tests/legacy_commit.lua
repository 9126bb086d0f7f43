-- The commit script of versions before identity namespaces (workers/keys.py COMMIT_SCRIPT
-- at a5a3573), kept as it was: tests/legacy.py runs it to write what an upgrade finds.
local totals, orders, skus, viewers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local commenters, buyers, seen = KEYS[5], KEYS[6], KEYS[7]
local now = tonumber(ARGV[1])
if not now then now = tonumber(redis.call('TIME')[1]) end
local span, lookback, ahead = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local sku_limit, limit_text = tonumber(ARGV[5]), ARGV[6]
local gen = math.floor(now / span)
local expire_at = (gen + lookback + 1) * span

-- Phase 1: reads only.
local registry, stream, idle_before = KEYS[#KEYS], ARGV[8], nil
if stream then
  local max_streams = tonumber(ARGV[9])
  idle_before = now - tonumber(ARGV[10])
  local last = tonumber(redis.call('ZSCORE', registry, stream))
  if not (last and last > idle_before)
    and redis.call('ZCOUNT', registry, '(' .. idle_before, '+inf') >= max_streams then
    return string.rep('s', #cmsgpack.unpack(ARGV[7]))
  end
end
local records, outcome = {}, {}
local batch_ids, projected, sku_label, new_skus = {}, {}, {}, {}
local sku_count = nil

local arity = {c = 5, v = 6, o = 12, x = 4}

local function seen_one(shard, member)
  if batch_ids[shard .. ':' .. member] then return true end
  for g = gen - lookback, gen + ahead do
    if redis.call('SISMEMBER', seen .. g .. ':' .. shard, member) == 1 then return true end
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

-- Order state as this batch leaves it: id -> {state, where}, read from Redis once.
local order_view = {}
local function order_state(id)
  local view = order_view[id]
  if view then return view end
  view = {}
  for g = gen + ahead, gen - lookback, -1 do
    local state = redis.call('HGET', orders .. g, id)
    if state then
      view = {state = state, where = orders .. g}
      break
    end
  end
  order_view[id] = view
  return view
end

for _, r in ipairs(cmsgpack.unpack(ARGV[7])) do
  local tag = r[1]
  if not arity[tag] then return redis.error_reply('unknown record tag ' .. tostring(tag)) end
  r.aliases = r[arity[tag] + 1]
  local state = already_seen(r) and '0' or '1'
  if tag == 'o' and state == '1' then
    local pc = r[5] .. '|' .. r[6]
    local inc = {}
    inc['grams|' .. pc] = big(r[11])
    inc['value|' .. r[5] .. '|' .. r[9]] = big(r[10])
    r.labels = {}
    local claims = {skus = {}, n = 0}
    for j, item in ipairs(r[12]) do
      local field = 'sku_grams|' .. label_for(item[1], claims)
      r.labels[j] = field
      inc[field] = add(inc[field] or {0, 0}, big(item[2]))
    end
    if not fits(inc) then
      state = '2'
    else
      take(claims)
      local view = order_state(r[4])
      if view.state == 'C' then  -- its cancellation came first: count both now
        r.settle = view.where
        order_view[r[4]] = {}
      else
        order_view[r[4]] = {state = pc .. '|' .. r[11], where = orders .. gen}
      end
    end
  elseif tag == 'x' and state == '1' then
    local view = order_state(r[4])
    if view.state and view.state ~= 'C' then
      r.platform, r.country, r.grams = string.match(view.state, '^([^|]*)|([^|]*)|(%d+)$')
      r.settle = view.where
      order_view[r[4]] = {}
    else  -- before its order: remember it until the order arrives
      order_view[r[4]] = {state = 'C', where = orders .. gen}
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

local function count_cancel(platform, country, grams)
  redis.call('HINCRBY', totals, 'cancelled|' .. platform .. '|' .. country, 1)
  redis.call('HINCRBY', totals, 'cancelled_grams|' .. platform .. '|' .. country, grams)
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
  if tag == 'c' then
    redis.call('HINCRBY', totals, 'comments|' .. r[4], 1)
    if r[5] ~= '' then users[#users + 1] = r[5] end
  elseif tag == 'v' then
    local platform, count, ts = r[4], r[5], r[6]
    local last = redis.call('HMGET', viewers, platform, platform .. '|ts')
    local last_count, last_ts = tonumber(last[1]), tonumber(last[2])
    -- latest by event time; a tie keeps the larger count, so arrival order never matters
    if not last_ts or ts > last_ts or (ts == last_ts and count > last_count) then
      redis.call('HSET', viewers, platform, count, platform .. '|ts', ts)
    end
  elseif tag == 'o' then
    local id, platform, country, grams = r[4], r[5], r[6], r[11]
    local pc = platform .. '|' .. country
    redis.call('HINCRBY', totals, 'orders|' .. pc, 1)
    redis.call('HINCRBY', totals, 'grams|' .. pc, grams)
    redis.call('HINCRBY', totals, 'value|' .. platform .. '|' .. r[9], r[10])
    redis.call('HINCRBY', totals, 'region|' .. country .. '|' .. r[7], 1)
    if r[8] ~= '' then buyer_ids[#buyer_ids + 1] = r[8] end
    for j, item in ipairs(r[12]) do
      redis.call('HINCRBY', totals, r.labels[j], item[2])
    end
    if r.settle then
      count_cancel(platform, country, grams)
      redis.call('HDEL', r.settle, id)
    else
      redis.call('HSET', orders .. gen, id, pc .. '|' .. grams)
      expire_once(orders .. gen)
    end
  elseif tag == 'x' then
    if r.settle then
      count_cancel(r.platform, r.country, r.grams)
      redis.call('HDEL', r.settle, r[4])
    else
      redis.call('HSET', orders .. gen, r[4], 'C')
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
