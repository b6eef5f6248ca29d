"""A batch's body: the bytes custody keeps, its content hash is of, and the worker validates. Compact JSON with
sorted keys, encoded once: from the compiled structs of what the compiled rules accepted (`encode_compiled_body`,
msgspec; also the HTTP route's re-encoding of a client's array), or from the Python objects the full validation
reads (`encode_body`, orjson). Both write the same bytes for the same traces (tests/unit/test_compiled_schema.py),
so a batch has one content hash whichever door it came through."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import orjson
from pydantic import BaseModel

from models.compiled_schema import canonical_json
from models.schemas import json_default
from services.errors import BatchTooLarge, TraceError


def holds_nul(body: bytes) -> bool:
    """Whether the JSON `body` holds a NUL character in some string (JSON can write one only as `\\u0000`).
    Walks the backslashes, found with memchr, instead of searching for the six bytes: a body's many zero
    digits make that search ~50x slower, and it runs on every batch."""
    at = body.find(b"\\")
    while at >= 0:
        if body.startswith(b"u0000", at + 1):
            return True
        at = body.find(b"\\", at + 2)  # past the escaped character: `\\u0000` is a backslash, then text
    return False


def _encode_model(value: object) -> object:
    return value.model_dump() if isinstance(value, BaseModel) else json_default(value)


def too_big(size: str, max_bytes: int) -> BatchTooLarge:
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


def refuse_surely_too_big(traces: Sequence[object], max_bytes: int) -> None:
    """Refuse an oversize batch before encoding it when its long strings alone pass `max_bytes`: the encoder
    reserves several times a string's length, so encoding first could cost gigabytes (PRODUCT.md §8.11)."""
    least = 1
    for trace in traces:
        least += _least_json_size(trace) + 1
        if least > max_bytes:
            raise too_big(f"more than {max_bytes}", max_bytes)


def encode_body(traces: Sequence[object], max_bytes: int) -> bytes | None:
    """The batch body, or None when some trace cannot be encoded (validation then names it); an oversize batch
    is refused after one encoding of the whole list (per-trace encoding costs ~5x more). Call
    `refuse_surely_too_big` first, as `validate_traces` does once for both of its paths."""
    try:
        body = body_of(traces)
    except (TypeError, orjson.JSONEncodeError):
        return None
    if len(body) > max_bytes:
        raise too_big(str(len(body)), max_bytes)
    return body


def encode_compiled_body(traces: list[Any], max_bytes: int) -> bytes | None:
    """The batch body of traces the compiled schema accepted (`convert_valid_batch`): the bytes `encode_body`
    writes for the same traces, in one pass over the structs. None when it holds what only the full validation
    names (a NUL, a lone surrogate)."""
    try:
        body = canonical_json(traces)
    except (TypeError, ValueError, UnicodeEncodeError, msgspec.EncodeError):
        return None
    if holds_nul(body):
        return None
    if len(body) > max_bytes:
        raise too_big(str(len(body)), max_bytes)
    return body
