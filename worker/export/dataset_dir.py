"""The export directory: Hive partitions of part files, a manifest per run, and the rules that make a run appear
whole or not at all.

    OUT/source=<source, %-escaped>/date=<YYYY-MM-DD>/part-<run>-<n>.parquet   (or .jsonl)
    OUT/__manifests__/run-<run>.json     one per completed run, written last
    OUT/.staging/                        the running export's files until they are complete
    OUT/.export.lock                     held by the running export

Readers skip the names that are not data: pyarrow and Spark skip `_`/`.` prefixes, Hugging Face `datasets`
skips `.` and `__` prefixes. A run writes its files under `.staging`, moves them into their partitions when all
are complete, then writes its manifest. A run that died before its manifest left files numbered after the last
manifest's run: the next run deletes them before it starts, so no row is ever in the directory twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from services.export_cursor import ExportRefused
from worker.export.manifest import Manifest, write_manifest

MANIFESTS, STAGING, LOCK = "__manifests__", ".staging", ".export.lock"
_MANIFEST = re.compile(r"run-(\d{5,})\.json")
_PART = re.compile(r"part-(\d{5,})-\d{5,}\.(?:parquet|jsonl)")
#: The longest file name most file systems take.
_NAME_MAX = 255


class ExportBusy(ExportRefused):
    """Another export holds the directory."""


@contextlib.contextmanager
def writing(root: Path) -> Iterator[None]:
    """Turn a failure to write the export (a full disk, a file where a directory should be) into one line that
    names the directory, instead of the database failure an `OSError` would be taken for."""
    try:
        yield
    except OSError as error:
        raise ExportRefused(f"cannot write the export in {root}: {error.strerror or error}") from None


def partition(source: str, day: str) -> str:
    """`source=…/date=…` for a source and UTC day; the source %-escaped as Hive readers unescape it."""
    segment = f"source={quote(source, safe='')}"
    if len(segment.encode()) > _NAME_MAX:
        raise ExportRefused(f"source {source[:40]!r}… is too long for a partition directory name once escaped")
    return f"{segment}/date={day}"


def part_name(run: int, number: int, extension: str) -> str:
    return f"part-{run:05d}-{number:05d}.{extension}"


def _sync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class DatasetDirectory:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root / STAGING

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory for one run; `ExportBusy` if another export holds it."""
        with writing(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
            lock = (self.root / LOCK).open("a")
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ExportBusy(f"another export is writing to {self.root}") from None
            yield

    def manifest_paths(self) -> list[Path]:
        """Completed runs' manifests, oldest first."""
        folder = self.root / MANIFESTS
        found = (
            [path for path in folder.glob("run-*.json") if _MANIFEST.fullmatch(path.name)] if folder.is_dir() else []
        )
        return sorted(found, key=lambda path: int(path.name[4:-5]))

    def check_fresh(self) -> None:
        """Refuse a directory that holds a completed export, or anything that is not an export's."""
        if self.manifest_paths():
            raise ExportRefused(f"{self.root} already holds an export: continue it with --resume {self.root}")
        strangers = [
            entry.name
            for entry in self.root.iterdir()
            if entry.name not in (MANIFESTS, STAGING, LOCK) and not entry.name.startswith("source=")
        ]
        if strangers:
            raise ExportRefused(f"{self.root} is not empty and holds no export (found {strangers[0]!r})")

    def remove_unfinished(self, last_run: int) -> int:
        """Delete what runs after `last_run` left (they died before their manifest); how many files."""
        shutil.rmtree(self.staging, ignore_errors=True)
        removed = 0
        for path in self.root.glob("source=*/date=*/part-*"):
            match = _PART.fullmatch(path.name)
            if match and int(match[1]) > last_run:
                path.unlink()
                removed += 1
                with contextlib.suppress(OSError):  # empty partitions go too; others stay
                    path.parent.rmdir()
                    path.parent.parent.rmdir()
        return removed

    def commit(self, manifest: Manifest) -> Path:
        """Move the run's staged files into their partitions, then write its manifest: the run is complete."""
        touched = set()
        for exported in manifest.files:
            target = self.root / exported.path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.staging / exported.path, target)
            touched.add(target.parent)
        for folder in touched:
            _sync_directory(folder)
        manifests = self.root / MANIFESTS
        manifests.mkdir(exist_ok=True)
        path = manifests / f"run-{manifest.run:05d}.json"
        write_manifest(path, manifest)
        _sync_directory(manifests)
        shutil.rmtree(self.staging, ignore_errors=True)
        return path
