-- A request's policies, atomic and in one round trip each: deduplication,
-- quotas and cluster-wide rate limits for the events of one token.
--
-- ARGV[1] is the mode. "check" decides each event and reserves what it takes
-- (quota units, rate budget, and dedup markers written as pending, held by
-- this request); "settle" runs once the sink answered: markers of delivered
-- events are committed, and what undelivered events took is given back. A
-- request whose events were all delivered and that holds no marker skips the
-- settle.
--
-- CHECK
-- KEYS[1]            quota-config:{token}            (hash, read only)
-- KEYS[2t], KEYS[2t+1] quota:{token}:{type}, rate:{token}:{type} for type t
-- KEYS[2n+2 ...]     event:{token}:... dedup markers, in event order, one
--                    per event flagged in the dedup mask
--
-- ARGV[2] now, unix milliseconds
-- ARGV[3] hold: how long a reserved marker lives unless settled, milliseconds
-- ARGV[4] this request's reservation id
-- ARGV[5] n, the number of types in this request
-- ARGV[6] default quota action: "drop" | "reject"
-- ARGV[7] rate limit action: "overflow" | "reject"
-- then per type t, four values from ARGV[8 + 4(t-1)]:
--   name, quota check ("1" | "0"), default rate (events/s, 0 = off), default burst
-- then the events: a string with one byte per event, the type's number ("1".."9")
-- then the dedup mask: one byte per event, "1" when it has a marker key
--
-- Returns one string of space-separated fields (one bulk string is cheaper
-- for the client to read than an array):
--   verdict decisions retry_after_ms quota_action charges [name ms_left]...
--   verdict     "ok", or "quota" / "rate" when the request is refused whole,
--               or "busy" when another request holds one of its markers
--   decisions   one byte per event: a(ccept) d(uplicate) q(uota) o(verflow)
--   quota_action the token's action (its `action` field, else ARGV[6])
--   charges     per type, comma-separated: "1" if each accepted or
--               overflowed event took a unit of quota else "0", a slash, and
--               the rate budget each accepted event took, in milliseconds
--   exhausted   name, milliseconds-left pairs for types with nothing left
-- Nothing is written unless the verdict is "ok".
--
-- A marker holds "1" once committed (the event is in Kafka: later copies are
-- duplicates) or "p" and the reservation id while a request waits for Kafka
-- (a copy arriving meanwhile is refused as busy, so two racing requests
-- never both produce it and neither drops it before the other is sure).
--
-- SETTLE
-- KEYS[2t-1], KEYS[2t] quota:{token}:{type}, rate:{token}:{type} for type t
-- KEYS[2n+1 ...]       the reserved markers
-- ARGV[2] now, unix milliseconds
-- ARGV[3] the reservation id
-- ARGV[4] committed marker TTL, seconds
-- ARGV[5] n, the number of types
-- then per type t, three values from ARGV[6 + 3(t-1)]: quota units to give
--   back, events of rate budget to give back, rate budget per event (ms)
-- then one byte per marker: "c" commit, "r" release
-- Returns "ok".

if ARGV[1] == 'settle' then
  local now = tonumber(ARGV[2])
  local pending = 'p' .. ARGV[3]
  local dedup_ttl = tonumber(ARGV[4])
  local n = tonumber(ARGV[5])
  for t = 1, n do
    local o = 6 + 3 * (t - 1)
    local quota = tonumber(ARGV[o])
    local rate = tonumber(ARGV[o + 1])
    local interval = tonumber(ARGV[o + 2])
    -- A counter that expired meanwhile belongs to a window that ended:
    -- nothing to give back to.
    if quota > 0 and redis.call('EXISTS', KEYS[2 * t - 1]) == 1 then
      redis.call('INCRBY', KEYS[2 * t - 1], quota)
    end
    if rate > 0 then
      local tat = tonumber(redis.call('GET', KEYS[2 * t]))
      if tat then
        local back = tat - rate * interval
        if back <= now then
          redis.call('DEL', KEYS[2 * t])
        else
          redis.call('SET', KEYS[2 * t], string.format('%.3f', back), 'PX', math.max(math.ceil(back - now), 1))
        end
      end
    end
  end
  local ops = ARGV[6 + 3 * n]
  for i = 1, #ops do
    local key = KEYS[2 * n + i]
    if string.byte(ops, i) == 99 then
      -- The event is in Kafka: whatever the key holds now (this request's
      -- reservation, or another's after it lapsed), later copies are
      -- duplicates.
      redis.call('SET', key, '1', 'EX', dedup_ttl)
    elseif redis.call('GET', key) == pending then
      redis.call('DEL', key)
    end
  end
  return 'ok'
end

local now = tonumber(ARGV[2])
local hold = tonumber(ARGV[3])
local pending = 'p' .. ARGV[4]
local n = tonumber(ARGV[5])
local quota_action = ARGV[6]
local rate_action = ARGV[7]
local events = ARGV[8 + 4 * n]
local mask = ARGV[9 + 4 * n]

local types = {}
local fields = { 'action' }
for t = 1, n do
  local o = 8 + 4 * (t - 1)
  local name = ARGV[o]
  types[t] = {
    name = name,
    quota = ARGV[o + 1] == '1',
    rate = tonumber(ARGV[o + 2]),
    burst = tonumber(ARGV[o + 3]),
    accepted = 0,
  }
  fields[#fields + 1] = name .. ':limit'
  fields[#fields + 1] = name .. ':window'
  fields[#fields + 1] = name .. ':rate'
  fields[#fields + 1] = name .. ':burst'
end
local config = redis.call('HMGET', KEYS[1], unpack(fields))
if config[1] then
  -- Anything but 'reject' drops, as it always did; spelled out so the
  -- reply's fields stay space-free.
  quota_action = config[1] == 'reject' and 'reject' or 'drop'
end

-- Deduplication: a committed marker, or one seen earlier in this request,
-- is a duplicate; a marker another request holds makes this one wait.
local decisions = {}
local kinds = {}
local markers = {}
local seen = {}
local next_key = 2 * n + 2
for i = 1, #events do
  kinds[i] = string.byte(events, i) - 48
  decisions[i] = 'a'
  if string.byte(mask, i) == 49 then
    local key = KEYS[next_key]
    next_key = next_key + 1
    if seen[key] then
      decisions[i] = 'd'
    else
      local marker = redis.call('GET', key)
      if not marker then
        seen[key] = true
        markers[i] = key
      elseif string.byte(marker, 1) == 112 then
        local left = redis.call('PTTL', key)
        return string.format('busy  %d', math.max(left, 1))
      else
        decisions[i] = 'd'
      end
    end
  end
end

-- Quotas: what remains of the window, or the whole limit when no window is open.
for t = 1, n do
  local kind = types[t]
  local limit = kind.quota and tonumber(config[2 + 4 * (t - 1)])
  if limit then
    local remaining = tonumber(redis.call('GET', KEYS[2 * t]))
    kind.fresh = remaining == nil
    kind.limit = limit
    kind.window = math.floor((tonumber(config[3 + 4 * (t - 1)]) or 86400) * 1000)
    kind.left = math.max(remaining or limit, 0)
    kind.used = 0
  end
end
local over_quota = false
for i = 1, #events do
  if decisions[i] == 'a' then
    local kind = types[kinds[i]]
    if kind.left == nil then
      kind.accepted = kind.accepted + 1
    elseif kind.left > 0 then
      kind.left = kind.left - 1
      kind.used = kind.used + 1
      kind.accepted = kind.accepted + 1
    else
      decisions[i] = 'q'
      over_quota = true
    end
  end
end

local exhausted = {}
local retry_after = 0
for t = 1, n do
  local kind = types[t]
  if kind.left == 0 then
    local ttl = kind.window
    if not kind.fresh then
      ttl = redis.call('PTTL', KEYS[2 * t])
      if ttl < 0 then
        ttl = kind.window
      end
    end
    exhausted[#exhausted + 1] = kind.name
    exhausted[#exhausted + 1] = ttl
    if retry_after == 0 or ttl < retry_after then
      retry_after = ttl
    end
  end
end
if over_quota and quota_action == 'reject' then
  return string.format('quota  %d', retry_after)
end

-- Rate limits (GCRA): each type's accepted events against its rate and burst.
local rate_writes = {}
for t = 1, n do
  local kind = types[t]
  local o = 4 + 4 * (t - 1)
  local rate = tonumber(config[o]) or kind.rate
  kind.interval = 0
  local burst = tonumber(config[o + 1]) or kind.burst
  if rate > 0 and kind.accepted > 0 then
    local interval = 1000 / rate
    local tolerance = math.max(burst, 1) * interval
    local tat = math.max(tonumber(redis.call('GET', KEYS[2 * t + 1])) or now, now)
    local fits = math.floor((now + tolerance - tat) / interval + 1e-9)
    if fits < kind.accepted then
      if rate_action == 'reject' then
        local wait = math.ceil(tat + kind.accepted * interval - tolerance - now)
        return string.format('rate  %d', math.max(wait, math.ceil(interval)))
      end
      local budget = math.max(fits, 0)
      for i = 1, #events do
        if kinds[i] == t and decisions[i] == 'a' then
          if budget > 0 then
            budget = budget - 1
          else
            decisions[i] = 'o'
          end
        end
      end
      kind.admitted = math.max(fits, 0)
    else
      kind.admitted = kind.accepted
    end
    kind.interval = interval
    if kind.admitted > 0 then
      local new_tat = tat + kind.admitted * interval
      rate_writes[#rate_writes + 1] = { KEYS[2 * t + 1], new_tat, math.max(math.ceil(new_tat - now), 1) }
    end
  end
end

-- Everything decided: write counters, rate state and markers.
for t = 1, n do
  local kind = types[t]
  if kind.used ~= nil then
    if kind.fresh then
      redis.call('SET', KEYS[2 * t], kind.limit - kind.used, 'PX', kind.window)
    elseif kind.used > 0 then
      redis.call('DECRBY', KEYS[2 * t], kind.used)
    end
  end
end
for _, write in ipairs(rate_writes) do
  redis.call('SET', write[1], string.format('%.3f', write[2]), 'PX', write[3])
end
for i = 1, #events do
  if markers[i] and (decisions[i] == 'a' or decisions[i] == 'o') then
    redis.call('SET', markers[i], pending, 'PX', hold)
  end
end

local charges = {}
for t = 1, n do
  local kind = types[t]
  charges[t] = string.format('%s/%.6f', kind.used ~= nil and '1' or '0', kind.interval or 0)
end
local out = { 'ok', table.concat(decisions), string.format('%d', retry_after), quota_action, table.concat(charges, ',') }
for i = 1, #exhausted, 2 do
  out[#out + 1] = exhausted[i]
  out[#out + 1] = string.format('%d', exhausted[i + 1])
end
return table.concat(out, ' ')
