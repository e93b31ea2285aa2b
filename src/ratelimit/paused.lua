-- How long (ms) this (limit, tenant) is still paused, by the Redis clock; 0 when it is not.
-- KEYS[1]: the pause-until time (ms)
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if paused > now then
  return paused - now
end
return 0
