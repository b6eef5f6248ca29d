"""Reading stored traces back: one trace by its row id, every trace newest first (by offset or by keyset), and
one batch's traces in position order. Read-only: nothing here commits, publishes or writes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from models.tables import Batch, Trace


class TraceSummary(NamedTuple):
    id: int
    created_at: datetime
    trace_version: str


class StoredTrace(NamedTuple):
    id: int
    position: int
    created_at: datetime
    trace_version: str
    prompt: str
    final_answer: str
    steps: list[dict[str, Any]]
    meta: dict[str, Any] | None

    def as_received(self) -> dict[str, Any]:
        """The trace as its producer sent it (`meta` None when it sent none)."""
        return {
            "trace_version": self.trace_version,
            "prompt": self.prompt,
            "final_answer": self.final_answer,
            "steps": self.steps,
            "meta": self.meta,
        }


class TracePage(NamedTuple):
    traces: list[TraceSummary]
    #: More traces follow the page's last one.
    has_more: bool


class BatchTraces(NamedTuple):
    state: str
    trace_count: int
    traces: list[StoredTrace]
    has_more: bool


_STORED = (
    Trace.id,
    Trace.position,
    Trace.created_at,
    Trace.trace_version,
    Trace.prompt,
    Trace.final_answer,
    Trace.steps,
    Trace.meta,
)


async def get_trace(session: AsyncSession, trace_id: int) -> StoredTrace | None:
    """The stored trace with this row id, or None (one SELECT by primary key)."""
    row = (await session.execute(select(*_STORED).where(Trace.id == trace_id))).one_or_none()
    return None if row is None else StoredTrace(*row)


async def list_traces(session: AsyncSession, *, limit: int, offset: int = 0, before: int | None = None) -> TracePage:
    """Up to `limit` traces, newest (highest row id) first, after skipping `offset`; with `before`, only traces
    whose row id is below it (the keyset: an index range scan however deep the page, where OFFSET reads and
    drops every skipped row)."""
    query = select(Trace.id, Trace.created_at, Trace.trace_version).order_by(Trace.id.desc())
    if before is not None:
        query = query.where(Trace.id < before)
    rows = (await session.execute(query.offset(offset).limit(limit + 1))).all()
    return TracePage([TraceSummary(*row) for row in rows[:limit]], has_more=len(rows) > limit)


async def list_batch_traces(
    session: AsyncSession, batch_id: UUID, *, limit: int, offset: int = 0
) -> BatchTraces | None:
    """Up to `limit` of a batch's traces in position order after skipping `offset`, with the batch's state and
    trace count; None if no such batch is stored. A batch holds at most INGEST_MAX_BATCH traces, so an offset
    here skips at most that many index entries."""
    found = (await session.execute(select(Batch.state, Batch.trace_count).where(Batch.id == batch_id))).one_or_none()
    if found is None:
        return None
    query = select(*_STORED).where(Trace.batch_id == batch_id).order_by(Trace.position)
    rows = (await session.execute(query.offset(offset).limit(limit + 1))).all()
    return BatchTraces(found.state, found.trace_count, [StoredTrace(*row) for row in rows[:limit]], len(rows) > limit)
