"""A producer's retries and custody (PRODUCT.md §4, §8.13): one record per batch id however often the producer
retries, and records in custody count toward the queue-depth limit. A lone Redis has no replica, so
`INGEST_REDIS_MIN_REPLICAS=1` stands for replicas that lag: custody is written but never confirmed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, cast
from uuid import UUID, uuid4

import httpx
import orjson
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from services.errors import EnqueueFailed, QueueFull
from worker import enqueue_batch, keys
from worker.custody import records as custody
from worker.custody import recovery as custody_recovery
from worker.edge.wire import task_kwargs_of
from worker.http_api import create_app
from worker.localstack.sample_traces import generate_traces
from worker.settings import environment, get_settings


@pytest.fixture
def lagging_replicas(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Custody that no replica confirms within 20 ms; the environment is restored after the test."""
    monkeypatch.setenv("INGEST_REDIS_MIN_REPLICAS", "1")
    monkeypatch.setenv("INGEST_REDIS_REPLICA_TIMEOUT_MS", "20")
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


def unconfirmed(traces: list[dict[str, Any]], batch_id: UUID) -> EnqueueFailed:
    """Enqueue while the replicas lag: the outcome is unknown (never `QueueFull`)."""
    with pytest.raises(EnqueueFailed) as failed:
        enqueue_batch(traces, source="lagging", batch_id=batch_id)
    assert type(failed.value) is EnqueueFailed, failed.value
    return failed.value


def custody_keys(client: redis.Redis, kind: str) -> list[bytes]:
    return sorted(cast(list[bytes], client.keys(f"{keys.CUSTODY}:{kind}:*")))


def out_of_the_queue(redis_url: str) -> list[str]:
    """The records `reprocess.resend_lost` would send again, were they quiet for long enough."""

    async def overdue() -> list[str]:
        client = AsyncRedis.from_url(redis_url)
        try:
            return await custody_recovery.overdue(client, get_settings(), untouched_for_s=0)
        finally:
            await client.aclose()

    return asyncio.run(overdue())


def queued_kwargs(client: redis.Redis) -> list[dict[str, Any]]:
    return [task_kwargs_of(raw) for raw in reversed(client.lrange("ingest", 0, -1))]


def test_twenty_retries_of_a_batch_whose_replicas_lag_leave_one_record_and_one_body(
    lagging_replicas: pytest.MonkeyPatch, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    traces = list(generate_traces(100))
    batch_id = uuid4()

    for _ in range(20):  # what the docs tell a producer to do after EnqueueFailed
        unconfirmed(traces, batch_id)

    assert len(custody_keys(client, "body")) == len(custody_keys(client, "ticket")) == 1
    assert custody.figures(client).in_transit == 1
    assert client.llen("ingest") == 0  # nothing was acknowledged, so nothing was sent
    (ticket,) = custody_keys(client, "ticket")
    assert out_of_the_queue(redis_url) == [ticket.rsplit(b":", 1)[1].decode()]  # the re-send still delivers it


async def test_twenty_retries_over_http_while_replicas_lag_are_each_503_and_leave_one_record(
    lagging_replicas: pytest.MonkeyPatch, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    body = orjson.dumps(list(generate_traces(100)))
    batch_id = str(uuid4())

    with environment(INGEST_API_TOKENS="retrying-producer"):
        transport = httpx.ASGITransport(app=create_app())
        headers = {"Authorization": "Bearer retrying-producer", "Idempotency-Key": batch_id}
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=headers) as http:
            # What the 503's detail tells a client to do: send it again under the same Idempotency-Key.
            answers = [await http.post("/api/traces/batch", content=body) for _ in range(20)]

    assert [answer.status_code for answer in answers] == [503] * 20, answers[0].text
    assert {answer.json()["batch_id"] for answer in answers} == {batch_id}
    assert len(custody_keys(client, "body")) == len(custody_keys(client, "ticket")) == 1
    assert custody.figures(client).in_transit == 1 and client.llen("ingest") == 0


def test_a_retry_that_is_confirmed_sends_the_claim_check_of_the_batchs_one_record(
    lagging_replicas: pytest.MonkeyPatch, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    traces = list(generate_traces(5))
    batch_id = uuid4()
    unconfirmed(traces, batch_id)
    unconfirmed(traces, batch_id)
    (record,) = [key.rsplit(b":", 1)[1].decode() for key in custody_keys(client, "ticket")]

    lagging_replicas.setenv("INGEST_REDIS_MIN_REPLICAS", "0")  # the replicas caught up
    get_settings.cache_clear()
    receipt = enqueue_batch(traces, source="lagging", batch_id=batch_id)

    (message,) = queued_kwargs(client)
    assert (message["batch_id"], message["custody_seq"]) == (str(receipt.batch_id), int(record))
    assert len(custody_keys(client, "body")) == 1 and custody.figures(client).in_transit == 1


def test_records_in_custody_count_toward_the_queue_depth_even_when_the_queue_is_empty(
    lagging_replicas: pytest.MonkeyPatch, redis_url: str
) -> None:
    lagging_replicas.setenv("INGEST_MAX_QUEUE_DEPTH", "1")
    get_settings.cache_clear()
    client = redis.Redis.from_url(redis_url)
    waiting = list(generate_traces(3))
    waiting_id = uuid4()
    unconfirmed(waiting, waiting_id)  # custody holds it; no message was sent
    assert client.llen("ingest") == 0

    with pytest.raises(QueueFull) as full:
        enqueue_batch(list(generate_traces(3, seed=7)), source="lagging")
    assert (full.value.depth, full.value.limit) == (1, 1)

    unconfirmed(waiting, waiting_id)  # a retry of the batch in custody adds no record: it is not refused
    assert custody.figures(client).in_transit == 1
