"""Batches that are not stored: kept as `rejected` (permanently invalid) or parked as `failed` (valid, but not
stored within the delivery budget, or without a body), each with its reasons and what can be re-driven."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from models.messages import BatchTicket, IngestResult
from models.tables import BatchState
from services.dead_letter import batch_id_of, payload_hash, raw_payload_text, record_dead_batch
from services.errors import BatchRejected, TraceError
from services.ingest import announce_if_stored
from services.message_parsing import Limits, body_missing, envelope, failed_payload, parse_delivery
from services.publish import Publisher

log = logging.getLogger(__name__)

#: How much of a rejected message's raw payload is kept for inspection (PRODUCT.md §8.11).
RAW_PAYLOAD_CAP = 256 * 1024
#: Why a batch without a body is parked.
BODY_MISSING = "its body was not in Redis (expired, evicted or deleted) and PostgreSQL does not hold the batch"


def _dead_result(message: Any, state: BatchState, errors: list[TraceError], raw_payload: str) -> IngestResult:
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
    await record_dead_batch(
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
    return _dead_result(message, BatchState.FAILED, [error], raw_payload or "")


async def _park_without_body(session: AsyncSession, message: Any, *, attempts: int) -> IngestResult:
    ticket = envelope(BatchTicket, message)
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
    session: AsyncSession, message: Any, *, publisher: Publisher, attempts: int
) -> IngestResult:
    """A v2 delivery whose body is gone: complete as usual if PostgreSQL holds the batch (a duplicate delivery
    after the first one stored it), otherwise park it as `failed` with the reason. Never silent. Commits."""
    ticket = envelope(BatchTicket, message)
    stored = await announce_if_stored(session, ticket.batch_id, publisher=publisher)
    return stored if stored is not None else await _park_without_body(session, message, attempts=attempts)


async def park_failed_message(
    session: AsyncSession, message: Any, *, reason: str, attempts: int, limits: Limits, body: bytes | None = None
) -> IngestResult:
    """Keep a valid batch that could not be stored in time as `failed`, raw payload included, for re-drive."""
    if body_missing(message, body):
        return await _park_without_body(session, message, attempts=attempts)
    batch = parse_delivery(message, body, limits)
    return await _record_failed(
        session,
        message,
        batch_id=batch.batch_id,
        source=batch.source,
        error=TraceError(None, "batch", reason),
        raw_payload=failed_payload(batch),
        content_hash=batch.content_hash,
        trace_count=len(batch.traces),
        attempts=attempts,
    )


def _rejected_payload(message: Any, body: bytes | None) -> str:
    shown = message if body is None else {**message, "body": body[:RAW_PAYLOAD_CAP].decode("utf-8", "replace")}
    return raw_payload_text(shown)[:RAW_PAYLOAD_CAP]


def _declared_count(message: Any) -> int:
    """How many traces a message that failed validation says it holds (0 when it says nothing usable)."""
    if not isinstance(message, dict):
        return 0
    if isinstance(traces := message.get("traces"), list):
        return len(traces)
    count = message.get("trace_count")
    return count if isinstance(count, int) and 0 <= count < 2**31 else 0


async def reject(
    session: AsyncSession, message: Any, body: bytes | None, rejected: BatchRejected, attempts: int
) -> IngestResult:
    raw_payload = _rejected_payload(message, body)
    result = _dead_result(message, BatchState.REJECTED, rejected.errors, raw_payload)
    await record_dead_batch(
        session,
        batch_id=result.batch_id,
        state=BatchState.REJECTED,
        source=result.source,
        errors=rejected.errors,
        raw_payload=raw_payload,
        content_hash=payload_hash(raw_payload),
        trace_count=_declared_count(message),
        attempts=attempts,
    )
    log.warning("batch %s rejected: %s", result.batch_id, rejected)
    return result
