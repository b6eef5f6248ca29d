"""`tunix-ingest bench --growth` (PRODUCT.md §12): the drain rate and PostgreSQL's CPU per trace with 0, 1M, 5M and
10M traces already stored, and what a million stored traces cost on disk.

Each level is reached by copying a stored batch inside PostgreSQL (fresh batch ids, so the unique index on
(batch_id, position) grows as producers make it grow), then VACUUM ANALYZE and CHECKPOINT, as autovacuum and the
checkpointer would have done by then in steady state; the drain is then measured like the main bench's."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from worker.bench.drain import (
    cpu_seconds,
    enqueue_rate,
    published_batches,
    start_draining,
    start_workers,
    wait_until_published,
    worker_pids,
)
from worker.localstack.sample_traces import generate_traces
from worker.localstack.servers import PostgresServer

DEFAULT_LEVELS = (0, 1_000_000, 5_000_000, 10_000_000)
#: Batches copied per INSERT while filling: 200k rows a statement keeps each transaction a few seconds long.
FILL_BATCHES_PER_STATEMENT = 200
GROWTH_SOURCE = "bench-growth"

_FILL = """
WITH filler AS (
    INSERT INTO batch (id, source, state, trace_count, content_hash, enqueued_at, ingested_at, published_at)
    SELECT gen_random_uuid(), 'bench-growth-fill', 'ingested', $2, template.content_hash, now(), now(), now()
    FROM generate_series(1, $3), (SELECT content_hash FROM batch WHERE id = $1) AS template
    RETURNING id
)
INSERT INTO trace (batch_id, position, trace_version, prompt, final_answer, steps, meta, step_count, total_chars,
                   content_hash, derivation_version)
SELECT filler.id, t.position, t.trace_version, t.prompt, t.final_answer, t.steps, t.meta, t.step_count,
       t.total_chars, t.content_hash, t.derivation_version
FROM filler CROSS JOIN (SELECT * FROM trace WHERE batch_id = $1) AS t
"""

_SIZES = """
SELECT 'table' AS part, pg_relation_size('trace') AS bytes
UNION ALL SELECT 'TOAST', pg_relation_size(reltoastrelid) FROM pg_class WHERE relname = 'trace'
UNION ALL SELECT 'TOAST index', pg_indexes_size(reltoastrelid) FROM pg_class WHERE relname = 'trace'
UNION ALL SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index
          WHERE indrelid = 'trace'::regclass
"""


async def _count(dsn: str, query: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval(query))
    finally:
        await connection.close()


async def stored_traces(dsn: str) -> int:
    return await _count(dsn, "SELECT count(*) FROM trace")


async def fill_to(dsn: str, rows: int, batch_size: int) -> dict[str, float]:
    """Copy a stored `batch_size`-trace batch under new batch ids until `trace` holds at least `rows` rows, then
    VACUUM ANALYZE and CHECKPOINT. Returns the seconds each took."""
    connection = await asyncpg.connect(dsn)
    try:
        template = await connection.fetchval(
            "SELECT id FROM batch WHERE source = $1 AND trace_count = $2 LIMIT 1", GROWTH_SOURCE, batch_size
        )
        started = time.perf_counter()
        missing = rows - int(await connection.fetchval("SELECT count(*) FROM trace"))
        if template is None and missing > 0:
            raise RuntimeError(f"no drained {batch_size}-trace batch to copy: the first level must be 0")
        while missing > 0:
            batches = min(FILL_BATCHES_PER_STATEMENT, -(-missing // batch_size))
            await connection.execute(_FILL, template, batch_size, batches, timeout=3600)
            missing -= batches * batch_size
        filled = time.perf_counter()
        await connection.execute("VACUUM (ANALYZE) batch, trace", timeout=3600)
        vacuumed = time.perf_counter()
        await connection.execute("CHECKPOINT", timeout=3600)
        return {
            "fill_s": filled - started,
            "vacuum_s": vacuumed - filled,
            "checkpoint_s": time.perf_counter() - vacuumed,
        }
    finally:
        await connection.close()


async def disk_per_million(dsn: str) -> dict[str, float]:
    """MiB per million stored traces of the table, its TOAST (and TOAST index) and each index."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = int(await connection.fetchval("SELECT count(*) FROM trace"))
        sizes = await connection.fetch(_SIZES)
    finally:
        await connection.close()
    return {size["part"]: size["bytes"] / 2**20 / (rows / 1e6) for size in sizes}


async def retention(dsn: str, traces: int) -> dict[str, float]:
    """Retention as an operator runs it without partitions: delete the oldest batches holding about `traces`
    traces (their rows go with them: a trigger on `batch`, migration 0005), then VACUUM so the space is reused.
    Seconds of each."""
    connection = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        deleted = await connection.fetchval(
            """
            WITH oldest AS (
                SELECT id FROM (
                    SELECT id, sum(trace_count) OVER (ORDER BY created_at, id) AS running FROM batch
                ) AS counted WHERE running <= $1
            ), gone AS (DELETE FROM batch WHERE id IN (SELECT id FROM oldest) RETURNING trace_count)
            SELECT coalesce(sum(trace_count), 0) FROM gone
            """,
            traces,
            timeout=3600,
        )
        removed = time.perf_counter()
        await connection.execute("VACUUM batch, trace", timeout=3600)
        return {
            "traces_deleted": int(deleted),
            "delete_s": removed - started,
            "vacuum_s": time.perf_counter() - removed,
        }
    finally:
        await connection.close()


def drain_once(
    dsn: str, batches: list[list[dict[str, Any]]], processes: int, pool: str, log_dir: Path, postgres: PostgresServer
) -> dict[str, float]:
    """Queue `batches` with no worker running, then start the workers and time them to published."""
    traces = sum(len(batch) for batch in batches)
    already = asyncio.run(published_batches(dsn))
    enqueue_rate(batches, source=GROWTH_SOURCE)
    nodes = start_workers(log_dir, processes, pool, draining=False)
    try:
        meters: dict[str, Callable[[], float]] = {
            "workers": lambda: cpu_seconds(worker_pids(nodes)),
            "postgresql": lambda: cpu_seconds([postgres.pid()]),
        }
        before = {name: meter() for name, meter in meters.items()}
        started = start_draining(nodes)
        seconds = asyncio.run(
            asyncio.wait_for(wait_until_published(dsn, already + len(batches), started=started), 3600)
        )
        used = {name: (meter() - before[name]) / traces * 1e6 for name, meter in meters.items()}
    finally:
        for node in nodes:
            node.stop()
    return {"rate": traces / seconds, "postgresql_us": used["postgresql"], "workers_us": used["workers"]}


def measure_growth(
    levels: tuple[int, ...],
    trace_count: int,
    batch_size: int,
    processes: int,
    pool: str,
    rounds: int,
    work_dir: Path,
    postgres: PostgresServer,
    padding: int,
) -> dict[str, Any]:
    """At each level: fill `trace` to it, then drain `trace_count` traces `rounds` times; the median of each
    figure. The first level must be 0: the fill copies a batch the first drain stored."""
    dsn = postgres.url.replace("+asyncpg", "")
    figures: dict[str, Any] = {"levels": [], "traces": trace_count, "batch_size": batch_size, "rounds": rounds}
    seed = 100
    for level in levels:
        upkeep = asyncio.run(fill_to(dsn, level, batch_size)) if level else {}
        stored_before = asyncio.run(stored_traces(dsn))
        drains = []
        for _ in range(rounds):
            seed += 1
            traces = list(generate_traces(trace_count, seed=seed, padding=padding))
            batches = [traces[start : start + batch_size] for start in range(0, len(traces), batch_size)]
            drains.append(drain_once(dsn, batches, processes, pool, work_dir / "logs", postgres))
        figures["levels"].append(
            {
                "level": level,
                "stored_before": stored_before,
                **{key: statistics.median(drain[key] for drain in drains) for key in drains[0]},
                "rates": [drain["rate"] for drain in drains],
                **upkeep,
            }
        )
    empty = figures["levels"][0]["rate"]
    for row in figures["levels"]:
        row["vs_first"] = row["rate"] / empty
    figures["disk_mib_per_million"] = asyncio.run(disk_per_million(dsn))
    figures["stored_after"] = asyncio.run(stored_traces(dsn))
    figures["retention"] = asyncio.run(retention(dsn, figures["stored_after"] // 10))
    return figures


def growth_table(figures: dict[str, Any]) -> str:
    lines = [
        f"drain of {figures['traces']:,} traces in {figures['batch_size']}-trace batches, median of "
        f"{figures['rounds']} rounds, at each number of traces already stored",
        f"{'stored before':>14}  {'drain rate':>14}  {'vs first':>8}  {'PostgreSQL CPU':>14}  {'workers CPU':>11}  "
        f"{'fill, vacuum, checkpoint':>26}",
    ]
    for row in figures["levels"]:
        upkeep = (
            f"{row['fill_s']:.0f} s, {row['vacuum_s']:.0f} s, {row['checkpoint_s']:.0f} s" if "fill_s" in row else "-"
        )
        lines.append(
            f"{row['stored_before']:>14,}  {row['rate']:>10,.0f} t/s  {row['vs_first']:>8.2f}  "
            f"{row['postgresql_us']:>11.1f} us  {row['workers_us']:>8.1f} us  {upkeep:>26}"
        )
    disk = figures["disk_mib_per_million"]
    lines.append(
        f"disk per million traces (at {figures['stored_after']:,}): "
        + ", ".join(f"{part} {mib:,.0f} MiB" for part, mib in disk.items())
        + f"; total {sum(disk.values()):,.0f} MiB"
    )
    kept = figures["retention"]
    lines.append(
        f"retention: deleting the oldest {kept['traces_deleted']:,} traces (a tenth) took {kept['delete_s']:.1f} s, "
        f"the VACUUM that makes their space reusable {kept['vacuum_s']:.1f} s"
    )
    return "\n".join(lines)
