"""What a consumer is handed (worker.client.consumer): a stored batch as rows or as JSON lines, built from its
event's fields, and only when all its rows are there."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


class RowsMissing(Exception):
    """The SELECT found fewer rows than the batch's event names: a read replica that lags behind, or rows
    deleted. Handing such a batch over would lose the rest for the group: it waits instead."""


async def fetch_all_rows(sessions: async_sessionmaker[AsyncSession], query: str, ids: list[int]) -> list[Any]:
    """The rows `query` selects for `ids`, in a session of their own (never shared): all of them, or RowsMissing."""
    async with sessions() as session:
        # The session's own asyncpg connection: thousands of wide rows skip SQLAlchemy's row objects.
        raw = await (await session.connection()).get_raw_connection()
        rows: list[Any] = await raw.driver_connection.fetch(query, ids)  # type: ignore[union-attr]
    wanted = len(set(ids))
    if len(rows) < wanted:
        raise RowsMissing(f"{wanted - len(rows)} of its {wanted} rows are missing")
    return rows


class IngestedBatch(NamedTuple):
    """One stored batch as a consumer gets it: its event's fields and its rows, in position order."""

    batch_id: UUID
    source: str
    created_at: datetime | None
    traces: list[dict[str, Any]]
    entry_id: str

    def __repr__(self) -> str:  # short: asyncio formats the results of finished tasks, and a batch is megabytes
        return f"IngestedBatch(batch_id={self.batch_id}, traces=<{len(self.traces)} rows>, entry_id={self.entry_id})"


class IngestedLines(NamedTuple):
    """One stored batch as JSON lines: its event's fields and one line per trace (UTF-8, newline-terminated), in
    position order, each `{"batch_id", "id", "position", "created_at", "trace_version", "prompt", "final_answer",
    "steps", "meta"}` as `tunix-ingest follow` writes it."""

    batch_id: UUID
    source: str
    created_at: datetime | None
    lines: list[bytes]
    entry_id: str

    def __repr__(self) -> str:  # short, as IngestedBatch's
        return f"IngestedLines(batch_id={self.batch_id}, lines=<{len(self.lines)}>, entry_id={self.entry_id})"


def trace_ids(fields: dict[bytes, bytes]) -> list[int]:
    """The row ids an event names: `ids` (event v2) or `traces` (v1, a list of {id, position, created_at})."""
    if b"ids" in fields:
        ids = orjson.loads(fields[b"ids"])
    else:
        ids = [trace["id"] for trace in orjson.loads(fields[b"traces"])]
    if type(ids) is not list or not all(type(value) is int for value in ids):  # `type`: no bools, and fast
        raise ValueError("ids is not a list of row ids")
    return ids


def parse_event_fields(fields: dict[bytes, bytes]) -> tuple[UUID, str, datetime | None]:
    """The event's `batch_id`, `source` and `created_at`, the first fields of both items."""
    created_at = fields.get(b"created_at", b"").decode()
    return (
        UUID(fields[b"batch_id"].decode()),
        fields.get(b"source", b"").decode(),
        datetime.fromisoformat(created_at) if created_at else None,
    )
