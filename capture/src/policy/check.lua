-- One request's policy check, atomic and in one round trip: deduplication,
-- quotas and cluster-wide rate limits for the events of one token.
--
-- KEYS[1]            quota-config:{token}            (hash, read only)
-- KEYS[2t], KEYS[2t+1] quota:{token}:{type}, rate:{token}:{type} for type t
-- KEYS[2n+2 ...]     event:{token}:... dedup markers, in event order, one
--                    per event flagged in the dedup mask
--
-- ARGV[1] now, unix milliseconds
-- ARGV[2] dedup marker TTL, seconds
-- ARGV[3] n, the number of types in this request
-- ARGV[4] default quota action: "drop" | "reject"
-- ARGV[5] rate limit action: "overflow" | "reject"
-- then per type t, four values from ARGV[6 + 4(t-1)]:
--   name, quota check ("1" | "0"), default rate (events/s, 0 = off), default burst
-- then the events: a string with one byte per event, the type's number ("1".."9")
-- then the dedup mask: one byte per event, "1" when it has a marker key
--
-- Returns one string of space-separated fields (one bulk string is cheaper
-- for the client to read than an array):
--   verdict decisions retry_after_ms quota_action [name ms_left]...
--   verdict     "ok", or "quota" / "rate" when the request is refused whole
--   decisions   one byte per event: a(ccept) d(uplicate) q(uota) o(verflow)
--   quota_action the token's action (its `action` field, else ARGV[4])
--   exhausted   name, milliseconds-left pairs for types with nothing left
-- Nothing is written unless the verdict is "ok".

local now = tonumber(ARGV[1])
local dedup_ttl = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local quota_action = ARGV[4]
local rate_action = ARGV[5]
local events = ARGV[6 + 4 * n]
local mask = ARGV[7 + 4 * n]

local types = {}
local fields = { 'action' }
for t = 1, n do
  local o = 6 + 4 * (t - 1)
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

-- Deduplication: a marker that exists, or one seen earlier in this request.
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
    if seen[key] or redis.call('EXISTS', key) == 1 then
      decisions[i] = 'd'
    else
      seen[key] = true
      markers[i] = key
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
    redis.call('SET', markers[i], '1', 'EX', dedup_ttl)
  end
end

local out = { 'ok', table.concat(decisions), string.format('%d', retry_after), quota_action }
for i = 1, #exhausted, 2 do
  out[#out + 1] = exhausted[i]
  out[#out + 1] = string.format('%d', exhausted[i + 1])
end
return table.concat(out, ' ')
