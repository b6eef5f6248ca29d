"""The producer API (PRODUCT.md §4): validate a batch, hand its body to custody, then send one small
`ingest.batch` claim-check message (wire format v2, §5)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, NamedTuple
from uuid import UUID, uuid4

from celery.result import AsyncResult
from kombu.exceptions import OperationalError as KombuOperationalError
from pydantic import TypeAdapter, ValidationError
from redis.exceptions import RedisError

from models.schemas import Source
from services.errors import BatchRejected, EnqueueFailed, TraceError
from services.validation import ValidatedBatch, validate_traces
from worker.edge.app import app
from worker.edge.hand_over import hand_over
from worker.redis_connect import shared_client
from worker.settings import get_settings, redact


class BatchReceipt(NamedTuple):
    """Proof that Redis accepted the batch; `task_id` finds the task's result (the stored rows' ids)."""

    batch_id: UUID
    task_id: str
    trace_count: int


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
    return _hand_over(valid, source, batch_id or uuid4())


def enqueue_validated(valid: ValidatedBatch, *, source: str, batch_id: UUID | None = None) -> BatchReceipt:
    """`enqueue_batch` for a batch validated already (`validate_traces`, `validate_json_array`): its source is
    checked, its body handed over as it is."""
    check_source(source)
    return _hand_over(valid, source, batch_id or uuid4())


def _hand_over(valid: ValidatedBatch, source: str, batch_id: UUID) -> BatchReceipt:
    settings = get_settings()
    try:
        task_id = hand_over(valid, source=source, batch_id=batch_id, max_depth=settings.ingest_max_queue_depth)
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


async def enqueue_validated_async(valid: ValidatedBatch, *, source: str, batch_id: UUID | None = None) -> BatchReceipt:
    """`enqueue_validated` for async producers (in a thread, like `enqueue_batch_async`)."""
    return await asyncio.to_thread(enqueue_validated, valid, source=source, batch_id=batch_id)
