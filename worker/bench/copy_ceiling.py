"""The raw COPY ceiling: the same traces as the same binary COPY stream the ingest path writes
(`models.trace_rows`), built before the clock starts, into a copy of the trace table."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import asyncpg

from models.trace_rows import TRACE_COLUMNS, copy_chunks, copy_messages

COPY_TABLE = "bench_copy_trace"


class CopyFigures(NamedTuple):
    rate: float
    #: PostgreSQL's CPU per trace during the COPYs (µs), when a meter was given.
    postgresql_us: float | None


async def copy_ceiling(
    dsn: str,
    batches: list[list[dict[str, Any]]],
    connections: int,
    *,
    postgresql_cpu: Callable[[], float] | None = None,
) -> CopyFigures:
    """Traces per second that `connections` parallel COPYs (one per batch) load into an equivalent table:
    same columns, defaults, unique key and indexes. The streams are built before the clock starts.
    `postgresql_cpu`: PostgreSQL's CPU seconds so far, read before and after (its backends still live)."""
    streams = [list(copy_chunks(uuid.uuid4(), batch)) for batch in batches]
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"DROP TABLE IF EXISTS {COPY_TABLE}")
        await admin.execute(f"CREATE TABLE {COPY_TABLE} (LIKE trace INCLUDING ALL)")
        pool = await asyncpg.create_pool(dsn, min_size=connections, max_size=connections)
        queue: asyncio.Queue[list[bytes]] = asyncio.Queue()
        for stream in streams:
            queue.put_nowait(stream)

        async def load() -> None:
            async with pool.acquire() as connection:
                while not queue.empty():
                    await connection.copy_to_table(
                        COPY_TABLE, source=copy_messages(queue.get_nowait()), columns=TRACE_COLUMNS, format="binary"
                    )

        cpu_before = postgresql_cpu() if postgresql_cpu else 0.0
        started = time.perf_counter()
        await asyncio.gather(*(load() for _ in range(connections)))  # one connection per coroutine
        elapsed = time.perf_counter() - started
        cpu_used = postgresql_cpu() - cpu_before if postgresql_cpu else None
        await pool.close()
        await admin.execute(f"DROP TABLE {COPY_TABLE}")
    finally:
        await admin.close()
    traces = sum(len(batch) for batch in batches)
    return CopyFigures(traces / elapsed, None if cpu_used is None else cpu_used / traces * 1e6)
