"""One delivery of an `ingest.batch` message, carried out: the decision (`decision.decide`, pure) is executed as
storing the batch, or keeping it as `rejected`, or parking it as `failed` (`parking`)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from models.messages import IngestResult
from services.conflicts import record_conflict
from services.delivery.decision import ParkUnread, Reject, SettleMissingBody, Store, decide
from services.delivery.parking import park_unread, reject, settle_missing_body
from services.delivery.parsing import Limits
from services.errors import BatchConflict
from services.ingest import announce_if_stored, ingest_batch
from services.publish import Publisher
from services.validation import BatchIn

log = logging.getLogger(__name__)


async def _park_past_budget(
    session: AsyncSession,
    message: Any,
    decision: ParkUnread,
    *,
    body: bytes | None,
    publisher: Publisher,
    attempts: int,
) -> IngestResult:
    """Complete a batch past its budget if PostgreSQL holds it (the budget ran out after it was stored), else
    park it unread. Commits."""
    if decision.batch_id is not None:
        stored = await announce_if_stored(session, decision.batch_id, publisher=publisher)
        if stored is not None:
            return stored
    return await park_unread(session, message, body=body, reason=decision.reason, attempts=attempts)


async def _store(session: AsyncSession, batch: BatchIn, *, publisher: Publisher, attempts: int) -> IngestResult:
    """Store the batch (see `ingest_batch`); a batch id reused for other content is recorded as a conflict."""
    try:
        return await ingest_batch(session, batch, publisher=publisher, attempts=attempts)
    except BatchConflict as conflict:
        log.error("batch %s: %s", batch.batch_id, conflict)
        # Recorded, so that the batch's status shows what never landed (the task result alone expires unseen).
        await record_conflict(session, batch)
        errors = [error._asdict() for error in conflict.errors]
        return IngestResult.not_stored(batch.batch_id, batch.source, "conflict", errors)


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
    match decide(message, body, limits, attempts):
        case SettleMissingBody(ticket):
            return await settle_missing_body(session, message, ticket, publisher=publisher, attempts=attempts)
        case ParkUnread() as past_budget:
            return await _park_past_budget(
                session, message, past_budget, body=body, publisher=publisher, attempts=attempts
            )
        case Reject(errors):
            return await reject(session, message, body, errors, attempts)
        case Store(batch):
            return await _store(session, batch, publisher=publisher, attempts=attempts)
