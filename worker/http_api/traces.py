"""`POST /api/traces/batch`: the tunix-rt backend's batch endpoint, plus `?wait`, `Idempotency-Key` and
`?source`. JSON Lines uploads are in `worker.http_api.jsonl_upload`."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter

from models.schemas import TraceIn
from services.errors import BatchRejected, TraceError
from services.lenient_json import nesting_rejection
from services.validation import validate_json_array
from worker.client.enqueue import BatchReceipt, enqueue_batch_async, enqueue_validated_async
from worker.client.jsonl import loads_json
from worker.http_api.auth import require_token
from worker.http_api.body import read_bounded
from worker.http_api.models import BackendBatchCreated, Receipt
from worker.http_api.waiting import outcome
from worker.settings import get_settings

router = APIRouter(prefix="/api/traces", tags=["traces"], dependencies=[Depends(require_token)])

#: Batch ids of `Idempotency-Key`s that are not UUIDs are derived under this namespace.
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c9a52-8a8e-4b8e-a2a1-6a3e2d7c5b40")

Source = Annotated[str, Query(description="The producer's name, stored with the batch.")]


def batch_id_for(idempotency_key: str | None) -> uuid.UUID | None:
    """The key itself when it is a UUID, else a UUIDv5 of it: the same key always names the same batch."""
    if idempotency_key is None:
        return None
    if not idempotency_key.strip():
        raise BatchRejected([TraceError(None, "Idempotency-Key", "must not be empty", "string_too_short")])
    try:
        return uuid.UUID(idempotency_key)
    except ValueError:
        return uuid.uuid5(IDEMPOTENCY_NAMESPACE, idempotency_key)


def _trace_array(body: bytes) -> list[Any]:
    """The body as a JSON array (its traces are validated by `enqueue_batch`, the one set of rules)."""
    try:
        value = loads_json(body)
    except UnicodeDecodeError as error:
        raise BatchRejected(
            [TraceError(None, "body", f"not valid UTF-8 (byte {error.start})", "json_invalid")]
        ) from None
    except json.JSONDecodeError as error:
        reason = f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
        raise BatchRejected([TraceError(None, "body", reason, "json_invalid")]) from None
    except RecursionError:
        too_deep = TraceError(None, "body", "not valid JSON here: nested too deeply", "json_invalid")
        raise nesting_rejection(body, too_deep) from None
    if not isinstance(value, list):
        raise BatchRejected([TraceError(None, "body", "the body must be a JSON array of traces", "list_type")])
    return value


def receipt_of(request: Request, receipt: BatchReceipt) -> Receipt:
    return Receipt(
        batch_id=receipt.batch_id,
        trace_count=receipt.trace_count,
        status_url=request.app.url_path_for("batch_status", batch_id=str(receipt.batch_id)),
    )


_TRACE_ARRAY_SCHEMA = TypeAdapter(list[TraceIn]).json_schema(ref_template="#/components/schemas/{model}")
#: The models the request body's schema refers to, for the OpenAPI components.
TRACE_SCHEMA_DEFS: dict[str, Any] = _TRACE_ARRAY_SCHEMA.pop("$defs", {})


@router.post(
    "/batch",
    status_code=202,
    response_model=Receipt,
    responses={
        201: {
            "model": BackendBatchCreated,
            "description": "Stored (with `?wait`): the tunix-rt backend's own response.",
        },
        400: {"description": "Empty, or more than INGEST_MAX_BATCH traces (the tunix-rt backend's messages)."},
        409: {"description": "The Idempotency-Key was used for other traces."},
        413: {"description": "The body passes INGEST_MAX_BATCH_BYTES."},
        422: {"description": "Invalid traces: `detail` lists each by `loc` (body, trace index, field)."},
        429: {"description": "The queue is full; retry after `Retry-After` seconds. Nothing was enqueued."},
        503: {"description": "Redis did not confirm: retry with the `batch_id` given (never stored twice)."},
    },
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _TRACE_ARRAY_SCHEMA}}}},
)
async def post_batch(
    request: Request,
    wait: Annotated[float, Query(ge=0, le=60, description="Seconds to wait for the batch to be stored.")] = 0,
    source: Source = "http",
    idempotency_key: Annotated[str | None, Header(description="Retries with the same key store one copy.")] = None,
) -> Any:
    """Enqueue a JSON array of traces as one batch (the tunix-rt backend's request body, byte for byte)."""
    settings = get_settings()
    body = await read_bounded(request, settings.ingest_max_batch_bytes)
    # A valid body is validated and re-encoded in one pass from its bytes, in a thread (up to 8 MiB of work must
    # not hold the event loop); any other is decoded here and validated in full by the enqueue, which names every
    # problem. Errors come as before: the body's JSON, then the Idempotency-Key, then the traces.
    limits = {"max_batch": settings.ingest_max_batch, "max_bytes": settings.ingest_max_batch_bytes}
    valid = await asyncio.to_thread(validate_json_array, body, **limits)
    traces = valid.traces if valid is not None else _trace_array(body)
    batch_id = batch_id_for(idempotency_key) or uuid.uuid4()

    async def enqueue() -> BatchReceipt:
        if valid is not None:
            return await enqueue_validated_async(valid, source=source, batch_id=batch_id)
        return await enqueue_batch_async(traces, source=source, batch_id=batch_id)

    if not wait:
        return receipt_of(request, await enqueue())
    watch = request.app.state.events
    event = watch.expect(batch_id)
    try:
        receipt = await enqueue()
        # Accepted from here on: whatever happens while waiting, the client gets its receipt, never an error
        # that would make it send the batch again under another id; the one exception is a conflict (409),
        # where the id already names other traces and these were never stored.
        result = await outcome(watch, event, receipt.task_id, wait)
    finally:
        watch.forget(batch_id, event)
    if result is not None and result.get("state") == "ingested":
        return JSONResponse(BackendBatchCreated.from_result(result, traces).model_dump(mode="json"), 201)
    return receipt_of(request, receipt)
