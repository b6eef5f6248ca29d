"""The scheduled jobs on the `reprocess` queue (worker.edge.beat): the outbox sweep, the re-send of batches lost in
transit, the re-drive of failed batches and the derived-field refresh. Each opens its own sessions through the
runtime and calls services."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from uuid import UUID

from services.errors import IngestError
from services.reprocess import (
    RefreshedChunk,
    find_failed_batches,
    publish_unpublished_batches,
    redrive_batch,
    refresh_stale_derived_chunk,
    settled_batches,
)
from worker import keys
from worker.custody import records as custody
from worker.custody import recovery as custody_recovery
from worker.edge.app import app
from worker.edge.hand_over import resend_message_async, send_ingest_task
from worker.edge.runtime import Runtime, current_runtime

log = logging.getLogger(__name__)


async def _sweep(runtime: Runtime) -> int:
    async with runtime.session() as session:
        return await publish_unpublished_batches(
            session, publisher=runtime.publisher, older_than=timedelta(seconds=runtime.settings.sweep_grace_s)
        )


@app.task(name=keys.SWEEP_TASK)
def sweep_unpublished() -> int:
    """Publish batches that were committed but never announced (the outbox). Safe to run any time."""
    runtime = current_runtime()
    return runtime.run(_sweep(runtime))


async def _resend_lost(runtime: Runtime) -> int:
    records = await custody_recovery.overdue(runtime.redis, runtime.settings)
    if not records:
        return 0
    messages = {record: await custody_recovery.resendable_message(runtime.redis, record) for record in records}
    batch_ids = {UUID(str(m["batch_id"])) for m in messages.values() if m is not None}
    async with runtime.session() as session:
        on_record = {str(batch_id) for batch_id in await settled_batches(session, list(batch_ids))}
    resent = 0
    for record, message in messages.items():
        if message is None:  # a leftover whose ticket is gone: released only while it still has none
            await custody.release(runtime.redis, custody.Claim(record))
            continue
        if str(message["batch_id"]) in on_record:  # settled; its worker died before releasing
            await custody.release(runtime.redis, custody.claim_of(message))
            continue
        await custody.requeued(runtime.redis, custody.claim_of(message))
        await asyncio.to_thread(send_ingest_task, message)
        await custody.count(runtime.redis, keys.CUSTODY_RESENT)
        log.warning("batch %s left the queue but never reached PostgreSQL (lost in transit); sent again", record)
        resent += 1
    return resent


@app.task(name=keys.RESEND_LOST_TASK)
def resend_lost() -> int:
    """Send again the accepted batches whose message was lost between Redis and a worker (worker.custody)."""
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


@app.task(name=keys.REDRIVE_TASK)
def redrive_failed() -> int:
    """Send `failed` batches back to the ingest queue, each at most `MAX_REDRIVES` times."""
    runtime = current_runtime()
    return runtime.run(_redrive_failed(runtime))


async def _refresh_chunk(runtime: Runtime, after_id: int) -> RefreshedChunk:
    async with runtime.session() as session:
        return await refresh_stale_derived_chunk(
            session, chunk_size=runtime.settings.refresh_chunk_size, after_id=after_id
        )


@app.task(name=keys.REFRESH_TASK)
def refresh_derived() -> bool:
    """Start a refresh of stale derived fields unless one is running: a chain of chunk tasks, one at a time, so
    the `reprocess` queue never holds more than one of them ahead of the sweep and the lost-batch re-send."""
    runtime = current_runtime()
    lock_s = runtime.settings.task_time_limit_s * 2
    if not runtime.run(runtime.redis.set(keys.REFRESH_LOCK, "0", nx=True, ex=lock_s)):
        return False
    refresh_derived_chunk.delay(0)
    return True


@app.task(name=keys.REFRESH_CHUNK_TASK)
def refresh_derived_chunk(after_id: int) -> int:
    """Recompute one chunk of stale derived fields in one transaction, then hand the rest to the next task."""
    runtime = current_runtime()
    chunk = runtime.run(_refresh_chunk(runtime, int(after_id)))
    if chunk.next_after_id is None:
        runtime.run(runtime.redis.delete(keys.REFRESH_LOCK))
    else:
        runtime.run(
            runtime.redis.set(keys.REFRESH_LOCK, str(chunk.next_after_id), ex=runtime.settings.task_time_limit_s * 2)
        )
        refresh_derived_chunk.delay(chunk.next_after_id)
    return chunk.refreshed
