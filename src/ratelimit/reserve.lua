-- One atomic reservation for a (limit, tenant) shared by every replica.
-- KEYS[1]: sorted set of reservations (member = request, score = send time in ms, Redis clock)
-- KEYS[2]: the time (ms) until which the upstream asked us to pause
-- ARGV[1]: this request's member name
-- ARGV[2]: the request's remaining budget (ms)
-- ARGV[3]: not before now + this (ms): a pause this replica knows of that may not have landed yet
-- ARGV[4], ARGV[5]: per-minute limit (0: none) and the minute window (ms)
-- ARGV[6], ARGV[7]: per-hour limit (0: none) and the hour window (ms)
-- Returns {1, wait_ms, ...} when reserved, {0, wait_ms, ...} when refused (the true time to a
-- free slot), followed by what the remaining-budget headers tell: the reservations sent within
-- the last minute and the last hour, and those still waiting for their slot (this one included).
--
-- The earliest send time is the latest of: now, the pause, the last reservation (FIFO), and for
-- each window the limit-th most recent reservation plus the window and one slot (1/120 of it,
-- as in the local limiter), so that no window of that length ever holds more than the limit.
if redis.replicate_commands then
  redis.replicate_commands()
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local budget = tonumber(ARGV[2])
local at = now + tonumber(ARGV[3])
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused > at then
  at = paused
end
local longest = 0
for i = 4, 6, 2 do
  local limit = tonumber(ARGV[i])
  local span = tonumber(ARGV[i + 1])
  if limit > 0 and span > longest then
    longest = span
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - longest - longest / 120)
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] and tonumber(last[2]) > at then
  at = tonumber(last[2])
end
for i = 4, 6, 2 do
  local limit = tonumber(ARGV[i])
  local span = tonumber(ARGV[i + 1])
  if limit > 0 then
    local nth = redis.call('ZRANGE', KEYS[1], -limit, -limit, 'WITHSCORES')
    if nth[2] then
      local free = tonumber(nth[2]) + span + math.ceil(span / 120)
      if free > at then
        at = free
      end
    end
  end
end
local function counts(reply)
  for i = 4, 6, 2 do
    local from = string.format('(%d', now - tonumber(ARGV[i + 1]))
    reply[#reply + 1] = redis.call('ZCOUNT', KEYS[1], from, string.format('%d', now))
  end
  reply[#reply + 1] = redis.call('ZCOUNT', KEYS[1], string.format('(%d', now), '+inf')
  return reply
end
local wait = at - now
if wait > budget then
  return counts({0, wait})
end
redis.call('ZADD', KEYS[1], at, ARGV[1])
redis.call('PEXPIRE', KEYS[1], wait + longest + math.ceil(longest / 120) + 1000)
return counts({1, wait})
