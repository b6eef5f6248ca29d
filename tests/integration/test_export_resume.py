"""Incremental export, exactly once (PRODUCT.md §6c): `--resume` exports what was stored since the last run,
also when batches commit out of id order or while a run reads, and a run that died leaves nothing behind."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.export_cursor import ExportRefused
from services.export_query import ExportFilters
from services.ingest import claim_batch, copy_traces, ingest_batch
from tests.exports import Hooks, Unpublished, batch_in, export, exported_rows, store, store_from_another_thread
from worker.export import dataset_dir
from worker.export.dataset_dir import DatasetDirectory, ExportBusy
from worker.localstack.sample_traces import generate_traces


async def stored_ids(sessions: async_sessionmaker[AsyncSession], batch_id: uuid.UUID | None = None) -> list[int]:
    where = "" if batch_id is None else f"WHERE batch_id = '{batch_id}'"
    async with sessions() as session:
        return list((await session.scalars(text(f"SELECT id FROM trace {where} ORDER BY id"))).all())  # noqa: S608


async def test_resume_exports_only_what_was_stored_since_the_last_run(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    await store(sessions, list(generate_traces(3)))
    first = await export(sessions, out)
    await store(sessions, list(generate_traces(2)))
    second = await export(sessions, out, resume=True)
    third = await export(sessions, out, resume=True)

    assert (first.rows, second.rows, third.rows) == (3, 2, 0)
    assert (second.run, second.after, third.after) == (2, first.cursor, second.cursor)
    assert second.previous is not None and second.previous.endswith("__manifests__/run-00001.json")
    assert [row["id"] for row in exported_rows(out)] == await stored_ids(sessions)


#: Rows loaded by the snapshot's own connection (as `GET /api/export.jsonl` does), or by two helpers sharing it.
LOADERS = pytest.mark.parametrize("loaders", [0, 2], ids=["one-connection", "shared-snapshot"])


@LOADERS
async def test_a_batch_with_lower_ids_that_commits_later_is_exported_once_by_the_next_run(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path, loaders: int
) -> None:
    out = tmp_path / "out"
    slow, fast = batch_in(list(generate_traces(3))), batch_in(list(generate_traces(3, seed=2)))
    async with sessions() as slow_session:
        await claim_batch(slow_session, slow, 1)
        await copy_traces(slow_session, slow)  # rows written, ids taken, not committed yet
        async with sessions() as fast_session:
            await ingest_batch(fast_session, fast, publisher=Unpublished())  # higher ids, committed first
        first = await export(sessions, out, loaders=loaders)
        await slow_session.commit()
    second = await export(sessions, out, resume=True, loaders=loaders)
    third = await export(sessions, out, resume=True, loaders=loaders)

    slow_ids, fast_ids = await stored_ids(sessions, slow.batch_id), await stored_ids(sessions, fast.batch_id)
    assert max(slow_ids) < min(fast_ids)  # an id cursor after the first run would skip the slow batch
    async with sessions() as session:
        stored_at = {
            row.id: row.ingested_at for row in await session.execute(text("SELECT id, ingested_at FROM batch"))
        }
    assert stored_at[slow.batch_id] < stored_at[fast.batch_id]  # and so would a cursor on the time stored
    assert (first.rows, second.rows, third.rows) == (3, 3, 0)
    assert {row["batch_id"] for row in exported_rows(out) if row["id"] in slow_ids} == {str(slow.batch_id)}
    assert [row["id"] for row in exported_rows(out)] == sorted(slow_ids + fast_ids)  # each once


@LOADERS
async def test_a_batch_committed_while_an_export_reads_goes_whole_into_the_next_run(
    sessions: async_sessionmaker[AsyncSession], database_url: str, tmp_path: Path, loaders: int
) -> None:
    out = tmp_path / "out"
    for seed in range(4):
        await store(sessions, list(generate_traces(250, seed=seed)))
    late: list[uuid.UUID] = []

    def commit_one_more() -> None:
        if len(late) < 3:
            late.append(store_from_another_thread(database_url, list(generate_traces(5, seed=len(late)))))

    hooks = Hooks(on_start=commit_one_more, on_slice=commit_one_more)
    first = await export(sessions, out, progress=hooks, row_group_bytes=64 * 1024, loaders=loaders)
    second = await export(sessions, out, resume=True, loaders=loaders)

    assert len(late) == 3 and hooks.done == first.rows == 1000  # committed after the snapshot, during the reads
    assert second.rows == 15 and second.batches == 3
    exported = exported_rows(out)
    assert {row["batch_id"] for row in exported[1000:]} == {str(batch_id) for batch_id in late}
    assert [row["id"] for row in exported] == await stored_ids(sessions)


async def test_a_failed_batch_stored_later_is_exported_by_the_run_after_it(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    batch = batch_in(list(generate_traces(2)))
    async with sessions() as session:
        await session.execute(
            text("INSERT INTO batch (id, source, state, trace_count, content_hash) VALUES (:id, 's', 'failed', 2, :h)"),
            {"id": batch.batch_id, "h": batch.valid.content_hash},
        )
        await session.commit()
    first = await export(sessions, out)
    async with sessions() as session:
        await ingest_batch(session, batch, publisher=Unpublished())  # the re-drive revives the failed row
    second = await export(sessions, out, resume=True)

    assert (first.rows, second.rows) == (0, 2)
    assert {row["batch_id"] for row in exported_rows(out)} == {str(batch.batch_id)}


async def test_after_a_manifest_a_new_directory_starts_where_the_other_left_off(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await store(sessions, list(generate_traces(2)), source="a")
    first = await export(sessions, tmp_path / "one", ExportFilters(sources=("a",)))
    newer = await store(sessions, list(generate_traces(3)), source="a")
    await store(sessions, list(generate_traces(4)), source="b")

    manifest_path = tmp_path / "one" / "__manifests__" / "run-00001.json"
    second = await export(sessions, tmp_path / "two", after=manifest_path)

    assert (second.run, second.rows, second.after, second.filters) == (1, 3, first.cursor, first.filters)
    assert second.previous == str(manifest_path.resolve())
    assert {row["batch_id"] for row in exported_rows(tmp_path / "two")} == {str(newer)}


async def test_files_of_a_run_that_died_before_its_manifest_are_removed_and_exported_again_once(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    await store(sessions, list(generate_traces(2)))
    await export(sessions, out)
    await store(sessions, list(generate_traces(3)), source="later")

    def die(*_: object) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as patched:
        patched.setattr(dataset_dir, "write_manifest", die)  # the files are in place, the manifest never comes
        with pytest.raises(ExportRefused, match=r"cannot write the export in .*: disk full"):
            await export(sessions, out, resume=True)
    assert list(out.glob("source=later/date=*/part-00002-*.parquet"))
    again = await export(sessions, out, resume=True)

    assert (again.run, again.rows) == (2, 3)
    assert [row["id"] for row in exported_rows(out)] == await stored_ids(sessions)  # nothing twice


async def test_a_cursor_from_another_cluster_or_from_the_future_is_refused(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    await store(sessions, list(generate_traces(1)))
    await export(sessions, out)
    path = out / "__manifests__" / "run-00001.json"
    original = orjson.loads(path.read_bytes())

    path.write_bytes(orjson.dumps({**original, "system_identifier": "1"}))
    with pytest.raises(ExportRefused, match="another PostgreSQL cluster"):
        await export(sessions, out, resume=True)
    path.write_bytes(orjson.dumps({**original, "cursor": "99999999999:99999999999:"}))
    with pytest.raises(ExportRefused, match="ahead of this database"):
        await export(sessions, out, resume=True)
    assert [manifest.name for manifest in (out / "__manifests__").iterdir()] == ["run-00001.json"]


async def test_directories_that_cannot_take_the_run_are_refused(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await export(sessions, tmp_path / "done")
    with pytest.raises(ExportRefused, match="already holds an export: continue it with --resume"):
        await export(sessions, tmp_path / "done")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("mine")
    with pytest.raises(ExportRefused, match="is not empty and holds no export"):
        await export(sessions, tmp_path / "notes")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportRefused, match="holds no completed export to resume"):
        await export(sessions, tmp_path / "empty", resume=True)
    with DatasetDirectory(tmp_path / "done").locked(), pytest.raises(ExportBusy, match="another export"):
        await export(sessions, tmp_path / "done", resume=True)
