"""Parking a batch that is not stored: kept as `rejected` (permanently invalid) or as `failed` (valid, but not
stored within the delivery budget, or without a body), with its reasons and what a re-drive needs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from models.messages import BatchTicket, IngestResult
from models.tables import BatchState
from services.delivery.parked_rows import (
    batch_id_of,
    declared_count,
    payload_hash,
    record_parked_batch,
    rejected_payload,
    unread_content_hash,
    unread_payload,
    unreadable_text,
)
from services.delivery.parsing import Limits, body_missing, envelope, failed_payload, parse_delivery
from services.errors import BatchRejected, TraceError
from services.ingest import announce_if_stored
from services.publish import Publisher

log = logging.getLogger(__name__)

#: Why a batch without a body is parked.
BODY_MISSING = "its body was not in Redis (expired, evicted or deleted) and PostgreSQL does not hold the batch"


def _parked_result(message: Any, state: BatchState, errors: Sequence[TraceError], raw_payload: str) -> IngestResult:
    source = message.get("source") if isinstance(message, dict) else None
    errors_found = [error._asdict() for error in errors]
    return IngestResult.not_stored(batch_id_of(message, raw_payload), str(source or "unknown"), state, errors_found)


async def _record_failed(
    session: AsyncSession,
    message: Any,
    *,
    batch_id: UUID,
    source: str,
    error: TraceError,
    raw_payload: str | None,
    content_hash: str,
    trace_count: int,
    attempts: int,
) -> IngestResult:
    await record_parked_batch(
        session,
        batch_id=batch_id,
        state=BatchState.FAILED,
        source=source,
        errors=[error],
        raw_payload=raw_payload,
        content_hash=content_hash,
        trace_count=trace_count,
        attempts=attempts,
    )
    log.error("batch %s parked as failed after %d deliveries: %s", batch_id, attempts, error.message)
    return _parked_result(message, BatchState.FAILED, [error], raw_payload or "")


async def _park_without_body(
    session: AsyncSession, message: Any, ticket: BatchTicket, *, attempts: int
) -> IngestResult:
    return await _record_failed(
        session,
        message,
        batch_id=ticket.batch_id,
        source=ticket.source,
        error=TraceError(None, "body", BODY_MISSING),
        raw_payload=None,  # nothing to re-drive: the producer must send the batch again
        content_hash=ticket.content_hash,
        trace_count=ticket.trace_count,
        attempts=attempts,
    )


async def settle_missing_body(
    session: AsyncSession, message: Any, ticket: BatchTicket, *, publisher: Publisher, attempts: int
) -> IngestResult:
    """A v2 delivery whose body is gone: complete as usual if PostgreSQL holds the batch (a duplicate delivery
    after the first one stored it), otherwise park it as `failed` with the reason. Never silent. Commits."""
    stored = await announce_if_stored(session, ticket.batch_id, publisher=publisher)
    return stored if stored is not None else await _park_without_body(session, message, ticket, attempts=attempts)


async def park_failed_message(
    session: AsyncSession, message: Any, *, reason: str, attempts: int, limits: Limits, body: bytes | None = None
) -> IngestResult:
    """Keep a valid batch that could not be stored in time as `failed`, raw payload included, for re-drive (an
    invalid one as `rejected`). Commits."""
    if body_missing(message, body):
        return await _park_without_body(session, message, envelope(BatchTicket, message), attempts=attempts)
    try:
        batch = parse_delivery(message, body, limits)
    except BatchRejected as rejected:  # not valid after all: kept as rejected, with every reason
        return await reject(session, message, body, rejected.errors, attempts)
    return await _record_failed(
        session,
        message,
        batch_id=batch.batch_id,
        source=batch.source,
        error=TraceError(None, "batch", reason),
        raw_payload=failed_payload(batch),
        content_hash=batch.valid.content_hash,
        trace_count=len(batch.valid.traces),
        attempts=attempts,
    )


async def park_unread(
    session: AsyncSession, message: Any, *, body: bytes | None, reason: str, attempts: int
) -> IngestResult:
    """Park a batch as `failed` without reading its traces again: for a message past its delivery budget, or
    one whose reading failed in a way nobody foresaw, so that no input can make it loop (reading it is what
    may have failed, or crashed the process, each time). Its payload is kept as it came, under the content hash
    a re-drive will find (a re-drive validates it again, and revives this row). A body that no JSON can be (not
    UTF-8, a raw NUL) is kept as `rejected` instead: nothing could ever store it. Commits."""
    if body_missing(message, body):
        return await _park_without_body(session, message, envelope(BatchTicket, message), attempts=attempts)
    if body is not None and (problem := unreadable_text(body)):
        return await reject(session, message, body, [TraceError(None, "body", problem)], attempts)
    raw_payload = unread_payload(message, body)
    source = message.get("source") if isinstance(message, dict) else None
    return await _record_failed(
        session,
        message,
        batch_id=batch_id_of(message, raw_payload),
        source=str(source or "unknown"),
        error=TraceError(None, "batch", reason),
        raw_payload=raw_payload,
        content_hash=unread_content_hash(message, raw_payload),
        trace_count=declared_count(message),
        attempts=attempts,
    )


async def reject(
    session: AsyncSession, message: Any, body: bytes | None, errors: Sequence[TraceError], attempts: int
) -> IngestResult:
    """Keep an invalid batch as `rejected`, with every reason and a capped copy of its payload. Commits. Final:
    never retried. Safe to run again: a `rejected` row is never overwritten."""
    raw_payload = rejected_payload(message, body)
    result = _parked_result(message, BatchState.REJECTED, errors, raw_payload)
    await record_parked_batch(
        session,
        batch_id=result.batch_id,
        state=BatchState.REJECTED,
        source=result.source,
        errors=errors,
        raw_payload=raw_payload,
        content_hash=payload_hash(raw_payload),
        trace_count=declared_count(message),
        attempts=attempts,
    )
    log.warning("batch %s rejected: %s", result.batch_id, BatchRejected(errors))
    return result
