"""The Parquet form of a stored trace (schema version 1, documented in docs/architecture.md): the statement that
reads a unit of them as column buffers, and the conversion of that row into one Arrow record batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from services.export_query import ExportUnit

#: Bump when a column is added, removed or changes type; manifests record it.
SCHEMA_VERSION = 1

STEP = pa.struct([("i", pa.int64()), ("type", pa.string()), ("content", pa.string())])

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("batch_id", pa.string(), nullable=False),
        # dictionary-encoded like the partition value `pyarrow.parquet.read_table(directory)` infers from the
        # `source=…` directory, so that the column and the directory merge into one field
        pa.field("source", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("trace_version", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("final_answer", pa.string(), nullable=False),
        pa.field("steps", pa.list_(STEP), nullable=False),
        pa.field("meta", pa.string()),
        pa.field("step_count", pa.int32(), nullable=False),
        pa.field("total_chars", pa.int32(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("derivation_version", pa.int16(), nullable=False),
    ]
)

#: Columns Parquet dictionary-encodes: few distinct values. The others are mostly unique text, where trying a
#: dictionary first only costs time.
DICTIONARY_COLUMNS = ["source", "batch_id", "trace_version", "steps.list.element.type"]

# A unit's traces come as ONE row of column buffers, aggregated by PostgreSQL: each fixed-width column as its
# values' binary forms end to end (int8send, …), each text column as its values end to end plus their byte
# lengths. Arrow then takes the buffers as they are, with no Python object per value: that halves the export
# process's CPU per trace (docs/performance.md). `steps` comes flattened (each trace's step count, then every
# step's ordinal, i, type and content) from the jsonb, whose strings PostgreSQL hands over unescaped.
# `positions` and `batch_ids` prove the rows came in the unit's order: aggregates read their input in the order
# the nested loop produces it in practice, not by definition, so the export checks rather than trusts it.
COLUMNS = "trace.*"
AROUND = """
SELECT count(*) AS n,
    string_agg(int8send(rows.id), ''::bytea) AS id,
    convert_to(string_agg(rows.batch_id::text, ''), 'UTF8') AS batch_id,
    string_agg(int4send(rows.position), ''::bytea) AS position,
    string_agg(timestamptz_send(rows.created_at), ''::bytea) AS created_at,
    convert_to(string_agg(rows.trace_version, ''), 'UTF8') AS trace_version,
    string_agg(int4send(octet_length(rows.trace_version)), ''::bytea) AS trace_version_lengths,
    convert_to(string_agg(rows.prompt, ''), 'UTF8') AS prompt,
    string_agg(int4send(octet_length(rows.prompt)), ''::bytea) AS prompt_lengths,
    convert_to(string_agg(rows.final_answer, ''), 'UTF8') AS final_answer,
    string_agg(int4send(octet_length(rows.final_answer)), ''::bytea) AS final_answer_lengths,
    string_agg(int4send(steps.count), ''::bytea) AS step_counts,
    string_agg(steps.ordinal, ''::bytea) AS step_ordinal,
    string_agg(steps.i, ''::bytea) AS step_i,
    convert_to(string_agg(steps.type, ''), 'UTF8') AS step_type,
    string_agg(steps.type_lengths, ''::bytea) AS step_type_lengths,
    convert_to(string_agg(steps.content, ''), 'UTF8') AS step_content,
    string_agg(steps.content_lengths, ''::bytea) AS step_content_lengths,
    convert_to(string_agg(meta.text, ''), 'UTF8') AS meta,
    string_agg(int4send(coalesce(octet_length(meta.text), -1)), ''::bytea) AS meta_lengths,
    string_agg(int4send(rows.step_count), ''::bytea) AS step_count,
    string_agg(int4send(rows.total_chars), ''::bytea) AS total_chars,
    convert_to(string_agg(rows.content_hash, ''), 'UTF8') AS content_hash,
    string_agg(int2send(rows.derivation_version), ''::bytea) AS derivation_version
FROM ({rows}) AS rows
CROSS JOIN LATERAL (SELECT rows.meta::text AS text) AS meta
CROSS JOIN LATERAL (
    SELECT count(*)::int AS count, string_agg(int4send(step.ordinal::int), ''::bytea) AS ordinal,
        string_agg(int8send(step.i), ''::bytea) AS i,
        string_agg(step.type, '') AS type, string_agg(int4send(octet_length(step.type)), ''::bytea) AS type_lengths,
        string_agg(step.content, '') AS content,
        string_agg(int4send(octet_length(step.content)), ''::bytea) AS content_lengths
    FROM (
        SELECT element.ordinal, (element.value->>'i')::bigint AS i, element.value->>'type' AS type,
            element.value->>'content' AS content
        FROM jsonb_array_elements(rows.steps) WITH ORDINALITY AS element(value, ordinal)
    ) AS step
) AS steps
"""
#: Settings for the transaction that runs `AROUND`: without them the planner caches the per-trace `steps`
#: aggregate (Memoize) keyed by each trace's whole jsonb, which never hits and doubles PostgreSQL's time.
TRANSACTION_SETTINGS = {"enable_memoize": "off"}
#: PostgreSQL counts timestamps in microseconds from 2000-01-01; Arrow from 1970-01-01.
_POSTGRES_EPOCH_US = 946_684_800_000_000


def _numbers(raw: bytes | None, kind: str) -> Any:
    """Big-endian binary values end to end (PostgreSQL's send functions) as a native numpy array."""
    return np.frombuffer(raw or b"", dtype=np.dtype(kind).newbyteorder(">")).astype(kind)


def _offsets(lengths: Any) -> Any:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _strings(data: bytes | None, lengths: bytes | None, *, nullable: bool = False) -> pa.Array:
    """A string array over `data` as it is: UTF-8 values end to end, each as long as `lengths` says (-1: null)."""
    sizes = _numbers(lengths, "int32")
    validity = None
    if nullable and (sizes < 0).any():
        validity = pa.array(sizes >= 0).buffers()[1]
        sizes = np.maximum(sizes, 0)
    offsets = _offsets(sizes)
    if int(offsets[-1]) != len(data or b""):
        raise RuntimeError("PostgreSQL's text buffer and its lengths disagree")
    return pa.StringArray.from_buffers(len(sizes), pa.py_buffer(offsets), pa.py_buffer(data or b""), validity)


def _fixed_width(data: bytes | None, width: int, count: int) -> pa.Array:
    if len(data or b"") != width * count:
        raise RuntimeError(f"a column of {width}-character values holds one of another length")
    offsets = np.arange(count + 1, dtype=np.int32) * width
    return pa.StringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(data or b""))


def _check_order(record: Any, unit: ExportUnit, positions: Any) -> None:
    """The rows are the unit's segments in order, each batch's positions ascending: or the export stops rather
    than write a trace out of place."""
    ranges = [np.arange(s.first, s.last + 1, dtype=np.int32) for s in unit.segments]
    expected_positions = np.concatenate(ranges) if ranges else np.empty(0, np.int32)
    expected_ids = b"".join(str(s.batch_id).encode() * (s.last - s.first + 1) for s in unit.segments)
    if not np.array_equal(positions, expected_positions) or (record["batch_id"] or b"") != expected_ids:
        raise RuntimeError("PostgreSQL handed a unit's traces over out of order")


def _steps(record: Any, count: int) -> pa.Array:
    """The `steps` column: each trace's steps in order (their ordinals prove it, as for the rows)."""
    counts = _numbers(record["step_counts"], "int32")
    offsets = _offsets(counts)
    ordinals = _numbers(record["step_ordinal"], "int32")
    if len(counts) != count or not np.array_equal(
        ordinals, np.arange(len(ordinals)) - np.repeat(offsets[:-1], counts) + 1
    ):
        raise RuntimeError("PostgreSQL handed a trace's steps over out of order")
    elements = pa.StructArray.from_arrays(
        [
            pa.array(_numbers(record["step_i"], "int64")),
            _strings(record["step_type"], record["step_type_lengths"]),
            _strings(record["step_content"], record["step_content_lengths"]),
        ],
        fields=list(STEP),
    )
    return pa.ListArray.from_arrays(pa.array(offsets), elements)


def record_batch(record: Any, unit: ExportUnit) -> pa.RecordBatch:
    """One Arrow record batch of `SCHEMA` from a unit's row of `AROUND`; its rows are the unit's traces in order."""
    count = int(record["n"])
    batch_ids = _fixed_width(record["batch_id"], 36, count)
    positions = _numbers(record["position"], "int32")
    _check_order(record, unit, positions)
    created_at = _numbers(record["created_at"], "int64") + _POSTGRES_EPOCH_US
    return pa.RecordBatch.from_arrays(
        [
            pa.array(_numbers(record["id"], "int64")),
            batch_ids,
            pa.DictionaryArray.from_arrays(pa.repeat(pa.scalar(0, pa.int32()), count), pa.array([unit.source])),
            pa.array(positions),
            pa.array(created_at).view(pa.timestamp("us", tz="UTC")),
            _strings(record["trace_version"], record["trace_version_lengths"]),
            _strings(record["prompt"], record["prompt_lengths"]),
            _strings(record["final_answer"], record["final_answer_lengths"]),
            _steps(record, count),
            _strings(record["meta"], record["meta_lengths"], nullable=True),
            pa.array(_numbers(record["step_count"], "int32")),
            pa.array(_numbers(record["total_chars"], "int32")),
            _fixed_width(record["content_hash"], 64, count),
            pa.array(_numbers(record["derivation_version"], "int16")),
        ],
        schema=SCHEMA,
    )


def load_arrow() -> None:
    """Pay Arrow's one-time costs now (on first use it imports pandas, when installed, which takes ~0.2 s), so
    that an export's measured rate counts the export, as the interpreter's start-up is not counted either."""
    pa.array([], pa.string())
