"""One unit of work outside a worker process (a CLI command, a metrics scrape): its own short-lived engine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from worker.settings import get_settings

T = TypeVar("T")


def with_session(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` with one session on a short-lived engine: a CLI command is one unit of work."""

    async def run() -> T:
        engine = create_async_engine(get_settings().database_url.get_secret_value(), pool_size=1)
        try:
            async with async_sessionmaker(engine, expire_on_commit=False)() as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())
