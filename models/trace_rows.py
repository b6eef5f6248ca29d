"""The shape of a `trace` row as the ingest path writes it: one definition, shared by the worker's COPY and the
bench's raw COPY ceiling, so the two can never drift apart."""

from __future__ import annotations

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


def trace_records(batch_id: UUID, traces: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """One record per trace, in `TRACE_COLUMNS` order; JSON columns as text (what the jsonb codec takes)."""
    records = []
    version = derivation.DERIVATION_VERSION
    for position, trace in enumerate(traces):
        columns = derivation.json_columns(trace)
        derived = derivation.derive(trace, columns)
        records.append(
            (
                batch_id,
                position,
                trace["trace_version"],
                trace["prompt"],
                trace["final_answer"],
                columns.steps.decode(),
                None if columns.meta is None else columns.meta.decode(),
                derived.step_count,
                derived.total_chars,
                derived.content_hash,
                version,
            )
        )
    return records
