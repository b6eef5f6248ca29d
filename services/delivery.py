"""One delivery of an `ingest.batch` message: validate (never trust the queue), then store or park it."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from models.schemas import BatchMessage, IngestResult
from models.tables import BatchState
from services.dead_letter import batch_id_of, payload_hash, raw_payload_text, record_dead_batch
from services.errors import BatchConflict, BatchRejected, TraceError
from services.ingest import BatchIn, ingest_batch
from services.publish import Publisher
from services.validation import field_path, validate_traces

log = logging.getLogger(__name__)


class Limits(NamedTuple):
    max_batch: int
    max_bytes: int
    #: Deliveries after which a batch is parked as `failed` instead of tried again (crash loops included).
    max_deliveries: int


def parse_message(message: Any, limits: Limits) -> BatchIn:
    """The validated batch in a task message; raises `BatchRejected` naming every problem."""
    try:
        envelope = BatchMessage.model_validate(message)
    except ValidationError as error:
        raise BatchRejected(
            [TraceError(None, field_path(e["loc"]), e["msg"]) for e in error.errors(include_url=False)]
        ) from None
    valid = validate_traces(envelope.traces, max_batch=limits.max_batch, max_bytes=limits.max_bytes)
    return BatchIn(envelope.batch_id, envelope.source, valid.traces, valid.content_hash, envelope.enqueued_at)


def _dead_result(message: Any, state: BatchState, errors: list[TraceError], raw_payload: str) -> IngestResult:
    source = message.get("source") if isinstance(message, dict) else None
    return IngestResult(
        batch_id=batch_id_of(message, raw_payload),
        source=str(source or "unknown"),
        state=state,
        count=0,
        errors=[error._asdict() for error in errors],
    )


async def park_failed_message(
    session: AsyncSession, message: Any, *, reason: str, attempts: int, limits: Limits
) -> IngestResult:
    """Keep a valid batch that could not be stored in time as `failed`, raw payload included, for re-drive."""
    raw_payload = raw_payload_text(message)
    batch = parse_message(message, limits)
    errors = [TraceError(None, "batch", reason)]
    await record_dead_batch(
        session,
        batch_id=batch.batch_id,
        state=BatchState.FAILED,
        source=batch.source,
        errors=errors,
        raw_payload=raw_payload,
        content_hash=batch.content_hash,
        trace_count=len(batch.traces),
        attempts=attempts,
    )
    log.error("batch %s parked as failed after %d deliveries: %s", batch.batch_id, attempts, reason)
    return _dead_result(message, BatchState.FAILED, errors, raw_payload)


async def ingest_message(
    session: AsyncSession, message: Any, *, publisher: Publisher, limits: Limits, attempts: int
) -> IngestResult:
    """Validate a task message and store it (see `ingest_batch`), or keep it as `rejected` with its reasons.

    A rejected batch is final: it is recorded once and never retried, so it cannot block the queue.
    A batch id reused for other content is reported as a conflict and leaves the stored batch untouched.
    """
    try:
        batch = parse_message(message, limits)
    except BatchRejected as rejected:
        raw_payload = raw_payload_text(message)
        result = _dead_result(message, BatchState.REJECTED, rejected.errors, raw_payload)
        traces = message.get("traces") if isinstance(message, dict) else None
        await record_dead_batch(
            session,
            batch_id=result.batch_id,
            state=BatchState.REJECTED,
            source=result.source,
            errors=rejected.errors,
            raw_payload=raw_payload,
            content_hash=payload_hash(raw_payload),
            trace_count=len(traces) if isinstance(traces, list) else 0,
            attempts=attempts,
        )
        log.warning("batch %s rejected: %s", result.batch_id, rejected)
        return result
    if attempts > limits.max_deliveries:
        return await park_failed_message(
            session,
            message,
            reason=f"delivered {attempts} times without being stored",
            attempts=attempts,
            limits=limits,
        )
    try:
        return await ingest_batch(session, batch, publisher=publisher, attempts=attempts)
    except BatchConflict as conflict:
        log.error("batch %s: %s", batch.batch_id, conflict)
        return IngestResult(
            batch_id=batch.batch_id,
            source=batch.source,
            state="conflict",
            count=0,
            errors=[error._asdict() for error in conflict.errors],
        )
