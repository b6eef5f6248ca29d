"""`tunix-ingest export` to Parquet against the real PostgreSQL (PRODUCT.md §6c): files read back with pyarrow
and Hugging Face `datasets` equal the database row for row, awkward text included; Hive partitions; a manifest
that matches its files; memory bounded by the row-group budget."""

from __future__ import annotations

import hashlib
import importlib
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.exports import as_stored, database_rows, export, exported_rows, store
from worker.export import parquet_rows
from worker.localstack.sample_traces import generate_traces

#: Text that breaks careless encoders: quotes and backslashes, control characters, non-ASCII in every plane,
#: the JavaScript line separators, a byte order mark.
AWKWARD = (
    "quote \" apostrophe ' backslash \\ tab \t cr \r lf \n bell \x07 unit \x1f del \x7f é 漢字 🧠 \u2028 \u2029 \ufeff"
)


def awkward_traces() -> list[dict[str, Any]]:
    with_meta = {
        "trace_version": f"v{AWKWARD[:20]}",
        "prompt": AWKWARD,
        "final_answer": AWKWARD[::-1],
        "steps": [
            {"i": 0, "type": "think 🧠", "content": AWKWARD},
            {"i": 7, "type": "check", "content": "\u2028" * 3},
        ],
        "meta": {"text": AWKWARD, "nested": {"list": [1, 2.5, None, True, AWKWARD]}, "empty": {}},
    }
    without_meta = {
        "trace_version": "1",
        "prompt": "p",
        "final_answer": "a",
        "steps": [{"i": 0, "type": "t", "content": "c"}],
    }
    return [with_meta, without_meta, *generate_traces(3)]


async def test_parquet_reads_back_equal_to_the_database_row_for_row_with_pyarrow(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await store(sessions, awkward_traces(), source="eval-run-17")
    await store(sessions, list(generate_traces(4, seed=3)), source="other")

    manifest = await export(sessions, tmp_path / "out")

    stored = await database_rows(sessions)
    exported = exported_rows(tmp_path / "out")
    assert manifest.rows == len(exported) == len(stored) == 9
    assert [as_stored(row) for row in exported] == list(stored.values())
    whole = pq.read_table(tmp_path / "out")  # the directory as one dataset: partition columns merge with the file's
    assert sorted(whole.column("source").to_pylist()) == sorted(row["source"] for row in stored.values())
    assert pq.read_schema(next((tmp_path / "out").glob("source=*/date=*/*.parquet"))).equals(parquet_rows.SCHEMA)


@pytest.fixture
def offline_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Hugging Face `datasets`, unable to reach the network, caching under the test's own directory."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    datasets = importlib.import_module("datasets")
    monkeypatch.setattr(sys.modules["datasets.config"], "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(sys.modules["datasets.config"], "HF_DATASETS_OFFLINE", True, raising=False)
    return datasets


async def test_parquet_reads_back_equal_to_the_database_with_hugging_face_datasets(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path, offline_datasets: Any
) -> None:
    await store(sessions, awkward_traces(), source="eval-run-17")
    await store(sessions, list(generate_traces(3, seed=5)), source="nightly/eval 2")
    await export(sessions, tmp_path / "out")

    loaded = offline_datasets.load_dataset(
        "parquet", data_dir=str(tmp_path / "out"), split="train", cache_dir=str(tmp_path / "hf" / "cache")
    )

    rows = sorted(loaded.to_list(), key=lambda row: row["id"])
    stored = await database_rows(sessions)
    assert [as_stored(row) for row in rows] == list(stored.values())


async def test_files_are_hive_partitioned_and_the_manifest_matches_them(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    first = await store(sessions, list(generate_traces(3)), source="a b/c")
    second = await store(sessions, list(generate_traces(2)), source="a b/c")
    await store(sessions, list(generate_traces(4)), source="é")

    manifest = await export(sessions, tmp_path / "out")

    by_source = {exported.source: exported for exported in manifest.files}
    assert sorted(by_source) == ["a b/c", "é"]
    assert by_source["a b/c"].path.startswith("source=a%20b%2Fc/date=")
    assert (by_source["a b/c"].rows, by_source["a b/c"].batches) == (5, 2)
    assert (by_source["é"].rows, by_source["é"].batches) == (4, 1)
    assert (manifest.rows, manifest.batches, manifest.run, manifest.after) == (9, 3, 1, None)
    assert manifest.schema_version == parquet_rows.SCHEMA_VERSION and manifest.format == "parquet"
    for exported in manifest.files:
        data = (tmp_path / "out" / exported.path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (exported.bytes, exported.sha256)
    assert manifest.bytes == sum(exported.bytes for exported in manifest.files)
    in_file = pq.read_table(tmp_path / "out" / by_source["a b/c"].path).column("batch_id").to_pylist()
    assert in_file == sorted([str(first)] * 3 + [str(second)] * 2)  # batches in id order, positions in order
    filtered = pq.read_table(tmp_path / "out", filters=[("source", "=", "a b/c")])  # partition pruning works
    assert filtered.num_rows == 5
    assert not list((tmp_path / "out").glob(".staging/**/*.parquet"))


async def test_a_full_file_ends_between_batches_never_inside_one(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    for size in (3, 3, 3, 1):
        await store(sessions, list(generate_traces(size)))

    manifest = await export(sessions, tmp_path / "out", max_file_rows=4)

    assert sorted((exported.rows, exported.batches) for exported in manifest.files) == [(4, 2), (6, 2)]
    files_of_batch: dict[str, set[str]] = {}
    for exported in manifest.files:
        for batch_id in pq.read_table(tmp_path / "out" / exported.path).column("batch_id").to_pylist():
            files_of_batch.setdefault(batch_id, set()).add(exported.path)
    assert len(files_of_batch) == 4 and all(len(paths) == 1 for paths in files_of_batch.values())


async def test_memory_stays_bounded_by_the_row_group_budget(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    traces = list(generate_traces(4000, padding=170))  # ~2.8 KB each: ~11 MiB of traces
    for start in range(0, len(traces), 1000):
        await store(sessions, traces[start : start + 1000])
    del traces
    budget = 256 * 1024
    arrow_memory = pa.proxy_memory_pool(pa.default_memory_pool())
    previous_pool = pa.default_memory_pool()
    pa.set_memory_pool(arrow_memory)
    tracemalloc.start()
    try:
        manifest = await export(sessions, tmp_path / "out", row_group_bytes=budget)
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(previous_pool)

    assert manifest.rows == 4000
    assert python_peak < 8 * budget, f"{python_peak / 2**20:.1f} MiB of Python objects at the peak"
    assert arrow_memory.max_memory() < 8 * budget, f"{arrow_memory.max_memory() / 2**20:.1f} MiB of Arrow memory"
    row_groups = pq.ParquetFile(tmp_path / "out" / manifest.files[0].path).metadata.num_row_groups
    assert row_groups > 10  # the rows went out group by group, not at the end
