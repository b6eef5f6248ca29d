"""The row of a parked batch (`rejected`, permanent, or `failed`, re-drivable): what it keeps of a message that
was not stored (raw payload, batch id, content hash, trace count), and writing it."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import func

from models.tables import Batch, BatchState
from services.batch_body import body_of
from services.errors import TraceError

#: Batch ids for messages whose own batch_id is unusable are derived from their content under this namespace.
_UNKEYED_NAMESPACE = uuid.UUID("6d1f2c4e-2f43-4a57-9a58-3b7f1f1c2a10")
#: How much of a rejected message's raw payload is kept for inspection (PRODUCT.md §8.11).
RAW_PAYLOAD_CAP = 256 * 1024
#: How deep a raw payload is written out; what lies deeper is kept as a note (the nesting rule refused it).
RAW_PAYLOAD_MAX_DEPTH = 64
#: A content hash as a claim check names it (sha256, hex).
_SHA256 = re.compile("[0-9a-f]{64}")


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


def declared_count(message: Any) -> int:
    """How many traces a message that failed validation says it holds (0 when it says nothing usable)."""
    if not isinstance(message, dict):
        return 0
    if isinstance(traces := message.get("traces"), list):
        return len(traces)
    count = message.get("trace_count")
    return count if isinstance(count, int) and 0 <= count < 2**31 else 0


def rejected_payload(message: Any, body: bytes | None) -> str:
    """A rejected message (its body, if any, as text) as JSON text, capped at `RAW_PAYLOAD_CAP`."""
    shown = message if body is None else {**message, "body": body[:RAW_PAYLOAD_CAP].decode("utf-8", "replace")}
    return raw_payload_text(shown)[:RAW_PAYLOAD_CAP]


def unreadable_text(body: bytes) -> str | None:
    """Why `body` cannot be JSON text at all, or None."""
    try:
        text = body.decode()
    except UnicodeDecodeError as error:
        return f"is not valid UTF-8 (byte {error.start})"
    return "holds a NUL byte, which JSON text cannot" if "\x00" in text else None


def unread_payload(message: Any, body: bytes | None) -> str:
    """A v1 message as JSON text (whole, or a re-drive could not read it: the broker bounded its size); a claim
    check as the v1 shape with its body (UTF-8 text, checked) spliced in as it came."""
    if body is None or not isinstance(message, dict):
        return raw_payload_text(message)
    head = {key: message[key] for key in ("batch_id", "source", "enqueued_at") if key in message}
    text = raw_payload_text({**head, "traces": None})  # sorted keys: "traces" comes last
    return text.removesuffix("null}") + body.decode() + "}"


def unread_content_hash(message: Any, raw_payload: str) -> str:
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


async def record_parked_batch(
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
