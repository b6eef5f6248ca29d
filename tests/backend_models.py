"""The tunix-rt backend's response schemas as its clients hold them (`tunix_rt_backend/schemas/trace.py`): ids
are `uuid.UUID`, the payload is its `ReasoningTrace` with its rules. Tests parse our answers with these."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class TraceStep(BaseModel):
    i: int = Field(..., ge=0)
    type: str = Field(..., min_length=1, max_length=64)
    content: str = Field(..., min_length=1, max_length=20000)


class ReasoningTrace(BaseModel):
    trace_version: str = Field(..., min_length=1, max_length=64)
    prompt: str = Field(..., min_length=1, max_length=50000)
    final_answer: str = Field(..., min_length=1, max_length=50000)
    steps: list[TraceStep] = Field(..., min_length=1, max_length=1000)
    meta: dict[str, Any] | None = None


class TraceCreateResponse(BaseModel):
    id: uuid.UUID
    created_at: datetime
    trace_version: str


class TraceBatchCreateResponse(BaseModel):
    created_count: int
    traces: list[TraceCreateResponse]


class TraceDetail(BaseModel):
    id: uuid.UUID
    created_at: datetime
    trace_version: str
    payload: ReasoningTrace


class TraceListItem(BaseModel):
    id: uuid.UUID
    created_at: datetime
    trace_version: str


class PaginationInfo(BaseModel):
    limit: int
    offset: int
    next_offset: int | None


class TraceListResponse(BaseModel):
    data: list[TraceListItem]
    pagination: PaginationInfo
