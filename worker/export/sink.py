"""Where a run's rows go: one part file at a time, a new one when the partition (source, day) changes or a file
is full. A file ends only where a batch starts, so a batch is never split across files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.export_query import ExportUnit
from worker.export.dataset_dir import DatasetDirectory, part_name, partition
from worker.export.manifest import ExportedFile, Format
from worker.export.part_files import JsonlPart, ParquetPart, PartFile


class _Open:
    """The part file being written, and what the manifest will say of it."""

    def __init__(self, part: PartFile, path: str, source: str, day: str) -> None:
        self.part, self.path, self.source, self.day = part, path, source, day
        self.batches = 0

    def close(self) -> ExportedFile:
        self.part.close()
        return ExportedFile(
            path=self.path,
            source=self.source,
            date=self.day,
            rows=self.part.rows,
            batches=self.batches,
            bytes=self.part.file.size,
            sha256=self.part.file.digest.hexdigest(),
        )


class PartitionedSink:
    """Takes the units of one run, in partition order, and writes their rows into staged part files."""

    def __init__(
        self, directory: DatasetDirectory, run: int, form: Format, *, row_group_bytes: int, max_file_rows: int
    ) -> None:
        self.directory, self.run, self.form = directory, run, form
        self.row_group_bytes, self.max_file_rows = row_group_bytes, max_file_rows
        self.files: list[ExportedFile] = []
        self._open: _Open | None = None

    def take(self, unit: ExportUnit, rows: Sequence[Any]) -> None:
        """Write one unit's rows (its segments' rows, in order: a row per trace, or one record batch of them).
        Called in turn, never concurrently."""
        current = self._open
        if current is None or (current.source, current.day) != (unit.source, unit.day):
            current = self._start(unit.source, unit.day)
        written = offset = 0  # rows of the unit already in files; rows before this segment
        for segment in unit.segments:
            if segment.first == 0:
                if current.part.rows + offset - written >= self.max_file_rows and offset > written:
                    current.part.write(rows[written:offset], unit.source)
                    written = offset
                if current.part.rows + offset - written >= self.max_file_rows:
                    current = self._start(unit.source, unit.day)
                current.batches += 1
            offset += segment.last - segment.first + 1
        if offset > written:
            current.part.write(rows[written:offset], unit.source)

    def _start(self, source: str, day: str) -> _Open:
        self._finish()
        relative = f"{partition(source, day)}/{part_name(self.run, len(self.files), self.form)}"
        staged = self.directory.staging / relative
        part: PartFile = ParquetPart(staged, self.row_group_bytes) if self.form == "parquet" else JsonlPart(staged)
        self._open = _Open(part, relative, source, day)
        return self._open

    def _finish(self) -> None:
        if self._open is not None:
            self.files.append(self._open.close())
            self._open = None

    def close(self) -> list[ExportedFile]:
        """Finish the last file; every file of the run, complete and synced."""
        self._finish()
        return self.files
