"""Part files as they are written: hashed on the way out, synced when closed, Parquet row groups of a bounded
size. Each file is written under the run's staging directory; `DatasetDirectory.commit` moves it into place."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from worker.export import parquet_rows

#: How Parquet files are compressed: snappy (as pyarrow and Spark do by default) costs about half zstd's CPU,
#: for files about 1.8x larger (docs/performance.md).
PARQUET_COMPRESSION = "snappy"
#: Columns worth min/max statistics (readers skip row groups with them); long text only bloats the footer.
_STATISTICS = ["id", "batch_id", "source", "position", "created_at", "trace_version", "step_count", "total_chars"]


class HashingFile:
    """A binary file that keeps the sha256 and size of what was written to it (pyarrow writes through it)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("xb")
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self._file.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._file.flush()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        """Flush and sync to disk: a file is renamed into place only once it is durable."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


class PartFile(Protocol):
    rows: int
    file: HashingFile

    def write(self, rows: Sequence[Any], source: str) -> None: ...

    def close(self) -> None: ...


class ParquetPart:
    """Arrow record batches, written as one row group when they reach the budget."""

    def __init__(self, path: Path, row_group_bytes: int) -> None:
        self.file = HashingFile(path)
        self.rows = 0
        self._budget = row_group_bytes
        self._pending: list[pa.RecordBatch] = []
        self._pending_bytes = 0
        self._writer = pq.ParquetWriter(
            self.file,
            parquet_rows.SCHEMA,
            compression=PARQUET_COMPRESSION,
            use_dictionary=parquet_rows.DICTIONARY_COLUMNS,
            write_statistics=_STATISTICS,
        )

    def write(self, rows: pa.RecordBatch, source: str) -> None:
        """`rows`: a unit's record batch (worker.export.parquet_rows), or a slice of it."""
        self._pending.append(rows)
        self._pending_bytes += rows.nbytes
        self.rows += rows.num_rows
        if self._pending_bytes >= self._budget:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            table = pa.Table.from_batches(self._pending)
            self._pending, self._pending_bytes = [], 0
            self._writer.write_table(table, row_group_size=table.num_rows)

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self.file.close()


class JsonlPart:
    """Rows are follow's lines, rendered by PostgreSQL: written as they come."""

    def __init__(self, path: Path) -> None:
        self.file = HashingFile(path)
        self.rows = 0

    def write(self, rows: Sequence[Any], source: str) -> None:
        self.file.write(b"".join(row[0] for row in rows))
        self.rows += len(rows)

    def close(self) -> None:
        self.file.close()
