"""What a consumer (worker.client.consumer_group) sends: the SELECTs that load a batch's rows, one per form, the
Lua scripts that decide, atomically, whether it hands a batch over and release what trimmed entries held, and
the Redis keys of a group they keep."""

# The JSON columns come as PostgreSQL's text of them: parsed for Python callers, or passed on untouched
# (`orjson.Fragment`) by callers that only write them out again.
LOAD = (
    "SELECT id, position, created_at, trace_version, prompt, final_answer, steps::text AS steps, meta::text AS meta "
    "FROM trace WHERE id = ANY($1::bigint[]) ORDER BY position"
)

# Each trace as its finished JSON line, keys in LOAD's order after `batch_id`. PostgreSQL turns every jsonb into
# text anyway; gluing the line there too leaves the consumer one bytes object per trace, and an export twice the
# rate of building each line in Python. `created_at` as orjson writes it for the other form (UTC, microseconds),
# whatever the session's time zone.
LOAD_LINES = """
SELECT convert_to(
    '{"batch_id":"' || batch_id || '","id":' || id || ',"position":' || position
    || ',"created_at":"' || to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') || '+00:00"'
    || ',"trace_version":' || to_json(trace_version)::text
    || ',"prompt":' || to_json(prompt)::text || ',"final_answer":' || to_json(final_answer)::text
    || ',"steps":' || steps::text || ',"meta":' || coalesce(meta::text, 'null') || E'}\\n',
    'UTF8')
FROM trace WHERE id = ANY($1::bigint[]) ORDER BY position
"""

#: `TAKE_OVER`'s answers.
TAKEN, HANDLED, HELD = 1, 0, -1

# Whether this consumer hands the entry's batch over. HANDLED: the group has. HELD: another consumer of the group
# holds the batch, i.e. the entry it took the batch over with is still pending with that very consumer (whether
# or not the stream still has it: the holder read it and is handing it over); this entry waits, unacknowledged,
# until that is settled. A holder is its consumer and its entry: an entry claimed from a holder (XAUTOCLAIM) is no
# longer pending with it, so the claimant takes over; a dead holder's trimmed entry leaves its pending list when
# a claim scan drops it, and the batch is then taken over too. TAKEN: the batch is in flight with this entry and
# consumer until acknowledged; records expire a day after the last one is written (RELEASE_TRIMMED frees those
# of trimmed entries at once).
# KEYS: handled, holders, stream; ARGV: group, batch id, entry id, consumer, record expiry (s).
TAKE_OVER = """
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
local me = ARGV[3] .. ' ' .. ARGV[4]
local holder = redis.call('HGET', KEYS[2], ARGV[2])
if holder and holder ~= me then
  local entry, consumer = string.match(holder, '^(%S+) (.+)$')
  if #redis.call('XPENDING', KEYS[3], ARGV[1], entry, entry, 1, consumer) > 0 then return -1 end
end
redis.call('HSET', KEYS[2], ARGV[2], me)
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"""

# Frees the in-flight records of entries trimmed from the stream while pending: nobody can hand their batches
# over any more, and the key's expiry, pushed back by every take-over, would keep them for good. The holders are
# one record per batch in flight (handed over right now, or waiting for missing rows), so reading them all is
# cheap; trims are rare.
# KEYS: holders; ARGV: the trimmed entry ids. Answers how many records it freed.
RELEASE_TRIMMED = """
local trimmed = {}
for _, entry in ipairs(ARGV) do trimmed[entry] = true end
local records = redis.call('HGETALL', KEYS[1])
local freed = 0
for i = 1, #records, 2 do
  if trimmed[string.match(records[i + 1], '^%S+')] then
    redis.call('HDEL', KEYS[1], records[i])
    freed = freed + 1
  end
end
return freed
"""
