"""Storing a batch: one transaction, commit, one bulk SELECT, then publish (PRODUCT.md §5)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import orjson
from sqlalchemy import ARRAY, Integer, Text, bindparam, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import func

from models import derived as derivation
from models.schemas import IngestResult, StoredTrace
from models.tables import Batch, BatchState, Trace
from services.errors import BatchConflict
from services.publish import Publisher, publish_result

log = logging.getLogger(__name__)


class BatchIn(NamedTuple):
    """A batch whose traces passed validation, ready to store."""

    batch_id: UUID
    source: str
    traces: list[dict[str, Any]]
    content_hash: str
    enqueued_at: datetime | None = None


# One statement for the whole batch, whatever its size: arrays travel as 11 parameters, far below asyncpg's
# 32,767-parameter limit, and PostgreSQL unnests them server-side (COPY-class speed, no per-row round trip).
_INSERT_TRACES = text(
    """
    INSERT INTO trace (batch_id, position, trace_version, prompt, final_answer, steps, meta,
                       step_count, total_chars, content_hash, derivation_version)
    SELECT :batch_id, t.position, t.trace_version, t.prompt, t.final_answer, t.steps::jsonb, t.meta::jsonb,
           t.step_count, t.total_chars, t.content_hash, :derivation_version
    FROM unnest(:positions, :versions, :prompts, :answers, :steps, :metas, :step_counts, :total_chars, :hashes)
         AS t(position, trace_version, prompt, final_answer, steps, meta, step_count, total_chars, content_hash)
    ON CONFLICT (batch_id, position) DO NOTHING
    """
).bindparams(
    *(bindparam(name, type_=ARRAY(Integer)) for name in ("positions", "step_counts", "total_chars")),
    *(bindparam(name, type_=ARRAY(Text)) for name in ("versions", "prompts", "answers", "steps", "metas", "hashes")),
)


def _trace_columns(traces: list[dict[str, Any]]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {
        name: []
        for name in (
            "positions",
            "versions",
            "prompts",
            "answers",
            "steps",
            "metas",
            "step_counts",
            "total_chars",
            "hashes",
        )
    }
    for position, trace in enumerate(traces):
        derived = derivation.derive(trace)
        meta = trace.get("meta")
        columns["positions"].append(position)
        columns["versions"].append(trace["trace_version"])
        columns["prompts"].append(trace["prompt"])
        columns["answers"].append(trace["final_answer"])
        columns["steps"].append(orjson.dumps(trace["steps"]).decode())
        columns["metas"].append(None if meta is None else orjson.dumps(meta).decode())
        columns["step_counts"].append(derived.step_count)
        columns["total_chars"].append(derived.total_chars)
        columns["hashes"].append(derived.content_hash)
    return columns


async def load_stored_traces(session: AsyncSession, batch_id: UUID) -> list[StoredTrace]:
    """One SELECT: the ids and creation times of a batch's rows, in position order."""
    rows = await session.execute(
        select(Trace.id, Trace.position, Trace.created_at).where(Trace.batch_id == batch_id).order_by(Trace.position)
    )
    return [StoredTrace(row.id, row.position, row.created_at) for row in rows]


async def _claim_batch(session: AsyncSession, batch: BatchIn, attempts: int) -> datetime | None:
    """Insert the batch row (or revive a `failed` one with the same content); its ingest time if this call
    owns the batch, None if it was already there. A concurrent duplicate waits here on the primary key until
    the first transaction ends, so two deliveries never both insert traces."""
    row = insert(Batch).values(
        id=batch.batch_id,
        source=batch.source,
        state=BatchState.INGESTED,
        trace_count=len(batch.traces),
        content_hash=batch.content_hash,
        attempts=attempts,
        enqueued_at=batch.enqueued_at,
        ingested_at=func.now(),
        updated_at=func.now(),
    )
    statement = row.on_conflict_do_update(
        index_elements=[Batch.id],
        set_={
            "state": BatchState.INGESTED,
            "attempts": row.excluded.attempts,
            "errors": None,
            "raw_payload": None,
            "ingested_at": func.now(),
            "updated_at": func.now(),
        },
        where=(Batch.state == BatchState.FAILED) & (Batch.content_hash == row.excluded.content_hash),
    ).returning(Batch.ingested_at)
    return (await session.execute(statement)).scalar_one_or_none()


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
    ingested_at = await _claim_batch(session, batch, attempts)
    published_at = None
    if ingested_at is not None:
        await session.execute(
            _INSERT_TRACES,
            {
                "batch_id": batch.batch_id,
                "derivation_version": derivation.DERIVATION_VERSION,
                **_trace_columns(batch.traces),
            },
        )
    else:
        existing = (
            await session.execute(
                select(Batch.state, Batch.content_hash, Batch.ingested_at, Batch.published_at, Batch.errors).where(
                    Batch.id == batch.batch_id
                )
            )
        ).one()
        if existing.content_hash != batch.content_hash:
            await session.rollback()
            raise BatchConflict(batch.batch_id)
        if existing.state == BatchState.REJECTED:
            await session.rollback()
            return IngestResult(
                batch_id=batch.batch_id,
                source=batch.source,
                state=BatchState.REJECTED,
                count=0,
                errors=existing.errors or [],
            )
        ingested_at, published_at = existing.ingested_at, existing.published_at
        log.info("batch %s was already stored; nothing inserted", batch.batch_id)
    await session.commit()

    stored = await load_stored_traces(session, batch.batch_id)
    result = IngestResult(
        batch_id=batch.batch_id,
        source=batch.source,
        state=BatchState.INGESTED,
        count=len(stored),
        ingested_at=ingested_at,
        published=published_at is not None,
        traces=stored,
    )
    if published_at is not None:
        return result
    return await publish_result(session, result, publisher=publisher)
