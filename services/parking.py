"""Batches that are not stored: kept as `rejected` (permanently invalid) or parked as `failed` (valid, but not
stored within the delivery budget, or without a body), each with its reasons and what can be re-driven."""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from models.messages import BatchTicket, IngestResult
from models.tables import BatchState
from services.dead_letter import batch_id_of, payload_hash, raw_payload_text, record_dead_batch
from services.errors import BatchRejected, TraceError
from services.ingest import announce_if_stored
from services.message_parsing import Limits, body_missing, envelope, failed_payload, parse_delivery
from services.publish import Publisher
from services.validation import body_of

log = logging.getLogger(__name__)

#: How much of a rejected message's raw payload is kept for inspection (PRODUCT.md §8.11).
RAW_PAYLOAD_CAP = 256 * 1024
_SHA256 = re.compile("[0-9a-f]{64}")
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
    """Keep a valid batch that could not be stored in time as `failed`, raw payload included, for re-drive (an
    invalid one as `rejected`). Commits."""
    if body_missing(message, body):
        return await _park_without_body(session, message, attempts=attempts)
    try:
        batch = parse_delivery(message, body, limits)
    except BatchRejected as rejected:  # not valid after all: kept as rejected, with every reason
        return await reject(session, message, body, rejected, attempts)
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


async def park_unread(
    session: AsyncSession, message: Any, *, body: bytes | None, reason: str, attempts: int
) -> IngestResult:
    """Park a batch as `failed` without reading its traces again: for a message past its delivery budget, or
    one whose reading failed in a way nobody foresaw, so that no input can make it loop (reading it is what
    may have failed, or crashed the process, each time). Its payload is kept as it came, under the content hash
    a re-drive will find (a re-drive validates it again, and revives this row). A body that no JSON can be (not
    UTF-8, a raw NUL) is kept as `rejected` instead: nothing could ever store it. Commits."""
    if body_missing(message, body):
        return await _park_without_body(session, message, attempts=attempts)
    if body is not None and (problem := _unreadable_text(body)):
        return await reject(session, message, body, BatchRejected([TraceError(None, "body", problem)]), attempts)
    raw_payload = _unread_payload(message, body)
    source = message.get("source") if isinstance(message, dict) else None
    return await _record_failed(
        session,
        message,
        batch_id=batch_id_of(message, raw_payload),
        source=str(source or "unknown"),
        error=TraceError(None, "batch", reason),
        raw_payload=raw_payload,
        content_hash=_unread_content_hash(message, raw_payload),
        trace_count=_declared_count(message),
        attempts=attempts,
    )


def _unreadable_text(body: bytes) -> str | None:
    """Why `body` cannot be JSON text at all, or None."""
    try:
        text = body.decode()
    except UnicodeDecodeError as error:
        return f"is not valid UTF-8 (byte {error.start})"
    return "holds a NUL byte, which JSON text cannot" if "\x00" in text else None


def _unread_payload(message: Any, body: bytes | None) -> str:
    """A v1 message as JSON text (whole, or a re-drive could not read it: the broker bounded its size); a claim
    check as the v1 shape with its body (UTF-8 text, checked) spliced in as it came."""
    if body is None or not isinstance(message, dict):
        return raw_payload_text(message)
    head = {key: message[key] for key in ("batch_id", "source", "enqueued_at") if key in message}
    envelope = raw_payload_text({**head, "traces": None})  # sorted keys: "traces" comes last
    return envelope.removesuffix("null}") + body.decode() + "}"


def _unread_content_hash(message: Any, raw_payload: str) -> str:
    """The hash validation gives the batch's body, so that a re-drive of this payload revives the row: a claim
    check names it; a v1 message's traces are encoded as the producer does (no validation). Else the payload's."""
    if isinstance(message, dict):
        named = message.get("content_hash")
        if isinstance(named, str) and _SHA256.fullmatch(named):
            return named
        if isinstance(traces := message.get("traces"), list):
            try:
                return hashlib.sha256(body_of(traces)).hexdigest()
            except (TypeError, orjson.JSONEncodeError):
                pass
    return payload_hash(raw_payload)


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
