"""One run of `tunix-ingest bench` (PRODUCT.md §9): the phases, in order, on one PostgreSQL and one Redis (or a
Sentinel stack), each figure into one dict; the command (worker.cli.bench) prints it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import platform
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from worker.bench.backend_pattern import backend_pattern_rate
from worker.bench.copy_ceiling import copy_ceiling
from worker.bench.drain import (
    cpu_seconds,
    enqueue_rate,
    latency_ms,
    redis_used_memory,
    rss_mib,
    settle_database,
    small_batch_rate,
    start_draining,
    start_workers,
    wait_until_published,
    worker_pids,
)
from worker.bench.export_rates import export_rates
from worker.bench.follow_rates import follow_rate, select_ceiling
from worker.bench.http_enqueue import HTTP_CLIENTS, WAIT_WARMUP, http_enqueue_rate, wait_latency_ms
from worker.bench.pinned import pinned_drain
from worker.client.consumer import FOLLOW_CONSUMERS as FOLLOW_PARALLEL
from worker.localstack.ports import free_port
from worker.localstack.processes import api_process
from worker.localstack.sample_traces import generate_traces
from worker.localstack.sentinel import SentinelStack
from worker.localstack.servers import PostgresServer, RedisServer
from worker.redis_connect import connect
from worker.settings import get_settings

#: Words of filler per generated trace: about 2.8 KB of JSON, the size the performance targets assume.
BENCH_PADDING = 170
#: 100-trace batches that measure the drain rate in small batches, the base of the latency phase's pacing.
CAPACITY_BATCHES = 200
#: Traces the tunix-rt backend's pattern stores: enough for a steady rate, few enough that its slowness does not
#: dominate.
BACKEND_PATTERN_TRACES = 20_000


def _chunks(traces: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [traces[start : start + size] for start in range(0, len(traces), size)]


def measure(
    trace_count: int,
    batch_size: int,
    processes: int,
    pool: str,
    latency_batches: int,
    work_dir: Path,
    servers: tuple[PostgresServer, RedisServer],
    redis_mode: str,
) -> dict[str, Any]:
    settings = get_settings()
    dsn = settings.database_url.get_secret_value().replace("+asyncpg", "")
    traces = list(generate_traces(trace_count, seed=7, padding=BENCH_PADDING))
    batches = _chunks(traces, batch_size)
    small = _chunks(list(generate_traces(100 * CAPACITY_BATCHES, seed=9, padding=BENCH_PADDING)), 100)
    paced = _chunks(list(generate_traces(100 * latency_batches, seed=8, padding=BENCH_PADDING)), 100)
    paced_http = _chunks(
        list(generate_traces(100 * (latency_batches + WAIT_WARMUP), seed=10, padding=BENCH_PADDING)), 100
    )
    # A streaming producer holds no such heap: keep the cyclic GC from re-scanning the bench's own data set
    # (millions of objects) during the timed enqueue, which would cost ~20 % that is not the enqueue path's.
    gc.freeze()
    figures: dict[str, Any] = {
        "traces": trace_count,
        "batch_size": batch_size,
        "processes": processes,
        "pool": pool,
        "trace_bytes": round(sum(len(json.dumps(t)) for t in traces[:100]) / 100),
        "redis_mode": redis_mode,
    }
    redis = connect()
    memory_before = redis_used_memory(redis)
    figures["enqueue_rate"] = enqueue_rate(batches, source="bench")
    # The whole backlog is queued now and no worker runs: what Redis holds per batch over the batch's body.
    bodies = sum(len(orjson.dumps(batch, option=orjson.OPT_SORT_KEYS)) for batch in batches)
    figures["redis_memory_ratio"] = (redis_used_memory(redis) - memory_before) / bodies
    api_port = free_port()
    api = api_process(work_dir / "logs", api_port).start()
    api_url = f"http://127.0.0.1:{api_port}"
    nodes = start_workers(work_dir / "logs", processes, pool, draining=False)
    try:
        api.wait_for_log(b"Application startup complete")
        figures["rss_start_mib"] = rss_mib(nodes)
        meters: dict[str, Callable[[], float]] = {
            "workers": lambda: cpu_seconds(worker_pids(nodes)),
            "postgresql": lambda: cpu_seconds([servers[0].pid()]),
            "redis": lambda: cpu_seconds([servers[1].pid()], with_children=False),
        }
        before = {name: meter() for name, meter in meters.items()}
        started = start_draining(nodes)  # only now: a drain begun before the meters were read would go uncounted
        figures["drain_seconds"] = asyncio.run(
            asyncio.wait_for(wait_until_published(dsn, len(batches), started=started), 3600)
        )
        figures["cpu_us_per_trace"] = {
            name: (meter() - before[name]) / trace_count * 1e6 for name, meter in meters.items()
        }
        figures["drain_rate"] = trace_count / figures["drain_seconds"]
        asyncio.run(settle_database(dsn))
        # The drain's batches, just stored, out through a consumer group (the idle workers wait meanwhile).
        figures["follow"] = follow_rate(work_dir, FOLLOW_PARALLEL)
        figures["select_rate"] = asyncio.run(select_ceiling(dsn, FOLLOW_PARALLEL))
        figures["follow_ratio"] = figures["follow"]["rate"] / figures["select_rate"]
        # The same stored traces as a dataset, worker-free: PostgreSQL to files, beside the same ceiling.
        figures["export"] = export_rates(work_dir, figures["select_rate"])
        # "Half load" for 100-trace batches is half of what the workers drain *in such batches*: a batch's fixed
        # costs (about ten round trips) weigh ten times more than in 1,000-trace batches, so half the bulk
        # drain rate would be close to full load for them, and the latency figure would measure a queue.
        figures["small_batch_rate"] = small_batch_rate(dsn, small, already_published=len(batches))
        figures["latency_ms"] = latency_ms(
            paced,
            figures["small_batch_rate"] / 2,
            settings.ingest_events_stream,
        )
        figures["http_wait_ms"] = wait_latency_ms(
            api_url, paced_http, figures["small_batch_rate"] / 2, settings.ingest_events_stream
        )
        figures["rss_end_mib"] = rss_mib(nodes)
        for node in nodes:
            node.stop()
        # With no worker left, the HTTP API's figure is its own, like the Python producer's above.
        figures["http_clients"] = HTTP_CLIENTS
        figures["http_enqueue_rate"] = http_enqueue_rate(api_url, batches)
        redis.flushdb()  # the HTTP copies are not drained: the phases below use only PostgreSQL
    finally:
        for node in nodes:
            node.stop()
        api.stop()
        redis.close()
    copied = asyncio.run(
        copy_ceiling(dsn, batches, connections=processes, postgresql_cpu=lambda: cpu_seconds([servers[0].pid()]))
    )
    figures["copy_rate"] = copied.rate
    figures["ratio"] = figures["drain_rate"] / figures["copy_rate"]
    figures["copy_postgresql_us"] = copied.postgresql_us
    # The pipeline's overhead on the one part that does not scale out: PostgreSQL's CPU per trace, drain / COPY.
    figures["postgresql_cpu_ratio"] = figures["cpu_us_per_trace"]["postgresql"] / (copied.postgresql_us or 1.0)
    backend_batches = batches[: max(1, BACKEND_PATTERN_TRACES // batch_size)]
    figures["backend_traces"] = sum(len(batch) for batch in backend_batches)
    figures["backend_rate"] = asyncio.run(
        backend_pattern_rate(settings.database_url.get_secret_value(), backend_batches, connections=processes)
    )
    figures["backend_speedup"] = figures["drain_rate"] / figures["backend_rate"]
    # Last, on traces not stored yet: the drain with PostgreSQL on a core of its own, against COPY on that core.
    pinned_batches = _chunks(list(generate_traces(trace_count, seed=11, padding=BENCH_PADDING)), batch_size)
    figures["pinned"] = pinned_drain(
        dsn,
        pinned_batches,
        processes,
        work_dir / "logs",
        servers,
    )
    figures["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    return figures


@contextlib.contextmanager
def bench_redis(mode: str, work_dir: Path) -> Iterator[tuple[RedisServer, dict[str, str]]]:
    """The bench's Redis (append-only file off, like PostgreSQL's fsync) and the settings that reach it: the
    server whose CPU is measured (the master), and REDIS_URL (with Sentinel's settings)."""
    if mode == "single":
        server = RedisServer(work_dir / "redis", appendonly=False)
        server.start()
        try:
            yield server, {"REDIS_URL": server.url}
        finally:
            server.remove()
        return
    stack = SentinelStack(work_dir / "redis-ha", appendonly=False)
    stack.start()
    try:
        yield (
            stack.master,
            {
                "REDIS_URL": stack.url,
                "REDIS_SENTINEL_MASTER": stack.master_name,
                "INGEST_REDIS_MIN_REPLICAS": "1",
            },
        )
    finally:
        stack.remove()
