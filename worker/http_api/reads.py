"""The tunix-rt backend's read routes, so its clients switch by base URL both ways (PRODUCT.md §4b reads):
`GET /api/traces/{id}` and `GET /api/traces?limit&offset` in its shapes, plus a keyset `cursor`; and our own
`GET /api/batches/{id}/traces`. Trace ids go out in the UUID form of `models.trace_ids` and come back in it
(or as the plain row id that events, `follow` and SQL show)."""

from __future__ import annotations

import re
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError

from models.trace_ids import trace_row_id, trace_uuid
from services.trace_reads import get_trace, list_batch_traces, list_traces
from worker.http_api.auth import require_token
from worker.http_api.read_models import (
    BatchTrace,
    BatchTracesPage,
    CursorPagination,
    PaginationInfo,
    TraceDetail,
    TraceListItem,
    TraceListResponse,
)

router = APIRouter(dependencies=[Depends(require_token)])

_UUID = TypeAdapter(UUID)
#: A plain row id: 1 to 19 digits (a bigint). Never a UUID: those have 32 hex digits.
_ROW_ID = re.compile(r"\d{1,19}")
_BIGINT_MAX = 2**63 - 1
#: Deeper than any table gets, and within PostgreSQL's bigint OFFSET (a larger one would be a 500).
MAX_OFFSET = 2**62


def _row_id_of(text: str, where: tuple[str, str]) -> tuple[int | None, str]:
    """(the row id `text` names, or None if it names no trace of ours; `text` as the backend would echo it).
    Raises FastAPI's 422 (`uuid_parsing`, as for the backend's UUID parameters) when it is neither form."""
    if _ROW_ID.fullmatch(text):
        row_id = int(text)
        return (row_id if row_id <= _BIGINT_MAX else None), text
    try:
        value = _UUID.validate_python(text)
    except ValidationError as error:
        raise RequestValidationError(
            [{**problem, "loc": where} for problem in error.errors(include_url=False)]
        ) from None
    return trace_row_id(value), str(value)


TraceIdText = Annotated[
    str, Path(description="The trace's id as the API hands it out (a UUID), or its plain row id (an integer).")
]


def _json(body: BaseModel) -> Response:
    """The body serialized once, by pydantic (a returned Response skips FastAPI's second validation pass)."""
    return Response(body.model_dump_json(), media_type="application/json")


@router.get(
    "/api/traces/{trace_id}",
    tags=["traces"],
    response_model=TraceDetail,
    responses={404: {"description": "No such trace: `Trace {id} not found`."}},
)
async def read_trace(request: Request, trace_id: TraceIdText) -> Response:
    """One stored trace, with its payload as it was posted (the tunix-rt backend's `TraceDetail`)."""
    row_id, shown = _row_id_of(trace_id, ("path", "trace_id"))
    found = None
    if row_id is not None:
        # One session for this request, opened and closed here: sessions are never shared between requests.
        async with request.app.state.sessions() as session:
            found = await get_trace(session, row_id)
    if found is None:
        raise HTTPException(404, f"Trace {shown} not found")
    return _json(TraceDetail.of(found))


def _unprocessable(detail: str) -> HTTPException:
    return HTTPException(422, detail)


@router.get(
    "/api/traces",
    tags=["traces"],
    response_model=TraceListResponse,
    responses={422: {"description": "`limit must be between 1 and 100`, `offset must be non-negative`."}},
)
async def read_trace_list(
    request: Request,
    limit: Annotated[int, Query(description="Traces per page.", json_schema_extra={"minimum": 1, "maximum": 100})] = 20,
    offset: Annotated[int, Query(description="Traces to skip.", json_schema_extra={"minimum": 0})] = 0,
    cursor: Annotated[
        str | None,
        Query(
            description="A `next_cursor` (a trace id): the page starts after that trace, at index speed however "
            "deep. `offset` then counts from it."
        ),
    ] = None,
) -> Response:
    """Stored traces, newest (highest id) first: the tunix-rt backend's list, plus a keyset `cursor` for deep
    pages (an offset makes PostgreSQL read and drop every skipped row)."""
    # The backend checks these itself and answers a plain `detail` string: so do we, word for word.
    if limit < 1 or limit > 100:
        raise _unprocessable("limit must be between 1 and 100")
    if offset < 0:
        raise _unprocessable("offset must be non-negative")
    if offset > MAX_OFFSET:
        raise _unprocessable(f"offset must be at most {MAX_OFFSET}")
    before = None
    if cursor is not None:
        before, _ = _row_id_of(cursor, ("query", "cursor"))
        if before is None:
            raise _unprocessable("cursor must be a trace id from this API")
    async with request.app.state.sessions() as session:
        page = await list_traces(session, limit=limit, offset=offset, before=before)
    pagination = CursorPagination(
        limit=limit,
        offset=offset,
        next_offset=offset + limit if page.has_more else None,
        next_cursor=trace_uuid(page.traces[-1].id) if page.has_more else None,
    )
    return _json(TraceListResponse(data=[TraceListItem.of(row) for row in page.traces], pagination=pagination))


@router.get(
    "/api/batches/{batch_id}/traces",
    tags=["batches"],
    response_model=BatchTracesPage,
    responses={404: {"description": "No batch with this id is stored (yet: see `GET /api/batches/{id}`)."}},
)
async def read_batch_traces(
    request: Request,
    batch_id: UUID,
    limit: Annotated[int, Query(ge=1, le=1000, description="Traces per page.")] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31, description="Traces to skip (positions below it).")] = 0,
) -> Response:
    """A stored batch's traces in position order (the order they were posted in), with their payloads."""
    async with request.app.state.sessions() as session:
        found = await list_batch_traces(session, batch_id, limit=limit, offset=offset)
    if found is None:
        raise HTTPException(404, f"Batch {batch_id} not found")
    page = BatchTracesPage(
        batch_id=batch_id,
        state=found.state,
        trace_count=found.trace_count,
        data=[BatchTrace.of(trace, position=trace.position) for trace in found.traces],
        pagination=PaginationInfo(limit=limit, offset=offset, next_offset=offset + limit if found.has_more else None),
    )
    return _json(page)
