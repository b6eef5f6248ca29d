"""Consumers of one group side by side, against real Redis and PostgreSQL: a batch announced twice is handed
over once, even while its first event is still in another consumer's hands (trimmed from the stream or not),
and never lost if that one dies."""

from __future__ import annotations

import asyncio
import contextlib
from uuid import UUID

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.streams import GROUP, STREAM, announced_twice, group_reader, one_event_each, stored_batches
from worker.client.consumer import follow_ingested_async
from worker.client.consumer_group import handled_key, holders_key
from worker.client.consumer_statements import HANDLED, HELD, TAKEN


async def test_a_second_event_waits_while_the_first_is_held_and_the_batch_survives_its_holder(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    (first_entry, _), _ = await announced_twice(sessions, redis)

    holder = follow_ingested_async(GROUP, "holder", from_start=True, idle_exit_s=0.5)
    held = await anext(holder)  # handed over, not yet acknowledged: the first entry is pending with `holder`
    beside = [batch async for batch in follow_ingested_async(GROUP, "beside", idle_exit_s=0.5)]
    assert beside == []  # the second event waits, unacknowledged: `holder` is handing the batch over
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 2

    with contextlib.suppress(RuntimeError):
        await holder.athrow(RuntimeError("the holder dies"))  # leaves its entry pending, never acknowledged
    rescued = [batch async for batch in follow_ingested_async(GROUP, "rescuer", claim_idle_s=0.01, idle_exit_s=1)]

    # The rescuer claims both entries: the first hands the batch over, the second is then acknowledged as handled.
    assert [(batch.batch_id, batch.entry_id) for batch in rescued] == [(held.batch_id, first_entry.decode())]
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
    assert await redis.zscore(handled_key(STREAM, GROUP), str(held.batch_id)) is not None
    assert await redis.hlen(holders_key(STREAM, GROUP)) == 0


async def test_two_consumers_asking_at_once_for_the_two_events_of_one_batch_get_one_yes(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    (first_entry, event), second_entry = await announced_twice(sessions, redis)
    async with one_event_each(redis) as (one, other):
        answers = await asyncio.gather(
            one.take_over(first_entry, event[b"batch_id"]), other.take_over(second_entry, event[b"batch_id"])
        )

    assert sorted(answers) == sorted([TAKEN, HELD])


@pytest.mark.parametrize("claimed", [False, True], ids=["its first reader", "a claimant of a dead reader's entry"])
async def test_an_event_waits_while_the_holder_of_its_batch_still_holds_a_first_entry_trimmed_away(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, claimed: bool
) -> None:
    (first_entry, event), second_entry = await announced_twice(sessions, redis)
    batch_id = event[b"batch_id"]
    claimant = group_reader("claimant")
    try:
        async with one_event_each(redis) as (one, other):
            assert await one.take_over(first_entry, batch_id) == TAKEN
            holder = one
            if claimed:  # `one` died; `claimant` claimed its entry (XAUTOCLAIM, XCLAIM) and takes the batch over
                await redis.xclaim(STREAM, GROUP, "claimant", 0, [first_entry])
                assert await claimant.take_over(first_entry, batch_id) == TAKEN
                holder = claimant
            await redis.xdel(STREAM, first_entry)  # trimmed (as after MAXLEN) while `holder` hands the batch over

            assert await other.take_over(second_entry, batch_id) == HELD  # `holder` still hands it over
            await holder.acknowledge(first_entry, batch_id)
            assert await other.take_over(second_entry, batch_id) == HANDLED
    finally:
        await claimant.close()


async def test_an_event_takes_over_once_the_trimmed_entry_of_a_dead_holder_is_dropped(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    (first_entry, event), _ = await announced_twice(sessions, redis)
    async with one_event_each(redis, "dead", "live") as (dead, _):
        assert await dead.take_over(first_entry, event[b"batch_id"]) == TAKEN
    await redis.xdel(STREAM, first_entry)  # trimmed while the consumer that held it is gone

    async with asyncio.timeout(10):
        handed = [batch async for batch in follow_ingested_async(GROUP, "live", claim_idle_s=0.05, idle_exit_s=1)]

    assert [batch.batch_id for batch in handed] == [UUID(event[b"batch_id"].decode())]
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
    assert await redis.hlen(holders_key(STREAM, GROUP)) == 0


async def test_a_dead_consumers_entry_is_claimed_while_new_entries_keep_coming(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    entries = await stored_batches(sessions, redis, 3)
    await group_reader("dead").join()
    await redis.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=1)  # the first entry, never acknowledged

    handed = [
        batch.entry_id
        async for batch in follow_ingested_async(GROUP, "live", claim_idle_s=0.3, idle_exit_s=1.5, block_ms=100)
    ]

    assert sorted(handed) == sorted(entry.decode() for entry in entries)  # the dead one's too, once
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0


async def test_a_consumer_started_again_under_its_name_hands_over_its_own_pending_entry_first(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    entries = await stored_batches(sessions, redis, 2)
    first_run = follow_ingested_async(GROUP, "same", from_start=True, idle_exit_s=0.5)
    first = await anext(first_run)
    with contextlib.suppress(RuntimeError):
        await first_run.athrow(RuntimeError("stopped before the ack"))

    second_run = [batch.entry_id async for batch in follow_ingested_async(GROUP, "same", idle_exit_s=0.5)]

    assert first.entry_id == entries[0].decode()
    assert second_run == [entry.decode() for entry in entries]  # its own pending entry first, then the rest
