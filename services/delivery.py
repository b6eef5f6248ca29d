"""One delivery of an `ingest.batch` message: validate (never trust the queue), then store or park it.

A message is a v2 claim check (`BatchTicket`, its body fetched from custody by the edge) or, from a backlog
queued by an older version, a v1 message with the traces inline (`BatchMessage`).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple, TypeVar
from uuid import UUID

import orjson
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from models.schemas import BatchMessage, BatchTicket, IngestResult
from models.tables import BatchState
from services.dead_letter import batch_id_of, payload_hash, raw_payload_text, record_dead_batch
from services.errors import BatchConflict, BatchRejected, TraceError
from services.ingest import BatchIn, announce_if_stored, ingest_batch
from services.publish import Publisher
from services.validation import field_path, validate_body, validate_traces

log = logging.getLogger(__name__)

#: How much of a rejected message's raw payload is kept for inspection (PRODUCT.md §8.11).
RAW_PAYLOAD_CAP = 256 * 1024
#: Why a batch without a body is parked.
BODY_MISSING = "its body was not in Redis (expired, evicted or deleted) and PostgreSQL does not hold the batch"


class Limits(NamedTuple):
    max_batch: int
    max_bytes: int
    #: Deliveries after which a batch is parked as `failed` instead of tried again (crash loops included).
    max_deliveries: int


def is_claim_check(message: Any) -> bool:
    """A v2 message (its traces wait in custody), as opposed to a v1 message with the traces inline."""
    return isinstance(message, dict) and "traces" not in message


def body_missing(message: Any, body: bytes | None) -> bool:
    """A claim check whose body custody no longer had when its delivery started."""
    return is_claim_check(message) and body is None


M = TypeVar("M", bound=BaseModel)


def _envelope(schema: type[M], message: Any) -> M:
    try:
        return schema.model_validate(message)
    except ValidationError as error:
        raise BatchRejected(
            [TraceError(None, field_path(e["loc"]), e["msg"]) for e in error.errors(include_url=False)]
        ) from None


def parse_delivery(message: Any, body: bytes | None, limits: Limits) -> BatchIn:
    """The validated batch of a v2 message and its body, or of a v1 message; raises `BatchRejected` naming
    every problem. A v2 body must be the one its message names: same trace count, same content hash."""
    if not is_claim_check(message):
        legacy = _envelope(BatchMessage, message)
        valid = validate_traces(legacy.traces, max_batch=limits.max_batch, max_bytes=limits.max_bytes)
        return BatchIn(legacy.batch_id, legacy.source, valid.traces, valid.content_hash, legacy.enqueued_at, valid.body)
    ticket = _envelope(BatchTicket, message)
    assert body is not None, "a claim check without its body is settled by settle_missing_body"
    valid = validate_body(body, max_batch=limits.max_batch, max_bytes=limits.max_bytes)
    if len(valid.traces) != ticket.trace_count or valid.content_hash != ticket.content_hash:
        raise BatchRejected(
            [TraceError(None, "body", f"holds {len(valid.traces)} traces that are not the batch its message names")]
        )
    return BatchIn(ticket.batch_id, ticket.source, valid.traces, valid.content_hash, ticket.enqueued_at, body)


def failed_payload(batch: BatchIn) -> str:
    """A valid batch as re-drivable JSON text (the v1 message shape), its body spliced in without re-encoding."""
    envelope = {"batch_id": str(batch.batch_id), "source": batch.source}
    if batch.enqueued_at:
        envelope["enqueued_at"] = batch.enqueued_at.isoformat()
    head = orjson.dumps(envelope)
    return (head[:-1] + b',"traces":' + batch.body + b"}").decode()


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
    ticket = _envelope(BatchTicket, message)
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
    ticket = _envelope(BatchTicket, message)
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


async def _reject(
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
            return await _reject(session, message, None, rejected, attempts)
    try:
        batch = parse_delivery(message, body, limits)
    except BatchRejected as rejected:
        return await _reject(session, message, body, rejected, attempts)
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
