"""The export cursor: the PostgreSQL snapshot an export read its rows in, and what was stored after it.

Why it is exact. A batch becomes visible to readers when the transaction that made it `ingested` commits, and
`batch.committed_xid` is that transaction's id (stamped by a trigger, migration 0004). A snapshot
(`pg_current_snapshot()`: xmin, xmax and the transactions in progress) says of any transaction id whether its work
is visible in it (`pg_visible_in_snapshot`). Run k reads everything in one snapshot S_k and exports the batches
visible in S_k but not in the previous run's S_k-1. Visibility only grows: a transaction committed when S_k-1 was
taken is committed when S_k is. So each batch goes out in exactly the first run whose snapshot sees it, whatever
order batches commit in (ids, `ingested_at` and commit order disagree under concurrent workers) and whatever
commits while a run reads. Every id not visible in S_k-1 is at least its xmin: that bound lets an index serve it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.errors import IngestError

#: `pg_snapshot`'s text form: xmin:xmax:xip,xip,…
_SNAPSHOT_TEXT = re.compile(r"(\d{1,20}):(\d{1,20}):((?:\d{1,20})(?:,\d{1,20})*)?")

#: `pg_export_snapshot()`'s ids: hexadecimal numbers and a counter.
_SNAPSHOT_ID = re.compile(r"[0-9A-F]{1,16}-[0-9A-F]{1,16}-[0-9]{1,10}")

#: Batches stored after the snapshot in `$n` (a SQL condition on `batch b`, the cursor passed as text).
STORED_AFTER = (
    "b.committed_xid >= pg_snapshot_xmin(CAST(${n} AS text)::pg_snapshot) "
    "AND NOT pg_visible_in_snapshot(b.committed_xid, CAST(${n} AS text)::pg_snapshot)"
)


class ExportRefused(IngestError):
    """An export that cannot run or finish as asked (a bad or foreign cursor, a directory in use or that cannot
    be written); nothing of it was committed."""


class ExportSnapshot(NamedTuple):
    #: This run's snapshot as text: the cursor the next run resumes from.
    cursor: str
    #: The PostgreSQL cluster it belongs to (`pg_control_system()`): a cursor means nothing on another one.
    system_identifier: str


def parse_cursor(cursor: str) -> str:
    """`cursor` if it is a snapshot's text (xmin ≤ every in-progress id < xmax), else `ExportRefused`."""
    match = _SNAPSHOT_TEXT.fullmatch(cursor.strip())
    if match is None:
        raise ExportRefused(f"not an export cursor (a PostgreSQL snapshot like '1234:1240:1236'): {cursor[:80]!r}")
    xmin, xmax = int(match[1]), int(match[2])
    in_progress = [int(xid) for xid in match[3].split(",")] if match[3] else []
    if xmax >= 2**63 or xmin > xmax or any(not xmin <= xid < xmax for xid in in_progress):  # xid8 is 63-bit
        raise ExportRefused(f"not a consistent PostgreSQL snapshot: {cursor[:80]!r}")
    return match[0]


def _xmax(cursor: str) -> int:
    return int(cursor.split(":")[1])


async def _begin_reading(session: AsyncSession) -> None:
    await session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
    # Many short statements over one snapshot: JIT compiles for longer than they run, and a unit's rows are
    # sorted by position in memory.
    await session.execute(text("SET LOCAL jit = off"))
    await session.execute(text("SET LOCAL work_mem = '64MB'"))


async def open_export_snapshot(session: AsyncSession) -> ExportSnapshot:
    """Begin the session's transaction as REPEATABLE READ, READ ONLY, and return the snapshot that every later
    statement of it reads in. Writes and commits nothing; the caller ends the transaction (rollback).

    It must be the session's first statement: a transaction takes its snapshot at its first query.
    """
    await _begin_reading(session)
    row = (
        await session.execute(
            text("SELECT pg_current_snapshot()::text, (SELECT system_identifier FROM pg_control_system())::text")
        )
    ).one()
    return ExportSnapshot(row[0], row[1])


async def share_snapshot(session: AsyncSession, helpers: Sequence[AsyncSession]) -> None:
    """Make each helper session read in `session`'s snapshot (begun by `open_export_snapshot`, and open until
    the helpers have joined): their transactions see exactly the same rows. Commits nothing."""
    if not helpers:
        return
    exported = (await session.execute(text("SELECT pg_export_snapshot()"))).scalar_one()
    if not _SNAPSHOT_ID.fullmatch(exported):  # it goes into SQL as a literal: SET takes no parameters
        raise ExportRefused(f"unexpected snapshot id from PostgreSQL: {exported[:40]!r}")
    for helper in helpers:
        await _begin_reading(helper)
        await helper.execute(text(f"SET TRANSACTION SNAPSHOT '{exported}'"))


def check_resumable(after: str, after_system: str | None, now: ExportSnapshot) -> None:
    """Refuse to resume from a cursor this database cannot honour: one taken on another cluster, or one from its
    future (the database was restored to an earlier point: transaction ids the cursor counts as seen are handed
    out again, and their batches would be missed)."""
    if after_system is not None and after_system != now.system_identifier:
        raise ExportRefused(
            f"the cursor comes from another PostgreSQL cluster (system {after_system}, this is "
            f"{now.system_identifier}): start a new export instead of resuming"
        )
    if _xmax(after) > _xmax(now.cursor):
        raise ExportRefused(
            f"the cursor ({after}) is ahead of this database ({now.cursor}): it was restored to an earlier point "
            "since; start a new export instead of resuming"
        )
