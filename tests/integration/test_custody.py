"""Custody of accepted batches in a real Redis: which ones count as out of the queue, and when."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from worker import custody
from worker.enqueue import batch_key, delivery_counter_key
from worker.settings import get_settings


@pytest.fixture
async def async_redis(redis_url: str) -> AsyncIterator[AsyncRedis]:
    client = AsyncRedis.from_url(redis_url)
    yield client
    await client.aclose()


def accept(client: redis.Redis, batch_id: str, content_hash: str = "h") -> int:
    return custody.accept(
        client,
        batch_key=batch_key(batch_id),  # type: ignore[arg-type]
        batch_id=batch_id,
        content_hash=content_hash,
        key_ttl_s=60,
        kwargs_json=b'{"batch_id": "%s"}' % batch_id.encode(),
    )


async def start_task(client: AsyncRedis, batch_id: str) -> int:
    message = {"batch_id": batch_id}
    return await custody.taken(client, batch_id, counter_key=delivery_counter_key(message), counter_ttl_s=60)


async def overdue(client: AsyncRedis) -> list[str]:
    return sorted(await custody.overdue(client, get_settings(), untouched_for_s=0))


async def test_only_batches_that_left_the_queue_can_be_overdue(redis_url: str, async_redis: AsyncRedis) -> None:
    client = redis.Redis.from_url(redis_url)
    assert [accept(client, batch) for batch in ("b1", "b2", "b3")] == [custody.NEW_BATCH] * 3
    client.lpush("ingest", "a message still queued")  # the queue is not empty: b3 may still be in it

    assert await start_task(async_redis, "b2") == 1  # b2 started, so b1 (sent before it) left the queue too
    assert await overdue(async_redis) == ["b1", "b2"]

    await custody.release(async_redis, "b2")  # b2 is in PostgreSQL
    assert await overdue(async_redis) == ["b1"]

    client.delete("ingest")  # an empty queue holds nothing that was accepted before
    assert await overdue(async_redis) == ["b1", "b3"]
    assert custody.in_transit(client) == (2, 0)


async def test_a_retried_batch_waits_in_the_queue_again_and_counts_its_deliveries(
    redis_url: str, async_redis: AsyncRedis
) -> None:
    client = redis.Redis.from_url(redis_url)
    accept(client, "b1")
    accept(client, "b2")
    client.lpush("ingest", "a message still queued")
    assert await start_task(async_redis, "b1") == 1
    await custody.requeued(async_redis, "b1")  # its retry goes behind b2
    assert await overdue(async_redis) == []
    assert await start_task(async_redis, "b2") == 1
    assert await overdue(async_redis) == ["b2"]
    assert await start_task(async_redis, "b1") == 2
    assert await overdue(async_redis) == ["b1", "b2"]
    assert await custody.stored_payload(async_redis, "b1") == {"batch_id": "b1"}


def test_the_same_batch_again_keeps_custody_and_other_content_is_a_conflict(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert accept(client, "b1", "hash-1") == custody.NEW_BATCH == 1
    assert accept(client, "b1", "hash-1") == custody.SAME_BATCH_AGAIN == 0
    assert accept(client, "b1", "hash-2") == custody.CONFLICT == -1
    custody.forget(client, "b1")
    assert custody.in_transit(client) == (0, 0)
