"""What an export reads: the stored batches a filter and a cursor select, cut into units of traces in partition
order, in the snapshot `services.export_cursor.open_export_snapshot` took. Reads only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from services.export_cursor import STORED_AFTER


@dataclass(frozen=True)
class ExportFilters:
    """Which stored batches an export takes: every one that matches all the given filters. `since` and `until`
    bound when the batch was stored (`batch.ingested_at`, from `since` inclusive to `until` exclusive)."""

    sources: tuple[str, ...] = ()
    batch_ids: tuple[UUID, ...] = ()
    since: datetime | None = None
    until: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "sources": list(self.sources),
            "batch_ids": [str(batch_id) for batch_id in self.batch_ids],
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }

    @classmethod
    def from_json(cls, stored: dict[str, Any]) -> ExportFilters:
        return cls(
            tuple(stored.get("sources") or ()),
            tuple(UUID(batch_id) for batch_id in stored.get("batch_ids") or ()),
            datetime.fromisoformat(stored["since"]) if stored.get("since") else None,
            datetime.fromisoformat(stored["until"]) if stored.get("until") else None,
        )


class Selection(NamedTuple):
    """The chosen batches as a SQL condition on `batch b` with its asyncpg arguments."""

    where: str
    arguments: list[Any]


def select_batches(filters: ExportFilters, after: str | None) -> Selection:
    """Stored batches that match `filters` and, given a cursor, were not yet visible in it."""
    conditions, arguments = ["b.state = 'ingested'"], list[Any]()

    def argument(value: Any) -> int:
        arguments.append(value)
        return len(arguments)

    if filters.sources:
        conditions.append(f"b.source = ANY(${argument(list(filters.sources))}::text[])")
    if filters.batch_ids:
        conditions.append(f"b.id = ANY(${argument(list(filters.batch_ids))}::uuid[])")
    if filters.since is not None:
        conditions.append(f"b.ingested_at >= ${argument(filters.since)}")
    if filters.until is not None:
        conditions.append(f"b.ingested_at < ${argument(filters.until)}")
    if after is not None:
        conditions.append(STORED_AFTER.format(n=argument(after)))
    return Selection(" AND ".join(conditions), arguments)


# The chosen batches in partition order: source, UTC day stored, id.
_PLAN = """
SELECT b.id, b.source, to_char(b.ingested_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, b.trace_count
FROM batch b WHERE {where} ORDER BY 2, 3, 1
"""
#: Batches the plan reads at a time.
_PLAN_PAGE = 2000


async def driver(session: AsyncSession) -> Any:
    """The session's asyncpg connection, inside the session's transaction (begun by the snapshot)."""
    raw = await (await session.connection()).get_raw_connection()
    return raw.driver_connection


async def count_selected(session: AsyncSession, selection: Selection) -> tuple[int, int]:
    """Batches and traces the selection holds, in the transaction's snapshot (an ingested batch holds all the
    traces it counts)."""
    row = await (await driver(session)).fetchrow(
        f"SELECT count(*), coalesce(sum(b.trace_count), 0) FROM batch b WHERE {selection.where}",  # noqa: S608
        *selection.arguments,
    )
    return int(row[0]), int(row[1])


#: Batches one unit spans at most. A unit is sized in rows from the traces seen before it, and the next ones may be
#: far larger; a batch holds at most INGEST_MAX_BATCH_BYTES of traces (8 MB by default), so 32 batches keep a
#: unit, and each of the Parquet form's column buffers, far below PostgreSQL's 1 GB limit on one value.
MAX_UNIT_BATCHES = 32


class Segment(NamedTuple):
    """Positions `first` to `last` of one batch."""

    batch_id: UUID
    first: int
    last: int


class ExportUnit(NamedTuple):
    """Traces loaded with one statement: consecutive segments of one partition (source, UTC day stored)."""

    source: str
    day: str
    segments: list[Segment]

    @property
    def rows(self) -> int:
        return sum(segment.last - segment.first + 1 for segment in self.segments)


class UnitPlanner:
    """Cuts the selected batches, in partition order, into units of about the rows asked for (a batch may be
    cut across units). Reads the batch list through a server-side cursor, a page at a time."""

    def __init__(self, session: AsyncSession, selection: Selection) -> None:
        self._session, self._selection = session, selection
        self._cursor: Any = None
        self._page: list[Any] = []
        self._next_position = 0  # of the first batch of the page

    async def _peek(self) -> Any:
        if not self._page:
            if self._cursor is None:
                statement = _PLAN.format(where=self._selection.where)
                self._cursor = await (await driver(self._session)).cursor(statement, *self._selection.arguments)
            self._page = list(reversed(await self._cursor.fetch(_PLAN_PAGE)))
        return self._page[-1] if self._page else None

    async def next_unit(self, rows: int) -> ExportUnit | None:
        """The next unit of at most `rows` traces (at least one), or None when every batch is planned."""
        batch = await self._peek()
        if batch is None:
            return None
        unit = ExportUnit(batch["source"], batch["day"], [])
        room = max(rows, 1)
        while (
            batch is not None
            and room > 0
            and len(unit.segments) < MAX_UNIT_BATCHES
            and (batch["source"], batch["day"]) == (unit.source, unit.day)
        ):
            last = min(batch["trace_count"] - 1, self._next_position + room - 1)
            unit.segments.append(Segment(batch["id"], self._next_position, last))
            room -= last - self._next_position + 1
            if last == batch["trace_count"] - 1:
                self._page.pop()
                self._next_position = 0
                batch = await self._peek()
            else:
                self._next_position = last + 1
        return unit
