"""Hostile input at the validation layer (PRODUCT.md §3, §8.12): integers too long to convert, nesting deep
enough to exhaust the stack, NULs hidden deep inside it, floats PostgreSQL would read back as other numbers.
Each ends as a `BatchRejected` naming the trace and field, whichever parser met it first. No server."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from models.schemas import META_MAX_DEPTH
from services.delivery.parked_rows import raw_payload_text
from services.errors import BatchRejected
from services.json_depth import too_deep_field
from services.validation import validate_body, validate_traces
from worker.client.jsonl import read_jsonl

LIMITS = {"max_batch": 1000, "max_bytes": 8 * 1024 * 1024}
HUGE_INTEGER = "9" * 5000  # past Python's 4,300-digit conversion limit


def trace(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "trace_version": "1.0",
        "prompt": "What is 2 + 2?",
        "final_answer": "4",
        "steps": [{"i": 0, "type": "reasoning", "content": "2 + 2 = 4"}],
    }
    return {**base, **changes}


def nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"k": value}
    return value


def with_raw_meta(meta_json: str) -> bytes:
    """A one-trace body whose `meta` is the given JSON text, as a crafted message would carry it."""
    return b"[" + orjson.dumps(trace())[:-1] + b',"meta":' + meta_json.encode() + b"}]"


def rejected_by(check: Callable[[], object]) -> BatchRejected:
    with pytest.raises(BatchRejected) as caught:
        check()
    return caught.value


def on_a_deep_stack(work: Callable[[], object], frames: int = 150) -> object:
    """Run `work` below `frames` Python frames, as a Celery task or an ASGI route runs."""
    return work() if frames == 0 else on_a_deep_stack(work, frames - 1)


def test_a_body_with_a_5000_digit_integer_in_meta_is_rejected_naming_the_field() -> None:
    error = rejected_by(lambda: validate_body(with_raw_meta('{"tokens": ' + HUGE_INTEGER + "}"), **LIMITS))

    (problem,) = error.errors
    assert (problem.trace_index, problem.field_path) == (0, "meta")
    assert problem.message == "meta.tokens is an integer of 5000 digits, outside the 64-bit range"


def test_a_body_with_a_5000_digit_step_index_is_rejected_naming_the_step() -> None:
    body = orjson.dumps([trace(steps=[{"i": 0, "type": "t", "content": "c"}])]).replace(b'"i":0', b'"i":' + b"9" * 5000)

    error = rejected_by(lambda: validate_body(body, **LIMITS))

    assert [(e.trace_index, e.field_path) for e in error.errors] == [(0, "steps[0].i")]


def test_deep_meta_with_a_nul_is_rejected_from_python_objects_on_a_deep_stack() -> None:
    traces = [trace(), trace(meta=nested(1500, "a\x00b"))]

    error = rejected_by(lambda: on_a_deep_stack(lambda: validate_traces(traces, **LIMITS)))

    assert [(e.trace_index, e.field_path) for e in error.errors] == [(1, "meta")]
    assert error.errors[0].message.startswith(f"nesting is deeper than {META_MAX_DEPTH} levels")


@pytest.mark.parametrize("depth", [300, 990, 1200, 20_000])
def test_meta_nested_beyond_what_the_parser_takes_is_rejected_naming_the_trace_and_field(depth: int) -> None:
    body = b"[" + orjson.dumps(trace()) + b"," + with_raw_meta('{"k":' * depth + '"\\u0000"' + "}" * depth)[1:]

    error = rejected_by(lambda: on_a_deep_stack(lambda: validate_body(body, **LIMITS)))

    assert [(e.trace_index, e.field_path) for e in error.errors] == [(1, "meta")]
    assert error.errors[0].message.startswith(f"nesting is deeper than {META_MAX_DEPTH} levels")


def test_floats_postgresql_reads_back_as_other_numbers_are_refused_and_the_rest_pass() -> None:
    kept = {"lr": 3e-4, "tiny": -2.5e-300, "below": 9.999999999999998e15, "exact": 9007199254740993.0, "n": -0.0}

    validate_traces([trace(meta=kept)], **LIMITS)
    error = rejected_by(lambda: validate_body(json.dumps([trace(meta={"big": 1e300})]).encode(), **LIMITS))

    assert error.errors[0].field_path == "meta"
    assert error.errors[0].message.startswith("meta.big is a float of magnitude 1e16 or more")


def test_a_jsonl_line_with_a_5000_digit_integer_decodes_so_validation_names_its_field() -> None:
    (line,) = read_jsonl([json.dumps(trace(meta={"x": 1})).replace("1}", HUGE_INTEGER + "}").encode()])

    error = rejected_by(lambda: validate_traces([line.value], **LIMITS))

    assert line.problem is None and error.errors[0].message.startswith("meta.x is an integer of 5000 digits")


def test_a_jsonl_line_nested_too_deeply_names_its_field() -> None:
    deep_meta = json.dumps(trace())[:-1] + ', "meta": ' + '{"k":' * 5000 + "1" + "}" * 5000 + "}"

    (line,) = read_jsonl([deep_meta.encode()])

    assert (line.value, line.field) == (None, "meta")
    assert line.problem == f"nesting is deeper than {META_MAX_DEPTH} levels"


def test_the_depth_scan_skips_brackets_and_commas_inside_strings() -> None:
    tricky = [trace(prompt='[[[{{{ , "x": ]]'), trace(final_answer='\\"{[,')]
    body = orjson.dumps(tricky)[:-1] + b"," + with_raw_meta("[" * 40 + "]" * 40)[1:]

    assert too_deep_field(orjson.dumps(tricky), in_array=True) is None
    assert too_deep_field(body, in_array=True) == (2, "meta")


def test_a_raw_payload_of_any_depth_is_written_without_exhausting_the_stack() -> None:
    message = {"batch_id": "x", "traces": [trace(meta=nested(sys.getrecursionlimit() * 2, "a\x00"))]}

    text = raw_payload_text(message)

    assert "nested deeper than 64 levels" in text and "\\u0000" not in text
    assert json.loads(text)["batch_id"] == "x"
