"""Batch validation shared by the producer side and the worker: never trust the queue.

The producer validates Python objects and encodes the batch body once (`validate_traces`); the HTTP route validates
a client's JSON array and re-encodes it (`validate_json_array`); the worker validates the body straight from bytes
(`validate_body`). All read the same schemas in `models.schemas`: first through their compiled form
(`models.compiled_schema`), which only accepts, then, for whatever it refuses, through pydantic, which names
every problem.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from pydantic import BaseModel, TypeAdapter, ValidationError

from models.compiled_schema import canonical_json, convert_valid_batch, decode_valid_batch
from models.schemas import TraceIn, unstorable_text
from services.batch_body import encode_body, encode_compiled_body, holds_nul, refuse_surely_too_big, too_big
from services.errors import BatchRejected, BatchSizeOutOfRange, TraceError
from services.lenient_json import decode_leniently

_TRACES = TypeAdapter(list[TraceIn])


class ValidatedBatch(NamedTuple):
    """Traces that passed every rule, with the hash that identifies their content. A trace is a dict shaped as
    `TraceIn` (from Python objects) or its compiled struct (from a body), which reads like one."""

    traces: list[Any]
    content_hash: str
    #: The batch body: the traces as compact JSON with sorted keys, what the hash is of. Encoded once by the
    #: producer, stored once in custody, validated from these bytes by the worker.
    body: bytes


class BatchIn(NamedTuple):
    """A validated batch under the identity its message gives it: ready to store."""

    batch_id: UUID
    source: str
    valid: ValidatedBatch
    enqueued_at: datetime | None = None


def _plain(trace: object) -> object:
    if isinstance(trace, BaseModel):
        return trace.model_dump()
    if isinstance(trace, Mapping) and not isinstance(trace, dict):
        return dict(trace)
    return trace


def field_path(location: Sequence[int | str]) -> str:
    """`("steps", 1, "i")` → `"steps[1].i"`."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "trace"


def _trace_errors(error: ValidationError) -> list[TraceError]:
    problems = []
    for detail in error.errors(include_url=False, include_input=False):
        if not detail["loc"]:  # the body as a whole is not a list
            problems.append(TraceError(None, "traces", detail["msg"]))
            continue
        index, *rest = detail["loc"]
        message = detail["msg"].removeprefix("Value error, ")
        if detail["type"] == "string_unicode":
            message = "contains a lone surrogate, which is not valid UTF-8"
        problems.append(TraceError(int(index), field_path(rest), message, detail["type"]))
    return problems


def _check_count(count: int, max_batch: int) -> None:
    if not count or count > max_batch:
        raise BatchSizeOutOfRange(count, max_batch)


def validate_traces(traces: Sequence[object], *, max_batch: int, max_bytes: int) -> ValidatedBatch:
    """Check a batch of Python objects against PRODUCT.md §3–§4: count, JSON size, then every trace.

    Raises `BatchRejected` listing every problem, by trace index and field path.
    """
    _check_count(len(traces), max_batch)
    plain = [_plain(trace) for trace in traces]
    refuse_surely_too_big(plain, max_bytes)
    compiled = convert_valid_batch(plain)
    if compiled is not None and (body := encode_compiled_body(compiled, max_bytes)) is not None:
        return ValidatedBatch(plain, hashlib.sha256(body).hexdigest(), body)
    # Refused by the compiled rules, or holding what only the full path names: validate in full.
    body = encode_body(plain, max_bytes)
    # Some string may not be storable (a NUL, or a lone surrogate that stops the encoder): name each one.
    _raise_problems(plain, check_text=body is None or holds_nul(body))
    if body is None:
        raise BatchRejected([TraceError(None, "traces", "the batch cannot be encoded as JSON")])
    return ValidatedBatch(plain, hashlib.sha256(body).hexdigest(), body)


def _unstorable_errors(traces: list[Any]) -> list[TraceError]:
    return [TraceError(index, path, reason, "string_unstorable") for index, path, reason in unstorable_text(traces)]


def _raise_problems(traces: list[Any], *, check_text: bool, structural: ValidationError | None = None) -> None:
    """Raise `BatchRejected` with every problem of `traces`, in trace order: the rules of `TraceIn` (or the
    error they already raised) and, when `check_text`, storability."""
    if structural is None:
        try:
            _TRACES.validate_python(traces)
        except ValidationError as error:
            structural = error
    problems = _trace_errors(structural) if structural else []
    if check_text:  # pydantic already names a lone surrogate in a `str` field: one problem per field
        named = {(problem.trace_index, problem.field_path) for problem in problems}
        problems += [e for e in _unstorable_errors(traces) if (e.trace_index, e.field_path) not in named]
    if problems:
        raise BatchRejected(
            sorted(problems, key=lambda problem: -1 if problem.trace_index is None else problem.trace_index)
        )


def validate_body(body: bytes, *, max_batch: int, max_bytes: int) -> ValidatedBatch:
    """Check a batch body (JSON bytes, as `validate_traces` encodes it) against the same rules, parsing and
    validating in one pass. Raises `BatchRejected` listing every problem, by trace index and field path.

    The compiled decoder takes a valid body in a quarter of pydantic's time, and its traces come back as the
    compiled structs of `TraceIn` (read like its dicts); a body it refuses, or one whose JSON holds a NUL, is
    validated in full (its traces, if valid after all, come back as dicts), so every refusal carries pydantic's
    messages.
    """
    if len(body) > max_bytes:
        raise too_big(str(len(body)), max_bytes)
    traces: list[Any] | None = None if holds_nul(body) else decode_valid_batch(body)
    if traces is None:
        traces = _validate_body_fully(body, max_batch)
    _check_count(len(traces), max_batch)
    return ValidatedBatch(traces, hashlib.sha256(body).hexdigest(), body)


def validate_json_array(body: bytes, *, max_batch: int, max_bytes: int) -> ValidatedBatch | None:
    """The batch a client's JSON array holds (any spacing, any key order), when the compiled decoder accepts
    every trace: validated and re-encoded once as the canonical body `validate_traces` would encode for the same
    traces, so that a batch has one content hash whichever door it came through. None sends the body to the full
    path (`validate_traces` on its decoded JSON), which names every problem."""
    if len(body) > max_bytes or holds_nul(body):
        return None
    traces = decode_valid_batch(body)
    if traces is None or not 0 < len(traces) <= max_batch:
        return None
    canonical = canonical_json(traces)
    if len(canonical) > max_bytes:
        return None
    return ValidatedBatch(traces, hashlib.sha256(canonical).hexdigest(), canonical)


def _validate_body_fully(body: bytes, max_batch: int) -> list[Any]:
    """The traces of `body` validated by pydantic against `TraceIn`, storability included; raises
    `BatchRejected` naming every problem."""
    try:
        traces: list[dict[str, Any]] = _TRACES.validate_json(body)  # type: ignore[assignment]
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        if first["type"] != "json_invalid":
            # The rules' errors, and storability too: `validate_json` stopped at the first trace that broke one.
            _raise_problems(decode_leniently(body), check_text=holds_nul(body), structural=error)
        decoded = decode_leniently(body)  # a lone surrogate stops the fast parser: find out where
        if not isinstance(decoded, list):
            raise BatchRejected([TraceError(None, "traces", "the body must be a JSON list of traces")]) from None
        _check_count(len(decoded), max_batch)
        _raise_problems(decoded, check_text=True)
        raise BatchRejected([TraceError(None, "traces", f"the body is not valid JSON: {first['msg']}")]) from None
    if holds_nul(body) and (unstorable := _unstorable_errors(traces)):
        raise BatchRejected(unstorable)
    return traces
