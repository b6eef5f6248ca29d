"""What an export selects (PRODUCT.md §6c): sources, batches, the time stored, only `ingested` batches; and the
JSON Lines form, which is byte for byte the lines `tunix-ingest follow` writes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.export_cursor import open_export_snapshot
from services.export_query import MAX_UNIT_BATCHES, ExportFilters, UnitPlanner, select_batches
from tests.exports import export, exported_lines, exported_rows, store
from tests.integration.test_export_parquet import awkward_traces
from worker.client.consumer_statements import LOAD_LINES
from worker.localstack.sample_traces import generate_traces


def batches_of(out: Path) -> set[str]:
    return {row["batch_id"] for row in exported_rows(out)}


async def test_sources_are_repeatable_and_batches_narrow_the_selection(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    a = await store(sessions, list(generate_traces(2)), source="a")
    b = await store(sessions, list(generate_traces(2)), source="b")
    await store(sessions, list(generate_traces(2)), source="c")
    b_too = await store(sessions, list(generate_traces(1)), source="b")

    await export(sessions, tmp_path / "ab", ExportFilters(sources=("a", "b")))
    await export(sessions, tmp_path / "one", ExportFilters(batch_ids=(b,)))
    await export(sessions, tmp_path / "both", ExportFilters(sources=("b",), batch_ids=(a, b_too)))

    assert batches_of(tmp_path / "ab") == {str(a), str(b), str(b_too)}
    assert batches_of(tmp_path / "one") == {str(b)}
    assert batches_of(tmp_path / "both") == {str(b_too)}  # every filter holds


async def test_since_and_until_bound_the_time_the_batch_was_stored(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    stored = [await store(sessions, list(generate_traces(1))) for _ in range(3)]
    day = datetime(2026, 11, 1, tzinfo=UTC)
    async with sessions() as session:
        for offset, batch_id in enumerate(stored):
            await session.execute(
                text("UPDATE batch SET ingested_at = :at WHERE id = :id"),
                {"at": day + timedelta(days=offset), "id": batch_id},
            )
        await session.commit()

    await export(sessions, tmp_path / "since", ExportFilters(since=day + timedelta(days=1)))
    await export(sessions, tmp_path / "until", ExportFilters(until=day + timedelta(days=1)))
    await export(
        sessions, tmp_path / "window", ExportFilters(since=day + timedelta(hours=1), until=day + timedelta(days=2))
    )

    assert batches_of(tmp_path / "since") == {str(stored[1]), str(stored[2])}
    assert batches_of(tmp_path / "until") == {str(stored[0])}
    assert batches_of(tmp_path / "window") == {str(stored[1])}
    days = sorted(path.parent.name for path in (tmp_path / "since").glob("source=*/date=*/*"))
    assert days == ["date=2026-11-02", "date=2026-11-03"]  # partitioned by the UTC day stored


async def test_rejected_and_failed_batches_are_never_exported(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    stored = await store(sessions, list(generate_traces(1)))
    async with sessions() as session:
        for state in ("rejected", "failed"):
            await session.execute(
                text(
                    "INSERT INTO batch (id, source, state, trace_count, content_hash) VALUES (:id, 's', :state, 1, '')"
                ),
                {"id": uuid.uuid4(), "state": state},
            )
        await session.commit()
        unstamped = (await session.execute(text("SELECT count(*) FROM batch WHERE committed_xid IS NULL"))).scalar()

    manifest = await export(sessions, tmp_path / "out")

    assert (manifest.rows, manifest.batches) == (1, 1) and batches_of(tmp_path / "out") == {str(stored)}
    assert unstamped == 2  # only an `ingested` batch carries the transaction that stored it


async def test_json_lines_are_the_lines_follow_writes_byte_for_byte(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    batch_id = await store(sessions, awkward_traces(), source="eval")
    manifest = await export(sessions, tmp_path / "out", form="jsonl")

    async with sessions() as session:
        ids = list((await session.scalars(text("SELECT id FROM trace ORDER BY position"))).all())
        driver = (await (await session.connection()).get_raw_connection()).driver_connection
        follow_lines = b"".join(row[0] for row in await driver.fetch(LOAD_LINES, ids))  # type: ignore[union-attr]
    (exported,) = manifest.files
    assert exported.path.startswith("source=eval/date=") and exported.path.endswith(".jsonl")
    assert (tmp_path / "out" / exported.path).read_bytes() == follow_lines
    assert [line["batch_id"] for line in exported_lines(tmp_path / "out")] == [str(batch_id)] * len(ids)
    assert (manifest.format, manifest.rows, exported.rows, exported.batches) == ("jsonl", 5, 5, 1)


async def test_a_unit_spans_at_most_max_unit_batches_however_small_they_are(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A unit is sized in rows from the traces before it; its batch count is capped too, so traces that turn out
    far larger cannot make one of PostgreSQL's column buffers pass its 1 GB limit."""
    for seed in range(MAX_UNIT_BATCHES + 3):
        await store(sessions, list(generate_traces(1, seed=seed)))
    async with sessions() as session:
        await open_export_snapshot(session)
        planner = UnitPlanner(session, select_batches(ExportFilters(), None))
        first, second = await planner.next_unit(10_000), await planner.next_unit(10_000)
        assert first is not None and second is not None and await planner.next_unit(10_000) is None
    assert (len(first.segments), len(second.segments)) == (MAX_UNIT_BATCHES, 3)
