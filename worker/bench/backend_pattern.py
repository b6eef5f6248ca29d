"""The tunix-rt backend's batch service, measured on the same PostgreSQL and traces as the drain: what we replaced.

Its pattern, per batch: one session, one ORM object per trace, `add_all`, flush, commit, then one bulk SELECT
of the stored rows by id.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from models.derived import DERIVATION_VERSION, derive
from models.tables import Batch, BatchState, Trace


async def _store_like_the_backend(session: AsyncSession, traces: list[dict[str, Any]]) -> int:
    batch_id = uuid.uuid4()
    session.add(
        Batch(
            id=batch_id, source="backend-pattern", state=BatchState.INGESTED, trace_count=len(traces), content_hash=""
        )
    )
    rows = []
    for position, trace in enumerate(traces):
        derived = derive(trace)
        rows.append(
            Trace(
                batch_id=batch_id,
                position=position,
                trace_version=trace["trace_version"],
                prompt=trace["prompt"],
                final_answer=trace["final_answer"],
                steps=trace["steps"],
                meta=trace.get("meta"),
                step_count=derived.step_count,
                total_chars=derived.total_chars,
                content_hash=derived.content_hash,
                derivation_version=DERIVATION_VERSION,
            )
        )
    session.add_all(rows)
    await session.flush()
    await session.commit()
    stored = await session.scalars(select(Trace).where(Trace.id.in_([row.id for row in rows])))
    return len(stored.all())


async def backend_pattern_rate(database_url: str, batches: list[list[dict[str, Any]]], connections: int) -> float:
    """Traces per second the backend's pattern stores with `connections` sessions side by side (one per batch)."""
    engine = create_async_engine(database_url, pool_size=connections, max_overflow=0)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)

    async def load() -> int:
        stored = 0
        while not queue.empty():
            async with sessions() as session:  # one session per batch, as one request of the backend's endpoint
                stored += await _store_like_the_backend(session, queue.get_nowait())
        return stored

    try:
        started = time.perf_counter()
        stored = sum(await asyncio.gather(*(load() for _ in range(connections))))  # each load owns its sessions
        elapsed = time.perf_counter() - started
    finally:
        await engine.dispose()
    return stored / elapsed
