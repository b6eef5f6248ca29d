"""Custody of accepted batches until PostgreSQL holds them (PRODUCT.md §5, §8: nothing accepted is ever lost):
each batch's body and ticket under one record per batch id, a delivery's start, requeue and release, checked
against the batch and content its message names. How and why: docs/architecture.md ("Custody"); the keys:
worker.keys; the producer's side: `accept`, the search for lost records: `recovery`, the Lua: `scripts`."""

from __future__ import annotations

from typing import Any, NamedTuple, cast

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.client import Pipeline as AsyncPipeline

from worker import keys
from worker.custody import scripts

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
    deliveries and fetch the body, in one round trip. A record that is not the claim's is left alone.

    The body comes from a GET in the script's MULTI (as atomic as the script itself), not from the script: Redis
    spent ~4 ms of its CPU handing a 2.8 MB body out of Lua, ~1 ms for the GET (measured)."""
    script_keys = [
        keys.CUSTODY_WAITING,
        keys.CUSTODY_TAKEN,
        keys.CUSTODY_HORIZON,
        counter_key,
        keys.custody_ticket_key(claim.record),
    ]
    number = claim.record if claim.content_hash else ""  # a claim check's number is its message's place
    async with redis.pipeline(transaction=True) as multi:
        multi.eval(
            scripts.START_DELIVERY,
            len(script_keys),
            *script_keys,
            claim.record,
            counter_ttl_s,
            claim.batch_id,
            claim.content_hash,
            number,
        )
        if fetch_body:
            multi.get(keys.custody_body_key(claim.record))
        (deliveries, refused), *fetched = await multi.execute()
    body = fetched[0] if fetched and int(refused) == 0 else None  # another batch's body is never used
    return Delivery(int(deliveries), body, foreign=int(refused) == _FOREIGN)


def received_by(redis: Redis, record: str, worker_id: str) -> None:
    """Note which worker received the record's message (before it starts), so its death is noticed."""
    redis.hset(keys.CUSTODY_OWNERS, record, worker_id)


def forget_owner(redis: Redis, worker_id: str) -> None:
    """Drop every owner entry of a worker that stopped cleanly."""
    held = [record for record, owner in redis.hscan_iter(keys.CUSTODY_OWNERS) if owner.decode() == worker_id]
    if held:
        redis.hdel(keys.CUSTODY_OWNERS, *held)


async def requeued(redis: AsyncRedis, claim: Claim) -> None:
    """Note that the claim's record goes back to the end of the queue (before its message is sent again), if
    the record is the claim's."""
    record = claim.record
    script_keys = [
        keys.CUSTODY_SEQ,
        keys.CUSTODY_WAITING,
        keys.CUSTODY_TAKEN,
        keys.custody_ticket_key(record),
        keys.custody_legacy_payload_key(record),
        keys.CUSTODY_OWNERS,
    ]
    await redis.eval(scripts.REQUEUE, len(script_keys), *script_keys, record, claim.batch_id, claim.content_hash)


async def release(redis: AsyncRedis, claim: Claim) -> bool:
    """PostgreSQL holds the batch (stored, rejected or parked as failed): the claim's record and its body go,
    if the record is the claim's. True if released."""
    async with redis.pipeline(transaction=False) as pipe:
        queue_release(pipe, claim)
        (released,) = await pipe.execute()
    return bool(released)


def queue_release(pipe: AsyncPipeline, claim: Claim) -> None:
    """`release` as one command of the caller's pipeline (its answer: 1 if released), so that what the caller
    records of the same outcome travels in the same round trip."""
    record = claim.record
    script_keys = [
        keys.custody_body_key(record),
        keys.custody_ticket_key(record),
        keys.custody_legacy_payload_key(record),
        keys.CUSTODY_WAITING,
        keys.CUSTODY_TAKEN,
        keys.CUSTODY_OWNERS,
        keys.CUSTODY_RECORDS,
    ]
    pipe.eval(scripts.RELEASE, len(script_keys), *script_keys, record, claim.batch_id, claim.content_hash)


async def stored_body(redis: AsyncRedis, claim: Claim) -> bytes | None:
    """The body of the claim's record, if the record is the claim's (a GET beside the check, as in
    `start_delivery`)."""
    async with redis.pipeline(transaction=True) as multi:
        multi.eval(scripts.IS_OURS, 1, keys.custody_ticket_key(claim.record), claim.batch_id, claim.content_hash)
        multi.get(keys.custody_body_key(claim.record))
        ours, body = await multi.execute()
    return cast(bytes | None, body) if ours else None  # the client does not decode responses


async def count(redis: AsyncRedis, counter: str) -> None:
    """Add one to a custody counter (`keys.CUSTODY_RESENT`, `keys.CUSTODY_BODIES_MISSING`)."""
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
        pipe.zcard(keys.CUSTODY_WAITING)
        pipe.zcard(keys.CUSTODY_TAKEN)
        pipe.get(keys.CUSTODY_RESENT)
        pipe.get(keys.CUSTODY_BODIES_MISSING)
        waiting, taken, resent, missing = pipe.execute()
    return CustodyFigures(int(waiting) + int(taken), int(resent or 0), int(missing or 0))
