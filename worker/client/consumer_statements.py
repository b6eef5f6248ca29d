"""What a consumer (worker.client.consumer_group) sends: the SELECTs that load a batch's rows, one per form,
and the Lua script that decides, atomically, whether it hands a batch over."""

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

# Whether this consumer hands the entry's batch over. HANDLED: the group has. HELD: another entry of the same
# batch (its first event, when the sweep announced it twice) is still in the stream and pending with a
# consumer of the group, who hands it over; this entry waits, unacknowledged, until that is settled (if the
# holder's entry is trimmed or dropped meanwhile, this one takes over). TAKEN: the batch is in flight with this
# entry until acknowledged; the in-flight records expire a day after the last one is written, so records of
# entries that vanished while pending do not pile up.
# KEYS: handled, in flight, stream; ARGV: group, batch id, entry id, in-flight expiry (s).
TAKE_OVER = """
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
local holder = redis.call('HGET', KEYS[2], ARGV[2])
if holder and holder ~= ARGV[3]
    and #redis.call('XPENDING', KEYS[3], ARGV[1], holder, holder, 1) > 0
    and #redis.call('XRANGE', KEYS[3], holder, holder) > 0 then
  return -1
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""
