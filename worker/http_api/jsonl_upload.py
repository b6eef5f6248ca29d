"""`POST /api/traces/jsonl`: JSON Lines read as they arrive and enqueued in batches, with bounded memory
whatever the body holds: at most about two batches' bytes of lines, the first MAX_REPORTED_PROBLEMS problems
and a count of the rest, and a cap on the whole body (INGEST_MAX_JSONL_BYTES, 413 beyond it)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from services.errors import QueueFull
from worker.client.enqueue import BatchReceipt, check_source
from worker.client.jsonl import JsonlLine, JsonlOutcome, enqueue_jsonl, read_jsonl
from worker.http_api.auth import require_token
from worker.http_api.body import BodyTooLarge, OverlongLine, body_lines
from worker.http_api.errors import queue_full_response
from worker.http_api.models import JsonlAccepted, LineProblem
from worker.http_api.traces import Source, receipt_of
from worker.settings import get_settings

router = APIRouter(prefix="/api/traces", tags=["traces"], dependencies=[Depends(require_token)])

#: Problems listed in one answer; the rest are counted (`invalid_line_count`), so a flood of bad lines costs
#: no more memory, time or answer than this many.
MAX_REPORTED_PROBLEMS = 100


def _lines_of(raw_lines: list[bytes], first_number: int, max_bytes: int) -> list[JsonlLine]:
    lines = []
    for number, raw in enumerate(raw_lines, start=first_number):
        if isinstance(raw, OverlongLine):
            lines.append(JsonlLine(number, None, f"longer than the maximum of {max_bytes} bytes of a batch"))
        else:
            lines += read_jsonl([raw], first_number=number)
    return lines


class _JsonlProgress:
    """What the upload has enqueued so far, chunk by chunk, and its first problems."""

    def __init__(self) -> None:
        self.receipts: list[BatchReceipt] = []
        self.problems: list[LineProblem] = []
        self.invalid_lines = 0
        self.lines = 0
        self._last_invalid = 0

    def add(self, outcome: JsonlOutcome) -> None:
        self.receipts += outcome.receipts
        for problem in outcome.problems:  # in line order, chunk after chunk
            if problem.line != self._last_invalid:
                self.invalid_lines += 1
                self._last_invalid = problem.line
            if len(self.problems) < MAX_REPORTED_PROBLEMS:
                self.problems.append(LineProblem(line=problem.line, field=problem.field, message=problem.message))

    def answer(self, request: Request) -> JsonlAccepted:
        return JsonlAccepted(
            batches=[receipt_of(request, receipt) for receipt in self.receipts],
            trace_count=sum(receipt.trace_count for receipt in self.receipts),
            lines=self.lines,
            invalid_lines=self.problems,
            invalid_line_count=self.invalid_lines,
        )


def _too_large(error: BodyTooLarge, progress: _JsonlProgress, request: Request) -> JSONResponse:
    """413, with what was enqueued before the body passed its cap (those batches are in the queue)."""
    accepted = progress.answer(request).model_dump(mode="json")
    return JSONResponse({"detail": str(error), **accepted}, 413, headers={"Connection": "close"})


@router.post(
    "/jsonl",
    status_code=202,
    response_model=JsonlAccepted,
    responses={
        413: {"description": "The body passes INGEST_MAX_JSONL_BYTES; the batches enqueued before it are listed."},
        429: {"description": "The queue is full: send the same body again later (nothing is stored twice)."},
    },
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}
    },
)
async def post_jsonl(request: Request, source: Source = "http") -> Any:
    """Enqueue JSON Lines (one trace per line) in batches of INGEST_MAX_BATCH, read as they arrive; each bad line
    is left out and reported as `{line, field, message}` (the first 100; `invalid_line_count` counts them all),
    every good one is enqueued."""
    settings = get_settings()
    check_source(source)
    progress = _JsonlProgress()
    pending: list[bytes] = []
    pending_bytes = 0

    async def flush() -> None:
        lines = _lines_of(pending, progress.lines - len(pending) + 1, settings.ingest_max_batch_bytes)
        # Chunk ids follow content, so a client that sends the same body again stores nothing twice.
        progress.add(
            await asyncio.to_thread(
                enqueue_jsonl, lines, source=source, batch_size=settings.ingest_max_batch, wait_when_full=False
            )
        )
        pending.clear()

    try:
        async for raw in body_lines(request, settings.ingest_max_batch_bytes, settings.ingest_max_jsonl_bytes):
            pending.append(raw)
            pending_bytes += len(raw)
            progress.lines += 1
            if len(pending) >= settings.ingest_max_batch or pending_bytes >= settings.ingest_max_batch_bytes:
                await flush()
                pending_bytes = 0
        if pending:
            await flush()
    except QueueFull as full:
        return queue_full_response(full, batches_accepted=len(progress.receipts))
    except BodyTooLarge as error:
        return _too_large(error, progress, request)
    if not progress.receipts and not progress.invalid_lines:
        return JSONResponse({"detail": "Batch must contain at least one trace"}, 400)
    return progress.answer(request)
