"""Custody takes a batch (worker.client.custody): the producer's side, one round trip before the claim check
is sent. One record per batch id: a retry of a batch in custody refreshes its record instead of adding one."""

from __future__ import annotations

from typing import NamedTuple
from uuid import uuid4

from redis import Redis

from worker.client import custody_scripts as scripts
from worker.client.custody import PREFIX, RECORDS, SEQ, TAKEN, WAITING

INCOMING_TTL_S = 60
#: What `accept` returns as its outcome.
NEW_BATCH, SAME_BATCH_AGAIN, CONFLICT, QUEUE_FULL = 1, 0, -1, -2


class Accepted(NamedTuple):
    """What `accept` did: `outcome` is NEW_BATCH, SAME_BATCH_AGAIN, CONFLICT or QUEUE_FULL; `value` is the
    batch's record (new, or the one a retry refreshed), or the depth when the queue is full."""

    outcome: int
    value: int
    #: Replicas that confirmed the custody writes (only counted when `accept` was asked to wait for some).
    replicated: int = 0


def accept(
    redis: Redis,
    *,
    batch_id: str,
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
    id names other content; a batch already in custody keeps its one record, refreshed. `ticket_head` is the
    ticket's JSON up to the value of `custody_seq`; the batch's delivery counter (`counter_key`) starts
    afresh. One round trip; the body is written once.

    With `replicas`, a WAIT on the same connection follows (WAIT counts only the writes of its own
    connection, so it must share the pipeline's): `Accepted.replicated` is how many replicas confirmed.
    """
    incoming = f"{PREFIX}:incoming:{uuid4().hex}"  # expires by itself if the script never runs
    keys = [batch_key, SEQ, WAITING, incoming, queue, counter_key, TAKEN, RECORDS]
    args: list[bytes | str | int] = [content_hash, key_ttl_s, ticket_head, max_depth, PREFIX, batch_id]
    # No MULTI: the script checks everything itself, and a lone `incoming` key expires on its own.
    with redis.pipeline(transaction=False) as pipe:
        pipe.set(incoming, body, ex=INCOMING_TTL_S)
        pipe.eval(scripts.ACCEPT, len(keys), *keys, *args)
        if replicas:
            pipe.wait(replicas, replica_timeout_ms)
        _, (outcome, value), *replicated = pipe.execute()
    return Accepted(int(outcome), int(value), int(replicated[0]) if replicated else 0)
