"""A batch whose rows are not all there when a consumer loads them (a lagging read replica, rows deleted) is
neither handed over nor acknowledged short: it is counted, left pending, and handed over whole once its rows are
back, in both forms (issue #18)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis as sync_redis
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.streams import GROUP, STREAM, stored_batches
from worker.client.consumer import follow_ingested_async, follow_ingested_lines_async, short_batch_count

#: Each form, and how many rows an item of it holds.
FORMS: dict[str, tuple[Callable[..., Any], Callable[[Any], int]]] = {
    "rows": (follow_ingested_async, lambda batch: len(batch.traces)),
    "lines": (follow_ingested_lines_async, lambda batch: len(batch.lines)),
}


async def counted_short(redis_url: str, times: int, handing: asyncio.Future[Any], *, timeout_s: float = 10) -> None:
    """Wait until the group's short-batch counter reaches `times`, polling with a deadline, while nothing is
    handed over."""
    client = sync_redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout_s
    try:
        while (count := short_batch_count(client, STREAM, GROUP)) < times:
            assert not handing.done(), f"handed over short: {handing.result()!r}"
            assert time.monotonic() < deadline, f"counted {count} short batches after {timeout_s} s, not {times}"
            await asyncio.sleep(0.05)
    finally:
        client.close()


@pytest.mark.parametrize("form", FORMS)
async def test_a_batch_missing_a_row_is_left_pending_and_handed_over_whole_once_the_row_is_back(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, redis_url: str, form: str
) -> None:
    (entry,) = await stored_batches(sessions, redis, 1, traces=3)
    async with sessions() as session, session.begin():  # as a read replica that has not got this row yet
        deleted = "DELETE FROM trace WHERE position = 1 RETURNING to_jsonb(trace)::text"
        row = (await session.execute(text(deleted))).scalar_one()
    follow, rows_of = FORMS[form]
    batches = follow(GROUP, "c", from_start=True, claim_idle_s=0.2, block_ms=100)
    handing = asyncio.ensure_future(anext(batches))

    await counted_short(redis_url, 2, handing)  # loaded short, then again when claimed after `claim_idle_s`
    assert not handing.done()  # nothing handed over short...
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 1  # ...nor acknowledged
    async with sessions() as session, session.begin():
        restored = "INSERT INTO trace SELECT * FROM jsonb_populate_record(NULL::trace, CAST(:row AS jsonb))"
        await session.execute(text(restored), {"row": row})

    async with asyncio.timeout(10):
        batch = await handing
    assert (rows_of(batch), batch.entry_id) == (3, entry.decode())
    with contextlib.suppress(StopAsyncIteration):
        await batches.asend(True)  # acknowledge it, and end
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
