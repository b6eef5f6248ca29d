"""Consumers of one group side by side, against real Redis and PostgreSQL: a batch announced twice is handed
over once, even while its first event is still in another consumer's hands, and never lost if that one dies."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import cast

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest import ingest_batch
from tests.integration.test_ingest_service import make_batch
from tests.streams import STREAM
from worker.client.consumer import follow_ingested_async
from worker.client.consumer_group import GroupReader, handled_key, in_flight_key
from worker.client.consumer_statements import HELD, TAKEN
from worker.devtools.sample_traces import generate_traces
from worker.events import RedisStreamPublisher

Entry = tuple[bytes, dict[bytes, bytes]]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def announced_twice(sessions: async_sessionmaker[AsyncSession], redis: Redis) -> tuple[Entry, bytes]:
    """One stored batch with two events on the stream (the sweep announcing it again): the first, and the
    second's entry id."""
    async with sessions() as session:
        batch = make_batch(list(generate_traces(3)))
        await ingest_batch(session, batch, publisher=RedisStreamPublisher(redis, STREAM, 100))
    ((first_entry, event),) = cast(list[Entry], await redis.xrange(STREAM))
    second_entry = cast(bytes, await redis.xadd(STREAM, event))  # type: ignore[arg-type]
    return (first_entry, event), second_entry


def reader(consumer: str) -> GroupReader:
    return GroupReader("side", consumer, from_start=True, claim_idle_s=60, block_ms=100, raw_json=True)


@contextlib.asynccontextmanager
async def one_event_each(redis: Redis) -> AsyncIterator[tuple[GroupReader, GroupReader]]:
    """Readers `one` and `other` of the group: the first event pending with `one`, the second with `other`."""
    one, other = reader("one"), reader("other")
    await one.join()
    await redis.xreadgroup("side", "one", {STREAM: ">"}, count=1)
    await redis.xreadgroup("side", "other", {STREAM: ">"}, count=1)
    try:
        yield one, other
    finally:
        await one.close()
        await other.close()


async def test_a_second_event_waits_while_the_first_is_held_and_the_batch_survives_its_holder(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    (first_entry, _), _ = await announced_twice(sessions, redis)

    holder = follow_ingested_async("side", "holder", from_start=True, idle_exit_s=0.5)
    held = await anext(holder)  # handed over, not yet acknowledged: the first entry is pending with `holder`
    beside = [batch async for batch in follow_ingested_async("side", "beside", idle_exit_s=0.5)]
    assert beside == []  # the second event waits, unacknowledged: `holder` is handing the batch over
    assert (await redis.xpending(STREAM, "side"))["pending"] == 2

    with contextlib.suppress(RuntimeError):
        await holder.athrow(RuntimeError("the holder dies"))  # leaves its entry pending, never acknowledged
    rescued = [batch async for batch in follow_ingested_async("side", "rescuer", claim_idle_s=0.01, idle_exit_s=1)]

    # The rescuer claims both entries: the first hands the batch over, the second is then acknowledged as handled.
    assert [(batch.batch_id, batch.entry_id) for batch in rescued] == [(held.batch_id, first_entry.decode())]
    assert (await redis.xpending(STREAM, "side"))["pending"] == 0
    assert await redis.zscore(handled_key(STREAM, "side"), str(held.batch_id)) is not None
    assert await redis.hlen(in_flight_key(STREAM, "side")) == 0


async def test_two_consumers_asking_at_once_for_the_two_events_of_one_batch_get_one_yes(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    (first_entry, event), second_entry = await announced_twice(sessions, redis)
    async with one_event_each(redis) as (one, other):
        answers = await asyncio.gather(
            one.take_over(first_entry, event[b"batch_id"]), other.take_over(second_entry, event[b"batch_id"])
        )

    assert sorted(answers) == sorted([TAKEN, HELD])


async def test_an_event_whose_first_entry_vanished_while_held_takes_over(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    (first_entry, event), second_entry = await announced_twice(sessions, redis)
    async with one_event_each(redis) as (one, other):
        assert await one.take_over(first_entry, event[b"batch_id"]) == TAKEN
        assert await other.take_over(second_entry, event[b"batch_id"]) == HELD

        await redis.xdel(STREAM, first_entry)  # trimmed (or deleted) while `one` still holds it, as after MAXLEN

        assert await other.take_over(second_entry, event[b"batch_id"]) == TAKEN  # it no longer waits for a ghost


async def stored_batches(sessions: async_sessionmaker[AsyncSession], redis: Redis, count: int) -> list[bytes]:
    """`count` stored and announced batches: their event entries' ids, in stream order."""
    for seed in range(count):
        async with sessions() as session:
            batch = make_batch(list(generate_traces(2, seed=seed)))
            await ingest_batch(session, batch, publisher=RedisStreamPublisher(redis, STREAM, 100))
    return [entry_id for entry_id, _ in cast(list[Entry], await redis.xrange(STREAM))]


async def test_a_dead_consumers_entry_is_claimed_while_new_entries_keep_coming(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    entries = await stored_batches(sessions, redis, 3)
    await reader("dead").join()
    await redis.xreadgroup("side", "dead", {STREAM: ">"}, count=1)  # the first entry, never acknowledged

    handed = [
        batch.entry_id
        async for batch in follow_ingested_async("side", "live", claim_idle_s=0.3, idle_exit_s=1.5, block_ms=100)
    ]

    assert sorted(handed) == sorted(entry.decode() for entry in entries)  # the dead one's too, once
    assert (await redis.xpending(STREAM, "side"))["pending"] == 0


async def test_a_consumer_started_again_under_its_name_hands_over_its_own_pending_entry_first(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    entries = await stored_batches(sessions, redis, 2)
    first_run = follow_ingested_async("side", "same", from_start=True, idle_exit_s=0.5)
    first = await anext(first_run)
    with contextlib.suppress(RuntimeError):
        await first_run.athrow(RuntimeError("stopped before the ack"))

    second_run = [batch.entry_id async for batch in follow_ingested_async("side", "same", idle_exit_s=0.5)]

    assert first.entry_id == entries[0].decode()
    assert second_run == [entry.decode() for entry in entries]  # its own pending entry first, then the rest
