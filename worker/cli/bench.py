"""`tunix-ingest bench`: the performance figures of PRODUCT.md §9 from one run on one PostgreSQL."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import click

from worker.bench.growth import DEFAULT_LEVELS, growth_table, measure_growth
from worker.bench.report import bench_table
from worker.bench.run import BENCH_PADDING, bench_redis, measure
from worker.cli.migrate import upgrade_to_head
from worker.edge.app import app
from worker.localstack.servers import PostgresServer
from worker.settings import environment


def _levels(_context: click.Context, _parameter: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not value:
        return DEFAULT_LEVELS
    try:
        levels = tuple(int(level.replace("_", "")) for level in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of row counts") from None
    if any(level < 0 for level in levels) or list(levels) != sorted(levels):
        raise click.BadParameter("row counts must be 0 or more, in increasing order")
    if levels[0] != 0:  # the fill copies a batch the first drain stored
        raise click.BadParameter(f"start at 0, the empty table the other levels are compared with: 0,{value}")
    return levels


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
@click.option(
    "--growth",
    "growth_levels",
    callback=_levels,
    is_flag=False,
    flag_value="",
    default=None,
    metavar="ROWS,ROWS,...",
    help="Instead of the figures above: the drain rate and PostgreSQL's CPU per trace with this many traces "
    f"already stored, starting at 0 (bare --growth takes {','.join(map(str, DEFAULT_LEVELS))}), and disk per "
    "million traces.",
)
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True, help="Drains per --growth level.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench(
    trace_count: int,
    batch_size: int,
    processes: int,
    pool: str,
    latency_batches: int,
    redis_mode: str,
    growth_levels: tuple[int, ...] | None,
    rounds: int,
    as_json: bool,
) -> None:
    """Measure drain rate against the raw COPY ceiling and the tunix-rt backend's ORM pattern, enqueue rate
    (Python and HTTP), latency (also of the HTTP API's ?wait), worker RSS and Redis memory per queued batch;
    or, with --growth, how the drain holds up as the trace table grows.

    Runs on its own throwaway PostgreSQL and Redis (fsync off for both paths alike) and removes them after.
    """
    work_dir = Path(tempfile.mkdtemp(prefix="tunix-bench-"))
    postgres = PostgresServer(work_dir / "postgres")
    try:
        postgres.start()
        with (
            bench_redis(redis_mode, work_dir) as (redis_server, redis_env),
            environment(
                DATABASE_URL=postgres.url,
                INGEST_MAX_QUEUE_DEPTH=str(trace_count),
                INGEST_API_ALLOW_ANONYMOUS="1",  # the bench's own loopback API, as `run` has it
                **redis_env,
            ),
        ):
            app.conf.update(broker_url=redis_env["REDIS_URL"], result_backend=redis_env["REDIS_URL"])
            upgrade_to_head(postgres.url)
            started = time.perf_counter()
            if growth_levels is not None:
                figures = measure_growth(
                    growth_levels, trace_count, batch_size, processes, pool, rounds, work_dir, postgres, BENCH_PADDING
                )
            else:
                figures = measure(
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
    table = bench_table if growth_levels is None else growth_table
    click.echo(json.dumps(figures) if as_json else table(figures))
