"""Thin tasks: each opens one session through the runtime and calls one service."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any
from uuid import UUID

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from models.schemas import IngestResult
from models.tables import BatchState
from services.delivery import body_missing, ingest_message, is_claim_check, park_failed_message
from services.errors import IngestError
from services.reprocess import (
    RefreshedChunk,
    find_failed_batches,
    publish_unpublished_batches,
    redrive_batch,
    refresh_stale_derived_chunk,
    settled_batches,
)
from worker.celery_app import app
from worker.client import custody
from worker.client.enqueue import delivery_counter_key, resend_message_async, send_ingest_task
from worker.retry_policy import decide, is_transient
from worker.runtime import Runtime, current_runtime, replace_abandoned_runtime
from worker.settings import redact

log = logging.getLogger(__name__)

#: How long a batch's delivery counter lives: far beyond the longest retry chain.
DELIVERY_COUNTER_TTL_S = 24 * 3600


def _counter_key(message: dict[str, Any]) -> str:
    return delivery_counter_key(str(message.get("batch_id")))


async def _start(runtime: Runtime, message: dict[str, Any]) -> custody.Delivery:
    """Custody's bookkeeping for this delivery and, for a claim check, its body: one round trip."""
    return await custody.start_delivery(
        runtime.redis,
        custody.record_of(message),
        counter_key=_counter_key(message),
        counter_ttl_s=DELIVERY_COUNTER_TTL_S,
        fetch_body=is_claim_check(message),
    )


async def _deliver(runtime: Runtime, message: dict[str, Any]) -> IngestResult:
    delivery = await _start(runtime, message)
    async with runtime.session() as session:  # the one session of this task, closed on exit
        result = await ingest_message(
            session,
            message,
            body=delivery.body,
            publisher=runtime.publisher,
            limits=runtime.limits,
            attempts=delivery.deliveries,
        )
    if body_missing(message, delivery.body) and result.state == BatchState.FAILED:
        await custody.count(runtime.redis, custody.BODIES_MISSING)
    await custody.release(runtime.redis, custody.record_of(message))  # every outcome is final and in PostgreSQL
    return result


async def _park(runtime: Runtime, message: dict[str, Any], reason: str, *, attempts: int) -> IngestResult:
    record = custody.record_of(message)
    body = await custody.stored_body(runtime.redis, record) if is_claim_check(message) else None
    async with runtime.session() as session:
        result = await park_failed_message(
            session, message, body=body, reason=reason, attempts=attempts, limits=runtime.limits
        )
    await custody.release(runtime.redis, record)
    return result


def _note_requeue(runtime: Runtime, message: dict[str, Any]) -> None:
    """The retry goes to the end of the queue; custody must not take its wait there for a loss. Best effort:
    if Redis is away too, the sweep may send the batch once more, which stores nothing twice."""
    try:
        runtime.run(custody.requeued(runtime.redis, custody.record_of(message)))
    except Exception as error:
        log.warning("batch %s: could not note the retry in custody: %s", message.get("batch_id"), redact(str(error)))


def _deliveries_so_far(runtime: Runtime, message: dict[str, Any], fallback: int) -> int:
    """The batch's delivery count (custody counts it as each delivery starts), or `fallback` if Redis is away."""
    try:
        counted = runtime.run(runtime.redis.get(_counter_key(message)))
    except Exception:
        return fallback
    return int(counted or fallback)


@app.task(bind=True, name="ingest.batch", max_retries=None)  # the delivery budget decides: worker/retry_policy.py
def ingest_batch(self: Task, *args: Any, **message: Any) -> dict[str, Any]:
    """Store one batch and publish its event. Safe to run again: rows are keyed by (batch_id, position).

    Transient errors retry with exponential backoff and full jitter while the batch's delivery budget lasts;
    then, or on any other error, the batch is parked as `failed` with its raw payload instead of being dropped.
    """
    if args:  # never trust the queue: let validation reject the stray arguments by name
        message = {**message, "positional_arguments": list(args)}
    runtime = current_runtime()
    try:
        return runtime.run(_deliver(runtime, message)).model_dump(mode="json")
    except Exception as error:  # the edge decides: retry, or park so that acking never loses the batch
        if isinstance(error, SoftTimeLimitExceeded):
            runtime = replace_abandoned_runtime()
        deliveries = _deliveries_so_far(runtime, message, fallback=self.request.retries + 1)
        decision = decide(error, deliveries=deliveries, settings=runtime.settings)
        if decision.retry_in is not None:
            log.warning(
                "batch %s: %s; delivery %d, retry in %.0f s",
                message.get("batch_id"),
                decision.reason,
                deliveries,
                decision.retry_in,
            )
            _note_requeue(runtime, message)
            raise self.retry(countdown=decision.retry_in) from None
        try:
            return runtime.run(_park(runtime, message, decision.reason, attempts=deliveries)).model_dump(mode="json")
        except Exception as park_error:
            if not is_transient(park_error):
                raise
            # The database is still away: keep the message in the broker rather than lose the batch.
            _note_requeue(runtime, message)
            raise self.retry(countdown=runtime.settings.retry_backoff_max_s) from None


async def _sweep(runtime: Runtime) -> int:
    async with runtime.session() as session:
        return await publish_unpublished_batches(
            session, publisher=runtime.publisher, older_than=timedelta(seconds=runtime.settings.sweep_grace_s)
        )


@app.task(name="reprocess.sweep")
def sweep_unpublished() -> int:
    """Publish batches that were committed but never announced (the outbox). Safe to run any time."""
    runtime = current_runtime()
    return runtime.run(_sweep(runtime))


async def _resend_lost(runtime: Runtime) -> int:
    records = await custody.overdue(runtime.redis, runtime.settings)
    if not records:
        return 0
    messages = {record: await custody.resendable_message(runtime.redis, record) for record in records}
    batch_ids = {UUID(str(m["batch_id"])) for m in messages.values() if m is not None}
    async with runtime.session() as session:
        on_record = {str(batch_id) for batch_id in await settled_batches(session, list(batch_ids))}
    resent = 0
    for record, message in messages.items():
        if message is None or str(message["batch_id"]) in on_record:  # settled; its worker died before releasing
            await custody.release(runtime.redis, record)
            continue
        await custody.requeued(runtime.redis, record)
        await asyncio.to_thread(send_ingest_task, message)
        await custody.count(runtime.redis, custody.RESENT)
        log.warning("batch %s left the queue but never reached PostgreSQL (lost in transit); sent again", record)
        resent += 1
    return resent


@app.task(name="reprocess.resend_lost")
def resend_lost() -> int:
    """Send again the accepted batches whose message was lost between Redis and a worker (see worker.client.custody)."""
    runtime = current_runtime()
    return runtime.run(_resend_lost(runtime))


async def _redrive_failed(runtime: Runtime) -> int:
    max_redrives = runtime.settings.max_redrives
    async with runtime.session() as session:
        failed = await find_failed_batches(session, max_redrives=max_redrives)
    sent = 0
    for batch_id in failed:
        try:
            async with runtime.session() as session:  # one session per batch: each re-drive commits on its own
                sent += await redrive_batch(session, batch_id, resend=resend_message_async, max_redrives=max_redrives)
        except IngestError as error:  # e.g. the limits were lowered since: this batch waits for an operator
            log.error("batch %s could not be re-driven: %s", batch_id, error)
    return sent


@app.task(name="reprocess.redrive")
def redrive_failed() -> int:
    """Send `failed` batches back to the ingest queue, each at most `MAX_REDRIVES` times."""
    runtime = current_runtime()
    return runtime.run(_redrive_failed(runtime))


#: While a refresh chain runs, this key names it; a second chain (the next beat tick) does not start.
REFRESH_LOCK_KEY = "ingest:refresh:running"


async def _refresh_chunk(runtime: Runtime, after_id: int) -> RefreshedChunk:
    async with runtime.session() as session:
        return await refresh_stale_derived_chunk(
            session, chunk_size=runtime.settings.refresh_chunk_size, after_id=after_id
        )


@app.task(name="reprocess.refresh_derived")
def refresh_derived() -> bool:
    """Start a refresh of stale derived fields unless one is running: a chain of chunk tasks, one at a time, so
    the `reprocess` queue never holds more than one of them ahead of the sweep and the lost-batch re-send."""
    runtime = current_runtime()
    lock_s = runtime.settings.task_time_limit_s * 2
    if not runtime.run(runtime.redis.set(REFRESH_LOCK_KEY, "0", nx=True, ex=lock_s)):
        return False
    refresh_derived_chunk.delay(0)
    return True


@app.task(name="reprocess.refresh_derived_chunk")
def refresh_derived_chunk(after_id: int) -> int:
    """Recompute one chunk of stale derived fields in one transaction, then hand the rest to the next task."""
    runtime = current_runtime()
    chunk = runtime.run(_refresh_chunk(runtime, int(after_id)))
    if chunk.next_after_id is None:
        runtime.run(runtime.redis.delete(REFRESH_LOCK_KEY))
    else:
        runtime.run(
            runtime.redis.set(REFRESH_LOCK_KEY, str(chunk.next_after_id), ex=runtime.settings.task_time_limit_s * 2)
        )
        refresh_derived_chunk.delay(chunk.next_after_id)
    return chunk.refreshed
