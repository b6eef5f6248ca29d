"""The producer API (PRODUCT.md §4): validate a batch, hand its body to custody, then send one small
`ingest.batch` claim-check message (wire format v2, §5)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple
from uuid import UUID, uuid4

import orjson
from celery.result import AsyncResult
from kombu.exceptions import OperationalError as KombuOperationalError
from pydantic import TypeAdapter, ValidationError
from redis.exceptions import RedisError

from models.schemas import Source
from services.errors import BatchConflict, BatchRejected, EnqueueFailed, QueueFull, TraceError
from services.validation import ValidatedBatch, validate_traces
from worker.celery_app import app
from worker.client import custody_accept
from worker.redis_connect import shared_client
from worker.settings import get_settings, redact


class BatchReceipt(NamedTuple):
    """Proof that Redis accepted the batch; `task_id` finds the task's result (the stored rows' ids)."""

    batch_id: UUID
    task_id: str
    trace_count: int


def delivery_counter_key(batch_id: str) -> str:
    """Where workers count a batch's deliveries (brokers do not count redeliveries after a crash)."""
    return f"ingest:deliveries:{batch_id}"


def batch_key(batch_id: UUID) -> str:
    """The content hash a batch id was first enqueued with (conflict detection at enqueue time)."""
    return f"ingest:batch:{batch_id}"


_SOURCE = TypeAdapter(Source)


def check_source(source: str) -> None:
    """The same rule the worker applies to the message's `source`."""
    try:
        _SOURCE.validate_python(source, strict=True)
    except ValidationError as error:
        message = error.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        raise BatchRejected([TraceError(None, "source", message)]) from None


def queue_depth() -> int:
    """Batches waiting in the ingest queue (one LLEN)."""
    settings = get_settings()
    return int(shared_client().llen(settings.ingest_queue))


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


def _hand_over(valid: ValidatedBatch, *, source: str, batch_id: UUID, max_depth: int) -> str:
    """Custody of the body first, then the claim-check message; the task id. Raises `QueueFull`,
    `BatchConflict`, or the Redis/kombu error that left the outcome unknown."""
    settings = get_settings()
    redis = shared_client()
    kwargs, ticket_head = _ticket_head(batch_id, source, valid)
    accepted = custody_accept.accept(
        redis,
        batch_id=str(batch_id),
        batch_key=batch_key(batch_id),
        content_hash=valid.content_hash,
        key_ttl_s=settings.ingest_batch_key_ttl_s,
        body=valid.body,
        ticket_head=ticket_head,
        queue=settings.ingest_queue,
        max_depth=max_depth,
        counter_key=delivery_counter_key(str(batch_id)),
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
        "ingest.batch",
        kwargs={**kwargs, "custody_seq": accepted.value},
        queue=settings.ingest_queue,
        argsrepr=f"{batch_id}, n={len(valid.traces)}",
        kwargsrepr=f"{{source: {source!r}, custody_seq: {accepted.value}}}",
    )
    return str(task.id)


def enqueue_batch(traces: Sequence[object], *, source: str, batch_id: UUID | None = None) -> BatchReceipt:
    """Validate `traces` (pydantic models or plain dicts) and enqueue them as one batch.

    Returns once Redis has accepted the batch. Raises `BatchRejected` (nothing enqueued) for invalid input,
    `BatchConflict` if `batch_id` was used for other traces, `QueueFull` when the queue is at its limit
    (nothing enqueued), and `EnqueueFailed` when Redis cannot be reached or does not confirm: then the outcome
    is unknown, and retrying with `EnqueueFailed.batch_id` is safe (it never stores anything twice).
    """
    settings = get_settings()
    check_source(source)
    valid = validate_traces(
        list(traces), max_batch=settings.ingest_max_batch, max_bytes=settings.ingest_max_batch_bytes
    )
    batch_id = batch_id or uuid4()
    try:
        task_id = _hand_over(valid, source=source, batch_id=batch_id, max_depth=settings.ingest_max_queue_depth)
    except (RedisError, KombuOperationalError, OSError) as error:
        raise EnqueueFailed(
            redact(f"Redis did not confirm the batch: {type(error).__name__}: {error}"), batch_id
        ) from None
    return BatchReceipt(batch_id, task_id, len(valid.traces))


def wait_for_outcomes(receipts: Sequence[BatchReceipt], *, timeout: float) -> tuple[int, int]:
    """Wait for each batch's task; (traces stored, traces not stored: rejected, failed or in conflict)."""
    stored = not_stored = 0
    for receipt in receipts:
        result: Any = AsyncResult(receipt.task_id, app=app).get(timeout=timeout, propagate=False)
        if isinstance(result, dict) and result["state"] == "ingested":
            stored += result["count"]
        else:
            not_stored += receipt.trace_count
    return stored, not_stored


async def enqueue_batch_async(traces: Sequence[object], *, source: str, batch_id: UUID | None = None) -> BatchReceipt:
    """`enqueue_batch` for async producers: runs in a thread so the event loop never blocks on Redis."""
    return await asyncio.to_thread(enqueue_batch, traces, source=source, batch_id=batch_id)


def send_ingest_task(kwargs: dict[str, Any]) -> None:
    """Put an `ingest.batch` message with these kwargs on the ingest queue, as they are (no validation)."""
    app.send_task("ingest.batch", kwargs=kwargs, queue=get_settings().ingest_queue)


def resend_message(message: dict[str, Any]) -> None:
    """Send a parked batch's raw payload (the v1 message shape) back through custody, as a new claim check
    (re-drive); its delivery count starts afresh, as for every new custody record. Not subject to the queue's
    depth limit: it was accepted once."""
    settings = get_settings()
    valid = validate_traces(
        message["traces"], max_batch=settings.ingest_max_batch, max_bytes=settings.ingest_max_batch_bytes
    )
    _hand_over(valid, source=message["source"], batch_id=UUID(message["batch_id"]), max_depth=NO_DEPTH_LIMIT)


async def resend_message_async(message: dict[str, Any]) -> None:
    await asyncio.to_thread(resend_message, message)
