-- The upstream asked to wait: nothing is reserved for this (limit, tenant) before now + ARGV[1]
-- ms (Redis clock), on any replica. A later pause never shortens an earlier one.
-- KEYS[1]: the pause-until time (ms)
if redis.replicate_commands then
  redis.replicate_commands()
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ms = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if now + ms > current then
  redis.call('SET', KEYS[1], now + ms, 'PX', ms + 1000)
end
return ms
