"""The `trace` rows of a batch as the ingest path writes them: PostgreSQL's binary COPY stream, built in one pass
over the traces as it is sent. One definition, shared by the worker's COPY and the bench's raw COPY ceiling, so
the two can never drift apart. Format: https://www.postgresql.org/docs/15/sql-copy.html ("Binary Format")."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any
from uuid import UUID

from models import derived as derivation

#: Columns the ingest path writes, in the stream's field order; `id` and `created_at` come from the database's
#: defaults. Their types (uuid, int4, varchar, text, text, jsonb, jsonb, int4, int4, varchar, int2) are what
#: `copy_chunks` encodes: tests/unit/test_trace_rows.py holds them to the table's.
TRACE_COLUMNS = (
    "batch_id",
    "position",
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

#: Bytes of row data per CopyData message. PostgreSQL reads each message whole before it parses it: in 128 KiB
#: messages its CPU per trace was lowest, ~10 % below 512 KiB (asyncpg's own size) and more below one message
#: per batch (measured from 32 KiB to 3 MB, docs/performance.md).
COPY_MESSAGE_BYTES = 128 * 1024

#: Signature, flags (no OIDs), no header extension.
_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_TRAILER = b"\xff\xff"
#: A field's length; -1 is NULL.
_LENGTH = struct.Struct(">i").pack
_NULL = _LENGTH(-1)
#: jsonb's binary form is a version byte, then the JSON text.
_JSONB_VERSION = b"\x01"
#: Field count, then batch_id (16 bytes) and position (int4), each after its length; then trace_version's length.
_ROW_START = struct.Struct(">hi16siii").pack
#: step_count, total_chars (int4), content_hash (64 hex digits), derivation_version (int2), each after its length.
_ROW_END = struct.Struct(">iiiii64sih").pack


def copy_chunks(batch_id: UUID, traces: Sequence[Any]) -> Iterator[bytes]:
    """The batch's rows in `TRACE_COLUMNS` order as one binary COPY stream (`COPY trace (...) FROM STDIN WITH
    (FORMAT binary)`), built as it is sent: in chunks of whole rows, each at least COPY_MESSAGE_BYTES but the
    last. `traces`: dicts shaped as `TraceIn`, or their compiled structs.

    Built here rather than by asyncpg's record encoder: each text field is encoded once, for the row and the
    content hash alike, and no per-value codec call is made (half the worker's CPU of encoding rows, measured).
    Built lazily, so that PostgreSQL parses one message while the next is being built.
    """
    parts: list[bytes] = [_HEADER]
    size = 0
    batch = batch_id.bytes
    version, stored_row = derivation.DERIVATION_VERSION, derivation.stored_row
    for position, trace in enumerate(traces):
        trace_version, prompt, answer, steps, meta, step_count, total_chars, content_hash = stored_row(trace)
        parts += (
            _ROW_START(len(TRACE_COLUMNS), 16, batch, 4, position, len(trace_version)),
            trace_version,
            _LENGTH(len(prompt)),
            prompt,
            _LENGTH(len(answer)),
            answer,
            _LENGTH(len(steps) + 1),
            _JSONB_VERSION,
            steps,
            _NULL if meta is None else _LENGTH(len(meta) + 1),
            b"" if meta is None else _JSONB_VERSION,
            meta or b"",
            _ROW_END(4, step_count, 4, total_chars, 64, content_hash.encode(), 2, version),
        )
        size += len(prompt) + len(answer) + len(steps) + (len(meta) if meta else 0)
        if size >= COPY_MESSAGE_BYTES:
            yield b"".join(parts)
            parts, size = [], 0
    parts.append(_TRAILER)
    yield b"".join(parts)


async def copy_messages(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    """The chunks as CopyData messages: the `source` of asyncpg's `copy_to_table`, which asks for the next one
    once the last is written."""
    for chunk in chunks:
        yield chunk
