"""Custody of accepted batches until PostgreSQL holds them (PRODUCT.md §8: nothing accepted is ever lost).

Why it exists: kombu's Redis transport pops a message (BRPOP) and only then records it as unacknowledged. A
worker host that dies in between loses that message for good: no visibility timeout brings it back. So the
producer records each batch it hands over, in the same Redis and before the message, and the record is released
only once PostgreSQL holds the batch. The scheduled `reprocess.resend_lost` job re-sends a batch whose message
has left the queue, that no task has touched for longer than any live delivery can take, and that PostgreSQL
does not hold. A batch that was only slow is then delivered twice, which idempotent ingest makes harmless.

The queue is first in, first out, so "has left the queue" needs no scan of the queue: each accepted batch gets
a sequence number, every task start raises the horizon to its batch's number, and an empty queue raises it to
the last number handed out. Every record at or below the horizon has left the queue.

Keys: `…:seq` (counter), `…:waiting` (batch id → sequence number), `…:taken` (batch id → Redis time it was
last seen leaving the queue or starting), `…:horizon`, `…:payload:<batch id>` (the task's kwargs as JSON),
`…:resent` (how many lost batches were sent again).
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import uuid4

import orjson
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.client import Pipeline

from worker.celery_app import unacked_mutex_expire_s
from worker.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "ingest:custody"
SEQ, WAITING, TAKEN, HORIZON, RESENT = (f"{PREFIX}:{name}" for name in ("seq", "waiting", "taken", "horizon", "resent"))
INCOMING_TTL_S = 60
#: What `accept` returns.
NEW_BATCH, SAME_BATCH_AGAIN, CONFLICT = 1, 0, -1

# Returns 1 for a new batch id, 0 for the same batch again, -1 for the same id with other content. The
# payload arrives beforehand under a temporary key (KEYS[6]): a plain SET moves megabytes about twice as fast
# as a script argument, and RENAME moves no bytes at all.
_ACCEPT = """
local first = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
if not first and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  redis.call('DEL', KEYS[6])
  return -1
end
redis.call('RENAME', KEYS[6], KEYS[2])
redis.call('PERSIST', KEYS[2])
redis.call('ZREM', KEYS[5], ARGV[3])
redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[3]), ARGV[3])
if first then return 1 end
return 0
"""

# A task starts on the batch: it has left the queue. Also counts the delivery (brokers do not count
# redeliveries after a crash) and returns the count.
_TAKEN = """
local now = tonumber(redis.call('TIME')[1])
local seq = redis.call('ZSCORE', KEYS[2], ARGV[1])
if seq then
  redis.call('ZREM', KEYS[2], ARGV[1])
  if tonumber(seq) > tonumber(redis.call('GET', KEYS[4]) or '0') then redis.call('SET', KEYS[4], seq) end
  redis.call('ZADD', KEYS[3], now, ARGV[1])
else
  redis.call('ZADD', KEYS[3], 'XX', now, ARGV[1])
end
local deliveries = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return deliveries
"""

# The batch goes back into the queue (a retry, or a re-send): it waits again behind what is queued now.
_REQUEUE = """
if redis.call('EXISTS', KEYS[4]) == 0 then return 0 end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[1]), ARGV[1])
return 1
"""

# Move every record at or below the horizon to `taken`, then list those untouched for ARGV[1] seconds.
_OVERDUE = """
local now = tonumber(redis.call('TIME')[1])
local horizon = tonumber(redis.call('GET', KEYS[4]) or '0')
if redis.call('LLEN', KEYS[5]) == 0 then
  horizon = math.max(horizon, tonumber(redis.call('GET', KEYS[1]) or '0'))
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', horizon)) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZADD', KEYS[3], now, id)
end
return redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, tonumber(ARGV[2]))
"""


def payload_key(batch_id: str) -> str:
    return f"{PREFIX}:payload:{batch_id}"


def lost_after_s(settings: Settings) -> int:
    """How long a batch out of the queue may go untouched before it counts as lost: a dead host's unacked
    messages come back after the visibility timeout (later if it died holding the scan lock), and a message a
    live worker reserved waits at most one task ahead of it."""
    return settings.visibility_timeout_s + unacked_mutex_expire_s(settings) + settings.task_time_limit_s


def task_kwargs_json(batch_id: str, source: str, enqueued_at: str, traces_json: bytes) -> bytes:
    """The `ingest.batch` kwargs as JSON, reusing the traces' JSON from validation (no second encoding)."""
    head = orjson.dumps({"batch_id": batch_id, "source": source, "enqueued_at": enqueued_at})
    return head[:-1] + b',"traces":' + traces_json + b"}"


def accept(
    redis: Redis, *, batch_key: str, batch_id: str, content_hash: str, key_ttl_s: int, kwargs_json: bytes
) -> int:
    """Take custody of a batch before its message is sent; 1 new, 0 the same batch again, -1 conflict.
    One round trip."""
    incoming = f"{PREFIX}:incoming:{uuid4().hex}"  # expires by itself if the script never runs
    keys = [batch_key, payload_key(batch_id), SEQ, WAITING, TAKEN, incoming]
    with redis.pipeline(transaction=True) as pipe:
        pipe.set(incoming, kwargs_json, ex=INCOMING_TTL_S)
        pipe.eval(_ACCEPT, len(keys), *keys, content_hash, key_ttl_s, batch_id)
        _, outcome = pipe.execute()
    return int(outcome)


def _drop_record(pipe: Pipeline | AsyncPipeline, batch_id: str) -> None:
    """Queue the commands that end custody of a batch (both pipeline kinds queue without awaiting)."""
    pipe.delete(payload_key(batch_id))
    pipe.zrem(WAITING, batch_id)
    pipe.zrem(TAKEN, batch_id)


def forget(redis: Redis, batch_id: str) -> None:
    """Drop the record of a batch whose message never reached Redis (the producer got an error)."""
    with redis.pipeline(transaction=True) as pipe:
        _drop_record(pipe, batch_id)
        pipe.execute()


def batch_id_of(message: dict[str, Any]) -> str:
    """The key custody uses for a task message (whatever a hand-crafted message put there)."""
    return str(message.get("batch_id"))


async def taken(redis: AsyncRedis, batch_id: str, *, counter_key: str, counter_ttl_s: int) -> int:
    """Note that a task started on the batch; returns how many deliveries it has had."""
    keys = [counter_key, WAITING, TAKEN, HORIZON]
    return int(await redis.eval(_TAKEN, len(keys), *keys, batch_id, counter_ttl_s))


async def requeued(redis: AsyncRedis, batch_id: str) -> None:
    """Note that the batch's message goes back to the end of the queue (before sending it)."""
    keys = [SEQ, WAITING, TAKEN, payload_key(batch_id)]
    await redis.eval(_REQUEUE, len(keys), *keys, batch_id)


async def release(redis: AsyncRedis, batch_id: str) -> None:
    """PostgreSQL holds the batch (stored, rejected or parked as failed): custody ends."""
    async with redis.pipeline(transaction=True) as pipe:
        _drop_record(pipe, batch_id)
        await pipe.execute()


async def overdue(
    redis: AsyncRedis, settings: Settings, *, untouched_for_s: int | None = None, limit: int = 100
) -> list[str]:
    """Batch ids out of the queue and untouched for `lost_after_s` (or `untouched_for_s`): stored but not
    released (their worker died in between), or lost."""
    keys = [SEQ, WAITING, TAKEN, HORIZON, settings.ingest_queue]
    quiet_for = lost_after_s(settings) if untouched_for_s is None else untouched_for_s
    ids = await redis.eval(_OVERDUE, len(keys), *keys, quiet_for, limit)
    return [value.decode() if isinstance(value, bytes) else str(value) for value in ids]


async def stored_payload(redis: AsyncRedis, batch_id: str) -> dict[str, Any] | None:
    raw = await redis.get(payload_key(batch_id))
    return None if raw is None else dict(orjson.loads(raw))


async def count_resent(redis: AsyncRedis) -> None:
    await redis.incr(RESENT)


def in_transit(redis: Redis) -> tuple[int, int]:
    """(batches accepted and not yet in PostgreSQL, lost batches sent again so far)."""
    with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(WAITING)
        pipe.zcard(TAKEN)
        pipe.get(RESENT)
        waiting, taken_count, resent = pipe.execute()
    return int(waiting) + int(taken_count), int(resent or 0)
