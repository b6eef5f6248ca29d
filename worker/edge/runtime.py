"""What each worker process owns: one event loop, one AsyncEngine, one Redis client, created after fork.

Prefork children get them in `worker_process_init`; the solo pool and in-process test workers get them lazily
on first use (keyed by PID, so nothing inherited across a fork is ever reused). Disposed on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from services.delivery import Limits
from worker.edge.heap import keep_freed_memory_for_reuse
from worker.edge.heartbeat import current_worker_id
from worker.edge.publisher import RedisStreamPublisher
from worker.redis_connect import connect_async
from worker.settings import Settings, get_settings, redact

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Bytes read from Redis at a time. A batch body is megabytes: read 64 KiB at a time (redis-py's default), its
#: fetch took twice the CPU, one event-loop turn and parser feed per read (measured: 2.3 against 1.5 ms for
#: 2.8 MB). A read takes what has arrived, up to this, so small replies cost nothing more.
BODY_READ_SIZE = 1024 * 1024

#: PostgreSQL keeps at most this many bytes of an application_name (NAMEDATALEN - 1) and cuts the rest.
APPLICATION_NAME_MAX_BYTES = 63


def worker_application_name(pid: int, generation: int) -> str:
    """The name of one runtime's PostgreSQL sessions, unique across hosts: pool-child PIDs repeat in every
    container, so ending "this PID's" sessions by a name made of the PID alone would end other pods' sessions
    too. A hash of the host and worker node (a whole host name would not fit) tells hosts apart, a random token
    what a hash collision or a reused name would not."""
    place = hashlib.sha256(f"{socket.gethostname()}|{current_worker_id()}".encode()).hexdigest()[:8]
    name = f"tunix-ingest worker {place}.{pid}.{generation}.{secrets.token_hex(4)}"
    if len(name.encode()) > APPLICATION_NAME_MAX_BYTES:  # PostgreSQL would cut the unique end off
        raise ValueError(f"application_name {name!r} passes PostgreSQL's {APPLICATION_NAME_MAX_BYTES} bytes")
    return name


class Runtime:
    """The per-process resources. Tasks reach them through `current_runtime()`."""

    def __init__(self, settings: Settings, generation: int = 0) -> None:
        self.settings = settings
        self.pid = os.getpid()
        #: Names this runtime's connections in pg_stat_activity, so an abandoned runtime's can be ended (its
        #: own only: the name is unique across hosts and runtimes).
        self.application_name = worker_application_name(self.pid, generation)
        #: A task's soft time limit cut a `run` mid-flight: the loop still holds that half-run coroutine, which no
        #: later task may resume, so `current_runtime()` hands out a replacement instead.
        self.abandoned = False
        self.loop = asyncio.new_event_loop()
        self.engine: AsyncEngine = create_async_engine(
            settings.database_url.get_secret_value(),
            pool_size=settings.db_pool_size,
            max_overflow=0,
            # Keep it: statements run straight on asyncpg (COPY, read-back, mark published) never tell the pool that
            # their connection died with a PostgreSQL restart; the ping at the next checkout does.
            pool_pre_ping=True,
            connect_args={"server_settings": postgres_session_settings(settings, self.application_name)},
        )
        # expire_on_commit=False: results are read after commit without a refresh query per row.
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.redis = connect_async(
            settings,
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=30,
            socket_read_size=BODY_READ_SIZE,
        )
        self.publisher = RedisStreamPublisher(
            self.redis,
            settings.ingest_events_stream,
            settings.ingest_events_maxlen,
            replicas=settings.ingest_redis_min_replicas,
            replica_timeout_ms=settings.ingest_redis_replica_timeout_ms,
        )
        self.limits = Limits(settings.ingest_max_batch, settings.ingest_max_batch_bytes, settings.max_deliveries)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A new session for exactly one unit of work (`async with`), closed on exit. It keeps one pooled
        connection from start to end: a session that hands its connection back at each commit checks one out
        again for the next statement, with a pre-ping each time (~0.3 ms of a batch's CPU, measured)."""
        async with self.engine.connect() as connection, self.sessions(bind=connection) as session:
            yield session

    def run(self, work: Awaitable[T]) -> T:
        """Run `work` to completion on this process's loop (never `asyncio.run`: the engine lives here)."""
        try:
            return self.loop.run_until_complete(work)
        except SoftTimeLimitExceeded:
            self.abandoned = True
            raise

    async def end_connections_of(self, application_name: str) -> int:
        """Terminate the PostgreSQL sessions of an abandoned runtime (still idle in a transaction, holding the
        batch row that the retry needs). Returns how many were ended."""
        async with self.session() as session:
            ended = await session.scalar(
                text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :name"),
                {"name": application_name},
            )
        return int(ended or 0)

    async def _close(self) -> None:
        await self.engine.dispose()
        await self.redis.aclose()

    def discard(self, timeout_s: float = 5.0) -> None:
        """Free an abandoned runtime's loop, engine and Redis client. The half-run coroutines its loop holds are
        cancelled: their cleanup runs (`async with` exits, `finally` blocks), their work does not go on. Their
        PostgreSQL sessions were ended first (best effort; a session still open is rolled back by that cleanup).
        Each of the two waits ends after `timeout_s`, however a connection hangs; what is left then goes to the
        garbage collector."""
        if self.pid != os.getpid() or self.loop.is_closed():
            return
        half_run = asyncio.all_tasks(self.loop)  # taken before anything of ours runs on the loop
        for task in half_run:
            task.cancel()

        async def finish_then_close() -> None:
            # asyncio.wait, not wait_for: on its timeout wait_for cancels and then waits again, without a bound
            if half_run and (await asyncio.wait(half_run, timeout=timeout_s))[1]:
                raise TimeoutError(f"half-run work still ending after {timeout_s} s")
            closing = asyncio.ensure_future(self._close())
            if (await asyncio.wait([closing], timeout=timeout_s))[1]:
                raise TimeoutError(f"engine and Redis client still closing after {timeout_s} s")
            closing.result()

        try:
            self.loop.run_until_complete(finish_then_close())
        except SoftTimeLimitExceeded:  # the current task's own limit: not ours to swallow
            raise
        except Exception as error:
            log.warning("could not close the abandoned runtime: %s", redact(repr(error)))
        finally:
            self.loop.close()

    def close(self) -> None:
        if self.pid == os.getpid() and not self.loop.is_closed():
            self.loop.run_until_complete(self._close())
            self.loop.close()


def postgres_session_settings(settings: Settings, application_name: str) -> dict[str, str]:
    """Server-side limits of every worker session, below the task's soft time limit (PRODUCT.md §8.9): a
    statement stuck on a lock (a quarter of it) or running long (half of it) is cut by PostgreSQL first, as a
    retryable error, and no session stays idle in a transaction after its task was interrupted (half)."""
    half_ms = max(1000, settings.task_soft_time_limit_s * 1000 // 2)
    return {
        "application_name": application_name,
        "statement_timeout": str(half_ms),
        "lock_timeout": str(max(500, half_ms // 2)),
        "idle_in_transaction_session_timeout": str(half_ms),
    }


_current: Runtime | None = None
_generation = 0


def current_runtime() -> Runtime:
    """This process's runtime, started on first use in a process that has none yet (solo pool, tests), and
    replaced once a soft time limit has abandoned it (a delivery's or a scheduled job's alike)."""
    global _current, _generation
    if _current is not None and _current.abandoned and _current.pid == os.getpid():
        return replace_abandoned_runtime()
    if _current is None or _current.pid != os.getpid():
        keep_freed_memory_for_reuse()
        _generation += 1
        _current = Runtime(get_settings(), _generation)
    return _current


def replace_abandoned_runtime() -> Runtime:
    """After a soft time limit interrupted a coroutine mid-flight, its loop still holds that half-run task,
    which must never be resumed by the next batch: start a fresh loop and engine, end the abandoned runtime's
    PostgreSQL sessions (best effort: their idle-in-transaction timeout ends them anyway), then free it."""
    global _current
    abandoned, _current = _current, None
    runtime = current_runtime()
    if abandoned is not None:
        try:
            runtime.run(runtime.end_connections_of(abandoned.application_name))
        except Exception as error:
            log.warning("could not end the abandoned runtime's sessions: %s", redact(str(error)))
        abandoned.discard()
    return runtime


def stop_runtime() -> None:
    """Dispose this process's engine and Redis client; the next `current_runtime()` starts afresh."""
    global _current
    if _current is not None and _current.pid == os.getpid():
        _current.close()
    _current = None


def start_in_process(**_: object) -> None:
    current_runtime()


def stop_in_process(**_: object) -> None:
    stop_runtime()
