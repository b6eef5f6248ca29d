"""Thin tasks: each opens one session through the runtime and calls one service."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.utils.time import get_exponential_backoff_interval
from redis.asyncio import Redis

from models.schemas import IngestResult
from services.delivery import ingest_message, park_failed_message
from worker.celery_app import app
from worker.runtime import Runtime, current_runtime
from worker.settings import redact
from worker.transient import is_transient

log = logging.getLogger(__name__)

#: How long a batch's delivery counter lives: far beyond the longest retry chain.
DELIVERY_COUNTER_TTL_S = 24 * 3600


def delivery_counter_key(message: dict[str, Any]) -> str:
    return f"ingest:deliveries:{message.get('batch_id')}"


async def _count_delivery(redis: Redis, message: dict[str, Any]) -> int:
    """Brokers do not count redeliveries after a crash, so each delivery counts itself."""
    key = delivery_counter_key(message)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, DELIVERY_COUNTER_TTL_S)
        attempts, _ = await pipe.execute()
    return int(attempts)


async def _deliver(runtime: Runtime, message: dict[str, Any]) -> IngestResult:
    attempts = await _count_delivery(runtime.redis, message)
    async with runtime.session() as session:  # the one session of this task, closed on exit
        return await ingest_message(
            session, message, publisher=runtime.publisher, limits=runtime.limits, attempts=attempts
        )


async def _park(runtime: Runtime, message: dict[str, Any], reason: str) -> IngestResult:
    attempts = int(await runtime.redis.get(delivery_counter_key(message)) or 1)
    async with runtime.session() as session:
        return await park_failed_message(session, message, reason=reason, attempts=attempts,
                                         limits=runtime.limits)


@app.task(bind=True, name="ingest.batch")
def ingest_batch(self: Task, *args: Any, **message: Any) -> dict[str, Any]:
    """Store one batch and publish its event. Safe to run again: rows are keyed by (batch_id, position).

    Transient errors retry with exponential backoff and full jitter; when retries run out, or on an
    unexpected error, the batch is parked as `failed` with its raw payload instead of being dropped.
    """
    if args:  # never trust the queue: let validation reject the stray arguments by name
        message = {**message, "positional_arguments": list(args)}
    runtime = current_runtime()
    settings = runtime.settings
    try:
        result = runtime.run(_deliver(runtime, message))
    except Exception as error:  # the edge decides: retry, or park so that acking never loses the batch
        reason = redact(f"{type(error).__name__}: {error}")
        if is_transient(error) and self.request.retries < settings.max_retries:
            countdown = get_exponential_backoff_interval(1, self.request.retries, settings.retry_backoff_max_s, True)
            log.warning("batch %s: %s; retry %d in %d s", message.get("batch_id"), reason,
                        self.request.retries + 1, countdown)
            raise self.retry(countdown=max(countdown, 1), max_retries=None) from None
        try:
            result = runtime.run(_park(runtime, message, reason))
        except Exception as park_error:
            if not is_transient(park_error):
                raise
            # The database is still away: keep the message in the broker rather than lose the batch.
            raise self.retry(countdown=settings.retry_backoff_max_s, max_retries=None) from None
    return result.model_dump(mode="json")
