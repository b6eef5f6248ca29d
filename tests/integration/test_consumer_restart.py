"""A consumer started again under its name while its own pending entry waits on a batch that a dead consumer of
the group holds (issue #18: it re-read that entry 38k times in 12 s, and never claimed, read or idled out)."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.streams import GROUP, STREAM, announced_twice, commands_served, one_event_each, stored_batches
from worker.client.consumer import follow_ingested_async
from worker.client.consumer_statements import HELD, TAKEN

#: Far more than the rounds of a few seconds need at one blocking read of 100 ms each; far fewer than a busy loop.
COMMANDS_AT_MOST = 300
#: A consumer that idles out takes about four seconds here.
DEADLINE_S = 10


async def test_a_restarted_consumer_whose_own_entry_is_held_claims_reads_new_entries_waits_and_idles_out(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    (first_entry, event), second_entry = await announced_twice(sessions, redis)
    async with one_event_each(redis, "dead", "same") as (dead, same):
        assert await dead.take_over(first_entry, event[b"batch_id"]) == TAKEN  # then it dies, holding the batch
        assert await same.take_over(second_entry, event[b"batch_id"]) == HELD  # then it stops, the entry pending
    (later_entry,) = await stored_batches(sessions, redis, 1)  # published after, not yet read by anyone
    commands_before = await commands_served(redis)

    stop = asyncio.Event()
    deadline = asyncio.get_running_loop().call_later(DEADLINE_S, stop.set)  # ends a consumer that never idles out
    restarted = follow_ingested_async(GROUP, "same", claim_idle_s=1, idle_exit_s=2, block_ms=100, stop=stop)
    handed = [batch.entry_id async for batch in restarted]
    deadline.cancel()

    commands = await commands_served(redis) - commands_before
    # The dead consumer's entry is claimed and handed over; the new one is read; its own held entry is then
    # acknowledged as handled.
    assert not stop.is_set(), "it never idled out"
    assert sorted(handed) == sorted([first_entry.decode(), later_entry.decode()])
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
    assert commands < COMMANDS_AT_MOST, f"{commands} Redis commands in a few seconds: rounds do not wait"
