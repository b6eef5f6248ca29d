"""Handing a validated batch over: its body into custody, then the small `ingest.batch` claim-check message
(wire format v2, PRODUCT.md §5). The producer API (worker.client.enqueue) and the re-drive both send this way."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson

from services.errors import BatchConflict, EnqueueFailed, QueueFull
from services.validation import ValidatedBatch, validate_traces
from worker import keys
from worker.custody import accept as custody_accept
from worker.edge.app import app
from worker.redis_connect import shared_client
from worker.settings import get_settings

#: A depth limit no queue reaches: a re-drive sends a batch that was accepted once already.
NO_DEPTH_LIMIT = 2**62


def _ticket_head(batch_id: UUID, source: str, valid: ValidatedBatch) -> tuple[dict[str, Any], bytes]:
    """The claim check's kwargs without its custody number, and their JSON up to that number's value."""
    kwargs: dict[str, Any] = {
        "batch_id": str(batch_id),
        "source": source,
        "enqueued_at": datetime.now(UTC).isoformat(),
        "trace_count": len(valid.traces),
        "content_hash": valid.content_hash,
    }
    return kwargs, orjson.dumps(kwargs)[:-1] + b',"custody_seq":'


def hand_over(valid: ValidatedBatch, *, source: str, batch_id: UUID, max_depth: int) -> str:
    """Custody of the body first, then the claim-check message; the task id. Raises `QueueFull`,
    `BatchConflict`, or the Redis/kombu error that left the outcome unknown."""
    settings = get_settings()
    redis = shared_client()
    kwargs, ticket_head = _ticket_head(batch_id, source, valid)
    accepted = custody_accept.accept(
        redis,
        batch_id=str(batch_id),
        batch_key=keys.batch_key(batch_id),
        content_hash=valid.content_hash,
        key_ttl_s=settings.ingest_batch_key_ttl_s,
        body=valid.body,
        ticket_head=ticket_head,
        queue=settings.ingest_queue,
        max_depth=max_depth,
        counter_key=keys.delivery_counter_key(str(batch_id)),
        replicas=settings.ingest_redis_min_replicas,
        replica_timeout_ms=settings.ingest_redis_replica_timeout_ms,
    )
    if accepted.outcome == custody_accept.QUEUE_FULL:
        depth = accepted.value
        raise QueueFull(depth, max_depth, retry_after=min(60.0, 1.0 + 10.0 * depth / max_depth), batch_id=batch_id)
    if accepted.outcome == custody_accept.CONFLICT:
        raise BatchConflict(batch_id)
    if accepted.replicated < settings.ingest_redis_min_replicas:
        # The master holds the batch but a failover could lose it: not acknowledged. If the master lives on,
        # custody's re-send still delivers it; a retry with the same batch id refreshes the same record (one
        # per batch id) and sends its claim check once replicas confirm, and never stores the batch twice.
        raise EnqueueFailed(
            f"custody of the batch reached {accepted.replicated} of {settings.ingest_redis_min_replicas} "
            f"Redis replicas within {settings.ingest_redis_replica_timeout_ms} ms",
            batch_id,
        )
    # From here on Redis holds the batch: if the send fails (or only its reply is lost), custody's re-send
    # delivers it later, so the producer is told the outcome is unknown, never "not accepted". A retry's
    # claim check names the batch's existing record: an earlier copy still queued finds the same body.
    task = app.send_task(
        keys.INGEST_TASK,
        kwargs={**kwargs, "custody_seq": accepted.value},
        queue=settings.ingest_queue,
        argsrepr=f"{batch_id}, n={len(valid.traces)}",
        kwargsrepr=f"{{source: {source!r}, custody_seq: {accepted.value}}}",
    )
    return str(task.id)


def send_ingest_task(kwargs: dict[str, Any]) -> None:
    """Put an `ingest.batch` message with these kwargs on the ingest queue, as they are (no validation)."""
    app.send_task(keys.INGEST_TASK, kwargs=kwargs, queue=get_settings().ingest_queue)


def resend_message(message: dict[str, Any]) -> None:
    """Send a parked batch's raw payload (the v1 message shape) back through custody, as a new claim check
    (re-drive); its delivery count starts afresh, as for every new custody record. Not subject to the queue's
    depth limit: it was accepted once."""
    settings = get_settings()
    valid = validate_traces(
        message["traces"], max_batch=settings.ingest_max_batch, max_bytes=settings.ingest_max_batch_bytes
    )
    hand_over(valid, source=message["source"], batch_id=UUID(message["batch_id"]), max_depth=NO_DEPTH_LIMIT)


async def resend_message_async(message: dict[str, Any]) -> None:
    await asyncio.to_thread(resend_message, message)
