"""The HTTP API's response bodies; `SeedBatchCreated` is the seed project's batch response, field for field."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel


class Receipt(BaseModel):
    batch_id: UUID
    trace_count: int
    status_url: str


class SeedTrace(BaseModel):
    id: int
    created_at: datetime
    trace_version: str


class SeedBatchCreated(BaseModel):
    created_count: int
    traces: list[SeedTrace]

    @classmethod
    def from_result(cls, result: dict[str, Any], traces: list[dict[str, Any]]) -> SeedBatchCreated:
        """The stored rows in input order (the result's ids are in position order)."""
        return cls(
            created_count=result["count"],
            traces=[
                SeedTrace(id=row_id, created_at=result["created_at"], trace_version=trace["trace_version"])
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
    invalid_lines: list[LineProblem]


class Readiness(BaseModel):
    redis: str
    postgresql: str
