"""Reading one delivered `ingest.batch` message: a v2 claim check (`BatchTicket`, its body fetched from custody
by the edge) or, from a backlog queued by an older version, a v1 message with the traces inline
(`BatchMessage`). Never trust the queue: everything is validated again."""

from __future__ import annotations

from typing import Any, NamedTuple, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from models.messages import BatchMessage, BatchTicket
from services.errors import BatchRejected, TraceError
from services.validation import BatchIn, field_path, validate_body, validate_traces


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


def envelope(schema: type[M], message: Any) -> M:
    """`message` read as `schema`; raises `BatchRejected` naming every field that does not fit."""
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
        legacy = envelope(BatchMessage, message)
        valid = validate_traces(legacy.traces, max_batch=limits.max_batch, max_bytes=limits.max_bytes)
        return BatchIn(legacy.batch_id, legacy.source, valid, legacy.enqueued_at)
    ticket = envelope(BatchTicket, message)
    assert body is not None, "a claim check without its body is settled, never parsed (see `decide`)"
    valid = validate_body(body, max_batch=limits.max_batch, max_bytes=limits.max_bytes)
    if len(valid.traces) != ticket.trace_count or valid.content_hash != ticket.content_hash:
        raise BatchRejected(
            [TraceError(None, "body", f"holds {len(valid.traces)} traces that are not the batch its message names")]
        )
    return BatchIn(ticket.batch_id, ticket.source, valid, ticket.enqueued_at)


def failed_payload(batch: BatchIn) -> str:
    """A valid batch as re-drivable JSON text (the v1 message shape), its body spliced in without re-encoding."""
    head = {"batch_id": str(batch.batch_id), "source": batch.source}
    if batch.enqueued_at:
        head["enqueued_at"] = batch.enqueued_at.isoformat()
    return (orjson.dumps(head)[:-1] + b',"traces":' + batch.valid.body + b"}").decode()
