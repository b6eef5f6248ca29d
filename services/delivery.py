"""One delivery of an `ingest.batch` message: validate it (never trust the queue), then store it, or keep it as
`rejected`, or park it as `failed` (services.parking)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from models.messages import IngestResult
from services.errors import BatchConflict, BatchRejected
from services.ingest import announce_if_stored, ingest_batch
from services.message_parsing import Limits, body_missing, parse_delivery
from services.parking import park_failed_message, reject, settle_missing_body
from services.publish import Publisher

log = logging.getLogger(__name__)


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
    A claim check whose body is gone is settled by `settle_missing_body`.
    """
    if body_missing(message, body):
        try:
            return await settle_missing_body(session, message, publisher=publisher, attempts=attempts)
        except BatchRejected as rejected:
            return await reject(session, message, None, rejected, attempts)
    try:
        batch = parse_delivery(message, body, limits)
    except BatchRejected as rejected:
        return await reject(session, message, body, rejected, attempts)
    if attempts > limits.max_deliveries:
        if (stored := await announce_if_stored(session, batch.batch_id, publisher=publisher)) is not None:
            return stored  # the budget ran out after the batch was stored: nothing to park
        return await park_failed_message(
            session,
            message,
            body=body,
            reason=f"delivered {attempts} times without being stored",
            attempts=attempts,
            limits=limits,
        )
    try:
        return await ingest_batch(session, batch, publisher=publisher, attempts=attempts)
    except BatchConflict as conflict:
        log.error("batch %s: %s", batch.batch_id, conflict)
        errors = [error._asdict() for error in conflict.errors]
        return IngestResult.not_stored(batch.batch_id, batch.source, "conflict", errors)
