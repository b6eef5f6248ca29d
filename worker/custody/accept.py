"""Custody takes a batch (worker.custody.records): the producer's side, one round trip before the claim check
is sent. One record per batch id: a retry of a batch in custody refreshes its record instead of adding one."""

from __future__ import annotations

from typing import NamedTuple
from uuid import uuid4

from redis import Redis

from worker import keys
from worker.custody import scripts

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
    incoming = f"{keys.CUSTODY}:incoming:{uuid4().hex}"  # expires by itself if the script never runs
    script_keys = [
        batch_key,
        keys.CUSTODY_SEQ,
        keys.CUSTODY_WAITING,
        incoming,
        queue,
        counter_key,
        keys.CUSTODY_TAKEN,
        keys.CUSTODY_RECORDS,
    ]
    args: list[bytes | str | int] = [content_hash, key_ttl_s, ticket_head, max_depth, keys.CUSTODY, batch_id]
    # No MULTI: the script checks everything itself, and a lone `incoming` key expires on its own.
    with redis.pipeline(transaction=False) as pipe:
        pipe.set(incoming, body, ex=INCOMING_TTL_S)
        pipe.eval(scripts.ACCEPT, len(script_keys), *script_keys, *args)
        if replicas:
            pipe.wait(replicas, replica_timeout_ms)
        _, (outcome, value), *replicated = pipe.execute()
    return Accepted(int(outcome), int(value), int(replicated[0]) if replicated else 0)
