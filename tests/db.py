"""Plain SQL against the test database from synchronous tests (each call its own short-lived engine)."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


def query(database_url: str, sql: str, **params: Any) -> list[Any]:
    async def run() -> list[Any]:
        engine = create_async_engine(database_url)
        try:
            async with engine.begin() as connection:
                result = await connection.execute(text(sql), params)
                return list(result.all()) if result.returns_rows else []
        finally:
            await engine.dispose()

    return asyncio.run(run())


def scalar(database_url: str, sql: str, **params: Any) -> Any:
    return query(database_url, sql, **params)[0][0]


def published_batches(database_url: str) -> int:
    return int(scalar(database_url, "SELECT count(*) FROM batch WHERE published_at IS NOT NULL"))


def as_received(row: Any) -> dict[str, Any]:
    """A stored trace row as the trace a producer sent (for lossless round-trip checks)."""
    return {
        "trace_version": row.trace_version,
        "prompt": row.prompt,
        "final_answer": row.final_answer,
        "steps": row.steps,
        "meta": row.meta,
    }
