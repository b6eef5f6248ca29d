"""Custody's Lua scripts (worker.custody.records): each runs atomically in Redis, so a record's state never
changes half-way. Keys and arguments are named where `custody` calls them."""

# Whether the record whose ticket is `ticket_key` is the one a message may use. After Redis lost writes a
# sequence number can name another batch's record, so a claim check's batch id and content hash (ARGV of the
# caller) must be the ones its ticket names. Without them (a v1 record, named by its batch id, or a leftover
# whose ticket is gone) only a record with no ticket qualifies: a ticket always names a v2 batch.
_OURS = """
local function ours(ticket_key, batch_id, content_hash)
  local ticket = redis.call('GET', ticket_key)
  if content_hash == '' then return not ticket end
  if not ticket then return false end
  local ok, fields = pcall(cjson.decode, ticket)
  return ok and type(fields) == 'table' and fields.batch_id == batch_id and fields.content_hash == content_hash
end
"""

# The body arrives beforehand under a temporary key (KEYS[4]): a plain SET moves megabytes about twice as fast
# as a script argument, and RENAME moves no bytes at all. One record per batch id (KEYS[8] maps batch id →
# record): a producer's retry refreshes that record's body and puts it back to waiting behind what is queued
# now, for the claim check the retry sends. Only a new record counts against the depth limit, which counts the
# records in custody (waiting + taken) as well as the queue. Returns {outcome, record or depth}.
ACCEPT = (
    _OURS
    + """
local prefix, batch_id, content_hash = ARGV[5], ARGV[6], ARGV[1]
local known = redis.call('GET', KEYS[1])
if known and known ~= content_hash then
  redis.call('DEL', KEYS[4])
  return {-1, 0}
end
local record = redis.call('HGET', KEYS[8], batch_id)
if record and not ours(prefix .. ':ticket:' .. record, batch_id, content_hash) then record = false end
local position
if record then
  position = redis.call('INCR', KEYS[2])
  redis.call('ZREM', KEYS[7], record)
else
  local held = redis.call('ZCARD', KEYS[3]) + redis.call('ZCARD', KEYS[7])
  local depth = math.max(redis.call('LLEN', KEYS[5]), held)
  if depth >= tonumber(ARGV[4]) then
    redis.call('DEL', KEYS[4])
    return {-2, depth}
  end
  -- After lost writes the counter may be behind records that survived: never hand out a number in use.
  repeat record = redis.call('INCR', KEYS[2])
  until redis.call('EXISTS', prefix .. ':ticket:' .. record, prefix .. ':body:' .. record) == 0
  position = record
  redis.call('SET', prefix .. ':ticket:' .. record, ARGV[3] .. record .. '}')
  redis.call('HSET', KEYS[8], batch_id, record)
end
if not known then redis.call('SET', KEYS[1], content_hash, 'EX', ARGV[2]) end
redis.call('DEL', KEYS[6])  -- a batch handed over again gets a fresh delivery budget
local body = prefix .. ':body:' .. record
redis.call('RENAME', KEYS[4], body)
redis.call('PERSIST', body)
redis.call('ZADD', KEYS[3], position, record)
if known then return {0, tonumber(record)} end
return {1, tonumber(record)}
"""
)

# A delivery starts: its record has left the queue, and so has every record numbered up to its message's
# number (ARGV[5]; a v1 message has none, its record's position serves). Not the record's position for a
# claim check: a producer's retry moved the record behind the backlog while this earlier copy was queued.
# Counts the batch's deliveries (brokers do not count redeliveries after a crash). A record that is gone or
# names another batch is left alone: {deliveries, 1 (gone) or 2 (another batch's)}, else {deliveries, 0}. The
# caller reads the body beside it, in the same MULTI: handing megabytes out of Lua costs Redis four times a GET.
START_DELIVERY = (
    _OURS
    + """
local deliveries = redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], ARGV[2])
if not ours(KEYS[5], ARGV[3], ARGV[4]) then
  if redis.call('EXISTS', KEYS[5]) == 1 then return {deliveries, 2} end
  return {deliveries, 1}
end
local now = tonumber(redis.call('TIME')[1])
local position = redis.call('ZSCORE', KEYS[1], ARGV[1])
if position then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[2], now, ARGV[1])
else
  redis.call('ZADD', KEYS[2], 'XX', now, ARGV[1])
end
local reached = tonumber(ARGV[5]) or tonumber(position)
if reached and reached > tonumber(redis.call('GET', KEYS[3]) or '0') then redis.call('SET', KEYS[3], reached) end
return {deliveries, 0}
"""
)

# Whether the record whose ticket is KEYS[1] is the message's (see `ours`): 1 or 0.
IS_OURS = (
    _OURS
    + """
if ours(KEYS[1], ARGV[1], ARGV[2]) then return 1 end
return 0
"""
)

# PostgreSQL holds the batch: its record goes, only if it is the message's (see `ours`). Returns 1 if released.
RELEASE = (
    _OURS
    + """
if not ours(KEYS[2], ARGV[2], ARGV[3]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1])
if ARGV[2] ~= '' and redis.call('HGET', KEYS[7], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[7], ARGV[2]) end
return 1
"""
)

# The record's message goes back into the queue (a retry, or a re-send): it waits again behind what is queued.
REQUEUE = (
    _OURS
    + """
if not ours(KEYS[4], ARGV[2], ARGV[3]) then return 0 end  -- another batch's record, after lost writes
if ARGV[3] == '' and redis.call('EXISTS', KEYS[5]) == 0 then return 0 end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1])
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[1]), ARGV[1])
return 1
"""
)

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
