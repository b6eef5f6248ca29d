"""Wire format v2 with real worker processes: a v1 backlog after an upgrade, missing bodies, eviction."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from celery.result import AsyncResult

from tests.db import query, scalar
from tests.e2e.conftest import StartWorker
from tests.polling import wait_for
from tests.streams import events_by_batch
from worker import app, enqueue_batch, keys
from worker.custody import records as custody
from worker.edge.wire import task_kwargs_of
from worker.localstack.processes import worker_command
from worker.localstack.sample_traces import generate_traces


def enqueue_v1_backlog(client: redis.Redis, batches: int, size: int) -> list[dict[str, Any]]:
    """What an older version's producer left queued: the traces inline, a custody record named by batch id."""
    messages = []
    for number in range(batches):
        batch_id = str(uuid.uuid4())
        message = {
            "batch_id": batch_id,
            "source": "v1-producer",
            "traces": list(generate_traces(size, seed=number)),
            "enqueued_at": "2026-11-30T12:00:00+00:00",
        }
        client.zadd(keys.CUSTODY_WAITING, {batch_id: client.incr(keys.CUSTODY_SEQ)})
        client.set(keys.custody_legacy_payload_key(batch_id), orjson.dumps(message))
        app.send_task("ingest.batch", kwargs=message, queue="ingest")
        messages.append(message)
    return messages


def test_a_v1_backlog_queued_before_an_upgrade_is_stored_once_by_the_new_worker(
    start_worker: StartWorker, database_url: str, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    old = enqueue_v1_backlog(client, batches=6, size=50)
    new = [enqueue_batch(list(generate_traces(50, seed=100 + n)), source="v2-producer") for n in range(3)]

    start_worker("upgraded")
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM batch WHERE published_at IS NOT NULL") == 9)

    assert scalar(database_url, "SELECT count(*) FROM trace") == 9 * 50
    assert scalar(database_url, "SELECT count(DISTINCT (batch_id, position)) FROM trace") == 9 * 50
    stored = query(
        database_url, "SELECT prompt FROM trace WHERE batch_id = :id ORDER BY position", id=old[0]["batch_id"]
    )
    assert [row.prompt for row in stored] == [trace["prompt"] for trace in old[0]["traces"]]
    assert set(events_by_batch(redis_url)) == {m["batch_id"] for m in old} | {str(r.batch_id) for r in new}
    wait_for(lambda: custody.figures(client).in_transit == 0, what="v1 and v2 custody records released")
    assert client.keys(f"{keys.CUSTODY}:payload:*") == client.keys(f"{keys.CUSTODY}:body:*") == []


def test_a_claim_check_whose_batch_is_stored_completes_without_its_body(
    worker_process: object, database_url: str, redis_url: str
) -> None:
    receipt = enqueue_batch(list(generate_traces(20)), source="stored")
    first = AsyncResult(receipt.task_id, app=app).get(timeout=60)
    client = redis.Redis.from_url(redis_url)
    ticket = {
        "batch_id": str(receipt.batch_id),
        "source": "stored",
        "trace_count": 20,
        "content_hash": scalar(database_url, "SELECT content_hash FROM batch"),
        "custody_seq": 1,
    }
    assert client.get(keys.custody_body_key("1")) is None  # released once PostgreSQL held the batch

    again = app.send_task("ingest.batch", kwargs=ticket, queue="ingest").get(timeout=60)

    assert again["state"] == "ingested" and again["ids"] == first["ids"]
    assert scalar(database_url, "SELECT count(*) FROM trace") == 20
    assert custody.figures(client).bodies_missing == 0


def test_a_claim_check_whose_body_is_gone_and_batch_not_stored_is_parked_failed_and_counted(
    start_worker: StartWorker, database_url: str, redis_url: str
) -> None:
    lost = enqueue_batch(list(generate_traces(10)), source="evicted")
    kept = enqueue_batch(list(generate_traces(10, seed=3)), source="kept")
    client = redis.Redis.from_url(redis_url)
    (lost_ticket, _) = [task_kwargs_of(raw) for raw in reversed(client.lrange("ingest", 0, -1))]
    client.delete(keys.custody_body_key(str(lost_ticket["custody_seq"])))  # deleted by hand, expired or evicted

    worker = start_worker("finds-no-body")
    result = AsyncResult(lost.task_id, app=app).get(timeout=60)

    assert result["state"] == "failed" and "body was not in Redis" in result["errors"][0]["message"]
    (row,) = query(database_url, "SELECT state, errors, raw_payload FROM batch WHERE id = :id", id=lost.batch_id)
    assert row.state == "failed" and row.errors[0]["field_path"] == "body" and row.raw_payload is None
    assert AsyncResult(kept.task_id, app=app).get(timeout=60)["count"] == 10
    assert custody.figures(client).bodies_missing == 1
    assert f"batch {lost.batch_id} parked as failed" in worker.log()


@pytest.fixture
def evicting_redis(redis_url: str) -> Iterator[None]:
    client = redis.Redis.from_url(redis_url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    yield
    client.config_set("maxmemory-policy", "noeviction")


def test_a_worker_refuses_a_redis_that_may_evict_bodies(evicting_redis: None) -> None:
    started = subprocess.run(worker_command("refuses"), capture_output=True, text=True, timeout=60)

    assert started.returncode != 0
    assert "refusing to start: Redis maxmemory-policy is 'allkeys-lru'" in started.stderr
    assert "Traceback" not in started.stderr
