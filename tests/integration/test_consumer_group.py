"""Consumers of one group side by side, against real Redis and PostgreSQL: a batch announced twice is handed
over once, even while its first event is still in another consumer's hands, and never lost if that one dies."""

from __future__ import annotations

import contextlib
from typing import cast

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest import ingest_batch
from tests.integration.test_ingest_service import make_batch
from tests.streams import STREAM
from worker.client.consumer import follow_ingested_async
from worker.client.consumer_group import handled_key, in_flight_key
from worker.devtools.sample_traces import generate_traces
from worker.events import RedisStreamPublisher


async def test_a_second_event_is_skipped_while_the_first_is_held_and_the_batch_survives_its_holder(
    sessions: async_sessionmaker[AsyncSession], redis_url: str
) -> None:
    redis = Redis.from_url(redis_url)
    async with sessions() as session:
        await ingest_batch(
            session, make_batch(list(generate_traces(3))), publisher=RedisStreamPublisher(redis, STREAM, 100)
        )
    ((first_entry, event),) = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(STREAM))

    holder = follow_ingested_async("side", "holder", from_start=True, idle_exit_s=0.5)
    held = await anext(holder)  # handed over, not yet acknowledged: the entry is pending with `holder`
    await redis.xadd(STREAM, event)  # type: ignore[arg-type]  # the sweep announces the same batch again
    beside = [batch async for batch in follow_ingested_async("side", "beside", idle_exit_s=0.5)]
    assert beside == []  # the second event is acknowledged and skipped: `holder` hands the batch over

    with contextlib.suppress(RuntimeError):
        await holder.athrow(RuntimeError("the holder dies"))  # leaves its entry pending, never acknowledged
    rescued = [batch async for batch in follow_ingested_async("side", "rescuer", claim_idle_s=0.01, idle_exit_s=1)]

    assert [batch.batch_id for batch in rescued] == [held.batch_id]
    assert [batch.entry_id for batch in rescued] == [first_entry.decode()]
    assert (await redis.xpending(STREAM, "side"))["pending"] == 0
    assert await redis.zscore(handled_key(STREAM, "side"), str(held.batch_id)) is not None
    assert await redis.hlen(in_flight_key(STREAM, "side")) == 0
    await redis.aclose()
