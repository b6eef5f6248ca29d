"""Batches that could not be stored are kept, never dropped: `rejected` (permanent) and `failed` (re-drivable)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import func

from models.tables import Batch, BatchState
from services.errors import TraceError

#: Batch ids for messages whose own batch_id is unusable are derived from their content under this namespace.
_UNKEYED_NAMESPACE = uuid.UUID("6d1f2c4e-2f43-4a57-9a58-3b7f1f1c2a10")


#: How deep a raw payload is written out; what lies deeper is kept as a note (the nesting rule refused it).
RAW_PAYLOAD_MAX_DEPTH = 64


def _pruned(value: Any, depth: int) -> Any:
    if not isinstance(value, dict | list):
        return value
    if depth > RAW_PAYLOAD_MAX_DEPTH:
        return f"<nested deeper than {RAW_PAYLOAD_MAX_DEPTH} levels>"
    if isinstance(value, list):
        return [_pruned(item, depth + 1) for item in value]
    return {str(key): _pruned(item, depth + 1) for key, item in value.items()}


def raw_payload_text(message: Any) -> str:
    """The message as JSON text, every non-ASCII character (NUL and lone surrogates too) escaped: storable,
    and written without exhausting the stack however deep a hostile message nests."""
    return json.dumps(_pruned(message, 1), ensure_ascii=True, sort_keys=True, default=repr)


def payload_hash(raw_payload: str) -> str:
    return hashlib.sha256(raw_payload.encode()).hexdigest()


def declared_batch_id(message: Any) -> UUID | None:
    """The message's batch id if it names a usable one."""
    if isinstance(message, dict):
        try:
            return UUID(str(message.get("batch_id")))
        except ValueError:
            pass
    return None


def batch_id_of(message: Any, raw_payload: str) -> UUID:
    """The message's batch id, or a stable id derived from its content when it has no usable one."""
    return declared_batch_id(message) or uuid.uuid5(_UNKEYED_NAMESPACE, payload_hash(raw_payload))


def _escaped_for_storage(text: str) -> str:
    """`text` with what PostgreSQL cannot store (NUL, lone surrogates) escaped, so a reason is never lost."""
    return text.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")


def errors_json(errors: Sequence[TraceError]) -> list[dict[str, Any]]:
    return [
        {
            "trace_index": error.trace_index,
            "field_path": _escaped_for_storage(error.field_path),
            "message": _escaped_for_storage(error.message),
        }
        for error in errors
    ]


async def record_dead_batch(
    session: AsyncSession,
    *,
    batch_id: UUID,
    state: BatchState,
    source: str,
    errors: Sequence[TraceError],
    raw_payload: str | None,
    content_hash: str,
    trace_count: int,
    attempts: int,
) -> bool:
    """Keep a batch that was not stored, with its errors and raw payload (None: nothing left to keep). Commits.

    Never overwrites an ingested batch: returns False when the id already belongs to one (a corrupt duplicate
    of a stored batch). A `failed` batch is updated in place, so re-parking is safe.
    """
    row = insert(Batch).values(
        id=batch_id,
        source=_escaped_for_storage(source)[:200] or "unknown",
        state=state,
        trace_count=trace_count,
        content_hash=content_hash,
        attempts=attempts,
        errors=errors_json(errors),
        raw_payload=raw_payload,
        updated_at=func.now(),
    )
    statement = row.on_conflict_do_update(
        index_elements=[Batch.id],
        set_={
            "state": row.excluded.state,
            "attempts": row.excluded.attempts,
            "errors": row.excluded.errors,
            # A batch sent again after it was parked without a body now has one: keep it for the re-drive.
            "raw_payload": func.coalesce(row.excluded.raw_payload, Batch.raw_payload),
            "updated_at": func.now(),
        },
        where=Batch.state == BatchState.FAILED,
    ).returning(Batch.id)
    recorded = (await session.execute(statement)).scalar_one_or_none() is not None
    await session.commit()
    return recorded
