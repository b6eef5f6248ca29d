"""A custody record names its batch and content (PRODUCT.md §8.13). After Redis lost writes (a failover with
`INGEST_REDIS_MIN_REPLICAS=0`, a host crash) sequence numbers repeat: a message taken before the loss may name a
number that now holds another batch. It must neither use nor release that batch's record."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from models.messages import IngestResult
from tests.db import query
from worker import enqueue_batch, keys
from worker.custody import records as custody
from worker.edge.delivery import _deliver, _park
from worker.edge.runtime import Runtime, current_runtime, stop_runtime
from worker.edge.wire import task_kwargs_of
from worker.keys import delivery_counter_key
from worker.localstack.sample_traces import generate_traces


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    """The worker's per-process runtime in this process (engine, Redis, publisher), disposed after."""
    try:
        yield current_runtime()
    finally:
        stop_runtime()


def take_message(client: redis.Redis) -> dict[str, Any]:
    """Pop the one queued claim check, as a worker does."""
    (raw,) = client.lrange("ingest", 0, -1)
    client.delete("ingest")
    kwargs: dict[str, Any] = task_kwargs_of(raw)
    return kwargs


def stale_and_fresh(client: redis.Redis) -> tuple[dict[str, Any], dict[str, Any]]:
    """A message a worker took before Redis lost its last writes, and the message of a batch enqueued after
    the loss that got the same custody number."""
    stale = enqueue_batch(list(generate_traces(4)), source="before-the-loss")
    stale_message = take_message(client)
    client.flushall()  # the promoted replica had none of it: not the record, not the counter's increments
    enqueue_batch(list(generate_traces(4, seed=9)), source="after-the-loss")
    fresh_message = take_message(client)
    assert stale_message["batch_id"] == str(stale.batch_id)
    assert stale_message["custody_seq"] == fresh_message["custody_seq"]  # the number repeats
    return stale_message, fresh_message


def batch_states(database_url: str) -> dict[str, tuple[str, bool]]:
    rows = query(database_url, "SELECT id, state, raw_payload IS NOT NULL AS kept FROM batch")
    return {str(row.id): (row.state, row.kept) for row in rows}


def test_a_stale_message_whose_number_now_names_another_batch_leaves_that_batch_alone(
    runtime: Runtime, redis_url: str, database_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    stale_message, fresh_message = stale_and_fresh(client)

    stale: IngestResult = runtime.run(_deliver(runtime, stale_message))
    assert stale.state == "failed" and stale.errors[0]["field_path"] == "body"  # its own body is missing
    assert custody.figures(client) == custody.CustodyFigures(in_transit=1, resent=0, bodies_missing=1)

    fresh: IngestResult = runtime.run(_deliver(runtime, fresh_message))
    assert (fresh.state, fresh.count) == ("ingested", 4)
    assert batch_states(database_url) == {
        stale_message["batch_id"]: ("failed", False),  # the producer must send it again (bodies_missing)
        fresh_message["batch_id"]: ("ingested", False),
    }
    assert custody.figures(client).in_transit == 0


def test_parking_a_stale_message_takes_neither_the_body_nor_the_record_of_another_batch(
    runtime: Runtime, redis_url: str, database_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    stale_message, fresh_message = stale_and_fresh(client)

    parked: IngestResult = runtime.run(_park(runtime, stale_message, "the database was away", attempts=12))

    assert parked.state == "failed" and parked.errors[0]["field_path"] == "body"
    assert custody.figures(client).in_transit == 1
    assert runtime.run(_deliver(runtime, fresh_message)).state == "ingested"


def test_a_counter_set_back_never_hands_out_the_number_of_a_live_record(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    first = enqueue_batch(list(generate_traces(2)), source="first")
    first_message = take_message(client)
    client.set(keys.CUSTODY_SEQ, 0)  # Redis lost the counter's last increments but not the record

    enqueue_batch(list(generate_traces(2, seed=5)), source="second")

    second_message = take_message(client)
    assert second_message["custody_seq"] != first_message["custody_seq"]
    ticket = client.get(keys.custody_ticket_key(str(first_message["custody_seq"])))
    assert ticket is not None and str(first.batch_id).encode() in ticket
    assert custody.figures(client).in_transit == 2


async def test_a_claim_naming_another_batch_neither_starts_reads_nor_releases_the_record(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    enqueue_batch(list(generate_traces(2)), source="owner")
    message = take_message(client)
    other = custody.Claim(str(message["custody_seq"]), str(uuid4()), "0" * 64)
    async_redis = AsyncRedis.from_url(redis_url)
    try:
        counter = delivery_counter_key(other.batch_id)
        delivery = await custody.start_delivery(
            async_redis, other, counter_key=counter, counter_ttl_s=60, fetch_body=True
        )
        assert delivery == custody.Delivery(1, None, foreign=True)
        assert client.zrange(keys.CUSTODY_WAITING, 0, -1) == [other.record.encode()]  # still waiting, untouched
        assert client.get(keys.CUSTODY_HORIZON) is None
        assert await custody.stored_body(async_redis, other) is None
        assert not await custody.release(async_redis, other)
        assert not await custody.release(async_redis, custody.Claim(other.record))  # a bare number: no ticket check
        assert custody.figures(client).in_transit == 1

        assert await custody.release(async_redis, custody.claim_of(message))  # its own message's claim does
    finally:
        await async_redis.aclose()
    assert custody.figures(client).in_transit == 0
    assert client.hlen(keys.CUSTODY_RECORDS) == 0 and client.keys(f"{keys.CUSTODY}:body:*") == []
