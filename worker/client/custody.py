"""Custody of accepted batches until PostgreSQL holds them (PRODUCT.md §5, §8: nothing accepted is ever lost).

Custody holds each accepted batch's **body** (the traces' JSON, encoded once by the producer) and a small
**ticket** (the `ingest.batch` kwargs); the Celery message is only a claim check naming the record by its
sequence number. So a batch travels through Redis once, and a lost message can always be sent again.

Why the record must outlive the message: kombu's Redis transport pops a message (BRPOP) and only then records it
as unacknowledged, so a worker host that dies in between loses that message for good. The scheduled
`reprocess.resend_lost` job sends the ticket again for a record whose message has left the queue, that no task
has touched for longer than any live delivery can take, and that PostgreSQL does not hold. A batch that was only
slow is then delivered twice, which idempotent ingest makes harmless.

The queue is first in, first out, so "has left the queue" needs no scan of the queue: each record gets a
sequence number, every delivery raises the horizon to its own record's number, and an empty queue raises it to
the last number handed out. Every record at or below the horizon has left the queue. Records are keyed by
message, not by batch: a producer that retries a batch gets a second record at the tail, and the first copy's
delivery moves the horizon only to where that copy stood.

Keys (`ingest:custody:`): `seq` (counter), `waiting` (record → queue position), `taken` (record → Redis time it
was last seen leaving the queue or starting), `owners` (record → the worker that received its message),
`horizon`,
`body:<record>`, `ticket:<record>`, `resent` and `bodies_missing` (counters). Messages of wire format v1
(traces inline, queued by an older version) have records named by their batch id with the whole message under
`payload:<batch id>`; they are released the same way.
The scripts build record keys from the prefix: Redis Cluster is not supported (kombu refuses it as a broker).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple, cast
from uuid import uuid4

import orjson
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from worker.celery_app import unacked_mutex_expire_s
from worker.client import custody_scripts as scripts
from worker.heartbeat import PREFIX as HEARTBEAT_PREFIX
from worker.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "ingest:custody"
SEQ, WAITING, TAKEN, HORIZON, RESENT, BODIES_MISSING, OWNERS = (
    f"{PREFIX}:{name}" for name in ("seq", "waiting", "taken", "horizon", "resent", "bodies_missing", "owners")
)
INCOMING_TTL_S = 60
#: What `accept` returns as its outcome.
NEW_BATCH, SAME_BATCH_AGAIN, CONFLICT, QUEUE_FULL = 1, 0, -1, -2


class Accepted(NamedTuple):
    """What `accept` did: `outcome` is NEW_BATCH, SAME_BATCH_AGAIN, CONFLICT or QUEUE_FULL; `value` is the new
    record's sequence number, or the queue depth when the queue is full."""

    outcome: int
    value: int
    #: Replicas that confirmed the custody writes (only counted when `accept` was asked to wait for some).
    replicated: int = 0


class Delivery(NamedTuple):
    """A delivery that started: how many the batch has had, and its body (None when custody has none)."""

    deliveries: int
    body: bytes | None


def body_key(record: str) -> str:
    return f"{PREFIX}:body:{record}"


def ticket_key(record: str) -> str:
    return f"{PREFIX}:ticket:{record}"


def legacy_payload_key(record: str) -> str:
    """Where a v1 record keeps its whole message (traces inline)."""
    return f"{PREFIX}:payload:{record}"


def record_of(message: dict[str, Any]) -> str:
    """The custody record a task message belongs to: its sequence number (v2) or its batch id (v1)."""
    seq = message.get("custody_seq")
    return str(seq) if isinstance(seq, int) and not isinstance(seq, bool) else str(message.get("batch_id"))


def lost_after_s(settings: Settings) -> int:
    """How long a record out of the queue may go untouched before it counts as lost: a dead host's unacked
    messages come back after the visibility timeout (later if it died holding the scan lock), and a message a
    live worker reserved waits at most one task ahead of it."""
    return settings.visibility_timeout_s + unacked_mutex_expire_s(settings) + settings.task_time_limit_s


def accept(
    redis: Redis,
    *,
    batch_key: str,
    content_hash: str,
    key_ttl_s: int,
    body: bytes,
    ticket_head: bytes,
    queue: str,
    max_depth: int,
    counter_key: str,
    replicas: int = 0,
    replica_timeout_ms: int = 0,
) -> Accepted:
    """Take custody of a batch before its claim-check message is sent, unless the queue is full or the batch
    id names other content. `ticket_head` is the ticket's JSON up to the value of `custody_seq`; the batch's
    delivery counter (`counter_key`) starts afresh. One round trip; the body is written once.

    With `replicas`, a WAIT on the same connection follows (WAIT counts only the writes of its own
    connection, so it must share the pipeline's): `Accepted.replicated` is how many replicas confirmed.
    """
    incoming = f"{PREFIX}:incoming:{uuid4().hex}"  # expires by itself if the script never runs
    keys = [batch_key, SEQ, WAITING, incoming, queue, counter_key]
    # No MULTI: the script checks everything itself, and a lone `incoming` key expires on its own.
    with redis.pipeline(transaction=False) as pipe:
        pipe.set(incoming, body, ex=INCOMING_TTL_S)
        pipe.eval(scripts.ACCEPT, len(keys), *keys, content_hash, key_ttl_s, ticket_head, max_depth, PREFIX)
        if replicas:
            pipe.wait(replicas, replica_timeout_ms)
        _, (outcome, value), *replicated = pipe.execute()
    return Accepted(int(outcome), int(value), int(replicated[0]) if replicated else 0)


async def start_delivery(
    redis: AsyncRedis, record: str, *, counter_key: str, counter_ttl_s: int, fetch_body: bool
) -> Delivery:
    """Note that a delivery of the record's message started (it left the queue), count the batch's deliveries
    and fetch the body, in one round trip."""
    keys = [WAITING, TAKEN, HORIZON, counter_key, body_key(record)]
    deliveries, body = await redis.eval(
        scripts.START_DELIVERY, len(keys), *keys, record, counter_ttl_s, "1" if fetch_body else "0"
    )
    return Delivery(int(deliveries), body)


def received_by(redis: Redis, record: str, worker_id: str) -> None:
    """Note which worker received the record's message (before it starts), so its death is noticed."""
    redis.hset(OWNERS, record, worker_id)


def forget_owner(redis: Redis, worker_id: str) -> None:
    """Drop every owner entry of a worker that stopped cleanly."""
    held = [record for record, owner in redis.hscan_iter(OWNERS) if owner.decode() == worker_id]
    if held:
        redis.hdel(OWNERS, *held)


async def requeued(redis: AsyncRedis, record: str) -> None:
    """Note that the record's message goes back to the end of the queue (before sending it)."""
    keys = [SEQ, WAITING, TAKEN, ticket_key(record), legacy_payload_key(record), OWNERS]
    await redis.eval(scripts.REQUEUE, len(keys), *keys, record)


async def release(redis: AsyncRedis, record: str) -> None:
    """PostgreSQL holds the batch (stored, rejected or parked as failed): the record and its body go."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(body_key(record), ticket_key(record), legacy_payload_key(record))
        pipe.zrem(WAITING, record)
        pipe.zrem(TAKEN, record)
        pipe.hdel(OWNERS, record)
        await pipe.execute()


async def overdue(
    redis: AsyncRedis, settings: Settings, *, untouched_for_s: int | None = None, limit: int = 100
) -> list[str]:
    """Records out of the queue and untouched for `lost_after_s` (or `untouched_for_s`), or whose delivery's
    worker has stopped beating (worker.heartbeat): stored but not released (their worker died in between),
    lost, or taken by a worker that died."""
    keys = [SEQ, WAITING, TAKEN, HORIZON, settings.ingest_queue, OWNERS]
    quiet_for = lost_after_s(settings) if untouched_for_s is None else untouched_for_s
    ids = await redis.eval(scripts.OVERDUE, len(keys), *keys, quiet_for, limit, HEARTBEAT_PREFIX)
    return [value.decode() if isinstance(value, bytes) else str(value) for value in ids]


async def stored_body(redis: AsyncRedis, record: str) -> bytes | None:
    return cast(bytes | None, await redis.get(body_key(record)))  # the client does not decode responses


async def resendable_message(redis: AsyncRedis, record: str) -> dict[str, Any] | None:
    """The task kwargs to send again for a record: its ticket (v2) or its whole message (v1); None if gone."""
    ticket, legacy = await redis.mget(ticket_key(record), legacy_payload_key(record))
    raw = ticket or legacy
    return None if raw is None else dict(orjson.loads(raw))


async def count(redis: AsyncRedis, counter: str) -> None:
    """Add one to a custody counter (`RESENT`, `BODIES_MISSING`)."""
    await redis.incr(counter)


class CustodyFigures(NamedTuple):
    #: Batches accepted and not yet in PostgreSQL (queued, running, or lost and about to be sent again).
    in_transit: int
    #: Lost messages sent again so far.
    resent: int
    #: Deliveries that found no body and no stored batch (parked as `failed`).
    bodies_missing: int


def figures(redis: Redis) -> CustodyFigures:
    with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(WAITING)
        pipe.zcard(TAKEN)
        pipe.get(RESENT)
        pipe.get(BODIES_MISSING)
        waiting, taken, resent, missing = pipe.execute()
    return CustodyFigures(int(waiting) + int(taken), int(resent or 0), int(missing or 0))
