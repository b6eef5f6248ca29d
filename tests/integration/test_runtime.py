"""The per-process runtime against real PostgreSQL: created on first use, replaced (never reused) after an
interrupted task, and the replaced one's sessions ended."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from types import FrameType

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import text

from tests.db import hold_the_batch_table, query, release_the_batch_table
from tests.polling import wait_for
from tests.runtimes import ended_by_cancelling, hold_a_transaction_open, start_pending
from worker.edge import scheduled_jobs
from worker.edge.runtime import Runtime, current_runtime, replace_abandoned_runtime, stop_runtime
from worker.settings import get_settings

_STATES = "SELECT state FROM pg_stat_activity WHERE application_name = :name"
# The task is reached through its module: a task object in a test module's namespace is evaluated by pytest's
# collection, which finalizes the Celery app before the session's fixtures point it at the test servers.


def test_an_abandoned_runtime_is_replaced_and_its_open_transaction_ended(database_url: str) -> None:
    first = current_runtime()
    assert current_runtime() is first
    half_run = hold_a_transaction_open(first)
    assert [row.state for row in query(database_url, _STATES, name=first.application_name)] == ["idle in transaction"]

    second = replace_abandoned_runtime()
    try:
        assert second is not first and second.loop is not first.loop
        assert second.application_name != first.application_name
        assert query(database_url, _STATES, name=first.application_name) == []
        assert first.loop.is_closed() and ended_by_cancelling(half_run)  # freed; its work did not go on
    finally:
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


def _soft_time_limit(signum: int, frame: FrameType | None) -> None:
    raise SoftTimeLimitExceeded()  # what Celery's pool does in the task's process when the soft limit passes


def test_a_scheduled_job_cut_by_its_soft_time_limit_leaves_its_half_run_work_to_no_later_task(
    database_url: str,
) -> None:
    """The outbox sweep waits on a lock held elsewhere, as a long job would run on, until its soft time limit
    fires: the runtime it ran on (whose loop still holds the half-run sweep) is replaced, and its session ended."""
    holder = hold_the_batch_table(database_url)
    cut = current_runtime()
    previous = signal.signal(signal.SIGALRM, _soft_time_limit)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(SoftTimeLimitExceeded):
            scheduled_jobs.sweep_unpublished()
        signal.setitimer(signal.ITIMER_REAL, 0)
        half_run = asyncio.all_tasks(cut.loop)
        release_the_batch_table(database_url, holder)

        assert half_run and current_runtime() is not cut
        wait_for(lambda: query(database_url, _STATES, name=cut.application_name) == [], what="its session to end")
        assert cut.loop.is_closed() and all(ended_by_cancelling(task) for task in half_run)
        assert scheduled_jobs.sweep_unpublished() == 0  # the next job runs on the new runtime
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        release_the_batch_table(database_url, holder)
        stop_runtime()


def test_freeing_an_abandoned_runtime_ends_in_time_however_its_half_run_work_hangs() -> None:
    runtime = Runtime(get_settings())

    async def cleanup_that_hangs(began: asyncio.Event) -> None:
        """As a session's close on a connection that never answers: SQLAlchemy carries on through cancels."""
        try:
            began.set()
            await asyncio.Event().wait()
        finally:
            while True:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.Event().wait()

    hanging = start_pending(runtime, cleanup_that_hangs)
    started = time.monotonic()
    runtime.discard(timeout_s=0.5)

    assert time.monotonic() - started < 5 and runtime.loop.is_closed() and not hanging.done()
