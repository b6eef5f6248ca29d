"""The binary COPY stream of a batch's rows (models.trace_rows), read back field by field as PostgreSQL reads it."""

from __future__ import annotations

import struct
import uuid
from typing import Any

import orjson
from sqlalchemy import Integer, SmallInteger, String, Text, Uuid
from sqlalchemy.dialects.postgresql import JSONB

from models.compiled_schema import decode_valid_batch
from models.derived import DERIVATION_VERSION, derive
from models.tables import Trace
from models.trace_rows import COPY_MESSAGE_BYTES, TRACE_COLUMNS, copy_chunks, copy_messages

#: What `copy_chunks` encodes each column as, in its order.
ENCODED_AS = [Uuid, Integer, String, Text, Text, JSONB, JSONB, Integer, Integer, String, SmallInteger]


def copy_stream(batch_id: uuid.UUID, traces: list[Any]) -> bytes:
    return b"".join(copy_chunks(batch_id, traces))


def read_rows(stream: bytes) -> list[list[bytes | None]]:
    """Each row's raw fields, as PostgreSQL's binary COPY reader takes them apart."""
    assert stream[:11] == b"PGCOPY\n\xff\r\n\x00" and stream[11:19] == bytes(8)
    rows, at = [], 19
    while (count := struct.unpack_from(">h", stream, at)[0]) != -1:
        at += 2
        fields: list[bytes | None] = []
        for _ in range(count):
            (length,) = struct.unpack_from(">i", stream, at)
            at += 4
            fields.append(None if length == -1 else stream[at : at + length])
            at += max(length, 0)
        rows.append(fields)
    assert at + 2 == len(stream)  # the trailer ends it
    return rows


def trace(**fields: Any) -> dict[str, Any]:
    base = {
        "trace_version": "1.0",
        "prompt": "Wie viel ist 2+2? 🤔\ttab\nline \\ backslash",
        "final_answer": "vier — 4",
        "steps": [{"i": 0, "type": "thought", "content": "ünïcödé ✓"}, {"i": 7, "type": "answer", "content": "4"}],
    }
    return {**base, **fields}


def test_each_column_is_encoded_as_the_type_the_table_gives_it() -> None:
    table = Trace.__table__
    assert [type(table.c[name].type) for name in TRACE_COLUMNS] == ENCODED_AS


def test_the_stream_holds_every_trace_as_its_row_from_dicts_and_from_compiled_structs_alike() -> None:
    traces = [
        trace(meta={"b": [1, 2.5, None, True], "a": {"z": "ß", "y": -(2**63)}}),
        trace(),
        trace(meta=None),
    ]
    batch_id = uuid.uuid4()
    decoded = decode_valid_batch(orjson.dumps(traces))
    assert decoded is not None
    stream = copy_stream(batch_id, traces)
    assert copy_stream(batch_id, decoded) == stream

    rows = read_rows(stream)
    assert len(rows) == 3 and all(len(row) == len(TRACE_COLUMNS) for row in rows)
    for position, (row, sent) in enumerate(zip(rows, traces, strict=True)):
        fields = dict(zip(TRACE_COLUMNS, row, strict=True))
        assert fields["batch_id"] == batch_id.bytes
        assert fields["position"] == struct.pack(">i", position)
        for name in ("trace_version", "prompt", "final_answer"):
            assert fields[name] == sent[name].encode()
        steps = fields["steps"]
        assert steps is not None and steps[:1] == b"\x01" and orjson.loads(steps[1:]) == sent["steps"]
        meta = fields["meta"]
        if sent.get("meta") is None:
            assert meta is None  # NULL, not the JSON null
        else:
            assert meta is not None and meta[:1] == b"\x01" and orjson.loads(meta[1:]) == sent["meta"]
        derived = derive(sent)
        assert fields["step_count"] == struct.pack(">i", derived.step_count) == struct.pack(">i", 2)
        assert fields["total_chars"] == struct.pack(">i", derived.total_chars)
        assert fields["content_hash"] == derived.content_hash.encode()
        assert fields["derivation_version"] == struct.pack(">h", DERIVATION_VERSION)


def test_an_empty_batch_is_a_stream_of_no_rows() -> None:
    assert read_rows(copy_stream(uuid.uuid4(), [])) == []


async def test_a_large_batch_goes_out_in_messages_of_whole_rows_each_at_least_the_message_size() -> None:
    traces = [trace(prompt="p" * 20_000, final_answer=str(position)) for position in range(40)]
    batch_id = uuid.uuid4()
    messages = [message async for message in copy_messages(copy_chunks(batch_id, traces))]
    assert len(messages) > 2 and b"".join(messages) == copy_stream(batch_id, traces)
    assert all(len(message) >= COPY_MESSAGE_BYTES for message in messages[:-1])
    for end in range(1, len(messages)):  # every message but the last ends where a row ends
        rows = read_rows(b"".join(messages[:end]) + b"\xff\xff")
        assert rows and rows[-1][4] == str(len(rows) - 1).encode()
    assert len(read_rows(b"".join(messages))) == 40
