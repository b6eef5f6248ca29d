"""The drain with PostgreSQL on a core of its own (PRODUCT.md §9): in a deployment workers run on their own hosts and
PostgreSQL is the one shared part, so this row asks how close the pipeline keeps PostgreSQL's one core to what raw
COPY gets out of it. PostgreSQL (postmaster, its processes and every backend it forks later) is pinned to one core;
the workers, Redis and the bench to the others."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from worker.bench.copy_ceiling import copy_ceiling
from worker.bench.drain import (
    IDLE_QUEUE,
    children,
    cpu_seconds,
    enqueue_rate,
    published_batches,
    start_draining,
    threads,
    wait_until_published,
)
from worker.localstack.processes import ChildProcess, worker_command
from worker.localstack.servers import PostgresServer, RedisServer


def pin(pid: int, cores: set[int]) -> None:
    """Every thread of `pid` and of its children (one level: a postmaster's processes) onto `cores`; what they
    fork later inherits it."""
    for process in (pid, *children([pid])):
        for thread in threads(process):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(thread, cores)


@contextlib.contextmanager
def postgres_on_its_own_core(postgres: PostgresServer, redis: RedisServer) -> Iterator[tuple[set[int], set[int]]]:
    """(PostgreSQL's core, the others) while pinned; every affinity is restored afterwards."""
    everything = os.sched_getaffinity(0)
    database, rest = {min(everything)}, everything - {min(everything)}
    pin(postgres.pid(), database)
    pin(redis.pid(), rest)
    pin(os.getpid(), rest)
    try:
        yield database, rest
    finally:
        for pid in (postgres.pid(), redis.pid(), os.getpid()):
            pin(pid, everything)


def pinned_drain(
    dsn: str,
    batches: list[list[dict[str, Any]]],
    processes: int,
    log_dir: Path,
    servers: tuple[PostgresServer, RedisServer],
) -> dict[str, Any] | None:
    """The drain of `batches` (not stored yet) by a prefork node of `processes` on the other cores, and the raw
    COPY of the same traces, both with PostgreSQL on its one core; None on a single-core machine."""
    if len(os.sched_getaffinity(0)) < 2:
        return None
    postgres, redis = servers
    traces = sum(len(batch) for batch in batches)
    already_published = asyncio.run(published_batches(dsn))
    with postgres_on_its_own_core(postgres, redis) as (database, rest):
        enqueue_rate(batches, source="bench-pinned")
        cores = ",".join(map(str, sorted(rest)))
        command = ["taskset", "-c", cores, *worker_command("pinned", concurrency=processes, queues=IDLE_QUEUE)]
        node = ChildProcess("worker pinned", command, log_dir / "worker-pinned.log").start()
        try:
            node.wait_for_log(b" ready.")
            before = cpu_seconds([postgres.pid()])
            started = start_draining([node])
            published = wait_until_published(dsn, already_published + len(batches), started=started)
            seconds = asyncio.run(asyncio.wait_for(published, 3600))
            drain_postgresql_us = (cpu_seconds([postgres.pid()]) - before) / traces * 1e6
        finally:
            node.stop()
        copied = asyncio.run(
            copy_ceiling(dsn, batches, connections=processes, postgresql_cpu=lambda: cpu_seconds([postgres.pid()]))
        )
    drain_rate = traces / seconds
    return {
        "postgresql_core": min(database),
        "worker_cores": cores,
        "drain_rate": drain_rate,
        "copy_rate": copied.rate,
        "ratio": drain_rate / copied.rate,
        "drain_postgresql_us": drain_postgresql_us,
        "copy_postgresql_us": copied.postgresql_us,
    }
