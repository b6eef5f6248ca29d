"""`GET /api/batches/{id}` (as `tunix-ingest status --json`), `/healthz` (liveness) and `/readyz` (Redis and
PostgreSQL reachable)."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from services.reports import BatchStatus, get_batch_status
from worker.http_api.auth import require_token
from worker.http_api.models import Readiness
from worker.keys import batch_key

router = APIRouter()

#: Seconds each readiness check may take before the dependency counts as unreachable.
READY_TIMEOUT_S = 2.0


@router.get(
    "/api/batches/{batch_id}",
    name="batch_status",
    tags=["batches"],
    response_model=BatchStatus,
    responses={200: {"description": "The stored batch, or `{batch_id, state: queued}` while it waits."}},
    dependencies=[Depends(require_token)],
)
async def batch_status(request: Request, batch_id: UUID) -> Any:
    """A batch's state, counts, errors and published time; `queued` while it waits for a worker."""
    # One session for this request, opened and closed here: sessions are never shared between requests.
    async with request.app.state.sessions() as session:
        found = await get_batch_status(session, batch_id)
    if found is not None:
        return found
    if await request.app.state.redis.exists(batch_key(batch_id)):
        return JSONResponse({"batch_id": str(batch_id), "state": "queued"})
    raise HTTPException(404, f"no batch {batch_id}")


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


async def _check(probe: Any) -> str:
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await probe
    except Exception as error:  # any failure means "not ready"; the name is enough to act on
        return f"unreachable ({type(error).__name__})"
    return "ok"


async def _select_one(request: Request) -> None:
    async with request.app.state.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


@router.get("/readyz", tags=["health"], response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(request: Request) -> Any:
    """Readiness: Redis and PostgreSQL both answer within two seconds."""
    redis, postgresql = await asyncio.gather(_check(request.app.state.redis.ping()), _check(_select_one(request)))
    body = Readiness(redis=redis, postgresql=postgresql)
    return JSONResponse(body.model_dump(), 200 if redis == postgresql == "ok" else 503)
