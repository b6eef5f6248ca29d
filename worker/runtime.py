"""What each worker process owns: one event loop, one AsyncEngine, one Redis client, created after fork.

Prefork children get them in `worker_process_init`; the solo pool and in-process test workers get them lazily
on first use (keyed by PID, so nothing inherited across a fork is ever reused). Disposed on shutdown.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from typing import TypeVar

from celery import signals
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from services.delivery import Limits
from worker.events import RedisStreamPublisher
from worker.heap import keep_freed_memory_for_reuse
from worker.settings import Settings, get_settings

T = TypeVar("T")


class Runtime:
    """The per-process resources. Tasks reach them through `current_runtime()`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.engine: AsyncEngine = create_async_engine(
            settings.database_url.get_secret_value(),
            pool_size=settings.db_pool_size,
            max_overflow=0,
            pool_pre_ping=True,
        )
        # expire_on_commit=False: results are read after commit without a refresh query per row.
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.redis = Redis.from_url(
            settings.redis_url.get_secret_value(),
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        self.publisher = RedisStreamPublisher(self.redis, settings.ingest_events_stream, settings.ingest_events_maxlen)
        self.limits = Limits(settings.ingest_max_batch, settings.ingest_max_batch_bytes, settings.max_deliveries)

    def session(self) -> AsyncSession:
        """A new session for exactly one unit of work; the caller closes it (`async with`)."""
        return self.sessions()

    def run(self, work: Awaitable[T]) -> T:
        """Run `work` to completion on this process's loop (never `asyncio.run`: the engine lives here)."""
        return self.loop.run_until_complete(work)

    async def _close(self) -> None:
        await self.engine.dispose()
        await self.redis.aclose()

    def close(self) -> None:
        if self.pid == os.getpid() and not self.loop.is_closed():
            self.loop.run_until_complete(self._close())
            self.loop.close()


_current: Runtime | None = None


def current_runtime() -> Runtime:
    """This process's runtime, started on first use in a process that has none yet (solo pool, tests)."""
    global _current
    if _current is None or _current.pid != os.getpid():
        keep_freed_memory_for_reuse()
        _current = Runtime(get_settings())
    return _current


def abandon_runtime() -> None:
    """Forget this process's runtime without touching it: after a soft time limit interrupted a coroutine
    mid-flight, its loop still holds that half-run task, which must never be resumed by the next batch.
    The next task starts a fresh loop and engine; the old connections close when the process recycles."""
    global _current
    _current = None


def stop_runtime() -> None:
    """Dispose this process's engine and Redis client; the next `current_runtime()` starts afresh."""
    global _current
    if _current is not None and _current.pid == os.getpid():
        _current.close()
    _current = None


@signals.worker_process_init.connect
def _start_in_child(**_: object) -> None:
    current_runtime()


@signals.worker_process_shutdown.connect
def _stop_in_child(**_: object) -> None:
    stop_runtime()


@signals.worker_shutdown.connect
def _stop_in_main(**_: object) -> None:
    stop_runtime()
