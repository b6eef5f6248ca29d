"""One delivery of an `ingest.batch` message: validate it (never trust the queue), then store it, or keep it as
`rejected`, or park it as `failed` (services.parking)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from models.messages import IngestResult
from services.conflicts import record_conflict
from services.dead_letter import declared_batch_id
from services.errors import BatchConflict, BatchRejected
from services.ingest import announce_if_stored, ingest_batch
from services.message_parsing import Limits, body_missing, parse_delivery
from services.parking import park_unread, reject, settle_missing_body
from services.publish import Publisher

log = logging.getLogger(__name__)


async def _past_budget(
    session: AsyncSession, message: Any, *, body: bytes | None, publisher: Publisher, attempts: int
) -> IngestResult:
    """A batch past its delivery budget is not read again (reading it may be what failed, or crashed the
    process, every time): it completes if PostgreSQL holds it, else it is parked as it came. Commits."""
    batch_id = declared_batch_id(message)
    if batch_id and (stored := await announce_if_stored(session, batch_id, publisher=publisher)) is not None:
        return stored  # the budget ran out after the batch was stored: nothing to park
    reason = f"delivered {attempts} times without being stored"
    return await park_unread(session, message, body=body, reason=reason, attempts=attempts)


async def ingest_message(
    session: AsyncSession,
    message: Any,
    *,
    publisher: Publisher,
    limits: Limits,
    attempts: int,
    body: bytes | None = None,
) -> IngestResult:
    """Validate a task message (and its body) and store it (see `ingest_batch`), or keep it as `rejected` with
    its reasons. Commits.

    A rejected batch is final: it is recorded once and never retried, so it cannot block the queue.
    A batch id reused for other content is reported as a conflict and leaves the stored batch untouched.
    A claim check whose body is gone is settled by `settle_missing_body`; one past its delivery budget is
    parked without being read again, so that no input can loop.
    """
    if body_missing(message, body):
        try:
            return await settle_missing_body(session, message, publisher=publisher, attempts=attempts)
        except BatchRejected as rejected:
            return await reject(session, message, None, rejected, attempts)
    if attempts > limits.max_deliveries:
        return await _past_budget(session, message, body=body, publisher=publisher, attempts=attempts)
    try:
        batch = parse_delivery(message, body, limits)
    except BatchRejected as rejected:
        return await reject(session, message, body, rejected, attempts)
    try:
        return await ingest_batch(session, batch, publisher=publisher, attempts=attempts)
    except BatchConflict as conflict:
        log.error("batch %s: %s", batch.batch_id, conflict)
        # Recorded, so that the batch's status shows what never landed (the task result alone expires unseen).
        await record_conflict(session, batch)
        errors = [error._asdict() for error in conflict.errors]
        return IngestResult.not_stored(batch.batch_id, batch.source, "conflict", errors)
