"""One export run: what it continues (a fresh directory, `--resume`, `--after`), then snapshot, rows, files,
manifest. Reads PostgreSQL only, in one REPEATABLE READ transaction; writes only its directory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.export_cursor import ExportRefused, check_resumable, open_export_snapshot, share_snapshot
from services.export_query import ExportFilters, ExportUnit, count_selected, select_batches
from services.export_stream import stream_units
from worker.export import jsonl_rows, parquet_rows
from worker.export.dataset_dir import DatasetDirectory, writing
from worker.export.manifest import Format, Manifest, read_manifest
from worker.export.sink import PartitionedSink

#: The most one unit read from PostgreSQL holds (each loader holds one, one more waits, and the caller has one).
MAX_UNIT_BYTES = 8 << 20


@dataclass(frozen=True)
class ExportRequest:
    filters: ExportFilters
    form: Format
    run: int
    #: The cursor to export after, the cluster it belongs to and the manifest it came from (None: a first run).
    after: str | None = None
    after_system: str | None = None
    previous: str | None = None
    row_group_bytes: int = 64 << 20
    max_file_rows: int = 1_000_000


class Progress(Protocol):
    def start(self, rows: int) -> None: ...

    def advance(self, rows: int) -> None: ...


def plan_run(
    directory: DatasetDirectory, filters: ExportFilters, form: Format | None, *, resume: bool, after: Path | None
) -> ExportRequest:
    """The run to do in `directory` (held by the caller): the next of its own (`resume`), the first after another
    export's manifest (`after`), or a first one. A continued export keeps its filters and format."""
    previous: Path | None = None
    if resume:
        paths = directory.manifest_paths()
        if not paths:
            raise ExportRefused(f"{directory.root} holds no completed export to resume")
        previous = paths[-1]
    else:
        directory.check_fresh()
        previous = after
    if previous is None:
        return ExportRequest(filters, form or "parquet", run=1)
    manifest = read_manifest(previous)
    if form is not None and form != manifest.format:
        raise ExportRefused(f"{previous} is a {manifest.format} export: a continued export keeps its format")
    return ExportRequest(
        ExportFilters.from_json(manifest.filters),
        manifest.format,
        run=manifest.run + 1 if resume else 1,
        after=manifest.cursor,
        after_system=manifest.system_identifier,
        previous=str(previous.resolve()),
    )


async def export_run(
    session: AsyncSession,
    directory: DatasetDirectory,
    request: ExportRequest,
    progress: Progress,
    helpers: Sequence[AsyncSession] = (),
) -> Manifest:
    """Export what `request` selects, in one snapshot (that `helpers`, if any, share to load rows side by side),
    into staged files; then end the transactions, move the files into place and write the manifest. Raises
    `ExportRefused` (nothing committed) for a cursor this database cannot honour. The directory must be held,
    and cleared of unfinished runs, by the caller."""
    started = datetime.now(UTC)
    snapshot = await open_export_snapshot(session)
    await share_snapshot(session, helpers)
    if request.after is not None:
        check_resumable(request.after, request.after_system, snapshot)
    selection = select_batches(request.filters, request.after)
    batches, expected = await count_selected(session, selection)
    progress.start(expected)
    sink = PartitionedSink(
        directory,
        request.run,
        request.form,
        row_group_bytes=request.row_group_bytes,
        max_file_rows=request.max_file_rows,
    )
    parquet = request.form == "parquet"
    if parquet:
        for reader in (session, *helpers):
            for name, value in parquet_rows.TRANSACTION_SETTINGS.items():
                await reader.execute(  # only where the server knows the setting (enable_memoize: PostgreSQL 14+)
                    text("SELECT set_config(name, :value, true) FROM pg_settings WHERE name = :name"),
                    {"name": name, "value": value},
                )
    columns, around = (parquet_rows.COLUMNS, parquet_rows.AROUND) if parquet else (jsonl_rows.COLUMNS, "{rows}")
    unit_bytes = min(MAX_UNIT_BYTES, max(1, request.row_group_bytes // 4))
    written = 0

    def take(unit: ExportUnit, rows: list[Any]) -> None:
        sink.take(unit, parquet_rows.record_batch(rows[0], unit) if parquet else rows)

    units = stream_units(session, selection, columns=columns, around=around, unit_bytes=unit_bytes, helpers=helpers)
    async with contextlib.aclosing(units):  # a failure stops the loads still in flight
        async for unit, rows in units:
            loaded = int(rows[0]["n"]) if parquet else len(rows)
            if loaded != unit.rows:
                raise ExportRefused(f"batches hold {loaded} traces where their trace_count says {unit.rows}")
            with writing(directory.root):
                await asyncio.to_thread(take, unit, rows)  # converted, encoded and written beside the next reads
            written += loaded
            progress.advance(loaded)
    with writing(directory.root):
        files = await asyncio.to_thread(sink.close)
    for reader in (*helpers, session):  # the snapshot's work is done: release it before the files are committed
        await reader.rollback()
    if written != expected:
        raise ExportRefused(f"read {written} traces where the selected batches hold {expected}: nothing committed")
    manifest = Manifest(
        schema_version=parquet_rows.SCHEMA_VERSION,
        format=request.form,
        run=request.run,
        started_at=started,
        finished_at=datetime.now(UTC),
        filters=request.filters.as_json(),
        after=request.after,
        cursor=snapshot.cursor,
        system_identifier=snapshot.system_identifier,
        previous=request.previous,
        rows=written,
        batches=batches,
        bytes=sum(exported.bytes for exported in files),
        files=files,
    )
    with writing(directory.root):
        await asyncio.to_thread(directory.commit, manifest)
    return manifest


async def export_to(
    session: AsyncSession,
    directory: DatasetDirectory,
    filters: ExportFilters,
    form: Format | None,
    *,
    resume: bool,
    after: Path | None,
    progress: Progress,
    helpers: Sequence[AsyncSession] = (),
    row_group_bytes: int = ExportRequest.row_group_bytes,
    max_file_rows: int = ExportRequest.max_file_rows,
) -> Manifest:
    """Hold `directory`, plan the run, delete what unfinished runs left, and export. `ExportBusy` if another
    export holds the directory; `ExportRefused` for a run that cannot be done as asked."""
    with directory.locked():
        planned = plan_run(directory, filters, form, resume=resume, after=after)
        request = replace(planned, row_group_bytes=row_group_bytes, max_file_rows=max_file_rows)
        with writing(directory.root):
            directory.remove_unfinished(request.run - 1)
        return await export_run(session, directory, request, progress, helpers)
