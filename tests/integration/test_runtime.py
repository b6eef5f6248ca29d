"""The per-process runtime against real PostgreSQL: created on first use, replaced (never reused) after an
interrupted task, and the replaced one's sessions ended."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tests.db import query
from worker.edge.runtime import current_runtime, replace_abandoned_runtime, stop_runtime


def test_an_abandoned_runtime_is_replaced_and_its_open_transaction_ended(database_url: str) -> None:
    first = current_runtime()
    assert current_runtime() is first
    opened = first.session()

    async def begin_and_hang() -> AsyncSession:  # as a task interrupted by its soft time limit leaves it
        session = await opened.__aenter__()
        await session.execute(text("SELECT 1"))
        return session

    stuck = first.run(begin_and_hang())
    states = "SELECT state FROM pg_stat_activity WHERE application_name = :name"
    assert [row.state for row in query(database_url, states, name=first.application_name)] == ["idle in transaction"]

    second = replace_abandoned_runtime()
    try:
        assert second is not first and second.loop is not first.loop
        assert second.application_name != first.application_name
        assert query(database_url, states, name=first.application_name) == []
    finally:
        first.run(stuck.invalidate())  # what the abandoned process would never do: tidy up for the test run
        first.close()
        stop_runtime()
    assert second.loop.is_closed()


def test_worker_sessions_carry_postgres_side_limits_below_the_soft_time_limit() -> None:
    runtime = current_runtime()

    async def limits() -> list[str]:
        async with runtime.session() as session:
            return [
                str(await session.scalar(text(f"SHOW {name}")))
                for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
            ]

    try:
        assert runtime.run(limits()) == ["30s", "15s", "30s"]  # half (a quarter for locks) of the 60 s soft limit
    finally:
        stop_runtime()
