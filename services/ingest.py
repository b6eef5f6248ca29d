"""Storing a batch: one transaction (claim, COPY), commit, one bulk SELECT, then publish (PRODUCT.md §5)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, cast
from uuid import UUID

from sqlalchemy import Table, bindparam, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import func

from models.messages import IngestResult
from models.tables import Batch, BatchState, Trace
from models.trace_rows import TRACE_COLUMNS, copy_chunks, copy_messages
from services.driver_connection import driver_connection
from services.errors import BatchConflict
from services.publish import Publisher, publish_result
from services.validation import BatchIn

log = logging.getLogger(__name__)


async def copy_traces(session: AsyncSession, batch: BatchIn) -> None:
    """Write the batch's traces with one binary COPY (`models.trace_rows`) on the session's own connection,
    inside its transaction.

    Call it only after a statement of the same transaction (the batch claim): SQLAlchemy's asyncpg adapter
    begins the transaction lazily, on the first SQLAlchemy statement, and a COPY before it would commit on its
    own. COPY has no ON CONFLICT: the claim guarantees that no row of this batch exists yet, and the unique key
    (batch_id, position) stays as the safety net.
    """
    connection = await driver_connection(session)
    rows = copy_chunks(batch.batch_id, batch.valid.traces)
    await connection.copy_to_table(
        Trace.__tablename__, source=copy_messages(rows), columns=TRACE_COLUMNS, format="binary"
    )


#: The batch's row ids in position order and the database time they were written at.
_READ_BACK = "SELECT array_agg(id ORDER BY position), min(created_at) FROM trace WHERE batch_id = $1"


async def read_back(session: AsyncSession, batch_id: UUID) -> tuple[list[int], datetime | None]:
    """One SELECT: the batch's row ids in position order and the database time they were written at (one
    transaction writes them all, so they share `now()`). Reads committed rows, or the session's own when its
    transaction is open."""
    connection = await driver_connection(session)
    ids, created_at = await connection.fetchrow(_READ_BACK, batch_id)
    return list(ids or []), created_at


def _claim_statement() -> Any:
    batch = cast(Table, Batch.__table__)
    row = insert(batch).values(
        id=bindparam("id"),
        source=bindparam("source"),
        state=BatchState.INGESTED,
        trace_count=bindparam("trace_count"),
        content_hash=bindparam("content_hash"),
        attempts=bindparam("attempts"),
        enqueued_at=bindparam("enqueued_at"),
        ingested_at=func.now(),
        updated_at=func.now(),
    )
    return row.on_conflict_do_update(
        index_elements=[batch.c.id],
        set_={
            "state": BatchState.INGESTED,
            # What was validated now, not what a message parked unread only declared: an `ingested` batch
            # holds exactly `trace_count` rows (the totals and the export count on it).
            "trace_count": row.excluded.trace_count,
            "source": row.excluded.source,
            "enqueued_at": row.excluded.enqueued_at,
            "attempts": row.excluded.attempts,
            "errors": None,
            "raw_payload": None,
            "ingested_at": func.now(),
            "updated_at": func.now(),
        },
        where=(batch.c.state == BatchState.FAILED) & (batch.c.content_hash == row.excluded.content_hash),
    ).returning(batch.c.ingested_at)


#: Built once, on the table rather than the ORM entity: an ORM insert built per call cost ~0.7 ms of the
#: worker's CPU per batch more (measured), for the same SQL.
_CLAIM = _claim_statement()


async def claim_batch(session: AsyncSession, batch: BatchIn, attempts: int) -> datetime | None:
    """Insert the batch row (or revive a `failed` one with the same content); its ingest time if this call
    owns the batch, None if it was already there. A concurrent duplicate waits here on the primary key until
    the first transaction ends, so two deliveries never both insert traces."""
    parameters = {
        "id": batch.batch_id,
        "source": batch.source,
        "trace_count": len(batch.valid.traces),
        "content_hash": batch.valid.content_hash,
        "attempts": attempts,
        "enqueued_at": batch.enqueued_at,
    }
    return (await session.execute(_CLAIM, parameters)).scalar_one_or_none()


async def ingest_batch(
    session: AsyncSession, batch: BatchIn, *, publisher: Publisher, attempts: int = 1
) -> IngestResult:
    """Store every trace of `batch` or none, commit, read the rows back with one SELECT, then publish.

    Commits once for the data (and once more to mark the batch published). Publishes one event, unless the
    batch was stored and published before. Raises `BatchConflict` if the batch id is stored with other
    content. Safe to run again, also concurrently: rows are keyed by (batch_id, position), so a rerun stores
    nothing and returns the same ids.
    """
    # `session` belongs to this call alone: every statement below is awaited in turn, never gathered,
    # because an AsyncSession (and its one connection) must not be used by two coroutines at once.
    ingested_at = await claim_batch(session, batch, attempts)
    published_at = None
    if ingested_at is not None:
        await copy_traces(session, batch)
    else:
        existing = (
            await session.execute(
                select(Batch.state, Batch.content_hash, Batch.ingested_at, Batch.published_at, Batch.errors).where(
                    Batch.id == batch.batch_id
                )
            )
        ).one()
        if existing.content_hash != batch.valid.content_hash:
            await session.rollback()
            raise BatchConflict(batch.batch_id)
        if existing.state == BatchState.REJECTED:
            await session.rollback()
            return IngestResult.not_stored(batch.batch_id, batch.source, BatchState.REJECTED, existing.errors or [])
        ingested_at, published_at = existing.ingested_at, existing.published_at
        log.info("batch %s was already stored; nothing inserted", batch.batch_id)
    await session.commit()
    return await _announce(session, batch.batch_id, batch.source, ingested_at, published_at, publisher)


async def _announce(
    session: AsyncSession,
    batch_id: UUID,
    source: str,
    ingested_at: datetime | None,
    published_at: datetime | None,
    publisher: Publisher,
) -> IngestResult:
    """Read a committed batch's rows back (one SELECT) and publish its event unless it is out already."""
    ids, created_at = await read_back(session, batch_id)
    result = IngestResult.stored(
        batch_id, source, ids=ids, created_at=created_at, ingested_at=ingested_at, published=published_at is not None
    )
    if published_at is not None:
        return result
    return await publish_result(session, result, publisher=publisher)


async def announce_if_stored(session: AsyncSession, batch_id: UUID, *, publisher: Publisher) -> IngestResult | None:
    """The result of a batch PostgreSQL already holds as `ingested` (published now if it was not yet), or None.
    For a delivery that has no body to store: a duplicate of a batch stored before. Safe to run again."""
    stored = (
        await session.execute(
            select(Batch.source, Batch.ingested_at, Batch.published_at).where(
                Batch.id == batch_id, Batch.state == BatchState.INGESTED
            )
        )
    ).one_or_none()
    if stored is None:
        await session.rollback()
        return None
    return await _announce(session, batch_id, stored.source, stored.ingested_at, stored.published_at, publisher)
