"""`tunix-ingest bench`: the performance figures of PRODUCT.md §9 from one run on one PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import orjson

from worker.celery_app import app
from worker.cli.migrate import upgrade_to_head
from worker.devtools.bench_copy import copy_ceiling
from worker.devtools.bench_drain import (
    cpu_seconds,
    enqueue_rate,
    latency_ms,
    redis_used_memory,
    rss_mib,
    settle_database,
    small_batch_rate,
    start_workers,
    wait_until_published,
    worker_pids,
)
from worker.devtools.bench_http import HTTP_CLIENTS, WAIT_WARMUP, http_enqueue_rate, wait_latency_ms
from worker.devtools.bench_seed import seed_pattern_rate
from worker.devtools.local_sentinel import SentinelStack
from worker.devtools.local_stack import PostgresServer, RedisServer, free_port
from worker.devtools.processes import api_process
from worker.devtools.sample_traces import generate_traces
from worker.redis_connect import connect
from worker.settings import environment, get_settings

#: Words of filler per generated trace: about 2.8 KB of JSON, the size the performance targets assume.
BENCH_PADDING = 170
#: 100-trace batches that measure the drain rate in small batches, the base of the latency phase's pacing.
CAPACITY_BATCHES = 200
#: Traces the seed pattern stores: enough for a steady rate, few enough that its slowness does not dominate.
SEED_PATTERN_TRACES = 20_000


def _chunks(traces: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [traces[start : start + size] for start in range(0, len(traces), size)]


def _measure(
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
    nodes = start_workers(work_dir / "logs", processes, pool)
    try:
        api.wait_for_log(b"Application startup complete")
        figures["rss_start_mib"] = rss_mib(nodes)
        meters: dict[str, Callable[[], float]] = {
            "workers": lambda: cpu_seconds(worker_pids(nodes)),
            "postgresql": lambda: cpu_seconds([servers[0].pid()]),
            "redis": lambda: cpu_seconds([servers[1].pid()], with_children=False),
        }
        before = {name: meter() for name, meter in meters.items()}
        figures["drain_seconds"] = asyncio.run(asyncio.wait_for(wait_until_published(dsn, len(batches)), 3600))
        figures["cpu_us_per_trace"] = {
            name: (meter() - before[name]) / trace_count * 1e6 for name, meter in meters.items()
        }
        figures["drain_rate"] = trace_count / figures["drain_seconds"]
        asyncio.run(settle_database(dsn))
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
    figures["copy_rate"] = asyncio.run(copy_ceiling(dsn, batches, connections=processes))
    figures["ratio"] = figures["drain_rate"] / figures["copy_rate"]
    seed_batches = batches[: max(1, SEED_PATTERN_TRACES // batch_size)]
    figures["seed_traces"] = sum(len(batch) for batch in seed_batches)
    figures["seed_rate"] = asyncio.run(
        seed_pattern_rate(settings.database_url.get_secret_value(), seed_batches, connections=processes)
    )
    figures["seed_speedup"] = figures["drain_rate"] / figures["seed_rate"]
    figures["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    return figures


@contextlib.contextmanager
def _bench_redis(mode: str, work_dir: Path) -> Iterator[tuple[RedisServer, dict[str, str]]]:
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


def _table(f: dict[str, Any]) -> str:
    latency = f["latency_ms"]
    rows = [
        ("traces / batch size / trace size", f"{f['traces']:,} / {f['batch_size']} / {f['trace_bytes']:,} B"),
        ("worker processes / Redis", f"{f['processes']} ({f['pool']}) / {f['redis_mode']}"),
        ("drain rate (queue -> committed+published)", f"{f['drain_rate']:,.0f} traces/s ({f['drain_seconds']:.1f} s)"),
        (f"raw COPY ceiling ({f['processes']} connections)", f"{f['copy_rate']:,.0f} traces/s"),
        ("drain / COPY ratio", f"{f['ratio']:.2f}"),
        (
            f"seed pattern (ORM add_all, {f['processes']} sessions)",
            f"{f['seed_rate']:,.0f} traces/s on {f['seed_traces']:,} of them; drain is {f['seed_speedup']:.1f}x",
        ),
        ("enqueue rate (1 producer, validated)", f"{f['enqueue_rate']:,.0f} traces/s"),
        (
            f"HTTP enqueue rate (1 uvicorn, {f['http_clients']} clients)",
            f"{f['http_enqueue_rate']:,.0f} traces/s ({f['http_enqueue_rate'] / f['enqueue_rate']:.2f}x the producer)",
        ),
        ("drain rate in 100-trace batches", f"{f['small_batch_rate']:,.0f} traces/s"),
        (
            "latency enqueue->published at half that",
            f"p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms ({latency['batches']} batches of 100)",
        ),
        (
            "HTTP ?wait until 201 at that load",
            f"p50 {f['http_wait_ms']['p50']:.1f} ms, p99 {f['http_wait_ms']['p99']:.1f} ms; after the batch's event "
            f"p50 {f['http_wait_ms']['after_event_p50']:.1f} ms, p99 {f['http_wait_ms']['after_event_p99']:.1f} ms",
        ),
        (
            "CPU per trace during the drain",
            ", ".join(f"{name} {micros:.0f} us" for name, micros in f["cpu_us_per_trace"].items()),
        ),
        ("worker RSS start -> end", f"{f['rss_start_mib']:.0f} MiB -> {f['rss_end_mib']:.0f} MiB"),
        ("Redis memory per queued batch / its body", f"{f['redis_memory_ratio']:.2f}"),
        ("machine", f["machine"]),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


@click.command()
@click.option("--traces", "trace_count", type=click.IntRange(1000), default=100_000, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 1000), default=1000, show_default=True)
@click.option("--processes", type=click.IntRange(1), default=2, show_default=True, help="Worker pool processes.")
@click.option(
    "--pool",
    type=click.Choice(["prefork", "solo"]),
    default="prefork",
    show_default=True,
    help="prefork: one node with N children (what Procfile, compose and run ship); solo: N single-process nodes.",
)
@click.option(
    "--latency-batches",
    type=click.IntRange(10),
    default=200,
    show_default=True,
    help="100-trace batches paced at half the drain rate for the latency figures.",
)
@click.option(
    "--redis",
    "redis_mode",
    type=click.Choice(["single", "sentinel"]),
    default="single",
    show_default=True,
    help="single: one Redis; sentinel: a master, 2 replicas and 3 Sentinels, INGEST_REDIS_MIN_REPLICAS=1.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench(
    trace_count: int, batch_size: int, processes: int, pool: str, latency_batches: int, redis_mode: str, as_json: bool
) -> None:
    """Measure drain rate against the raw COPY ceiling and the seed pattern, enqueue rate (Python and HTTP),
    latency (also of the HTTP API's ?wait), worker RSS and Redis memory per queued batch.

    Runs on its own throwaway PostgreSQL and Redis (fsync off for both paths alike) and removes them after.
    """
    work_dir = Path(tempfile.mkdtemp(prefix="tunix-bench-"))
    postgres = PostgresServer(work_dir / "postgres")
    try:
        postgres.start()
        with (
            _bench_redis(redis_mode, work_dir) as (redis_server, redis_env),
            environment(DATABASE_URL=postgres.url, INGEST_MAX_QUEUE_DEPTH=str(trace_count), **redis_env),
        ):
            app.conf.update(broker_url=redis_env["REDIS_URL"], result_backend=redis_env["REDIS_URL"])
            upgrade_to_head(postgres.url)
            started = time.perf_counter()
            figures = _measure(
                trace_count,
                batch_size,
                processes,
                pool,
                latency_batches,
                work_dir,
                (postgres, redis_server),
                redis_mode,
            )
            figures["bench_seconds"] = time.perf_counter() - started
    finally:
        postgres.remove()
        shutil.rmtree(work_dir, ignore_errors=True)
    click.echo(json.dumps(figures) if as_json else _table(figures))
