"""The ASGI app: one AsyncEngine and one async Redis client per server process, made in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from worker.http_api import jsonl_upload, reads, status, traces
from worker.http_api.auth import warn_about_access
from worker.http_api.errors import install_error_handlers
from worker.http_api.export_route import router as export_router
from worker.http_api.waiting import EventWatch
from worker.redis_connect import connect_async
from worker.settings import get_settings


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    warn_about_access()
    app.state.engine = create_async_engine(
        settings.database_url.get_secret_value(), pool_size=settings.db_pool_size, pool_pre_ping=True
    )
    app.state.sessions = async_sessionmaker(app.state.engine, expire_on_commit=False)
    app.state.redis = connect_async(settings, socket_connect_timeout=3, socket_timeout=10)
    app.state.events = EventWatch(app.state.redis, settings.ingest_events_stream)
    app.state.events.start()
    try:
        yield
    finally:
        await app.state.events.stop()
        await app.state.redis.aclose()
        await app.state.engine.dispose()


def _with_trace_schemas(app: FastAPI) -> None:
    """Put the trace schemas the batch route's request body refers to into the OpenAPI components."""
    plain_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = plain_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(traces.TRACE_SCHEMA_DEFS)
        return app.openapi_schema or schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app() -> FastAPI:
    """The HTTP enqueue API of PRODUCT.md §4b (`uvicorn --factory worker.http_api:create_app`)."""
    app = FastAPI(
        title="tunix-rt ingest",
        summary="Enqueue batches of reasoning traces; a drop-in for the tunix-rt backend's trace routes.",
        lifespan=_lifespan,
    )
    app.include_router(traces.router)
    app.include_router(jsonl_upload.router)
    app.include_router(status.router)
    app.include_router(reads.router)
    app.include_router(export_router)
    install_error_handlers(app)
    _with_trace_schemas(app)
    return app
