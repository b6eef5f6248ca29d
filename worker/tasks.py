"""The ingest task, `ingest.batch`: thin, it opens one session through the runtime and calls one service; the
delivery budget decides between retrying and parking. The scheduled jobs are in `worker.scheduled_tasks`."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from models.messages import IngestResult
from models.tables import BatchState
from services.delivery import ingest_message
from services.message_parsing import body_missing, is_claim_check
from services.parking import park_failed_message, park_unread
from worker.celery_app import app
from worker.client import custody
from worker.client.enqueue import delivery_counter_key
from worker.retry_policy import decide, is_transient
from worker.runtime import Runtime, current_runtime, replace_abandoned_runtime
from worker.settings import redact

log = logging.getLogger(__name__)

#: How long a batch's delivery counter lives: far beyond the longest retry chain.
DELIVERY_COUNTER_TTL_S = 24 * 3600


def _counter_key(message: dict[str, Any]) -> str:
    return delivery_counter_key(str(message.get("batch_id")))


async def _start(runtime: Runtime, message: dict[str, Any]) -> custody.Delivery:
    """Custody's bookkeeping for this delivery and, for a claim check, its body: one round trip. Only the
    record of this message's batch and content is used (custody.Claim)."""
    delivery = await custody.start_delivery(
        runtime.redis,
        custody.claim_of(message),
        counter_key=_counter_key(message),
        counter_ttl_s=DELIVERY_COUNTER_TTL_S,
        fetch_body=is_claim_check(message),
    )
    if delivery.foreign:
        log.error(
            "batch %s: custody record %s holds another batch (Redis lost writes and handed its number out "
            "again); this batch has no body there",
            message.get("batch_id"),
            custody.record_of(message),
        )
    return delivery


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
    await custody.release(runtime.redis, custody.claim_of(message))  # every outcome is final and in PostgreSQL
    return result


async def _park(
    runtime: Runtime, message: dict[str, Any], reason: str, *, attempts: int, unread: bool = False
) -> IngestResult:
    claim = custody.claim_of(message)
    body = await custody.stored_body(runtime.redis, claim) if is_claim_check(message) else None
    async with runtime.session() as session:
        if unread:
            result = await park_unread(session, message, body=body, reason=reason, attempts=attempts)
        else:
            result = await park_failed_message(
                session, message, body=body, reason=reason, attempts=attempts, limits=runtime.limits
            )
    await custody.release(runtime.redis, claim)
    return result


def _note_requeue(runtime: Runtime, message: dict[str, Any]) -> None:
    """The retry goes to the end of the queue; custody must not take its wait there for a loss. Best effort:
    if Redis is away too, the sweep may send the batch once more, which stores nothing twice."""
    try:
        runtime.run(custody.requeued(runtime.redis, custody.claim_of(message)))
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
            if is_transient(park_error):
                # The database is still away: keep the message in the broker rather than lose the batch.
                _note_requeue(runtime, message)
                raise self.retry(countdown=runtime.settings.retry_backoff_max_s) from None
            # Reading the batch failed again in a way nobody foresaw: park it as it came, so it cannot loop.
            reason = f"{decision.reason}; parking it then raised {type(park_error).__name__}"
            return runtime.run(_park(runtime, message, reason, attempts=deliveries, unread=True)).model_dump(
                mode="json"
            )
