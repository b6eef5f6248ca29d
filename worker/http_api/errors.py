"""How the product's errors answer over HTTP: the tunix-rt backend's own `400`s, FastAPI's `422` shape, and JSON for the
rest (never a traceback)."""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError

from services.errors import (
    BatchConflict,
    BatchRejected,
    BatchSizeOutOfRange,
    BatchTooLarge,
    EnqueueFailed,
    QueueFull,
    TraceError,
)
from worker.http_api.body import BodyTooLarge
from worker.settings import redact

log = logging.getLogger(__name__)

_PATH_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def location(error: TraceError) -> list[int | str]:
    """FastAPI's `loc` of a problem: `["body", 3, "steps", 0, "i"]`; the query parameter for a bad source."""
    if error.trace_index is None:
        if error.field_path in ("source", "Idempotency-Key"):
            return ["query", "source"] if error.field_path == "source" else ["header", "Idempotency-Key"]
        return ["body"]
    if error.field_path == "trace":  # the trace itself, e.g. not an object
        return ["body", error.trace_index]
    parts = [int(index) if index else name for index, name in _PATH_PART.findall(error.field_path)]
    return ["body", error.trace_index, *parts]


def rejection_response(rejected: BatchRejected) -> JSONResponse:
    if isinstance(rejected, BatchSizeOutOfRange):
        if not rejected.count:
            return JSONResponse({"detail": "Batch must contain at least one trace"}, 400)
        return JSONResponse({"detail": f"Batch size ({rejected.count}) exceeds maximum ({rejected.limit})"}, 400)
    if isinstance(rejected, BatchTooLarge):
        return JSONResponse({"detail": rejected.errors[0].message}, 413)
    if isinstance(rejected, BatchConflict):
        return JSONResponse({"detail": rejected.errors[0].message}, 409)
    detail = [{"loc": location(error), "msg": error.message, "type": error.kind} for error in rejected.errors]
    return JSONResponse({"detail": detail}, 422)


def queue_full_response(full: QueueFull, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"detail": str(full), "retry_after": full.retry_after, **extra},
        429,
        headers={"Retry-After": str(math.ceil(full.retry_after))},
    )


def install_error_handlers(app: FastAPI) -> None:
    async def rejected(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, BatchRejected)
        return rejection_response(error)

    async def full(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, QueueFull)
        return queue_full_response(error)

    async def unconfirmed(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, EnqueueFailed)
        log.warning("enqueue not confirmed: %s", redact(str(error)))  # the Redis address stays in the log
        detail = f"Redis did not confirm the batch; retry with Idempotency-Key: {error.batch_id} (stored once)"
        return JSONResponse({"detail": detail, "batch_id": str(error.batch_id)}, 503)

    async def too_large(_: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, 413, headers={"Connection": "close"})

    async def unavailable(_: Request, error: Exception) -> JSONResponse:
        log.warning("a dependency failed: %s", redact(f"{type(error).__name__}: {error}"))
        return JSONResponse({"detail": "PostgreSQL or Redis is unavailable; retry later"}, 503)

    async def unexpected(_: Request, __: Exception) -> JSONResponse:
        return JSONResponse({"detail": "internal error"}, 500)  # the server logs the error itself

    app.add_exception_handler(BatchRejected, rejected)
    app.add_exception_handler(QueueFull, full)  # the handler of the nearest class answers
    app.add_exception_handler(EnqueueFailed, unconfirmed)
    app.add_exception_handler(BodyTooLarge, too_large)
    for dependency_error in (RedisError, DBAPIError, OSError):
        app.add_exception_handler(dependency_error, unavailable)
    app.add_exception_handler(Exception, unexpected)
