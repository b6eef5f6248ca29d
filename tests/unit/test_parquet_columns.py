"""The Parquet export's conversion of PostgreSQL's column buffers (worker.export.parquet_rows) into Arrow, without
a server: the buffers are built here as PostgreSQL's send functions write them (big-endian)."""

from __future__ import annotations

import struct
import uuid
from typing import Any

import pyarrow as pa
import pytest

from services.export_query import ExportUnit, Segment
from worker.export import parquet_rows

BATCH = uuid.UUID("74756e69-7872-4000-8000-000000000001")
POSTGRES_EPOCH_US = 946_684_800_000_000


def _ints(kind: str, values: list[int]) -> bytes:
    return struct.pack(f">{len(values)}{kind}", *values)


def _texts(values: list[str | None]) -> tuple[bytes, bytes]:
    encoded = [value.encode() if value is not None else b"" for value in values]
    lengths = [len(data) if value is not None else -1 for data, value in zip(encoded, values, strict=True)]
    return b"".join(encoded), _ints("i", lengths)


def unit_record(
    traces: list[dict[str, Any]], positions: list[int], *, ordinals: list[int] | None = None
) -> dict[str, Any]:
    """A row of `parquet_rows.AROUND` for these traces of BATCH."""
    record: dict[str, Any] = {"n": len(traces)}
    record["id"] = _ints("q", [100 + index for index in range(len(traces))])
    record["batch_id"] = str(BATCH).encode() * len(traces)
    record["position"] = _ints("i", positions)
    record["created_at"] = _ints("q", [1_700_000_000_000_000 - POSTGRES_EPOCH_US] * len(traces))
    for name in ("trace_version", "prompt", "final_answer"):
        record[name], record[f"{name}_lengths"] = _texts([trace[name] for trace in traces])
    steps = [step for trace in traces for step in trace["steps"]]
    record["step_counts"] = _ints("i", [len(trace["steps"]) for trace in traces])
    record["step_ordinal"] = _ints(
        "i", ordinals or [ordinal for trace in traces for ordinal in range(1, len(trace["steps"]) + 1)]
    )
    record["step_i"] = _ints("q", [step["i"] for step in steps])
    record["step_type"], record["step_type_lengths"] = _texts([step["type"] for step in steps])
    record["step_content"], record["step_content_lengths"] = _texts([step["content"] for step in steps])
    record["meta"], record["meta_lengths"] = _texts([trace["meta"] for trace in traces])
    record["step_count"] = _ints("i", [len(trace["steps"]) for trace in traces])
    record["total_chars"] = _ints("i", [7] * len(traces))
    record["content_hash"] = b"".join(f"{index:064x}".encode() for index in range(len(traces)))
    record["derivation_version"] = _ints("h", [2] * len(traces))
    return record


TRACES: list[dict[str, Any]] = [
    {
        "trace_version": "v1",
        "prompt": "2 + 2 = ? \u2028 é 漢字 🧠",
        "final_answer": "4",
        "steps": [{"i": 0, "type": "think", "content": "two twos"}, {"i": 5, "type": "say", "content": "four"}],
        "meta": '{"topic": "arithmetic"}',
    },
    {
        "trace_version": "v1",
        "prompt": 'quote " backslash \\ tab \t',
        "final_answer": "ok",
        "steps": [{"i": 0, "type": "t", "content": "c"}],
        "meta": None,
    },
]
UNIT = ExportUnit("tests", "2026-12-04", [Segment(BATCH, 3, 4)])


def test_a_units_buffers_become_its_rows_value_for_value() -> None:
    batch = parquet_rows.record_batch(unit_record(TRACES, [3, 4]), UNIT)

    assert batch.schema.equals(parquet_rows.SCHEMA)
    rows = batch.to_pylist()
    assert [row["id"] for row in rows] == [100, 101] and [row["position"] for row in rows] == [3, 4]
    assert {row["batch_id"] for row in rows} == {str(BATCH)} and {row["source"] for row in rows} == {"tests"}
    assert [row["prompt"] for row in rows] == [trace["prompt"] for trace in TRACES]
    assert [row["steps"] for row in rows] == [trace["steps"] for trace in TRACES]
    assert [row["meta"] for row in rows] == ['{"topic": "arithmetic"}', None]  # a null stays null
    assert rows[0]["created_at"].timestamp() == 1_700_000_000
    assert [row["content_hash"] for row in rows] == [f"{index:064x}" for index in range(2)]
    assert batch.slice(1, 1).to_pylist() == rows[1:]  # what the sink writes when a file ends within the unit


def test_rows_out_of_the_units_order_stop_the_export() -> None:
    with pytest.raises(RuntimeError, match="traces over out of order"):
        parquet_rows.record_batch(unit_record(TRACES, [4, 3]), UNIT)


def test_steps_out_of_order_stop_the_export() -> None:
    with pytest.raises(RuntimeError, match="steps over out of order"):
        parquet_rows.record_batch(unit_record(TRACES, [3, 4], ordinals=[2, 1, 1]), UNIT)


def test_an_empty_unit_is_an_empty_batch() -> None:
    empty = dict.fromkeys(unit_record(TRACES, [3, 4])) | {"n": 0}
    batch = parquet_rows.record_batch(empty, ExportUnit("tests", "2026-12-04", []))
    assert batch.num_rows == 0 and isinstance(batch, pa.RecordBatch)


def test_buffers_that_disagree_with_their_lengths_stop_the_export() -> None:
    short_prompt = unit_record(TRACES, [3, 4]) | {"prompt": b"cut short"}
    with pytest.raises(RuntimeError, match="lengths disagree"):
        parquet_rows.record_batch(short_prompt, UNIT)
    odd_hash = unit_record(TRACES, [3, 4]) | {"content_hash": b"0" * 64 + b"f" * 63}
    with pytest.raises(RuntimeError, match="64-character values"):
        parquet_rows.record_batch(odd_hash, UNIT)
