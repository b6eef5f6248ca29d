"""A trace's row as stored: its text and JSON columns and the fields derived from its content. Bump
DERIVATION_VERSION whenever `stored_row` changes what it derives: the scheduled refresh then recomputes every
stored row whose version is older."""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from models.compiled_schema import canonical_json

#: The version of the derived fields; stored rows with a lower one are stale. 2: the content hash is taken over
#: the fields joined by NUL (which no stored string can hold) instead of over a second JSON encoding of the trace.
DERIVATION_VERSION = 2


class DerivedFields(NamedTuple):
    step_count: int
    total_chars: int
    content_hash: str


class StoredRow(NamedTuple):
    """A trace's columns as its row stores them: text as UTF-8, `steps` and `meta` as canonical JSON (compact,
    sorted keys; `meta` None when the trace has none), then the derived fields."""

    trace_version: bytes
    prompt: bytes
    final_answer: bytes
    steps: bytes
    meta: bytes | None
    step_count: int
    total_chars: int
    content_hash: str


#: Builds a StoredRow without its Python-level `__new__` (a third of a microsecond a trace).
_new_row = tuple.__new__
_UNSET = msgspec.UNSET
_sha256 = hashlib.sha256
#: A step's content: from a dict, or from the compiled struct, whose attributes cost a third of its dict-like
#: subscripts.
_CONTENT_OF_DICT, _CONTENT_OF_STRUCT = operator.itemgetter("content"), operator.attrgetter("content")


def stored_row(trace: Any) -> StoredRow:
    """`trace`'s row: a dict shaped as `TraceIn` (also a stored row's columns), or the compiled struct of one.
    Step count, characters of prompt + answer + step contents, and a sha256 of the content, each field encoded
    once for the row and the hash alike. Written flat: it runs once per stored trace, on the worker's hot path."""
    if type(trace) is dict:
        version, prompt, answer, steps, meta = (
            trace["trace_version"],
            trace["prompt"],
            trace["final_answer"],
            trace["steps"],
            trace.get("meta"),
        )
        content_of: Callable[[Any], str] = _CONTENT_OF_DICT
    else:
        version, prompt, answer = trace.trace_version, trace.prompt, trace.final_answer
        steps, meta = trace.steps, trace.meta
        if meta is _UNSET:
            meta = None
        content_of = _CONTENT_OF_STRUCT
    version_utf8, prompt_utf8, answer_utf8 = version.encode(), prompt.encode(), answer.encode()
    steps_json = canonical_json(steps)
    meta_json = None if meta is None else canonical_json(meta)
    content = b"\x00".join((version_utf8, prompt_utf8, answer_utf8, steps_json, meta_json or b"null"))
    total_chars = len(prompt) + len(answer) + sum(map(len, map(content_of, steps)))
    content_hash = _sha256(content).hexdigest()
    row = (version_utf8, prompt_utf8, answer_utf8, steps_json, meta_json, len(steps), total_chars, content_hash)
    return _new_row(StoredRow, row)


def derive(trace: Any) -> DerivedFields:
    """The fields derived from `trace`'s content (see `stored_row`)."""
    return DerivedFields(*stored_row(trace)[5:])
