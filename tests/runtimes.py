"""Runtimes left as a task cut by its soft time limit leaves them: a half-run coroutine in the loop, holding a
transaction open."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from sqlalchemy import text

from worker.edge.runtime import Runtime


def start_pending(runtime: Runtime, work: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
    """Start `work(began)` as a task on `runtime`'s loop and return once it sets `began`, the task still pending
    (as an interrupted delivery's is)."""

    async def start() -> asyncio.Task[None]:
        began = asyncio.Event()
        task = asyncio.create_task(work(began))
        await began.wait()
        return task

    return runtime.run(start())


def hold_a_transaction_open(runtime: Runtime) -> asyncio.Task[None]:
    """A pending task on `runtime`'s loop that has opened a session and begun a transaction, and waits forever."""

    async def begin_and_hang(began: asyncio.Event) -> None:
        async with runtime.session() as session:
            await session.execute(text("SELECT 1"))
            began.set()
            await asyncio.Event().wait()

    return start_pending(runtime, begin_and_hang)


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
