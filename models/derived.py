"""Fields derived from a trace's content. Bump DERIVATION_VERSION whenever `derive` changes meaning:
the scheduled refresh then recomputes every stored row whose version is older."""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import orjson

#: The version of `derive`; stored rows with a lower one are stale. 2: the content hash is taken over the
#: fields joined by NUL (which no stored string can hold) instead of over a second JSON encoding of the trace.
DERIVATION_VERSION = 2


class DerivedFields(NamedTuple):
    step_count: int
    total_chars: int
    content_hash: str


class JsonColumns(NamedTuple):
    """A trace's `steps` and `meta` as canonical JSON (compact, sorted keys): what the jsonb columns get."""

    steps: bytes
    meta: bytes | None


def json_columns(trace: dict[str, Any]) -> JsonColumns:
    meta = trace.get("meta")
    return JsonColumns(
        orjson.dumps(trace["steps"], option=orjson.OPT_SORT_KEYS),
        None if meta is None else orjson.dumps(meta, option=orjson.OPT_SORT_KEYS),
    )


def derive(trace: dict[str, Any], columns: JsonColumns | None = None) -> DerivedFields:
    """Step count, characters of prompt + answer + step contents, and a sha256 of the trace's content.
    `columns` (the trace's `json_columns`) saves encoding them again when the caller has them."""
    steps, meta = columns or json_columns(trace)
    texts = (trace["trace_version"], trace["prompt"], trace["final_answer"])
    total_chars = len(texts[1]) + len(texts[2]) + sum(len(step["content"]) for step in trace["steps"])
    digest = hashlib.sha256(b"\x00".join((*(text.encode() for text in texts), steps, meta or b"null")))
    return DerivedFields(len(trace["steps"]), total_chars, digest.hexdigest())
