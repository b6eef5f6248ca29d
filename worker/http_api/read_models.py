"""The read routes' response bodies. `TraceDetail`, `TraceListItem`, `PaginationInfo` and the list body are the
tunix-rt backend's, field for field (ids in the UUID form of `models.trace_ids`); `BatchTracesPage` is ours."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Self
from uuid import UUID

from pydantic import BaseModel, Field

from models.trace_ids import trace_uuid
from services.trace_reads import StoredTrace, TraceSummary


class TraceStep(BaseModel):
    i: int
    type: str
    content: str


class ReasoningTrace(BaseModel):
    """A trace as its producer posted it."""

    trace_version: str
    prompt: str
    final_answer: str
    steps: list[TraceStep]
    meta: dict[str, Any] | None = None


class TraceListItem(BaseModel):
    id: UUID = Field(description="The trace's id: the UUID form of its row id.")
    created_at: datetime
    trace_version: str

    @classmethod
    def of(cls, trace: TraceSummary) -> TraceListItem:
        return cls(id=trace_uuid(trace.id), created_at=trace.created_at, trace_version=trace.trace_version)


class TraceDetail(BaseModel):
    id: UUID = Field(description="The trace's id: the UUID form of its row id.")
    created_at: datetime
    trace_version: str
    payload: ReasoningTrace

    @classmethod
    def of(cls, trace: StoredTrace, **extra: Any) -> Self:
        fields = {"id": trace_uuid(trace.id), "created_at": trace.created_at, "trace_version": trace.trace_version}
        return cls.model_validate({**fields, "payload": trace.as_received(), **extra})


class PaginationInfo(BaseModel):
    limit: int
    offset: int
    #: The `offset` of the next page; null on the last page.
    next_offset: int | None


class CursorPagination(PaginationInfo):
    next_cursor: UUID | None = Field(
        description="The `cursor` of the next page (the id of this page's last trace); null on the last page."
    )


class TraceListResponse(BaseModel):
    data: list[TraceListItem]
    pagination: CursorPagination


class BatchTrace(TraceDetail):
    position: int = Field(description="The trace's index in the batch as it was posted.")


class BatchTracesPage(BaseModel):
    batch_id: UUID
    #: `ingested`, or `rejected` / `failed` (then no trace is stored).
    state: str
    trace_count: int
    data: list[BatchTrace]
    pagination: PaginationInfo
