"""Custody of accepted batches in a real Redis: which records count as out of the queue, and when."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from services.validation import validate_traces
from tests.db import query
from worker import enqueue_batch, keys
from worker.custody import accept as custody_accept
from worker.custody import records as custody
from worker.custody import recovery as custody_recovery
from worker.edge.runtime import current_runtime, stop_runtime
from worker.edge.scheduled_jobs import _resend_lost
from worker.keys import batch_key, delivery_counter_key, heartbeat_key
from worker.localstack.sample_traces import generate_traces
from worker.settings import get_settings


@pytest.fixture
async def async_redis(redis_url: str) -> AsyncIterator[AsyncRedis]:
    client = AsyncRedis.from_url(redis_url)
    yield client
    await client.aclose()


def ticket_head(batch_id: str, content_hash: str = "h") -> bytes:
    return b'{"batch_id":"%s","content_hash":"%s","custody_seq":' % (batch_id.encode(), content_hash.encode())


def accept(
    client: redis.Redis, batch_id: str, content_hash: str = "h", max_depth: int = 100
) -> custody_accept.Accepted:
    return custody_accept.accept(
        client,
        batch_id=batch_id,
        batch_key=batch_key(batch_id),  # type: ignore[arg-type]
        content_hash=content_hash,
        key_ttl_s=60,
        body=b'["body of %s"]' % batch_id.encode(),
        ticket_head=ticket_head(batch_id, content_hash),
        queue="ingest",
        max_depth=max_depth,
        counter_key=delivery_counter_key(batch_id),
    )


def claim(record: str | int, batch_id: str, content_hash: str = "h") -> custody.Claim:
    return custody.Claim(str(record), batch_id, content_hash)


async def start(client: AsyncRedis, record: str | int, batch_id: str) -> custody.Delivery:
    return await custody.start_delivery(
        client, claim(record, batch_id), counter_key=delivery_counter_key(batch_id), counter_ttl_s=60, fetch_body=True
    )


async def overdue(client: AsyncRedis) -> list[str]:
    return sorted(await custody_recovery.overdue(client, get_settings(), untouched_for_s=0), key=int)


async def test_only_records_that_left_the_queue_can_be_overdue(redis_url: str, async_redis: AsyncRedis) -> None:
    client = redis.Redis.from_url(redis_url)
    records = [str(accept(client, batch).value) for batch in ("b1", "b2", "b3")]
    assert records == ["1", "2", "3"]
    client.lpush("ingest", "a message still queued")  # the queue is not empty: b3 may still be in it

    delivery = await start(async_redis, "2", "b2")  # b2 started, so b1 (sent before it) left the queue too
    assert delivery == custody.Delivery(1, b'["body of b2"]')
    assert await overdue(async_redis) == ["1", "2"]

    assert await custody.release(async_redis, claim(2, "b2"))  # b2 is in PostgreSQL: record and body are gone
    assert await overdue(async_redis) == ["1"]
    assert await custody.stored_body(async_redis, claim(2, "b2")) is None

    client.delete("ingest")  # an empty queue holds nothing that was accepted before
    assert await overdue(async_redis) == ["1", "3"]
    assert custody.figures(client) == custody.CustodyFigures(in_transit=2, resent=0, bodies_missing=0)


async def test_a_retried_batch_waits_in_the_queue_again_and_counts_its_deliveries(
    redis_url: str, async_redis: AsyncRedis
) -> None:
    client = redis.Redis.from_url(redis_url)
    accept(client, "b1")
    accept(client, "b2")
    client.lpush("ingest", "a message still queued")
    assert (await start(async_redis, "1", "b1")).deliveries == 1
    await custody.requeued(async_redis, claim(1, "b1"))  # its retry goes behind b2
    assert await overdue(async_redis) == []
    assert (await start(async_redis, "2", "b2")).deliveries == 1
    assert await overdue(async_redis) == ["2"]
    assert (await start(async_redis, "1", "b1")).deliveries == 2
    assert await overdue(async_redis) == ["1", "2"]
    assert await custody_recovery.resendable_message(async_redis, "1") == {
        "batch_id": "b1",
        "content_hash": "h",
        "custody_seq": 1,
    }


async def test_a_producer_retry_at_the_tail_does_not_make_the_backlog_count_as_out_of_the_queue(
    redis_url: str, async_redis: AsyncRedis
) -> None:
    client = redis.Redis.from_url(redis_url)
    first = accept(client, "retried")
    backlog = [accept(client, f"backlog-{n}").value for n in range(5)]
    again = accept(client, "retried")  # the producer sends the same batch once more, behind the backlog
    assert (first.outcome, again.outcome) == (custody_accept.NEW_BATCH, custody_accept.SAME_BATCH_AGAIN)
    assert again.value == first.value  # one record per batch id: the retry's claim check names it too
    client.lpush("ingest", *[f"message {n}" for n in [*backlog, again.value]])

    await start(async_redis, first.value, "retried")  # the first copy's delivery starts

    # Only the retried batch has left the queue (its delivery runs): the backlog still waits where it was.
    assert await overdue(async_redis) == [str(first.value)]
    assert custody.figures(client).in_transit == 6


def test_the_same_batch_again_refreshes_its_one_record_and_other_content_is_a_conflict(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert accept(client, "b1", "hash-1") == custody_accept.Accepted(custody_accept.NEW_BATCH, 1)
    assert accept(client, "b1", "hash-1") == custody_accept.Accepted(custody_accept.SAME_BATCH_AGAIN, 1)
    assert accept(client, "b1", "hash-2").outcome == custody_accept.CONFLICT
    assert client.get(keys.custody_ticket_key("1")) == b'{"batch_id":"b1","content_hash":"hash-1","custody_seq":1}'
    assert client.keys(f"{keys.CUSTODY}:body:*") == [keys.custody_body_key("1").encode()]
    assert custody.figures(client).in_transit == 1


def test_a_full_queue_takes_no_custody_and_says_how_deep_it_is(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.lpush("ingest", "one", "two")
    assert accept(client, "b1", max_depth=2) == custody_accept.Accepted(custody_accept.QUEUE_FULL, 2)
    assert custody.figures(client).in_transit == 0
    assert client.keys(f"{keys.CUSTODY}:incoming:*") == []  # the body sent ahead is gone too


async def test_records_held_by_a_worker_whose_heartbeat_stopped_are_overdue_at_once(
    redis_url: str, async_redis: AsyncRedis
) -> None:
    client = redis.Redis.from_url(redis_url)
    for batch in ("b1", "b2", "b3"):
        accept(client, batch)
    client.lpush("ingest", "a message still queued")
    client.set(heartbeat_key("alive@host#10#1"), 1, ex=10)
    custody.received_by(client, "1", "alive@host#10#1")
    custody.received_by(client, "2", "dead@host#20#1")  # received, not started, and its worker stopped beating
    custody.received_by(client, "7", "dead@host#20#1")  # an owner entry whose record is long released

    assert await custody_recovery.overdue(async_redis, get_settings()) == ["2"]  # no wait for the 330 s quiet time
    assert client.hkeys(keys.CUSTODY_OWNERS) == [b"1", b"2"]  # the stale entry is gone
    await custody.requeued(async_redis, claim(2, "b2"))  # sent again: it waits in the queue, owned by nobody
    assert client.hkeys(keys.CUSTODY_OWNERS) == [b"1"]
    assert await custody_recovery.overdue(async_redis, get_settings()) == []


def test_a_lost_copy_of_a_batch_postgresql_holds_only_as_failed_is_sent_again_not_dropped(
    redis_url: str, database_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    traces = list(generate_traces(3))
    receipt = enqueue_batch(traces, source="sent-again")  # the producer sends a batch parked `failed` again
    valid = validate_traces(traces, max_batch=1000, max_bytes=1 << 23)
    query(
        database_url,
        "INSERT INTO batch (id, source, state, trace_count, content_hash) VALUES (:id, 'sent-again', 'failed', 3, :h)",
        id=receipt.batch_id,
        h=valid.content_hash,
    )
    client.delete("ingest")  # its message is lost in transit, taken by a worker that then died
    custody.received_by(client, "1", "dead@host#1#1")

    runtime = current_runtime()
    try:
        assert runtime.run(_resend_lost(runtime)) == 1  # a `failed` row is no reason to drop the copy
    finally:
        stop_runtime()
    assert client.llen("ingest") == 1 and custody.figures(client).in_transit == 1


async def test_a_retry_of_a_stale_message_never_requeues_another_batchs_record(
    redis_url: str, async_redis: AsyncRedis
) -> None:
    client = redis.Redis.from_url(redis_url)
    accept(client, "b1")  # record 1 is b1's
    assert (await start(async_redis, "1", "b1")).deliveries == 1
    taken_before = client.zscore(keys.CUSTODY_TAKEN, "1")

    await custody.requeued(async_redis, custody.Claim("1", "another batch", "h"))  # a stale message's retry

    assert client.zscore(keys.CUSTODY_TAKEN, "1") == taken_before and client.zscore(keys.CUSTODY_WAITING, "1") is None
    await custody.requeued(async_redis, custody.Claim("1", "b1", "h"))  # b1's own retry
    assert client.zscore(keys.CUSTODY_WAITING, "1") is not None
