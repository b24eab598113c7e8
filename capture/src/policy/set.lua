-- Replaces a token's quota settings and carries the open windows over, in
-- one atomic step: a raised limit adds the difference to what remains, a
-- lowered one takes it away, a removed limit closes its window.
--
-- KEYS[1]   quota-config:{token}
-- KEYS[1+t] quota:{token}:{type} for each type t in ARGV order
-- ARGV[1]   action ("" for none)
-- ARGV[2]   n, the number of types
-- then per type t, five values from ARGV[3 + 5(t-1)]:
--   name, limit ("" for none), window seconds, rate ("" for none), burst ("" for none)

local n = tonumber(ARGV[2])
local fresh = {}
if ARGV[1] ~= '' then
  fresh[#fresh + 1] = 'action'
  fresh[#fresh + 1] = ARGV[1]
end
for t = 1, n do
  local o = 3 + 5 * (t - 1)
  local name, limit, window, rate, burst = ARGV[o], ARGV[o + 1], ARGV[o + 2], ARGV[o + 3], ARGV[o + 4]
  local old = tonumber(redis.call('HGET', KEYS[1], name .. ':limit'))
  local counter = KEYS[1 + t]
  if limit == '' then
    redis.call('DEL', counter)
  else
    fresh[#fresh + 1] = name .. ':limit'
    fresh[#fresh + 1] = limit
    fresh[#fresh + 1] = name .. ':window'
    fresh[#fresh + 1] = window
    if old and redis.call('EXISTS', counter) == 1 then
      redis.call('INCRBY', counter, tonumber(limit) - old)
    end
  end
  if rate ~= '' then
    fresh[#fresh + 1] = name .. ':rate'
    fresh[#fresh + 1] = rate
  end
  if burst ~= '' then
    fresh[#fresh + 1] = name .. ':burst'
    fresh[#fresh + 1] = burst
  end
end
redis.call('DEL', KEYS[1])
if #fresh > 0 then
  redis.call('HSET', KEYS[1], unpack(fresh))
end
return #fresh / 2
