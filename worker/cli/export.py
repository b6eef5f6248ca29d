"""`tunix-ingest export`: stored traces as a Parquet or JSON Lines dataset, incrementally (PRODUCT.md §6c)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import click
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from services.export_query import ExportFilters
from worker.cli.common import expected_failures
from worker.export.dataset_dir import DatasetDirectory, ExportBusy
from worker.export.manifest import Format, Manifest
from worker.export.parquet_rows import load_arrow
from worker.export.run import export_to
from worker.settings import get_settings

#: Loaders: three keep PostgreSQL busy on both cores of a small machine while this process encodes
#: (docs/performance.md).
DEFAULT_CONNECTIONS = 3
#: sysexits' EX_TEMPFAIL: another export holds the directory; a scheduler tries again at its next tick.
EXIT_BUSY = 75


def _stored_time(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """An ISO 8601 date or time; without a zone, UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date or time (e.g. 2026-12-04 or 2026-12-04T10:00:00+01:00)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class _Progress:
    """A progress bar on stderr when it is a terminal; nothing otherwise (cron mails, logs)."""

    def __init__(self) -> None:
        self.bar: Any = None

    def start(self, rows: int) -> None:
        if sys.stderr.isatty():
            self.bar = click.progressbar(length=rows, label="exporting traces", file=sys.stderr, show_pos=True)
            self.bar.__enter__()

    def advance(self, rows: int) -> None:
        if self.bar is not None:
            self.bar.update(rows)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


async def with_sessions(
    loaders: int, work: Callable[[AsyncSession, list[AsyncSession]], Awaitable[Manifest]]
) -> Manifest:
    """Run `work` with one session and `loaders` helper sessions on a short-lived engine of their own."""
    engine = create_async_engine(get_settings().database_url.get_secret_value(), pool_size=loaders + 1)
    try:
        factory = async_sessionmaker(engine, expire_on_commit=False)
        async with contextlib.AsyncExitStack() as stack:
            session = await stack.enter_async_context(factory())
            helpers = [await stack.enter_async_context(factory()) for _ in range(loaders)]
            return await work(session, helpers)
    finally:
        await engine.dispose()


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}" + ("" if number == 1 else "es" if noun.endswith("ch") else "s")


def summary(manifest: Manifest, seconds: float, directory: Path) -> str:
    rate = manifest.rows / seconds if seconds > 0 else 0.0
    return (
        f"exported {_count(manifest.rows, 'trace')} ({_count(manifest.batches, 'batch')}) to "
        f"{_count(len(manifest.files), 'file')}, {manifest.bytes / 2**20:,.1f} MiB, in {seconds:.2f} s: "
        f"{rate:,.0f} traces/s; run {manifest.run} of {directory} (next: tunix-ingest export --resume {directory})"
    )


def _check_usage(out: Path | None, resume: Path | None, after: Path | None, filters: ExportFilters, all_: bool) -> Path:
    if resume is not None:
        if after is not None or (out is not None and out.resolve() != resume.resolve()):
            raise click.UsageError("--resume continues DIR itself: give no other directory or --after")
        out = resume
    if out is None:
        raise click.UsageError("name the export directory (or --resume DIR)")
    chosen = filters != ExportFilters()
    if (resume or after) and (chosen or all_):
        raise click.UsageError("a continued export keeps the filters of its manifest: give none")
    if not (resume or after) and chosen == all_:
        raise click.UsageError("choose what to export: --source, --batch, --since/--until, or --all (not both)")
    return out


@click.command()
@click.argument("out", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--source", "sources", multiple=True, help="Only batches from this source (repeatable).")
@click.option("--batch", "batch_ids", multiple=True, type=click.UUID, help="Only this batch (repeatable).")
@click.option(
    "--since", metavar="TIME", callback=_stored_time, help="Only batches stored at or after this time (UTC if no zone)."
)
@click.option("--until", metavar="TIME", callback=_stored_time, help="Only batches stored before this time.")
@click.option("--all", "all_", is_flag=True, help="Every stored trace.")
@click.option("--format", "form", type=click.Choice(["parquet", "jsonl"]), help="Default: parquet (or the manifest's).")
@click.option(
    "--resume",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Add to the export in DIR what was stored since its last run, with its filters and format.",
)
@click.option(
    "--after",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Start a new export with what was stored after the run of this manifest, with its filters and format.",
)
@click.option(
    "--row-group-mb",
    type=click.FloatRange(0.01, 1024),
    default=64,
    show_default=True,
    help="Rows held before a Parquet row group is written: the export's memory is about twice this.",
)
@click.option(
    "--max-file-rows",
    type=click.IntRange(1),
    default=1_000_000,
    show_default=True,
    help="Start a new file of the partition after this many rows (between batches).",
)
@click.option(
    "--connections",
    type=click.IntRange(1, 16),
    default=DEFAULT_CONNECTIONS,
    show_default=True,
    help="Connections that load rows side by side, sharing the export's one snapshot (plus one that holds it).",
)
@expected_failures
def export(
    out: Path | None,
    sources: tuple[str, ...],
    batch_ids: tuple[uuid.UUID, ...],
    since: datetime | None,
    until: datetime | None,
    all_: bool,
    form: str | None,
    resume: Path | None,
    after: Path | None,
    row_group_mb: float,
    max_file_rows: int,
    connections: int,
) -> None:
    """Write stored traces to OUT as a dataset: Hive partitions (source=…/date=…/part-….parquet) and a manifest
    per run (__manifests__/run-N.json: filters, files with rows, batches and sha256, the resume cursor).

    Reads one consistent snapshot of PostgreSQL; files appear complete or not at all. `--resume OUT` adds what
    was stored since the last run: nothing missed, nothing twice, whatever order batches committed in.
    Exit 0 done, 1 failed (one line on stderr), 2 usage, 75 another export holds OUT.
    """
    filters = ExportFilters(sources, batch_ids, since, until)
    directory = DatasetDirectory(_check_usage(out, resume, after, filters, all_))
    progress = _Progress()
    load_arrow()
    started = time.perf_counter()

    async def run(session: AsyncSession, helpers: list[AsyncSession]) -> Manifest:
        return await export_to(
            session,
            directory,
            filters,
            cast(Format | None, form),
            resume=resume is not None,
            after=after,
            progress=progress,
            helpers=helpers,
            row_group_bytes=int(row_group_mb * 2**20),
            max_file_rows=max_file_rows,
        )

    try:
        manifest = asyncio.run(with_sessions(connections, run))
    except ExportBusy as busy:
        click.echo(f"error: {busy}", err=True)
        sys.exit(EXIT_BUSY)  # SystemExit: click returns, not raises, its own Exit outside standalone mode
    finally:
        progress.finish()
    click.echo(summary(manifest, time.perf_counter() - started, directory.root), err=True)
