"""One delivery of an `ingest.batch` message at the edge: custody's bookkeeping, one session for the service
call, and, when it fails, the delivery budget's decision between a retry and parking (PRODUCT.md §8)."""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

from models.messages import IngestResult
from models.tables import BatchState
from services.delivery import body_missing, ingest_message, is_claim_check, park_failed_message, park_unread
from worker import keys
from worker.custody import records as custody
from worker.edge import progress
from worker.edge.retry import decide, is_transient
from worker.edge.runtime import Runtime, current_runtime
from worker.keys import delivery_counter_key
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
        await custody.count(runtime.redis, keys.CUSTODY_BODIES_MISSING)
    await _release_and_count(runtime, message, result)  # every outcome is final and in PostgreSQL
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
    await _release_and_count(runtime, message, result)
    return result


async def _release_and_count(runtime: Runtime, message: dict[str, Any], result: IngestResult) -> None:
    """Release the batch's custody and count its outcome for the metrics, in one round trip. Counting is best
    effort (a counter that fails is logged); the release is not. Redis runs every command of the pipeline: if it
    refuses only the release's script (a custody key of the wrong type, written by hand), the outcome is counted
    and the delivery still fails, so the counters may say more than PostgreSQL holds; the error is logged."""
    async with runtime.redis.pipeline(transaction=False) as pipe:
        custody.queue_release(pipe, custody.claim_of(message))
        progress.count_outcome(
            pipe,
            state=result.state,
            count=result.count,
            published=result.published,
            enqueued_at=message.get("enqueued_at"),
            now=time.time(),
        )
        released, *counted = await pipe.execute(raise_on_error=False)
    if isinstance(released, Exception):
        raise released
    if failed := [answer for answer in counted if isinstance(answer, Exception)]:
        log.warning("batch %s: outcome not counted: %s", message.get("batch_id"), redact(str(failed[0])))


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


class RetryIn(NamedTuple):
    """The delivery failed and its budget allows another: send the message again in `seconds`."""

    seconds: float


def handle(message: dict[str, Any], *, retries: int) -> dict[str, Any] | RetryIn:
    """Store the message's batch and publish its event, or decide what happens after a failure: a retry
    while the batch's delivery budget lasts (transient errors), else the batch is parked as `failed` with its
    raw payload, so that acking the message never loses it. `retries`: Celery's count for this message, the
    fallback when custody's delivery counter cannot be read. Returns the task's result."""
    runtime = current_runtime()
    try:
        return runtime.run(_deliver(runtime, message)).model_dump(mode="json")
    except Exception as error:  # the edge decides: retry, or park so that acking never loses the batch
        runtime = current_runtime()  # a fresh one if the soft time limit abandoned the last (Runtime.run)
        deliveries = _deliveries_so_far(runtime, message, fallback=retries + 1)
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
            return RetryIn(decision.retry_in)
        return _park_after_failure(runtime, message, decision.reason, deliveries)


def _park_after_failure(
    runtime: Runtime, message: dict[str, Any], reason: str, deliveries: int
) -> dict[str, Any] | RetryIn:
    try:
        return runtime.run(_park(runtime, message, reason, attempts=deliveries)).model_dump(mode="json")
    except Exception as park_error:
        if is_transient(park_error):
            # The database is still away: keep the message in the broker rather than lose the batch.
            _note_requeue(runtime, message)
            return RetryIn(runtime.settings.retry_backoff_max_s)
        # Reading the batch failed again in a way nobody foresaw: park it as it came, so it cannot loop.
        reason = f"{reason}; parking it then raised {type(park_error).__name__}"
        return runtime.run(_park(runtime, message, reason, attempts=deliveries, unread=True)).model_dump(mode="json")
