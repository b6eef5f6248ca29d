"""Figures the alerts need from PostgreSQL beyond the totals (services.reports): how old the outbox's oldest
entry is and how often failed batches were re-driven. Read-only; two small queries on the `batch` table."""

from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from models.tables import Batch, BatchState


class OutboxFigures(BaseModel):
    #: Seconds since the oldest stored-but-unannounced batch was committed (None: nothing waits for the sweep).
    oldest_unpublished_age_s: float | None
    #: Re-drives of failed batches, summed over the batches stored (grows by one per re-drive).
    redrives: int


async def outbox_figures(session: AsyncSession) -> OutboxFigures:
    """The outbox's age (served by the partial index `ix_batch_unpublished`) and the re-drives so far. Measured
    against the database's clock, the one `ingested_at` was written with."""
    oldest = await session.scalar(
        select(func.extract("epoch", func.now() - func.min(Batch.ingested_at))).where(
            Batch.state == BatchState.INGESTED, Batch.published_at.is_(None)
        )
    )
    redrives = await session.scalar(select(func.coalesce(func.sum(Batch.redrives), 0)).where(Batch.redrives > 0))
    return OutboxFigures(
        oldest_unpublished_age_s=None if oldest is None else max(0.0, float(oldest)), redrives=int(redrives or 0)
    )
