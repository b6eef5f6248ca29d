"""Pending entries trimmed from the stream before their ack (a group lagging past INGEST_EVENTS_MAXLEN) leave
no in-flight record behind, whoever notices them (issue #18)."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.streams import GROUP, STREAM, Entry, group_reader, stored_batches
from worker.client.consumer_group import holders_key
from worker.client.consumer_statements import TAKEN


@pytest.mark.parametrize("noticed_by", ["holder", "other"], ids=["its holder started again", "another's claim"])
async def test_a_pending_entry_trimmed_away_leaves_no_in_flight_record(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, noticed_by: str
) -> None:
    (entry,) = await stored_batches(sessions, redis, 1)
    ((_, event),) = cast(list[Entry], await redis.xrange(STREAM, entry, entry))
    holder = group_reader("holder")
    await holder.join()
    await redis.xreadgroup(GROUP, "holder", {STREAM: ">"}, count=1)
    assert await holder.take_over(entry, event[b"batch_id"]) == TAKEN
    await holder.close()  # it stops before the ack
    await redis.xdel(STREAM, entry)  # then the stream is trimmed past it

    # The holder started again reads its own pending entries; another consumer finds it in its claim scan.
    reader = group_reader(noticed_by, claim_idle_s=0.05)
    try:
        async with asyncio.timeout(10):
            while await redis.hlen(holders_key(STREAM, GROUP)):
                await reader.entries()
    finally:
        await reader.close()

    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
