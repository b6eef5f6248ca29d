"""Batch validation shared by the producer side and the worker: never trust the queue.

The producer validates Python objects and encodes the batch body once (`validate_traces`); the worker validates
that body straight from bytes (`validate_body`). Both read the same schemas in `models.schemas`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from models.schemas import TraceIn, parse_bounded_int, unstorable_text
from services.errors import BatchRejected, BatchSizeOutOfRange, BatchTooLarge, TraceError
from services.json_depth import nesting_problem, too_deep_field

_TRACES = TypeAdapter(list[TraceIn])
#: How JSON writes a NUL character inside a string (orjson writes it exactly so).
_ESCAPED_NUL = b"\\u0000"


class ValidatedBatch(NamedTuple):
    """Traces that passed every rule, as plain JSON-ready dicts, with the hash that identifies their content."""

    traces: list[dict[str, Any]]
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


def _too_big(size: str, max_bytes: int) -> BatchTooLarge:
    return BatchTooLarge([TraceError(None, "traces", f"{size} bytes of JSON exceeds maximum of {max_bytes} per batch")])


def _least_json_size(trace: Any) -> int:
    """A lower bound of a trace's JSON size, without encoding it: the length of its long strings (0 for a
    malformed trace, which validation then names)."""
    try:
        return len(trace["prompt"]) + len(trace["final_answer"]) + sum([len(s["content"]) for s in trace["steps"]])
    except (TypeError, KeyError, IndexError):
        return 0


def body_of(traces: Sequence[object]) -> bytes:
    """The batch body of `traces`: compact JSON with sorted keys, what the content hash is of. Raises
    `TypeError` or `orjson.JSONEncodeError` for what JSON cannot hold (validation then names it)."""
    return orjson.dumps(traces, option=orjson.OPT_SORT_KEYS, default=_encode_model)


def encode_body(traces: Sequence[object], max_bytes: int) -> bytes | None:
    """The batch body, or None when some trace cannot be encoded (validation then names it).

    Refuses an oversize batch before encoding it when its long strings alone pass `max_bytes` (the encoder
    reserves several times a string's length, so encoding first could cost gigabytes: PRODUCT.md §8.11), and
    otherwise after one encoding of the whole list (per-trace encoding costs ~5x more).
    """
    least = 1
    for trace in traces:
        least += _least_json_size(trace) + 1
        if least > max_bytes:
            raise _too_big(f"more than {max_bytes}", max_bytes)
    try:
        body = body_of(traces)
    except (TypeError, orjson.JSONEncodeError):
        return None
    if len(body) > max_bytes:
        raise _too_big(str(len(body)), max_bytes)
    return body


def validate_traces(traces: Sequence[object], *, max_batch: int, max_bytes: int) -> ValidatedBatch:
    """Check a batch of Python objects against PRODUCT.md §3–§4: count, JSON size, then every trace.

    Raises `BatchRejected` listing every problem, by trace index and field path.
    """
    _check_count(len(traces), max_batch)
    plain = [_plain(trace) for trace in traces]
    body = encode_body(plain, max_bytes)
    # Some string may not be storable (a NUL, or a lone surrogate that stops the encoder): name each one.
    _raise_problems(plain, check_text=body is None or _ESCAPED_NUL in body)
    if body is None:
        raise BatchRejected([TraceError(None, "traces", "the batch cannot be encoded as JSON")])
    return ValidatedBatch(plain, hashlib.sha256(body).hexdigest(), body)  # type: ignore[arg-type]


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


def loads_lenient(raw: bytes | str) -> Any:
    """JSON decoded by the standard parser, which also takes escaped lone surrogates and infinities (so that
    validation can name the field that holds one); an integer too long for 64 bits comes as an
    `OversizeInteger` for the same reason. Raises `json.JSONDecodeError`, `UnicodeDecodeError`, or
    `RecursionError` for JSON nested deeper than the parser goes (about 900 levels)."""
    return json.loads(raw, parse_int=parse_bounded_int)


def _decode_leniently(body: bytes) -> Any:
    """The body decoded by `loads_lenient`; raises `BatchRejected` when it is not JSON at all."""
    try:
        return loads_lenient(body)
    except UnicodeDecodeError as error:
        raise BatchRejected([TraceError(None, "traces", f"the body is not valid UTF-8 (byte {error.start})")]) from None
    except json.JSONDecodeError as error:
        raise BatchRejected([TraceError(None, "traces", f"the body is not valid JSON: {error}")]) from None
    except RecursionError:
        raise nesting_rejection(body, TraceError(None, "traces", "the body's JSON is nested too deeply")) from None


def nesting_rejection(body: bytes, fallback: TraceError) -> BatchRejected:
    """The refusal of a body nested too deeply to decode: naming the trace and field where it is, or
    `fallback` when no field holds it (the array itself is what nests)."""
    found = too_deep_field(body, in_array=True)
    if found is None or found[1] == "trace":
        return BatchRejected([fallback])
    index, field = found
    return BatchRejected([TraceError(index, field, nesting_problem(field))])


def validate_body(body: bytes, *, max_batch: int, max_bytes: int) -> ValidatedBatch:
    """Check a batch body (JSON bytes, as `validate_traces` encodes it) against the same rules, parsing and
    validating in one pass. Raises `BatchRejected` listing every problem, by trace index and field path."""
    if len(body) > max_bytes:
        raise _too_big(str(len(body)), max_bytes)
    try:
        traces: list[dict[str, Any]] = _TRACES.validate_json(body)  # type: ignore[assignment]
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        if first["type"] != "json_invalid":
            # The rules' errors, and storability too: `validate_json` stopped at the first trace that broke one.
            _raise_problems(_decode_leniently(body), check_text=_ESCAPED_NUL in body, structural=error)
        decoded = _decode_leniently(body)  # a lone surrogate stops the fast parser: find out where
        if not isinstance(decoded, list):
            raise BatchRejected([TraceError(None, "traces", "the body must be a JSON list of traces")]) from None
        _check_count(len(decoded), max_batch)
        _raise_problems(decoded, check_text=True)
        raise BatchRejected([TraceError(None, "traces", f"the body is not valid JSON: {first['msg']}")]) from None
    if _ESCAPED_NUL in body and (unstorable := _unstorable_errors(traces)):
        raise BatchRejected(unstorable)
    _check_count(len(traces), max_batch)
    return ValidatedBatch(traces, hashlib.sha256(body).hexdigest(), body)
