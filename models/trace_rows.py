"""The shape of a `trace` row as the ingest path writes it: one definition, shared by the worker's COPY and the
bench's raw COPY ceiling, so the two can never drift apart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from models import derived as derivation

#: Columns the ingest path writes; `id` and `created_at` come from the database's defaults.
TRACE_COLUMNS = (
    "batch_id",
    "position",
    "trace_version",
    "prompt",
    "final_answer",
    "steps",
    "meta",
    "step_count",
    "total_chars",
    "content_hash",
    "derivation_version",
)


def trace_records(batch_id: UUID, traces: Sequence[Any]) -> list[tuple[Any, ...]]:
    """One record per trace (a dict shaped as `TraceIn`, or its compiled struct), in `TRACE_COLUMNS` order; JSON
    columns as text (what the jsonb codec takes)."""
    records: list[tuple[Any, ...]] = []
    version, json_columns, derive = derivation.DERIVATION_VERSION, derivation.json_columns, derivation.derive
    for position, trace in enumerate(traces):
        steps, meta = columns = json_columns(trace)
        step_count, total_chars, content_hash = derive(trace, columns)
        records.append(
            (
                batch_id,
                position,
                trace["trace_version"],
                trace["prompt"],
                trace["final_answer"],
                steps.decode(),
                None if meta is None else meta.decode(),
                step_count,
                total_chars,
                content_hash,
                version,
            )
        )
    return records
