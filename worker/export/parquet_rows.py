"""The Parquet form of a stored trace (schema version 1, documented in docs/architecture.md): the SELECT list
that reads it and the conversion of a slice of rows into one Arrow record batch."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate, chain
from typing import Any

import pyarrow as pa

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

# A trace's columns (its source comes with its unit). `steps` comes as four arrays (ordinal, i, type, content):
# PostgreSQL hands a jsonb string's text over as it is stored, where turning the whole jsonb into JSON text escapes
# every character, and Arrow takes flat lists with no JSON to parse (docs/performance.md).
COLUMNS = """
trace.id, trace.batch_id::text, trace.position, trace.created_at, trace.trace_version, trace.prompt,
trace.final_answer, steps.ordinal, steps.i, steps.type, steps.content, trace.meta::text,
trace.step_count, trace.total_chars, trace.content_hash, trace.derivation_version
"""
JOINS = """
CROSS JOIN LATERAL (
    SELECT array_agg(step.ordinal) AS ordinal, array_agg((step.value->>'i')::bigint) AS i,
           array_agg(step.value->>'type') AS type, array_agg(step.value->>'content') AS content
    FROM jsonb_array_elements(trace.steps) WITH ORDINALITY AS step(value, ordinal)
) AS steps
"""


def _steps(
    ordinals: Sequence[list[int]], i: Sequence[list[int]], kinds: Sequence[list[str]], contents: Sequence[list[str]]
) -> pa.Array:
    """The `steps` column from each trace's arrays. An aggregate over a function's rows keeps their order in
    practice, not by definition: the ordinals prove it, or the export stops rather than reorder a trace's steps."""
    lengths = list(map(len, ordinals))
    if list(chain.from_iterable(ordinals)) != list(chain.from_iterable(range(1, length + 1) for length in lengths)):
        raise RuntimeError("PostgreSQL handed a trace's steps over out of order")
    flat = chain.from_iterable
    return pa.ListArray.from_arrays(
        pa.array(accumulate(lengths, initial=0), pa.int32()),
        pa.StructArray.from_arrays(
            [pa.array(flat(i), pa.int64()), pa.array(flat(kinds), pa.string()), pa.array(flat(contents), pa.string())],
            fields=list(STEP),
        ),
    )


def record_batch(rows: Sequence[Any], source: str) -> pa.RecordBatch:
    """One Arrow record batch of `SCHEMA` from rows of `COLUMNS`, all from `source`."""
    columns = list(zip(*rows, strict=True))
    (trace_id, batch_id, position, created_at, version, prompt, answer, *steps, meta) = columns[:12]
    step_count, total_chars, content_hash, derivation_version = columns[12:]
    return pa.RecordBatch.from_arrays(
        [
            pa.array(trace_id, pa.int64()),
            pa.array(batch_id, pa.string()),
            pa.DictionaryArray.from_arrays(pa.repeat(pa.scalar(0, pa.int32()), len(rows)), pa.array([source])),
            pa.array(position, pa.int32()),
            pa.array(created_at, pa.timestamp("us", tz="UTC")),
            pa.array(version, pa.string()),
            pa.array(prompt, pa.string()),
            pa.array(answer, pa.string()),
            _steps(*steps),
            pa.array(meta, pa.string()),
            pa.array(step_count, pa.int32()),
            pa.array(total_chars, pa.int32()),
            pa.array(content_hash, pa.string()),
            pa.array(derivation_version, pa.int16()),
        ],
        schema=SCHEMA,
    )


def load_arrow() -> None:
    """Pay Arrow's one-time costs now (on first use it imports pandas, when installed, which takes ~0.2 s), so
    that an export's measured rate counts the export, as the interpreter's start-up is not counted either."""
    pa.array([], pa.string())
