"""Custody's Lua scripts (worker.client.custody): each runs atomically in Redis, so a record's state never
changes half-way. Keys and arguments are named where `custody` calls them."""

# The body arrives beforehand under a temporary key (KEYS[4]): a plain SET moves megabytes about twice as fast
# as a script argument, and RENAME moves no bytes at all. Returns {outcome, sequence number or queue depth}.
ACCEPT = """
local depth = redis.call('LLEN', KEYS[5])
if depth >= tonumber(ARGV[4]) then
  redis.call('DEL', KEYS[4])
  return {-2, depth}
end
local first = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
if not first and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  redis.call('DEL', KEYS[4])
  return {-1, 0}
end
local seq = redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[6])  -- a batch handed over again gets a fresh delivery budget
local body = ARGV[5] .. ':body:' .. seq
redis.call('RENAME', KEYS[4], body)
redis.call('PERSIST', body)
redis.call('SET', ARGV[5] .. ':ticket:' .. seq, ARGV[3] .. seq .. '}')
redis.call('ZADD', KEYS[3], seq, seq)
if first then return {1, seq} end
return {0, seq}
"""

# A delivery starts: its record has left the queue (and so has every earlier one). Counts the batch's
# deliveries (brokers do not count redeliveries after a crash) and fetches the body, in one round trip.
START_DELIVERY = """
local now = tonumber(redis.call('TIME')[1])
local position = redis.call('ZSCORE', KEYS[1], ARGV[1])
if position then
  redis.call('ZREM', KEYS[1], ARGV[1])
  if tonumber(position) > tonumber(redis.call('GET', KEYS[3]) or '0') then redis.call('SET', KEYS[3], position) end
  redis.call('ZADD', KEYS[2], now, ARGV[1])
else
  redis.call('ZADD', KEYS[2], 'XX', now, ARGV[1])
end
local deliveries = redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], ARGV[2])
if ARGV[3] == '1' then return {deliveries, redis.call('GET', KEYS[5])} end
return {deliveries, false}
"""

# The record's message goes back into the queue (a retry, or a re-send): it waits again behind what is queued.
REQUEUE = """
if redis.call('EXISTS', KEYS[4], KEYS[5]) == 0 then return 0 end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1])
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[1]), ARGV[1])
return 1
"""

# Move every record at or below the horizon to `taken`, then list those untouched for ARGV[1] seconds, and
# those whose owner (the worker that started their delivery) has no heartbeat any more.
OVERDUE = """
local now = tonumber(redis.call('TIME')[1])
local horizon = tonumber(redis.call('GET', KEYS[4]) or '0')
if redis.call('LLEN', KEYS[5]) == 0 then
  horizon = math.max(horizon, tonumber(redis.call('GET', KEYS[1]) or '0'))
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', horizon)) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZADD', KEYS[3], now, id)
end
local limit = tonumber(ARGV[2])
local found = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, limit)
local listed = {}
for _, id in ipairs(found) do listed[id] = true end
local owners = redis.call('HGETALL', KEYS[6])
for i = 1, #owners, 2 do
  local id, owner = owners[i], owners[i + 1]
  local taken = redis.call('ZSCORE', KEYS[3], id)
  local waiting = redis.call('ZSCORE', KEYS[2], id)
  if not taken and not waiting then
    redis.call('HDEL', KEYS[6], id)  -- released: the owner entry of a duplicate delivery
  elseif #found < limit and not listed[id] and redis.call('EXISTS', ARGV[3] .. ':' .. owner) == 0 then
    if waiting then  -- received by the dead worker but not started: it has left the queue all the same
      redis.call('ZREM', KEYS[2], id)
      redis.call('ZADD', KEYS[3], now, id)
    end
    table.insert(found, id)
    listed[id] = true
  end
end
return found
"""
