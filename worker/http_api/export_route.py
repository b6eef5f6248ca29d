"""`GET /api/export.jsonl`: stored traces streamed as follow's JSON lines, for clients that cannot reach
PostgreSQL (PRODUCT.md §4b, §6c). One REPEATABLE READ transaction per request; the snapshot it read in comes
back in the `Export-Cursor` header, and `?after=` that cursor streams exactly what was stored since."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.export_cursor import ExportRefused, check_resumable, open_export_snapshot, parse_cursor
from services.export_query import ExportFilters, count_selected, select_batches
from services.export_stream import stream_units
from worker.export import jsonl_rows
from worker.http_api.auth import require_token

router = APIRouter(tags=["export"], dependencies=[Depends(require_token)])

#: About how much one read from PostgreSQL holds per request (two are held: one is read ahead).
UNIT_BYTES = 1 << 20
#: Matches `pg_snapshot` text; `services.export_cursor.parse_cursor` checks the rest.
CURSOR_PATTERN = r"^\d{1,20}:\d{1,20}:(\d{1,20}(,\d{1,20})*)?$"

_HEADERS = {
    "Export-Cursor": {
        "description": "The snapshot this export read in: pass it as `after` to get what was stored since.",
        "schema": {"type": "string"},
    },
    "Export-Rows": {"description": "Lines the response holds (a shorter body was cut).", "schema": {"type": "integer"}},
}


@dataclass
class _Opened:
    cursor: str = ""
    rows: int = 0


def _utc(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


#: Exports one API process streams at once (429 beyond): each holds a connection and a snapshot, which holds
#: back vacuum, for as long as its client reads, so a few slow clients must not take the pool and the cluster.
MAX_CONCURRENT_EXPORTS = 2


class _ExportsBusy(Exception):
    pass


async def _lines(state: Any, filters: ExportFilters, after: str | None, opened: _Opened) -> AsyncGenerator[bytes, None]:
    """First an empty chunk once the snapshot is taken (`opened` filled in), then the lines, slice by slice.
    `state` is the app's: its session factory and its count of running exports."""
    if getattr(state, "exports_running", 0) >= MAX_CONCURRENT_EXPORTS:
        raise _ExportsBusy
    state.exports_running = getattr(state, "exports_running", 0) + 1
    sessions: async_sessionmaker[AsyncSession] = state.sessions
    session = sessions()  # this request's own session, closed however the stream ends
    try:
        snapshot = await open_export_snapshot(session)
        if after is not None:
            check_resumable(after, None, snapshot)
        selection = select_batches(filters, after)
        opened.cursor, (_, opened.rows) = snapshot.cursor, await count_selected(session, selection)
        yield b""
        async for _, rows in stream_units(session, selection, columns=jsonl_rows.COLUMNS, unit_bytes=UNIT_BYTES):
            yield b"".join(row[0] for row in rows)
    finally:
        state.exports_running -= 1
        with anyio.CancelScope(shield=True):  # a client that left cancels the stream: still end the transaction
            await session.close()


@router.get(
    "/api/export.jsonl",
    name="export_jsonl",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "One JSON line per stored trace, as `tunix-ingest follow` writes them, streamed.",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            "headers": _HEADERS,
        },
        422: {"description": "A filter or cursor that cannot be used."},
        429: {"description": "Too many exports are streaming from this server process; retry after Retry-After."},
    },
)
async def export_jsonl(
    request: Request,
    source: Annotated[list[str] | None, Query(description="Only batches from this source (repeatable).")] = None,
    batch: Annotated[list[UUID] | None, Query(description="Only this batch (repeatable).")] = None,
    since: Annotated[datetime | None, Query(description="Stored at or after this time (UTC if no zone).")] = None,
    until: Annotated[datetime | None, Query(description="Stored before this time.")] = None,
    after: Annotated[
        str | None, Query(description="An `Export-Cursor` from an earlier export.", pattern=CURSOR_PATTERN)
    ] = None,
) -> StreamingResponse:
    """Stored traces that match every given filter (none: all of them), in one consistent snapshot, ordered by
    source, day stored, batch and position. With `after`, only those stored since that cursor's export:
    chaining `after` = the previous response's `Export-Cursor` hands over every trace once."""
    filters = ExportFilters(tuple(source or ()), tuple(batch or ()), _utc(since), _utc(until))
    opened = _Opened()
    lines = _lines(request.app.state, filters, after, opened)
    try:
        if after is not None:
            parse_cursor(after)
        await anext(lines)
    except ExportRefused as refused:
        await lines.aclose()
        raise HTTPException(422, str(refused)) from None
    except _ExportsBusy:
        detail = f"{MAX_CONCURRENT_EXPORTS} exports are streaming from this server; retry later"
        raise HTTPException(429, detail, headers={"Retry-After": "30"}) from None
    return StreamingResponse(
        lines,
        media_type="application/x-ndjson",
        headers={"Export-Cursor": opened.cursor, "Export-Rows": str(opened.rows)},
    )
