"""Exports in the tests: batches stored through the real ingest service, export runs in this process, and the
rows of an export directory and of the database side by side."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from services.export_query import ExportFilters
from services.ingest import ingest_batch
from services.validation import BatchIn, validate_traces
from worker.export.dataset_dir import DatasetDirectory
from worker.export.manifest import Format, Manifest
from worker.export.run import export_to

#: Every trace field read back from an export, in the Parquet schema's order.
TRACE_COLUMNS = ", ".join(
    f"trace.{column}"
    for column in (
        "id",
        "batch_id::text AS batch_id",
        "position",
        "created_at",
        "trace_version",
        "prompt",
        "final_answer",
        "steps",
        "meta",
        "step_count",
        "total_chars",
        "content_hash",
        "derivation_version",
    )
)
#: Every stored trace with its batch's source.
_STORED = f"SELECT {TRACE_COLUMNS}, batch.source FROM trace JOIN batch ON batch.id = trace.batch_id ORDER BY trace.id"  # noqa: S608


class Unpublished:
    """A publisher that publishes nothing: export tests read PostgreSQL only."""

    async def publish(self, fields: dict[str, str]) -> None:
        return None


def batch_in(traces: list[dict[str, Any]], source: str = "tests", batch_id: uuid.UUID | None = None) -> BatchIn:
    valid = validate_traces(traces, max_batch=1000, max_bytes=8 * 1024 * 1024)
    return BatchIn(batch_id or uuid.uuid4(), source, valid)


async def store(
    sessions: async_sessionmaker[AsyncSession], traces: list[dict[str, Any]], source: str = "tests"
) -> uuid.UUID:
    """Store `traces` as one batch through the ingest service (committed); its id."""
    batch = batch_in(traces, source)
    async with sessions() as session:
        await ingest_batch(session, batch, publisher=Unpublished())
    return batch.batch_id


def store_from_another_thread(database_url: str, traces: list[dict[str, Any]], source: str = "tests") -> uuid.UUID:
    """Store a batch on another connection and wait until it is committed, from inside a running event loop
    (an export's progress hook): the export stays exactly where it is meanwhile."""
    stored: list[uuid.UUID] = []

    async def run() -> None:
        engine = create_async_engine(database_url)
        try:
            stored.append(await store(async_sessionmaker(engine, expire_on_commit=False), traces, source))
        finally:
            await engine.dispose()

    worker = threading.Thread(target=lambda: asyncio.run(run()))
    worker.start()
    worker.join()
    return stored[0]


class Hooks:
    """An export's progress, with a hook the test runs when the snapshot is taken and after each slice."""

    def __init__(self, on_start: Callable[[], None] | None = None, on_slice: Callable[[], None] | None = None):
        self.on_start, self.on_slice = on_start, on_slice
        self.total, self.done = 0, 0

    def start(self, rows: int) -> None:
        self.total = rows
        if self.on_start:
            self.on_start()

    def advance(self, rows: int) -> None:
        self.done += rows
        if self.on_slice:
            self.on_slice()


async def export(
    sessions: async_sessionmaker[AsyncSession],
    out: Path,
    filters: ExportFilters | None = None,
    form: Format | None = None,
    *,
    resume: bool = False,
    after: Path | None = None,
    progress: Hooks | None = None,
    loaders: int = 2,
    **sizes: int,
) -> Manifest:
    """One export run as `tunix-ingest export` does it (everything, unless filters say otherwise), with
    `loaders` helper sessions sharing its snapshot (0: the session loads the rows itself)."""
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(sessions())
        helpers = [await stack.enter_async_context(sessions()) for _ in range(loaders)]
        return await export_to(
            session,
            DatasetDirectory(out),
            filters or ExportFilters(),
            form,
            resume=resume,
            after=after,
            progress=progress or Hooks(),
            helpers=helpers,
            **sizes,
        )


def exported_rows(out: Path) -> list[dict[str, Any]]:
    """Every row of a Parquet export directory, read file by file (pyarrow), ordered by id."""
    rows = [row for path in sorted(out.glob("source=*/date=*/*.parquet")) for row in pq.read_table(path).to_pylist()]
    return sorted(rows, key=lambda row: int(row["id"]))


def exported_lines(out: Path) -> list[dict[str, Any]]:
    """Every line of a JSON Lines export directory, parsed, ordered by id."""
    lines = [orjson.loads(line) for path in sorted(out.glob("source=*/date=*/*.jsonl")) for line in path.open("rb")]
    return sorted(lines, key=lambda line: int(line["id"]))


async def database_rows(sessions: async_sessionmaker[AsyncSession]) -> dict[int, dict[str, Any]]:
    """Every stored trace with its batch's source, by id, as PostgreSQL returns it."""
    async with sessions() as session:
        rows = (await session.execute(text(_STORED))).all()
    return {row.id: dict(row._mapping) for row in rows}


def as_stored(row: dict[str, Any]) -> dict[str, Any]:
    """An exported Parquet row in the database's terms: `meta` parsed from its JSON text, no partition column."""
    meta = row["meta"]
    return {
        **{key: value for key, value in row.items() if key != "date"},
        "meta": None if meta is None else json.loads(meta),
    }
