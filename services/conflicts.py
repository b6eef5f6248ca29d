"""Batch ids reused for other traces: recorded by the worker, shown by the batch's status.

The producer refuses such a batch while it remembers the id (INGEST_BATCH_KEY_TTL_S); afterwards only the worker
sees it. Nothing of the conflicting delivery is stored and the batch stays as it was; the row in `batch_conflict`
is what tells the producer's operator that their batch never landed."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from models.tables import BatchIdConflict
from services.validation import BatchIn


class ConflictSeen(BaseModel):
    """Other traces that arrived under a stored batch's id."""

    content_hash: str
    source: str
    trace_count: int
    detected_at: datetime


async def record_conflict(session: AsyncSession, batch: BatchIn) -> None:
    """Note that `batch` reused a stored batch's id for other traces. Commits. Safe to run again: one row per
    batch id and content, the first detection's time kept."""
    statement = (
        insert(BatchIdConflict)
        .values(
            batch_id=batch.batch_id,
            content_hash=batch.valid.content_hash,
            source=batch.source,
            trace_count=len(batch.valid.traces),
            enqueued_at=batch.enqueued_at,
        )
        .on_conflict_do_nothing(index_elements=[BatchIdConflict.batch_id, BatchIdConflict.content_hash])
    )
    await session.execute(statement)
    await session.commit()


async def find_conflicts(session: AsyncSession, batch_id: UUID) -> list[ConflictSeen]:
    """The conflicts recorded for a batch id, oldest first (one SELECT)."""
    rows = await session.execute(
        select(
            BatchIdConflict.content_hash,
            BatchIdConflict.source,
            BatchIdConflict.trace_count,
            BatchIdConflict.detected_at,
        )
        .where(BatchIdConflict.batch_id == batch_id)
        .order_by(BatchIdConflict.detected_at, BatchIdConflict.id)
    )
    return [ConflictSeen.model_validate(row._asdict()) for row in rows]
