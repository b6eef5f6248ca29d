"""The producer API (PRODUCT.md §4): validate a batch, then place it on Redis as one `ingest.batch` task."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple
from uuid import UUID, uuid4

from celery.result import AsyncResult
from kombu.exceptions import OperationalError as KombuOperationalError
from pydantic import TypeAdapter, ValidationError
from redis import Redis
from redis.exceptions import RedisError

from models.schemas import Source
from services.errors import BatchConflict, BatchRejected, EnqueueFailed, QueueFull, TraceError
from services.validation import validate_traces
from worker import custody
from worker.celery_app import app
from worker.settings import get_settings, redact


class BatchReceipt(NamedTuple):
    """Proof that Redis accepted the batch; `task_id` finds the task's result (the stored rows' ids)."""

    batch_id: UUID
    task_id: str
    trace_count: int


@lru_cache
def redis_client(url: str) -> Redis:
    """One Redis client (and connection pool) per URL per process, for producers and operator commands."""
    return Redis.from_url(url, socket_connect_timeout=3, socket_timeout=5)


def delivery_counter_key(message: dict[str, Any]) -> str:
    """Where workers count a batch's deliveries (brokers do not count redeliveries after a crash)."""
    return f"ingest:deliveries:{message.get('batch_id')}"


def batch_key(batch_id: UUID) -> str:
    """The content hash a batch id was first enqueued with (conflict detection at enqueue time)."""
    return f"ingest:batch:{batch_id}"


_SOURCE = TypeAdapter(Source)


def _check_source(source: str) -> None:
    """The same rule the worker applies to the message's `source`."""
    try:
        _SOURCE.validate_python(source, strict=True)
    except ValidationError as error:
        message = error.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        raise BatchRejected([TraceError(None, "source", message)]) from None


def queue_depth() -> int:
    """Batches waiting in the ingest queue (one LLEN: cheap enough to ask before every enqueue)."""
    settings = get_settings()
    return int(redis_client(settings.redis_url.get_secret_value()).llen(settings.ingest_queue))


def enqueue_batch(traces: Sequence[object], *, source: str, batch_id: UUID | None = None) -> BatchReceipt:
    """Validate `traces` (pydantic models or plain dicts) and enqueue them as one batch.

    Returns once Redis has accepted the message. Raises `BatchRejected` (nothing enqueued) for invalid input,
    `BatchConflict` if `batch_id` was used for other traces, `QueueFull` when the queue is over its limit and
    `EnqueueFailed` when Redis cannot be reached. Retrying with the same `batch_id` and traces is safe.
    """
    settings = get_settings()
    _check_source(source)
    valid = validate_traces(
        list(traces), max_batch=settings.ingest_max_batch, max_bytes=settings.ingest_max_batch_bytes
    )
    batch_id = batch_id or uuid4()
    redis = redis_client(settings.redis_url.get_secret_value())
    try:
        depth = queue_depth()
        if depth >= settings.ingest_max_queue_depth:
            raise QueueFull(
                depth,
                settings.ingest_max_queue_depth,
                retry_after=min(60.0, 1.0 + 10.0 * depth / settings.ingest_max_queue_depth),
            )
        enqueued_at = datetime.now(UTC).isoformat()
        kwargs_json = custody.task_kwargs_json(str(batch_id), source, enqueued_at, valid.traces_json)
        # Custody first: once the message is on the queue, Redis already holds what it takes to re-send it.
        accepted_as = custody.accept(
            redis,
            batch_key=batch_key(batch_id),
            batch_id=str(batch_id),
            content_hash=valid.content_hash,
            key_ttl_s=settings.ingest_batch_key_ttl_s,
            kwargs_json=kwargs_json,
        )
        if accepted_as == custody.CONFLICT:
            raise BatchConflict(batch_id)
        try:
            task = app.send_task(
                "ingest.batch",
                kwargs={
                    "batch_id": str(batch_id),
                    "source": source,
                    "traces": valid.traces,
                    "enqueued_at": enqueued_at,
                },
                queue=settings.ingest_queue,
            )
        except BaseException:
            if accepted_as == custody.NEW_BATCH:
                redis.delete(batch_key(batch_id))
                custody.forget(redis, str(batch_id))
            raise
    except (RedisError, KombuOperationalError, OSError) as error:
        raise EnqueueFailed(redact(f"Redis did not accept the batch: {type(error).__name__}: {error}")) from None
    return BatchReceipt(batch_id, task.id, len(valid.traces))


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
    """Put a stored raw message back on the ingest queue (re-drive); its delivery count starts afresh."""
    settings = get_settings()
    redis_client(settings.redis_url.get_secret_value()).delete(delivery_counter_key(message))
    send_ingest_task(message)


async def resend_message_async(message: dict[str, Any]) -> None:
    await asyncio.to_thread(resend_message, message)
