"""Fields derived from a trace's content. Bump DERIVATION_VERSION whenever `derive` changes meaning:
the scheduled refresh then recomputes every stored row whose version is older."""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

from models.compiled_schema import canonical_json

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


def json_columns(trace: Any) -> JsonColumns:
    """`trace`: a dict shaped as `TraceIn`, or the compiled struct that reads like one."""
    meta = trace.get("meta")
    return JsonColumns(canonical_json(trace["steps"]), None if meta is None else canonical_json(meta))


def derive(trace: Any, columns: JsonColumns | None = None) -> DerivedFields:
    """Step count, characters of prompt + answer + step contents, and a sha256 of the trace's content.
    `columns` (the trace's `json_columns`) saves encoding them again when the caller has them.
    Written flat: it runs once per stored trace, on the worker's hot path."""
    steps_json, meta_json = columns or json_columns(trace)
    version, prompt, answer, steps = trace["trace_version"], trace["prompt"], trace["final_answer"], trace["steps"]
    total_chars = len(prompt) + len(answer)
    for step in steps:
        total_chars += len(step["content"])
    content = (version.encode(), prompt.encode(), answer.encode(), steps_json, meta_json or b"null")
    return DerivedFields(len(steps), total_chars, hashlib.sha256(b"\x00".join(content)).hexdigest())
