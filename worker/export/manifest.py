"""An export run's manifest: what it selected, the files it wrote (rows, batches, bytes, sha256 each) and the
cursor the next run resumes from. Written last: a run whose manifest exists is complete."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ValidationError

from services.export_cursor import ExportRefused, parse_cursor

#: Bump when a field changes meaning.
MANIFEST_VERSION = 1

Format = Literal["parquet", "jsonl"]


class ExportedFile(BaseModel):
    #: Relative to the export directory, with `/` separators: `source=…/date=…/part-RRRRR-NNNNN.parquet`.
    path: str
    source: str
    date: str
    rows: int
    batches: int
    bytes: int
    sha256: str


class Manifest(BaseModel):
    manifest_version: int = MANIFEST_VERSION
    #: The Parquet schema's version (worker.export.parquet_rows.SCHEMA_VERSION); JSON Lines are follow's lines.
    schema_version: int
    format: Format
    #: This run's number in its directory: part files carry it, and a resumed run takes the next.
    run: int
    started_at: datetime
    finished_at: datetime
    #: `services.export_query.ExportFilters.as_json()`; a resumed run selects with the same filters.
    filters: dict[str, Any]
    #: The cursor this run started after (None: a first run, everything stored that matches the filters).
    after: str | None
    #: This run's snapshot: the next run exports what became visible after it.
    cursor: str
    #: The PostgreSQL cluster the cursor belongs to.
    system_identifier: str
    #: The manifest this run resumed from, if any.
    previous: str | None
    rows: int
    batches: int
    bytes: int
    files: list[ExportedFile]


def read_manifest(path: Path) -> Manifest:
    """The manifest at `path`, or `ExportRefused` saying why it cannot be used."""
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except OSError as error:
        raise ExportRefused(f"cannot read the manifest {path}: {error.strerror or error}") from None
    except ValidationError as error:
        raise ExportRefused(f"{path} is not an export manifest: {error.errors()[0]['msg']}") from None
    if manifest.manifest_version > MANIFEST_VERSION:
        raise ExportRefused(f"{path} was written by a newer version (manifest {manifest.manifest_version})")
    parse_cursor(manifest.cursor)
    return manifest


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write `path` whole or not at all: a hidden temporary file, synced, then renamed over it."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as out:
        out.write(orjson.dumps(manifest.model_dump(mode="json"), option=orjson.OPT_INDENT_2) + b"\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
