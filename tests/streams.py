"""Reading the "ingested" stream in tests, as a consumer would, and setting up a consumer group's entries."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import redis
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest import ingest_batch
from services.validation import BatchIn, validate_traces
from worker.client.consumer_group import GroupReader
from worker.edge.publisher import RedisStreamPublisher
from worker.localstack.sample_traces import generate_traces

STREAM = "traces:ingested"
#: The consumer group the group tests read with.
GROUP = "side"

Entry = tuple[bytes, dict[bytes, bytes]]


def stream_events(redis_url: str, stream: str = STREAM) -> list[dict[str, str]]:
    """Every entry of the stream, oldest first, with decoded field names and values."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries = cast(list[tuple[str, dict[str, str]]], client.xrange(stream))
    finally:
        client.close()
    return [fields for _, fields in entries]


def events_by_batch(redis_url: str) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for fields in stream_events(redis_url):
        grouped.setdefault(fields["batch_id"], []).append(fields)
    return grouped


async def stored_batches(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, count: int, *, traces: int = 2
) -> list[bytes]:
    """`count` batches stored and announced: their event entries' ids, in stream order."""
    entries = []
    for seed in range(count):
        async with sessions() as session:
            valid = validate_traces(list(generate_traces(traces, seed=seed)), max_batch=1000, max_bytes=1 << 23)
            batch = BatchIn(uuid.uuid4(), "tests", valid)
            await ingest_batch(session, batch, publisher=RedisStreamPublisher(redis, STREAM, 100))
        ((entry_id, _),) = cast(list[Entry], await redis.xrevrange(STREAM, count=1))
        entries.append(entry_id)
    return entries


async def announced_twice(sessions: async_sessionmaker[AsyncSession], redis: Redis) -> tuple[Entry, bytes]:
    """One stored batch with two events on the stream (the sweep announcing it again): the first, and the
    second's entry id."""
    (first_entry,) = await stored_batches(sessions, redis, 1, traces=3)
    ((_, event),) = cast(list[Entry], await redis.xrange(STREAM, first_entry, first_entry))
    second_entry = cast(bytes, await redis.xadd(STREAM, event))  # type: ignore[arg-type]
    return (first_entry, event), second_entry


def group_reader(consumer: str, *, claim_idle_s: float = 60) -> GroupReader:
    return GroupReader(GROUP, consumer, from_start=True, claim_idle_s=claim_idle_s, block_ms=100, raw_json=True)


@contextlib.asynccontextmanager
async def one_event_each(
    redis: Redis, first: str = "one", second: str = "other"
) -> AsyncIterator[tuple[GroupReader, GroupReader]]:
    """Readers `first` and `second` of the group: the stream's first entry pending with `first`, its second
    with `second`."""
    one, other = group_reader(first), group_reader(second)
    await one.join()
    await redis.xreadgroup(GROUP, first, {STREAM: ">"}, count=1)
    await redis.xreadgroup(GROUP, second, {STREAM: ">"}, count=1)
    try:
        yield one, other
    finally:
        await one.close()
        await other.close()


async def commands_served(redis: Redis) -> int:
    """Every command the Redis server has run since it started (INFO commandstats)."""
    stats = await redis.info("commandstats")
    return sum(int(figures["calls"]) for figures in stats.values())
