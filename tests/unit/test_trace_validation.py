"""The wire rules of PRODUCT.md §3–§4, and the tunix-rt backend's batch-endpoint cases, without any server."""

from __future__ import annotations

import copy
import json
import tracemalloc
import types
from typing import Any

import numpy
import pytest
from pydantic import BaseModel

from models.compiled_schema import as_plain
from models.schemas import META_MAX_BYTES
from services.errors import BatchRejected, BatchSizeOutOfRange, BatchTooLarge, TraceError
from services.validation import field_path, validate_body, validate_traces
from tests.conftest import SAMPLE_DATA

LIMITS = {"max_batch": 1000, "max_bytes": 8 * 1024 * 1024}


def trace(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "trace_version": "1.0",
        "prompt": "What is 2 + 2?",
        "final_answer": "4",
        "steps": [{"i": 0, "type": "reasoning", "content": "2 + 2 = 4"}],
        "meta": {"source": "unit"},
    }
    base.update(changes)
    return {key: value for key, value in base.items() if value is not ...}


def rejection(traces: list[Any], **limits: int) -> BatchRejected:
    with pytest.raises(BatchRejected) as caught:
        validate_traces(traces, **{**LIMITS, **limits})
    return caught.value


def test_empty_batch_is_rejected_saying_at_least_one() -> None:
    error = rejection([])
    assert "at least one" in str(error)
    assert error.errors == [TraceError(None, "traces", "a batch needs at least one trace")]
    assert isinstance(error, BatchSizeOutOfRange) and (error.count, error.limit) == (0, 1000)


def test_1001_traces_are_rejected_saying_exceeds_maximum() -> None:
    error = rejection([trace()] * 1001)
    assert "exceeds maximum" in str(error)
    assert isinstance(error, BatchSizeOutOfRange) and (error.count, error.limit) == (1001, 1000)


def test_oversize_payload_is_rejected_before_trace_validation() -> None:
    error = rejection([trace(prompt="x" * 5000)] * 3, max_bytes=10_000)
    assert "exceeds maximum" in str(error) and error.errors[0].trace_index is None
    assert isinstance(error, BatchTooLarge)


def test_json_nested_deeper_than_any_parser_takes_is_a_clear_rejection() -> None:
    error = body_rejection(b"[" * 5000 + b"]" * 5000)
    assert error.errors[0].message == "the body's JSON is nested too deeply"


def test_trace_missing_final_answer_is_rejected_with_its_index() -> None:
    error = rejection([trace(), trace(), trace(final_answer=...)])
    assert error.errors == [TraceError(2, "final_answer", "Field required")]
    assert error.errors[0].kind == "missing" and error.errors[0]._asdict() == {
        "trace_index": 2,
        "field_path": "final_answer",
        "message": "Field required",
    }


def test_duplicate_step_indices_are_rejected() -> None:
    steps = [{"i": 0, "type": "a", "content": "x"}, {"i": 0, "type": "b", "content": "y"}]
    error = rejection([trace(steps=steps)])
    assert error.errors[0].trace_index == 0 and error.errors[0].field_path == "steps"
    assert "duplicate step index i=0" in error.errors[0].message


def test_metadata_is_preserved_exactly() -> None:
    meta = {"nested": {"list": [1, 2.5, None, True, "ü"]}, "big": 2**62, "empty": {}}
    valid = validate_traces([trace(meta=meta)], **LIMITS)
    assert valid.traces[0]["meta"] == meta


NOT_JSON = "not a JSON value"
BAD_FIELD_CASES = [
    ({"extra_field": 1}, "extra_field", "Extra inputs are not permitted"),
    ({"prompt": 42}, "prompt", "valid string"),
    ({"steps": [{"i": "0", "type": "a", "content": "x"}]}, "steps[0].i", "valid integer"),
    ({"steps": [{"i": -1, "type": "a", "content": "x"}]}, "steps[0].i", "greater than or equal to 0"),
    ({"steps": []}, "steps", "at least 1 item"),
    ({"prompt": "a\x00b"}, "prompt", "NUL"),
    ({"final_answer": "\ud800"}, "final_answer", "lone surrogate"),
    ({"steps": [{"i": 0, "type": "a", "content": "x\x00"}]}, "steps[0].content", "NUL"),
    ({"trace_version": ""}, "trace_version", "at least 1 character"),
    ({"trace_version": "v" * 65}, "trace_version", "at most 64"),
    ({"meta": {"k": float("nan")}}, "meta", "JSON cannot represent"),
    ({"meta": {"k": "\x00"}}, "meta", "NUL"),
    ({"meta": {"k": 2**64}}, "meta", "64-bit"),
    ({"meta": {"k": {1, 2}}}, "meta", NOT_JSON),
    ({"meta": [1]}, "meta", "Input should be"),  # "a valid dictionary", or from JSON "an object"
    ({"meta": {"blob": "x" * META_MAX_BYTES}}, "meta", "exceeds maximum"),
]


@pytest.mark.parametrize(("changes", "path", "fragment"), BAD_FIELD_CASES)
def test_each_bad_field_is_named_with_a_clear_message(changes: dict[str, Any], path: str, fragment: str) -> None:
    error = rejection([trace(), trace(**changes)])
    assert [(e.trace_index, e.field_path) for e in error.errors] == [(1, path)]
    assert fragment in error.errors[0].message


def body_rejection(body: bytes, **limits: int) -> BatchRejected:
    with pytest.raises(BatchRejected) as caught:
        validate_body(body, **{**LIMITS, **limits})
    return caught.value


@pytest.mark.parametrize(
    ("changes", "path", "fragment"),
    [case for case in BAD_FIELD_CASES if case[2] != NOT_JSON],  # a Python set has no JSON form
)
def test_the_worker_names_the_same_bad_field_when_it_validates_the_body_bytes(
    changes: dict[str, Any], path: str, fragment: str
) -> None:
    # The standard encoder writes NaN, escaped NULs and escaped lone surrogates, as a hand-crafted body might.
    body = json.dumps([trace(), trace(**changes)]).encode()
    error = body_rejection(body)
    assert [(e.trace_index, e.field_path) for e in error.errors] == [(1, path)]
    assert fragment in error.errors[0].message


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"[]", "at least one"),
        (b"[" + b",".join([json.dumps(trace()).encode()] * 1001) + b"]", "exceeds maximum"),
        (b'{"not": "a list"}', "valid array"),
        (b"[{]", "not valid JSON"),
        (b'["\xff"]', "not valid UTF-8"),
    ],
)
def test_a_body_that_is_no_batch_is_rejected_with_a_clear_reason(body: bytes, fragment: str) -> None:
    assert fragment in str(body_rejection(body))


def test_an_oversize_body_is_rejected_before_parsing() -> None:
    assert "exceeds maximum" in str(body_rejection(b"[" + b" " * 20_000 + b"]", max_bytes=10_000))


def test_the_body_the_producer_encodes_validates_to_the_same_traces_and_hash() -> None:
    with (SAMPLE_DATA / "dev-reasoning-v2.jsonl").open(encoding="utf-8") as lines:
        traces = [json.loads(line) for line in lines]
    produced = validate_traces(traces, **LIMITS)
    received = validate_body(produced.body, **LIMITS)
    assert as_plain(received.traces) == traces and received.content_hash == produced.content_hash


def test_a_1000_by_20_mb_batch_is_refused_while_encoding_with_bounded_memory() -> None:
    huge = trace(prompt="x" * 20_000_000)  # one 20 MB trace, sent 1,000 times: 20 GB of JSON if encoded whole
    tracemalloc.start()
    try:
        error = rejection([huge] * 1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"more than {8 * 1024 * 1024} bytes of JSON exceeds maximum" in str(error)
    assert peak < 200 * 1024 * 1024, f"validating the oversize batch took {peak / 2**20:.0f} MiB"


def test_meta_nested_32_deep_is_accepted_and_33_deep_is_rejected() -> None:
    def nest(depth: int) -> dict[str, Any]:
        value: dict[str, Any] = {}
        for _ in range(depth - 1):
            value = {"d": value}
        return value

    validate_traces([trace(meta=nest(32))], **LIMITS)
    error = rejection([trace(meta=nest(33))])
    assert "deeper than 32" in error.errors[0].message


def test_a_non_object_trace_is_named_by_index() -> None:
    error = rejection([trace(), "not a trace"])
    assert error.errors[0].trace_index == 1 and error.errors[0].field_path == "trace"


def test_every_problem_is_listed_and_the_message_is_readable() -> None:
    error = rejection([trace(prompt=""), trace(), trace(final_answer=..., extra=1)])
    assert [(e.trace_index, e.field_path) for e in error.errors] == [
        (0, "prompt"),
        (2, "final_answer"),
        (2, "extra"),
    ]
    assert "trace 2: final_answer: Field required" in str(error)


class BackendStep(BaseModel):
    i: int
    type: str
    content: str


class BackendTrace(BaseModel):
    """A producer's own pydantic model, as the tunix-rt backend's `ReasoningTrace`."""

    trace_version: str
    prompt: str
    final_answer: str
    steps: list[BackendStep]
    meta: dict[str, Any] | None = None


def test_pydantic_models_and_dicts_validate_alike_and_hash_alike() -> None:
    as_dicts = validate_traces([trace()], **LIMITS)
    as_models = validate_traces([BackendTrace.model_validate(trace())], **LIMITS)
    assert as_models.traces == as_dicts.traces
    assert as_models.content_hash == as_dicts.content_hash


def test_content_hash_ignores_key_order_but_not_content() -> None:
    original = trace()
    reordered = dict(reversed(list(copy.deepcopy(original).items())))
    assert validate_traces([reordered], **LIMITS).content_hash == validate_traces([original], **LIMITS).content_hash
    assert (
        validate_traces([trace(prompt="other")], **LIMITS).content_hash
        != validate_traces([original], **LIMITS).content_hash
    )


def test_the_550_real_sample_traces_validate_cleanly() -> None:
    with (SAMPLE_DATA / "dev-reasoning-v2.jsonl").open(encoding="utf-8") as lines:
        traces = [json.loads(line) for line in lines]
    valid = validate_traces(traces, max_batch=1000, max_bytes=8 * 1024 * 1024)
    assert valid.traces == traces


def test_field_path_renders_list_indices_and_names() -> None:
    assert field_path(("steps", 3, "content")) == "steps[3].content"
    assert field_path(()) == "trace"


def test_numpy_floats_in_meta_are_stored_as_the_floats_they_are_and_other_numpy_values_are_refused_by_name() -> None:
    valid = validate_traces([trace(meta={"loss": numpy.float64(0.25), "lr": numpy.float64(1e-4)})], **LIMITS)
    assert json.loads(valid.body)[0]["meta"] == {"loss": 0.25, "lr": 1e-4}
    assert as_plain(validate_body(valid.body, **LIMITS).traces)[0]["meta"] == {"loss": 0.25, "lr": 1e-4}

    error = rejection([trace(meta={"steps": numpy.int64(3)})])
    assert error.errors == [TraceError(0, "meta", "meta.steps holds a numpy.int64, which is not a JSON value")]
    error = rejection([trace(meta={"loss": numpy.float64("nan")})])
    assert error.errors == [TraceError(0, "meta", "meta.loss is nan, which JSON cannot represent")]


def test_a_mapping_that_is_not_a_dict_inside_meta_is_refused_by_name_not_raised() -> None:
    error = rejection([trace(meta={"a": types.MappingProxyType({"b": 1})})])
    assert error.errors == [TraceError(0, "meta", "meta.a holds a mappingproxy, which is not a JSON value")]


@pytest.mark.parametrize("meta", [{"\ud800": 1}, {"k": "\ud800"}, {"k": {"deeper": ["\udfff"]}}])
def test_a_lone_surrogate_anywhere_in_meta_is_refused_by_name_at_both_doors(meta: dict[str, Any]) -> None:
    from_python = rejection([trace(meta=meta)])
    body = json.dumps([trace(meta=meta)]).encode()
    from_body = body_rejection(body)
    for error in (from_python, from_body):
        assert [(e.trace_index, e.field_path) for e in error.errors] == [(0, "meta")]
        assert "lone surrogate" in error.errors[0].message
