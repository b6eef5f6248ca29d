"""The HTTP API's response bodies; `BackendBatchCreated` is the tunix-rt backend's batch response, field for field."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from models.trace_ids import trace_uuid


class Receipt(BaseModel):
    batch_id: UUID
    trace_count: int
    status_url: str


class BackendTraceCreated(BaseModel):
    #: The UUID form of the trace's row id (`models.trace_ids`): the tunix-rt backend's clients validate ids as UUIDs.
    id: UUID
    created_at: datetime
    trace_version: str


class BackendBatchCreated(BaseModel):
    created_count: int
    traces: list[BackendTraceCreated]

    @classmethod
    def from_result(cls, result: dict[str, Any], traces: list[Any]) -> BackendBatchCreated:
        """The stored rows in input order (the result's ids are in position order)."""
        return cls(
            created_count=result["count"],
            traces=[
                BackendTraceCreated(
                    id=trace_uuid(row_id), created_at=result["created_at"], trace_version=trace["trace_version"]
                )
                for row_id, trace in zip(result["ids"], traces, strict=True)
            ],
        )


class LineProblem(BaseModel):
    line: int
    field: str | None
    message: str


class JsonlAccepted(BaseModel):
    batches: list[Receipt]
    trace_count: int
    lines: int
    #: The first 100 problems, in line order (a line may have several).
    invalid_lines: list[LineProblem]
    #: Every line left out, listed or not.
    invalid_line_count: int


class Readiness(BaseModel):
    redis: str
    postgresql: str
