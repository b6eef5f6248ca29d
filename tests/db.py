"""Plain SQL against the test database from synchronous tests (each call its own short-lived engine), and a
session holding the batch table's lock, as another writer would."""

from __future__ import annotations

import asyncio
import os
import subprocess
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.polling import wait_for


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


#: The application_name of the session `hold_the_batch_table` opens, so it can be ended whether or not it has
#: taken the lock yet.
LOCK_HOLDER = "tests: lock holder"


def hold_the_batch_table(database_url: str) -> subprocess.Popen[bytes]:
    """A psql session that holds `LOCK TABLE batch` until `release_the_batch_table` ends it (or, at the latest,
    its own statement timeout); returns once the lock is granted."""
    statements = ("SET statement_timeout = '120s'", "BEGIN", "LOCK TABLE batch", "SELECT pg_sleep(300)", "COMMIT")
    holder = subprocess.Popen(
        ["psql", "-q", database_url.replace("+asyncpg", "")] + [word for sql in statements for word in ("-c", sql)],
        env={**os.environ, "PGAPPNAME": LOCK_HOLDER},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    granted = (
        "SELECT count(*) FROM pg_locks JOIN pg_stat_activity USING (pid) WHERE application_name = :name "
        "AND mode = 'AccessExclusiveLock' AND relation = 'batch'::regclass AND granted"
    )
    wait_for(lambda: scalar(database_url, granted, name=LOCK_HOLDER) == 1, what="the lock to be held")
    return holder


def release_the_batch_table(database_url: str, holder: subprocess.Popen[bytes]) -> None:
    """End the lock holder's session (killing psql alone would leave its backend asleep, holding the lock)."""
    query(
        database_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :name",
        name=LOCK_HOLDER,
    )
    try:
        holder.wait(30)
    except subprocess.TimeoutExpired:
        holder.kill()
        holder.wait(30)
