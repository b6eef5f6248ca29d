"""The task edge (PRODUCT.md §5, §8.5, §8.9) with an in-process worker (`celery.contrib.testing`): the real app,
broker and result backend on the session's Redis, the real PostgreSQL, no subprocess, so these run in seconds.
What needs a real worker process (SIGKILL, hard time limits, prefork children) is in tests/e2e."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from celery.result import AsyncResult

from tests.db import query
from tests.polling import wait_for
from worker import app, enqueue_batch, keys
from worker.edge.runtime import stop_runtime
from worker.keys import delivery_counter_key
from worker.localstack.ports import free_port
from worker.localstack.sample_traces import generate_traces
from worker.settings import environment, get_settings


@contextmanager
def worker_in_this_process() -> Iterator[None]:
    """A solo worker in a thread of this process, consuming the ingest queue; its runtime is disposed after."""
    with start_worker(app, pool="solo", perform_ping_check=False, queues=["ingest"], loglevel="WARNING"):
        yield
    stop_runtime()


@pytest.fixture
def in_process_worker() -> Iterator[None]:
    with worker_in_this_process():
        yield


def outcome(task_id: str) -> dict[str, Any]:
    result: dict[str, Any] = AsyncResult(task_id, app=app).get(timeout=30)
    return result


def test_a_batch_is_stored_once_and_its_result_names_its_rows(in_process_worker: None, database_url: str) -> None:
    receipt = enqueue_batch(list(generate_traces(3)), source="in-process")

    result = outcome(receipt.task_id)

    rows = query(database_url, "SELECT id FROM trace ORDER BY position")
    assert result["state"] == "ingested" and result["published"] is True
    assert result["ids"] == [row.id for row in rows] and len(rows) == 3
    # Counted for the metrics in the round trip that released its custody, which holds nothing of it now.
    client = redis.Redis.from_url(get_settings().redis_url.get_secret_value())
    assert client.hgetall(keys.COUNTERS) == {b"batches_ingested": b"1", b"traces_ingested": b"3"}
    assert not client.keys(keys.custody_body_key("*"))


def test_a_batch_past_its_delivery_budget_is_parked_failed_with_the_reason(database_url: str, redis_url: str) -> None:
    receipt = enqueue_batch(list(generate_traces(2)), source="over-budget")
    budget = get_settings().max_deliveries
    # Deliveries counted by earlier crashes: the next one is one more than the budget allows.
    redis.Redis.from_url(redis_url).set(delivery_counter_key(str(receipt.batch_id)), budget)

    with worker_in_this_process():
        result = outcome(receipt.task_id)

    assert result["state"] == "failed"
    assert result["errors"][0]["message"] == f"delivered {budget + 1} times without being stored"
    (batch,) = query(database_url, "SELECT state, attempts, raw_payload IS NOT NULL AS kept FROM batch")
    assert (batch.state, batch.attempts, batch.kept) == ("failed", budget + 1, True)
    assert query(database_url, "SELECT count(*) AS n FROM trace")[0].n == 0


def test_a_hand_crafted_invalid_message_is_rejected_once_and_never_retried(
    in_process_worker: None, database_url: str
) -> None:
    batch_id = uuid.uuid4()
    message = {"batch_id": str(batch_id), "source": "crafted", "traces": [{"trace_version": "1", "prompt": ""}]}
    task = app.send_task("ingest.batch", kwargs=message, queue=get_settings().ingest_queue)

    result = outcome(task.id)

    assert result["state"] == "rejected"
    assert {error["field_path"] for error in result["errors"]} >= {"prompt", "final_answer", "steps"}
    (batch,) = query(database_url, "SELECT id, state, attempts FROM batch")
    assert (batch.id, batch.state, batch.attempts) == (batch_id, "rejected", 1)
    assert redis.Redis.from_url(get_settings().redis_url.get_secret_value()).hgetall(keys.COUNTERS) == {
        b"batches_rejected": b"1"
    }


def test_a_database_that_is_away_makes_the_task_retry_with_backoff_not_fail(redis_url: str) -> None:
    unreachable = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/tunix"
    with environment(DATABASE_URL=unreachable, RETRY_BACKOFF_MAX_S="30"):
        stop_runtime()  # the worker's runtime is made with these settings
        with worker_in_this_process():
            receipt = enqueue_batch(list(generate_traces(2)), source="db-away")
            retrying = wait_for(
                lambda: AsyncResult(receipt.task_id, app=app).state == "RETRY", timeout=30, what="a retry"
            )
            # Read at once: the first retry comes a second later, and stopping the worker may take longer.
            counted = redis.Redis.from_url(redis_url).get(delivery_counter_key(str(receipt.batch_id)))

    assert retrying
    assert int(counted or 0) == 1  # one delivery so far: the retry waits for its backoff, in the broker
    assert not redis.Redis.from_url(redis_url).exists(keys.COUNTERS)  # a retry is no outcome: nothing counted
