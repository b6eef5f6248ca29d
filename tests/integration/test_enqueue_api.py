"""The producer API against a real Redis (no worker running: messages stay queued where we can see them)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from typing import Any, cast

import orjson
import pytest
import redis

from services.errors import BatchConflict, BatchRejected, EnqueueFailed, QueueFull
from worker import enqueue_batch, enqueue_batch_async, keys
from worker.client.enqueue import queue_depth
from worker.custody import records as custody
from worker.edge.wire import task_kwargs_of
from worker.localstack.ports import free_port
from worker.localstack.sample_traces import generate_traces
from worker.settings import get_settings


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Change settings through the environment for one test."""
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


def queued_kwargs(redis_url: str) -> list[dict[str, Any]]:
    raw = redis.Redis.from_url(redis_url).lrange("ingest", 0, -1)
    return [task_kwargs_of(m) for m in reversed(raw)]


def test_accepted_batch_is_a_small_claim_check_and_its_body_waits_in_custody_once(redis_url: str) -> None:
    traces = list(generate_traces(1000))
    receipt = enqueue_batch(traces, source="producer-a")
    client = redis.Redis.from_url(redis_url)
    (raw_message,) = client.lrange("ingest", 0, -1)
    (queued,) = queued_kwargs(redis_url)

    assert set(queued) == {"batch_id", "source", "enqueued_at", "trace_count", "content_hash", "custody_seq"}
    assert queued["batch_id"] == str(receipt.batch_id) and queued["source"] == "producer-a"
    assert queued["trace_count"] == receipt.trace_count == 1000
    assert len(raw_message) < 3000  # a claim check, whatever the batch size
    headers = orjson.loads(raw_message)["headers"]
    assert headers["argsrepr"] == f"{receipt.batch_id}, n=1000"  # what Flower shows
    body = cast(bytes | None, client.get(keys.custody_body_key(str(queued["custody_seq"]))))
    assert body is not None and orjson.loads(body) == traces
    assert hashlib.sha256(body).hexdigest() == queued["content_hash"]
    bodies = [key for key in client.keys("*") if (client.memory_usage(key) or 0) > len(body) // 2]
    assert bodies == [keys.custody_body_key(str(queued["custody_seq"])).encode()]  # the traces are in Redis once


def test_invalid_batch_enqueues_nothing(redis_url: str) -> None:
    with pytest.raises(BatchRejected, match="at least one"):
        enqueue_batch([], source="p")
    with pytest.raises(BatchRejected, match="source"):
        enqueue_batch(list(generate_traces(1)), source="")
    assert queue_depth() == 0


def test_retry_with_same_id_and_traces_is_accepted_but_other_traces_conflict(redis_url: str) -> None:
    batch_id = uuid.uuid4()
    traces = list(generate_traces(4))
    first = enqueue_batch(traces, source="p", batch_id=batch_id)
    again = enqueue_batch(traces, source="p", batch_id=batch_id)
    assert again.batch_id == first.batch_id == batch_id
    with pytest.raises(BatchConflict):
        enqueue_batch(list(generate_traces(4, seed=9)), source="p", batch_id=batch_id)
    assert queue_depth() == 2


def test_full_queue_pushes_back_with_a_retry_delay(settings_env: pytest.MonkeyPatch) -> None:
    settings_env.setenv("INGEST_MAX_QUEUE_DEPTH", "2")
    get_settings.cache_clear()
    for _ in range(2):
        enqueue_batch(list(generate_traces(1)), source="p")
    with pytest.raises(QueueFull) as full:
        enqueue_batch(list(generate_traces(1)), source="p")
    assert full.value.retry_after > 0 and full.value.depth == 2
    assert queue_depth() == 2


def test_unreachable_redis_raises_enqueue_failed_without_the_password(settings_env: pytest.MonkeyPatch) -> None:
    settings_env.setenv("REDIS_URL", f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    batch_id = uuid.uuid4()
    with pytest.raises(EnqueueFailed) as failed:
        enqueue_batch(list(generate_traces(1)), source="p", batch_id=batch_id)
    assert "hunter2" not in str(failed.value)
    assert failed.value.batch_id == batch_id and f"retry with batch_id {batch_id}" in str(failed.value)


async def test_async_producers_get_the_same_receipt(redis_url: str) -> None:
    receipt = await enqueue_batch_async(list(generate_traces(2)), source="async-producer")
    assert receipt.trace_count == 2
    assert queued_kwargs(redis_url)[0]["batch_id"] == str(receipt.batch_id)


def test_custody_not_confirmed_by_enough_replicas_is_an_unknown_outcome(
    settings_env: pytest.MonkeyPatch, redis_url: str
) -> None:
    """A lone Redis has no replica to confirm custody: with INGEST_REDIS_MIN_REPLICAS=1 the producer is not told
    "accepted"; the master still holds the batch (custody sends it if nobody retries), and the error names the
    id to retry with."""
    settings_env.setenv("INGEST_REDIS_MIN_REPLICAS", "1")
    settings_env.setenv("INGEST_REDIS_REPLICA_TIMEOUT_MS", "50")
    get_settings.cache_clear()
    batch_id = uuid.uuid4()
    with pytest.raises(EnqueueFailed) as failed:
        enqueue_batch(list(generate_traces(3)), source="replicated", batch_id=batch_id)
    assert failed.value.batch_id == batch_id
    assert "reached 0 of 1 Redis replicas within 50 ms" in str(failed.value)
    assert custody.figures(redis.Redis.from_url(redis_url)).in_transit == 1
    assert queued_kwargs(redis_url) == []  # not sent: custody's re-send delivers it if the producer does not retry


def test_single_node_mode_does_not_wait_for_replicas(redis_url: str) -> None:
    assert get_settings().ingest_redis_min_replicas == 0
    receipt = enqueue_batch(list(generate_traces(2)), source="single-node")
    assert queued_kwargs(redis_url)[0]["batch_id"] == str(receipt.batch_id)
