"""Scheduled reprocessing: publish what was stored but not announced, re-drive failed batches,
recompute stale derived fields. Every function takes one session and is safe to run again."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from uuid import UUID

from sqlalchemy import ARRAY, BigInteger, Integer, Text, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncSession

from models import derived as derivation
from models.messages import IngestResult
from models.tables import Batch, BatchState, Trace
from services.publish import Publisher, publish_result

log = logging.getLogger(__name__)

#: Hands a message back to the ingest queue; the worker edge provides it.
Resend = Callable[[dict[str, Any]], Awaitable[None]]


async def publish_unpublished_batches(
    session: AsyncSession, *, publisher: Publisher, older_than: timedelta, limit: int = 200
) -> int:
    """The outbox sweep: publish batches committed more than `older_than` ago whose event never went out.

    Reads the batches and their rows' ids with two SELECTs, then publishes and marks each. Returns how many
    were published. Events stay at least once: a batch published just before a crash may go out again.
    """
    batches = (
        await session.execute(
            select(Batch.id, Batch.source, Batch.ingested_at)
            .where(
                Batch.state == BatchState.INGESTED,
                Batch.published_at.is_(None),
                Batch.ingested_at < func.now() - older_than,
            )
            .order_by(Batch.ingested_at)
            .limit(limit)
        )
    ).all()
    if not batches:
        return 0
    rows = await session.execute(
        select(Trace.batch_id, func.array_agg(aggregate_order_by(Trace.id, Trace.position)), func.min(Trace.created_at))
        .where(Trace.batch_id.in_([batch.id for batch in batches]))
        .group_by(Trace.batch_id)
    )
    stored: dict[UUID, tuple[list[int], datetime | None]] = {row[0]: (list(row[1]), row[2]) for row in rows}
    published = 0
    for batch in batches:
        ids, created_at = stored.get(batch.id, ([], None))
        result = IngestResult.stored(
            batch.id, batch.source, ids=ids, created_at=created_at, ingested_at=batch.ingested_at
        )
        if not (await publish_result(session, result, publisher=publisher)).published:
            # Redis is away or its replicas do not confirm: the next sweep tries again, rather than this one
            # waiting out every remaining batch (and its time limit) for the same answer.
            break
        published += 1
    log.info("outbox sweep published %d of %d unpublished batches", published, len(batches))
    return published


async def redrive_batch(session: AsyncSession, batch_id: UUID, *, resend: Resend, max_redrives: int) -> bool:
    """Send a `failed` batch's raw payload back to the ingest queue, at most `max_redrives` times. Commits.

    Returns False (and sends nothing) when the batch is not failed, has used up its re-drives, or keeps no
    re-drivable payload (a message kept as it came that is no v1 batch).
    """
    batch = await session.get(Batch, batch_id, with_for_update=True)
    if batch is None or batch.state != BatchState.FAILED or batch.raw_payload is None:
        await session.rollback()
        return False
    if batch.redrives >= max_redrives:
        log.warning("batch %s was re-driven %d times already; leaving it for an operator", batch_id, batch.redrives)
        await session.rollback()
        return False
    try:
        payload = json.loads(batch.raw_payload)
    except ValueError:
        payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get("traces"), list):
        log.error("batch %s keeps a payload that cannot be re-driven; leaving it for an operator", batch_id)
        await session.rollback()
        return False
    await resend(payload)
    batch.redrives += 1
    batch.updated_at = func.now()
    await session.commit()
    return True


async def settled_batches(session: AsyncSession, batch_ids: list[UUID]) -> set[UUID]:
    """Which of `batch_ids` PostgreSQL holds for good, `ingested` or `rejected` (one SELECT). A `failed` batch
    is not settled: a copy of it that is still in custody (the producer sent it again) must be delivered."""
    rows = await session.scalars(
        select(Batch.id).where(Batch.id.in_(batch_ids), Batch.state.in_([BatchState.INGESTED, BatchState.REJECTED]))
    )
    return set(rows)


async def find_failed_batches(
    session: AsyncSession, *, max_redrives: int | None = None, limit: int = 1000
) -> list[UUID]:
    """Failed batches that can be re-driven (a raw payload kept, and, if `max_redrives` is given, re-drives
    left), oldest first."""
    query = select(Batch.id).where(Batch.state == BatchState.FAILED, Batch.raw_payload.is_not(None))
    if max_redrives is not None:
        query = query.where(Batch.redrives < max_redrives)
    rows = await session.scalars(query.order_by(Batch.updated_at).limit(limit))
    return list(rows)


async def count_stale_traces(session: AsyncSession) -> int:
    count = await session.scalar(
        select(func.count()).select_from(Trace).where(Trace.derivation_version < derivation.DERIVATION_VERSION)
    )
    return count or 0


_UPDATE_DERIVED = text(
    """
    UPDATE trace SET step_count = d.step_count, total_chars = d.total_chars, content_hash = d.content_hash,
                     derivation_version = :version
    FROM unnest(:ids, :step_counts, :total_chars, :hashes) AS d(id, step_count, total_chars, content_hash)
    WHERE trace.id = d.id
    """
).bindparams(
    bindparam("ids", type_=ARRAY(BigInteger)),
    bindparam("step_counts", type_=ARRAY(Integer)),
    bindparam("total_chars", type_=ARRAY(Integer)),
    bindparam("hashes", type_=ARRAY(Text)),
)


class RefreshedChunk(NamedTuple):
    """What one chunk of the derived-field refresh did: rows refreshed, and the id to continue after (None:
    no stale row is left after the chunk's start)."""

    refreshed: int
    next_after_id: int | None


async def refresh_stale_derived_chunk(session: AsyncSession, *, chunk_size: int, after_id: int = 0) -> RefreshedChunk:
    """Recompute derived fields of up to `chunk_size` stale rows with ids above `after_id`, in id order. Commits.

    Keyset paging: each chunk starts where the last one ended, on the primary key, so a refresh of N rows costs
    O(N) in all (re-scanning from the start, and sorting all stale rows for every chunk, was quadratic). Rows are
    locked with SKIP LOCKED, so ingest (which only inserts) is never blocked.
    """
    rows = (
        await session.execute(
            select(Trace.id, Trace.trace_version, Trace.prompt, Trace.final_answer, Trace.steps, Trace.meta)
            .where(Trace.id > after_id, Trace.derivation_version < derivation.DERIVATION_VERSION)
            .order_by(Trace.id)
            .limit(chunk_size)
            .with_for_update(skip_locked=True)
        )
    ).all()
    if not rows:
        await session.rollback()
        return RefreshedChunk(0, None)
    derived = [derivation.derive(row._asdict()) for row in rows]
    await session.execute(
        _UPDATE_DERIVED,
        {
            "version": derivation.DERIVATION_VERSION,
            "ids": [row.id for row in rows],
            "step_counts": [d.step_count for d in derived],
            "total_chars": [d.total_chars for d in derived],
            "hashes": [d.content_hash for d in derived],
        },
    )
    await session.commit()
    return RefreshedChunk(len(rows), rows[-1].id if len(rows) == chunk_size else None)
