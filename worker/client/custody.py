"""Custody of accepted batches until PostgreSQL holds them (PRODUCT.md §5, §8: nothing accepted is ever lost).

Custody holds each accepted batch's **body** (the traces' JSON, encoded once by the producer) and a small
**ticket** (the `ingest.batch` kwargs); the Celery message is only a claim check naming the record by its
sequence number. So a batch travels through Redis once, and a lost message can always be sent again.

Why the record must outlive the message: kombu's Redis transport pops a message (BRPOP) and only then records it
as unacknowledged, so a worker host that dies in between loses that message for good. The scheduled
`reprocess.resend_lost` job sends the ticket again for a record whose message has left the queue, that no task
has touched for longer than any live delivery can take, and that PostgreSQL does not hold. A batch that was only
slow is then delivered twice, which idempotent ingest makes harmless.

The queue is first in, first out, so "has left the queue" needs no scan of the queue: a record waits at a
position (a number from `seq`), every delivery raises the horizon to its own message's number, and an empty queue
raises it to the last number handed out. Every record waiting at or below the horizon has left the queue.

**One record per batch id** (PRODUCT.md §8.13): a producer's retry of a batch in custody (after `EnqueueFailed`,
say) refreshes that record instead of adding one: same body, the record waits again at the tail for the claim
check the retry sends, which names the same record; if that message is lost too, the re-send brings the record's
ticket back. Only a new record counts against the depth limit, which counts the records in custody, not only
the queued messages. A delivery raises the horizon to its message's number, never to the record's newer
position: an earlier copy must not make the backlog queued between the two copies count as out of the queue.

**A record names its batch**: its ticket holds the batch id and content hash. After Redis lost writes (a
failover without replicas, a crash) numbers repeat, so a message taken before the loss may name a number that
now holds another batch. A record is used (started, its body read) and released only for a message naming the
same batch and content (`Claim`); such a stale message finds no body for its own batch, and a new record never
takes a number whose ticket or body is still there.

Keys (`ingest:custody:`): `seq` (counter), `waiting` (record → queue position), `taken` (record → Redis time it
was last seen leaving the queue or starting), `owners` (record → the worker that received its message),
`records` (batch id → its record), `horizon`, `body:<record>`, `ticket:<record>`, `resent` and `bodies_missing`
(counters). Messages of wire format v1 (traces inline, queued by an older version) have records named by their
batch id with the whole message under `payload:<batch id>`; they are released the same way.
The scripts build record keys from the prefix: Redis Cluster is not supported (kombu refuses it as a broker).
The producer's side is `custody_accept`, the search for lost records `custody_recovery`, the Lua `custody_scripts`.
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from worker.client import custody_scripts as scripts

PREFIX = "ingest:custody"
SEQ, WAITING, TAKEN, HORIZON, RESENT, BODIES_MISSING, OWNERS, RECORDS = (
    f"{PREFIX}:{name}"
    for name in ("seq", "waiting", "taken", "horizon", "resent", "bodies_missing", "owners", "records")
)
#: What `START_DELIVERY` answers when the record names another batch (1: the record is gone, 0: it is used).
_FOREIGN = 2


class Claim(NamedTuple):
    """The custody record a delivered message names, and what that record's ticket must say for the message to
    use it: a claim check's batch id and content hash. A v1 record is named by its batch id and has no ticket:
    a claim of a name alone matches only a record without a ticket (v1, or a leftover whose ticket is gone)."""

    record: str
    batch_id: str = ""
    content_hash: str = ""


class Delivery(NamedTuple):
    """A delivery that started: how many the batch has had, and its body (None when custody has none)."""

    deliveries: int
    body: bytes | None
    #: The record the message names holds another batch (Redis lost writes, and its number was handed out
    #: again): the delivery has no body, and that record was not touched.
    foreign: bool = False


def body_key(record: str) -> str:
    return f"{PREFIX}:body:{record}"


def ticket_key(record: str) -> str:
    return f"{PREFIX}:ticket:{record}"


def legacy_payload_key(record: str) -> str:
    """Where a v1 record keeps its whole message (traces inline)."""
    return f"{PREFIX}:payload:{record}"


def _custody_seq(message: dict[str, Any]) -> int | None:
    seq = message.get("custody_seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def record_of(message: dict[str, Any]) -> str:
    """The custody record a task message belongs to: its sequence number (v2) or its batch id (v1)."""
    seq = _custody_seq(message)
    return str(seq) if seq is not None else str(message.get("batch_id"))


def claim_of(message: dict[str, Any]) -> Claim:
    """What a task message may use of custody: its record, checked against the batch and content it names."""
    content_hash = message.get("content_hash")
    if _custody_seq(message) is None or not isinstance(content_hash, str) or not content_hash:
        return Claim(record_of(message))
    return Claim(record_of(message), str(message.get("batch_id")), content_hash)


async def start_delivery(
    redis: AsyncRedis, claim: Claim, *, counter_key: str, counter_ttl_s: int, fetch_body: bool
) -> Delivery:
    """Note that a delivery of the claim's record started (its message left the queue), count the batch's
    deliveries and fetch the body, in one round trip. A record that is not the claim's is left alone."""
    keys = [WAITING, TAKEN, HORIZON, counter_key, body_key(claim.record), ticket_key(claim.record)]
    number = claim.record if claim.content_hash else ""  # a claim check's number is its message's place
    deliveries, body, refused = await redis.eval(
        scripts.START_DELIVERY,
        len(keys),
        *keys,
        claim.record,
        counter_ttl_s,
        "1" if fetch_body else "0",
        claim.batch_id,
        claim.content_hash,
        number,
    )
    return Delivery(int(deliveries), body, foreign=int(refused) == _FOREIGN)


def received_by(redis: Redis, record: str, worker_id: str) -> None:
    """Note which worker received the record's message (before it starts), so its death is noticed."""
    redis.hset(OWNERS, record, worker_id)


def forget_owner(redis: Redis, worker_id: str) -> None:
    """Drop every owner entry of a worker that stopped cleanly."""
    held = [record for record, owner in redis.hscan_iter(OWNERS) if owner.decode() == worker_id]
    if held:
        redis.hdel(OWNERS, *held)


async def requeued(redis: AsyncRedis, claim: Claim) -> None:
    """Note that the claim's record goes back to the end of the queue (before its message is sent again), if
    the record is the claim's."""
    record = claim.record
    keys = [SEQ, WAITING, TAKEN, ticket_key(record), legacy_payload_key(record), OWNERS]
    await redis.eval(scripts.REQUEUE, len(keys), *keys, record, claim.batch_id, claim.content_hash)


async def release(redis: AsyncRedis, claim: Claim) -> bool:
    """PostgreSQL holds the batch (stored, rejected or parked as failed): the claim's record and its body go,
    if the record is the claim's. True if released."""
    record = claim.record
    keys = [body_key(record), ticket_key(record), legacy_payload_key(record), WAITING, TAKEN, OWNERS, RECORDS]
    released = await redis.eval(scripts.RELEASE, len(keys), *keys, record, claim.batch_id, claim.content_hash)
    return bool(released)


async def stored_body(redis: AsyncRedis, claim: Claim) -> bytes | None:
    """The body of the claim's record, if the record is the claim's."""
    keys = [body_key(claim.record), ticket_key(claim.record)]
    body = await redis.eval(scripts.STORED_BODY, len(keys), *keys, claim.batch_id, claim.content_hash)
    return cast(bytes | None, body)  # the client does not decode responses


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
