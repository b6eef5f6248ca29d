"""Runtimes left as a task cut by its soft time limit leaves them: a half-run coroutine in the loop, holding a
transaction open."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from worker.edge.runtime import Runtime


def hold_a_transaction_open(runtime: Runtime) -> asyncio.Task[None]:
    """Start a task on `runtime`'s loop that opens a session, begins a transaction and then waits forever, and
    return once the transaction is open (the task still pending, as an interrupted delivery's is)."""
    began = asyncio.Event()

    async def begin_and_hang() -> None:
        async with runtime.session() as session:
            await session.execute(text("SELECT 1"))
            began.set()
            await asyncio.Event().wait()

    async def start() -> asyncio.Task[None]:
        task = asyncio.create_task(begin_and_hang())
        await began.wait()
        return task

    return runtime.run(start())


def end_held_transaction(runtime: Runtime, task: asyncio.Task[None]) -> None:
    """What only a test does to a runtime that is not abandoned: cancel the task holding its transaction."""
    task.cancel()
    runtime.run(asyncio.gather(task, return_exceptions=True))


def ended_by_cancelling(task: asyncio.Task[None]) -> bool:
    """The task was cancelled, or its cleanup after the cancel failed (a rollback on a connection already ended)."""
    if not task.done():
        return False
    if task.cancelled():
        return True
    error = task.exception()
    return error is not None and isinstance(error.__context__, asyncio.CancelledError)
