"""Read-only views of the stored batches for operators: one batch's status and the ingest totals."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from models.tables import Batch, BatchState, Trace
from services.conflicts import ConflictSeen, find_conflicts


class BatchStatus(BaseModel):
    batch_id: UUID
    source: str
    state: str
    trace_count: int
    stored_traces: int
    attempts: int
    redrives: int
    errors: list[dict[str, Any]]
    created_at: datetime
    ingested_at: datetime | None
    published_at: datetime | None
    #: Deliveries that reused this batch's id for other traces: none of them was stored.
    conflicts: list[ConflictSeen] = []


class StoreTotals(BaseModel):
    traces_stored: int
    batches_by_state: dict[str, int]
    unpublished_batches: int


async def get_batch_status(session: AsyncSession, batch_id: UUID) -> BatchStatus | None:
    """The batch's state, counts, errors, times and conflicts; None if no such batch was ever received."""
    batch = await session.get(Batch, batch_id)
    if batch is None:
        return None
    stored = await session.scalar(select(func.count()).select_from(Trace).where(Trace.batch_id == batch_id))
    return BatchStatus(
        batch_id=batch.id,
        source=batch.source,
        state=batch.state,
        trace_count=batch.trace_count,
        stored_traces=stored or 0,
        attempts=batch.attempts,
        redrives=batch.redrives,
        errors=batch.errors or [],
        created_at=batch.created_at,
        ingested_at=batch.ingested_at,
        published_at=batch.published_at,
        conflicts=await find_conflicts(session, batch_id),
    )


async def store_totals(session: AsyncSession) -> StoreTotals:
    """Traces stored, batches by state and batches still waiting for their event, from the `batch` table alone:
    an `ingested` batch holds exactly its `trace_count` rows (one transaction writes them all, nothing else does),
    so the total needs no count over `trace`, whose cost grows with every trace stored (a scrape every 15 s)."""
    rows = await session.execute(
        select(Batch.state, func.count(), func.coalesce(func.sum(Batch.trace_count), 0)).group_by(Batch.state)
    )
    by_state = {state: (batches, traces) for state, batches, traces in rows.all()}
    unpublished = await session.scalar(
        select(func.count()).select_from(Batch).where(Batch.state == BatchState.INGESTED, Batch.published_at.is_(None))
    )
    return StoreTotals(
        traces_stored=int(by_state.get(BatchState.INGESTED.value, (0, 0))[1]),
        batches_by_state={state.value: by_state.get(state.value, (0, 0))[0] for state in BatchState},
        unpublished_batches=unpublished or 0,
    )
