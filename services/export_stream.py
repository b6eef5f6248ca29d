"""Loading an export's units, in order: on the snapshot's own connection, or on helper connections that share its
snapshot (as `pg_dump -j` does), several units at once. Reads only, in `open_export_snapshot`'s transaction."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.export_query import ExportUnit, Selection, UnitPlanner, driver

# One unit's traces: each segment's positions of its batch in order, by the unique index on (batch_id, position).
# `columns` may use the trace's columns unqualified.
_LOAD = """
SELECT {columns}
FROM unnest($1::uuid[], $2::int[], $3::int[]) WITH ORDINALITY AS chosen(batch_key, first_position, last_position, n)
CROSS JOIN LATERAL (
    SELECT * FROM trace
    WHERE trace.batch_id = chosen.batch_key AND trace.position BETWEEN chosen.first_position AND chosen.last_position
    ORDER BY trace.position
) AS trace
"""
#: Rows of the first unit, before their size is known; and the most a unit takes, however small the rows.
FIRST_UNIT_ROWS, MAX_UNIT_ROWS = 64, 20_000


def _size(value: Any) -> int:
    if isinstance(value, str | bytes):
        return len(value)
    return sum(map(_size, value)) if isinstance(value, list) else 8


def _bytes_per_trace(rows: Sequence[Any], traces: int) -> float:
    """Average size of a trace's values, from a sample of up to 16 rows (a row per trace, or one for the unit)."""
    sample = rows[:: max(1, len(rows) // 16)]
    return sum(_size(value) for row in sample for value in row) / len(sample) * len(rows) / max(traces, 1)


async def stream_units(
    session: AsyncSession,
    selection: Selection,
    *,
    columns: str,
    unit_bytes: int,
    around: str = "{rows}",
    helpers: Sequence[AsyncSession] = (),
) -> AsyncGenerator[tuple[ExportUnit, list[Any]], None]:
    """The selected traces, unit by unit in partition order, as asyncpg records of `columns` (a row per trace,
    in order), or of `around`, a statement over those rows (`{rows}`); each unit about `unit_bytes` (sized from
    the rows seen so far). Each loader (a helper, else the session itself) loads one
    unit while the next waits for it, so at most loaders + 2 units are held (the caller's, and those in flight;
    loaders + 1 without helpers).
    The helpers must have joined the
    session's snapshot (`services.export_cursor.share_snapshot`)."""
    planner = UnitPlanner(session, selection)
    own = await driver(session)
    loaders = [await driver(helper) for helper in helpers] or [own]
    # Never two statements at once on one connection, nor on the session that owns it (M10 guardrails).
    busy = {id(loader): asyncio.Lock() for loader in [own, *loaders]}
    statement = around.format(rows=_LOAD.format(columns=columns))
    rows_per_unit = FIRST_UNIT_ROWS

    async def load(loader: Any, unit: ExportUnit) -> list[Any]:
        ids, firsts, lasts = zip(*unit.segments, strict=True)
        async with busy[id(loader)]:
            return list(await loader.fetch(statement, list(ids), list(firsts), list(lasts)))

    in_flight: deque[tuple[ExportUnit, asyncio.Future[list[Any]]]] = deque()
    planned, planning = 0, True

    async def top_up() -> None:
        """Plan units until every loader has one and one more waits: loaders never idle while the caller works."""
        nonlocal planned, planning
        while planning and len(in_flight) <= len(loaders):
            async with busy[id(own)]:
                unit = await planner.next_unit(rows_per_unit)
            if unit is None:
                planning = False
                return
            in_flight.append((unit, asyncio.ensure_future(load(loaders[planned % len(loaders)], unit))))
            planned += 1

    try:
        await top_up()
        while in_flight:
            unit, loading = in_flight.popleft()
            rows = await loading
            if rows and unit.rows:
                per_trace = _bytes_per_trace(rows, unit.rows)
                rows_per_unit = max(1, min(MAX_UNIT_ROWS, int(unit_bytes / max(per_trace, 1.0))))
            if helpers:  # the next loads run on the helpers while the caller takes this unit
                await top_up()
            yield unit, rows
            if not helpers:
                await top_up()
    finally:  # the caller stopped early, or a load failed: drop what is still loading
        for _, loading in in_flight:
            loading.cancel()
        await asyncio.gather(*(loading for _, loading in in_flight), return_exceptions=True)
