"""Batch validation shared by the producer side and the worker: never trust the queue."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from models.schemas import TraceFields, TraceIn
from services.errors import BatchRejected, TraceError

_FAST = TypeAdapter(list[TraceFields])
_PRECISE = TypeAdapter(list[TraceIn])
#: How orjson writes a NUL character inside a JSON string.
_ESCAPED_NUL = b"\\u0000"


class ValidatedBatch(NamedTuple):
    """Traces that passed every rule, as plain JSON-ready dicts, with the hash that identifies their content."""

    traces: list[dict[str, Any]]
    content_hash: str
    #: The traces as JSON (sorted keys): what the hash is of, reusable wherever the batch is written as JSON.
    traces_json: bytes


def _plain(trace: object) -> object:
    if isinstance(trace, BaseModel):
        return trace.model_dump()
    if isinstance(trace, Mapping) and not isinstance(trace, dict):
        return dict(trace)
    return trace


def _encode_model(value: object) -> object:
    if isinstance(value, BaseModel):
        return value.model_dump()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def field_path(location: Sequence[int | str]) -> str:
    """`("steps", 1, "i")` → `"steps[1].i"`."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "trace"


def _trace_errors(error: ValidationError) -> list[TraceError]:
    problems = []
    for detail in error.errors(include_url=False, include_input=False):
        index, *rest = detail["loc"]
        message = detail["msg"].removeprefix("Value error, ")
        if detail["type"] == "string_unicode":
            message = "contains a lone surrogate, which is not valid UTF-8"
        problems.append(TraceError(int(index), field_path(rest), message))
    return problems


def validate_traces(traces: Sequence[object], *, max_batch: int, max_bytes: int) -> ValidatedBatch:
    """Check a batch against PRODUCT.md §3–§4: count, JSON size, then every trace.

    Raises `BatchRejected` listing every problem, by trace index and field path.
    """
    if not traces:
        raise BatchRejected([TraceError(None, "traces", "a batch needs at least one trace")])
    if len(traces) > max_batch:
        raise BatchRejected(
            [TraceError(None, "traces", f"{len(traces)} traces exceeds maximum of {max_batch} per batch")]
        )
    plain = [_plain(trace) for trace in traces]
    try:
        body: bytes | None = orjson.dumps(plain, option=orjson.OPT_SORT_KEYS, default=_encode_model)
    except (TypeError, orjson.JSONEncodeError):
        body = None  # validation below names the trace and field that cannot be encoded
    if body is not None and len(body) > max_bytes:
        raise BatchRejected(
            [TraceError(None, "traces", f"{len(body)} bytes of JSON exceeds maximum of {max_bytes} per batch")]
        )
    try:
        _FAST.validate_python(plain)
        if body is None or _ESCAPED_NUL in body:
            # Some string may not be storable (a NUL, a lone surrogate): the per-field validators name it.
            _PRECISE.validate_python(plain)
    except ValidationError as error:
        raise BatchRejected(_trace_errors(error)) from None
    if body is None:
        raise BatchRejected([TraceError(None, "traces", "the batch cannot be encoded as JSON")])
    return ValidatedBatch(plain, hashlib.sha256(body).hexdigest(), body)  # type: ignore[arg-type]
